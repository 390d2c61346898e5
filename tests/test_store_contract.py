"""The storage contract: every backend must pass these (run once per backend)."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from google.pubsub_v1 import types

from pubsub_emulator.store import InvalidAckId, Kind, Store
from pubsub_emulator.store.sqlite import SqliteStore
from store_helpers import PubsubMessage, SyncStore, data_of, msg, now
from store_helpers import pull_until as _pull_until
from support import wait_for

# Leases, expiries and backoffs run in real time, so every backend is held to the same clock
# (JetStream's timers are the server's): short leases keep the suite quick.
LEASE_MS = 600


def pull_until(store: SyncStore, count: int, timeout: float = 15.0, **kwargs):
    """Pull (real time) until `count` deliveries came back; fail after `timeout` seconds."""
    return _pull_until(store, S, count, LEASE_MS, timeout, **kwargs)


T = "projects/p/topics/t"
S = "projects/p/subscriptions/s"


async def _sqlite_file(tmp: Path) -> Store:
    return SqliteStore(tmp / "store.sqlite3")


async def _sqlite_memory(tmp: Path) -> Store:
    return SqliteStore(None)


_NATS_URL: list[str] = []  # the session's nats-server, set by the backend fixture


async def _nats(tmp: Path) -> Store:
    import hashlib

    from pubsub_emulator.store.nats import NatsStore

    # One server for the session; each test its own namespace (reopening sees the same one).
    namespace = "t" + hashlib.sha256(str(tmp).encode()).hexdigest()[:12]
    return await NatsStore.open(_NATS_URL, namespace=namespace)


# Each backend: a factory given a fresh directory, and whether it survives reopening.
BACKENDS: dict[str, tuple[Callable[[Path], Awaitable[Store]], bool]] = {
    "sqlite-file": (_sqlite_file, True),
    "sqlite-memory": (_sqlite_memory, False),
    "nats": (_nats, True),
}


@pytest.fixture(params=sorted(BACKENDS))
def backend(request, tmp_path) -> Iterator[tuple[Callable[[], SyncStore], bool]]:
    factory, durable = BACKENDS[request.param]
    if request.param == "nats" and not _NATS_URL:
        _NATS_URL.append(request.getfixturevalue("nats_server").url)
    opened: list[SyncStore] = []

    def open_store() -> SyncStore:
        store = SyncStore(lambda: factory(tmp_path))
        opened.append(store)
        return store

    yield open_store, durable
    for store in opened:
        try:
            store.close()
        except Exception:
            pass


@pytest.fixture
def store(backend) -> SyncStore:
    open_store, _ = backend
    s = open_store()
    s.resources.create(Kind.TOPIC, T, b"topic")
    s.resources.create(Kind.SUBSCRIPTION, S, b"sub", topic=T)
    return s


def test_resources_create_get_update_delete(store):
    assert not store.resources.create(Kind.TOPIC, T, b"again")
    assert store.resources.get(Kind.TOPIC, T) == b"topic"
    assert store.resources.update(Kind.TOPIC, T, b"changed")
    assert store.resources.get(Kind.TOPIC, T) == b"changed"
    assert not store.resources.update(Kind.TOPIC, "projects/p/topics/none", b"x")
    assert store.resources.delete(Kind.TOPIC, T)
    assert store.resources.get(Kind.TOPIC, T) is None
    assert not store.resources.delete(Kind.TOPIC, T)


def test_update_with_expected_bytes_is_a_compare_and_set(store):
    assert not store.resources.update(Kind.TOPIC, T, b"lost", expected=b"not what is stored")
    assert store.resources.get(Kind.TOPIC, T) == b"topic"
    assert store.resources.update(Kind.TOPIC, T, b"second", expected=b"topic")
    assert not store.resources.update(Kind.TOPIC, T, b"third", expected=b"topic")  # stale read
    assert store.resources.get(Kind.TOPIC, T) == b"second"
    assert not store.resources.update(Kind.TOPIC, "projects/p/topics/none", b"x", expected=b"x")


def test_listing_pages_in_name_order(store):
    for i in (3, 1, 2):
        store.resources.create(Kind.TOPIC, f"projects/q/topics/t{i}", b"%d" % i)
    store.resources.create(Kind.TOPIC, "projects/qq/topics/other", b"x")
    page = store.resources.list_prefixed(Kind.TOPIC, "projects/q/topics/", 2, "")
    assert [n for n, _ in page.items] == ["projects/q/topics/t1", "projects/q/topics/t2"]
    rest = store.resources.list_prefixed(Kind.TOPIC, "projects/q/topics/", 2, page.next_token)
    assert [n for n, _ in rest.items] == ["projects/q/topics/t3"] and rest.next_token == ""
    assert [n for n, _ in store.resources.list_by_topic(Kind.SUBSCRIPTION, T, 10, "").items] == [S]
    with pytest.raises(ValueError):
        store.resources.list_prefixed(Kind.TOPIC, "projects/q/topics/", 2, "%%%")


def test_publish_assigns_unique_ids_and_fans_out(store):
    other = "projects/p/subscriptions/other"
    store.resources.create(Kind.SUBSCRIPTION, other, b"sub", topic=T)
    ids = store.messages.publish(T, [msg(b"a"), msg(b"b")], 1000)
    assert len(set(ids)) == 2
    for sub in (S, other):
        got = store.messages.pull(sub, 10, 10_000, 1000)
        assert [data_of(d) for d in got] == [b"a", b"b"]
        full = types.PubsubMessage.pb().FromString(got[0].message)
        assert full.message_id == ids[0] and full.publish_time.ToMilliseconds() == 1000
        assert got[0].delivery_attempt == 1


def test_publish_leased_leases_what_it_returns_and_leaves_the_rest_available(store):
    """What a store hands back from publish_leased is leased to its caller (first attempt,
    until the deadline given, acked by its ack ids); what it does not hand back (a store may
    decline) and every other subscription's copies are available as after publish."""
    other = "projects/p/subscriptions/other"
    store.resources.create(Kind.SUBSCRIPTION, other, b"sub", topic=T)
    published = now()
    ids, handed = store.messages.publish_leased(T, [msg(b"a"), msg(b"b")], published,
                                                {S: published + LEASE_MS})
    assert len(set(ids)) == 2 and set(handed) <= {S}
    got = store.messages.pull(other, 10, 10_000, published)
    assert [data_of(d) for d in got] == [b"a", b"b"]
    if S not in handed:
        assert [data_of(d) for d in pull_until(store, 2)] == [b"a", b"b"]
        return
    deliveries = handed[S]
    assert [data_of(d) for d in deliveries] == [b"a", b"b"]
    assert [d.delivery_attempt for d in deliveries] == [1, 1]
    full = types.PubsubMessage.pb().FromString(deliveries[0].message)
    assert full.message_id == ids[0] and full.publish_time.ToMilliseconds() == published
    assert store.messages.pull(S, 10, LEASE_MS, published) == []  # leased
    store.messages.acknowledge(S, [deliveries[0].ack_id])
    # The one not acked comes back when its lease runs out, as a second attempt.
    again = pull_until(store, 1)
    assert [data_of(d) for d in again] == [b"b"] and again[0].delivery_attempt == 2
    assert store.messages.pull(S, 10, LEASE_MS, now()) == []


def test_only_messages_after_subscription_creation(store):
    store.messages.publish(T, [msg(b"before")], 1000)
    late = "projects/p/subscriptions/late"
    store.resources.create(Kind.SUBSCRIPTION, late, b"sub", topic=T)
    store.messages.publish(T, [msg(b"after")], 2000)
    assert [data_of(d) for d in store.messages.pull(late, 10, 10_000, 2000)] == [b"after"]


def test_lease_expiry_redelivers_with_next_attempt(store):
    store.messages.publish(T, [msg(b"x")], now())
    [first] = store.messages.pull(S, 10, LEASE_MS, now())
    assert store.messages.pull(S, 10, LEASE_MS, now()) == []  # leased
    [second] = pull_until(store, 1)
    assert second.delivery_attempt == 2 and second.ack_id != first.ack_id
    due = store.messages.next_due_ms(S)
    assert due is not None and due > now()  # leased again: due when that lease ends


def test_ack_removes_and_stale_ack_still_acks(store):
    store.messages.publish(T, [msg(b"x"), msg(b"y")], now())
    first = {data_of(d): d for d in store.messages.pull(S, 10, LEASE_MS, now())}
    again = {data_of(d): d for d in pull_until(store, 2)}  # redelivered: new ack ids
    assert again[b"x"].ack_id != first[b"x"].ack_id
    store.messages.acknowledge(S, [first[b"x"].ack_id])  # an older ack id of x still acks it
    store.messages.acknowledge(S, [again[b"y"].ack_id])
    assert store.messages.backlog(S) == 0
    assert store.messages.pull(S, 10, LEASE_MS, now()) == []


def test_invalid_ack_ids_are_rejected(store):
    for bad in ("garbage", "1-2", "x-y-z"):
        with pytest.raises(InvalidAckId):
            store.messages.acknowledge(S, [bad])
    other = "projects/p/subscriptions/other"
    store.resources.create(Kind.SUBSCRIPTION, other, b"sub", topic=T)
    store.messages.publish(T, [msg(b"x")], 0)
    [d] = store.messages.pull(other, 1, 1_000, 0)
    with pytest.raises(InvalidAckId):
        store.messages.acknowledge(S, [d.ack_id])  # not this subscription's


def test_modify_deadline_extends_and_nacks(store):
    store.messages.publish(T, [msg(b"x")], now())
    [d] = store.messages.pull(S, 1, LEASE_MS, now())
    store.messages.modify_deadline(S, [d.ack_id], 60_000, now())
    passed = now() + 2 * LEASE_MS
    wait_for(lambda: now() > passed, message="the original lease to be over")
    assert store.messages.pull(S, 1, LEASE_MS, now()) == []  # extended: still leased
    store.messages.modify_deadline(S, [d.ack_id], 0, now())  # nack: available at once
    [d2] = pull_until(store, 1)
    assert d2.delivery_attempt == 2


def test_stale_modify_deadline_leaves_the_current_lease_alone(store):
    store.messages.publish(T, [msg(b"x")], now())
    [d] = store.messages.pull(S, 1, LEASE_MS, now())
    store.messages.modify_deadline(S, [d.ack_id], 0, now())
    [d2] = pull_until(store, 1)
    store.messages.modify_deadline(S, [d.ack_id], 600_000, now())  # stale lease: no effect
    [d3] = pull_until(store, 1)  # d2's lease runs out as it would have
    assert (d2.delivery_attempt, d3.delivery_attempt) == (2, 3)


def test_stale_nack_leaves_the_current_lease_alone(store):
    store.messages.publish(T, [msg(b"x")], now())
    [d] = store.messages.pull(S, 1, LEASE_MS, now())
    [d2] = pull_until(store, 1)  # d's lease ran out: redelivered
    store.messages.modify_deadline(S, [d2.ack_id], 600_000, now())
    store.messages.modify_deadline(S, [d.ack_id], 0, now())  # stale nack: no effect
    assert store.messages.pull(S, 10, LEASE_MS, now()) == []
    store.messages.modify_deadline(S, [d2.ack_id], 0, now())  # the current one does
    [d3] = pull_until(store, 1)
    assert (d2.delivery_attempt, d3.delivery_attempt) == (2, 3)


def test_pull_respects_max_messages_and_bytes(store):
    store.messages.publish(T, [msg(b"x" * 100) for _ in range(10)], 0)
    assert len(store.messages.pull(S, 3, 1_000, 0)) == 3
    got = store.messages.pull(S, 10, 1_000, 0, max_bytes=250)
    assert len(got) == 2
    assert len(store.messages.pull(S, 10, 1_000, 0, max_bytes=1)) == 1  # at least one


def test_delete_subscription_drops_backlog_and_purge(store):
    store.messages.publish(T, [msg(b"x")], 0)
    assert store.messages.backlog(S) == 1
    store.messages.purge(S)
    assert store.messages.backlog(S) == 0
    store.messages.publish(T, [msg(b"y")], 0)
    assert store.resources.delete(Kind.SUBSCRIPTION, S)
    with pytest.raises(KeyError):
        store.messages.pull(S, 1, 1_000, 0)


def test_detached_subscription_gets_no_new_messages(store):
    store.resources.update(Kind.SUBSCRIPTION, S, b"sub", topic="")
    store.messages.publish(T, [msg(b"x")], 0)
    assert store.messages.backlog(S) == 0


def test_seek_to_time_and_snapshot(store):
    store.messages.publish(T, [msg(b"old")], 1_000)
    store.messages.publish(T, [msg(b"new")], 5_000)
    store.messages.save_snapshot("projects/p/snapshots/snap", S)
    store.messages.acknowledge(S, [d.ack_id for d in store.messages.pull(S, 10, 60_000, 6_000)])
    assert store.messages.backlog(S) == 0
    store.messages.seek_to_snapshot(S, "projects/p/snapshots/snap", 7_000)
    assert sorted(data_of(d) for d in store.messages.pull(S, 10, 60_000, 7_000)) == [b"new", b"old"]
    store.messages.seek_to_time(S, 3_000, 8_000)  # old counts as acked; new is available again
    assert [data_of(d) for d in store.messages.pull(S, 10, 60_000, 8_000)] == [b"new"]


# --- seek exactness: acks above the ack floor stay acked ---------------------------------------
SNAP = "projects/p/snapshots/exact"


def _six(store, acked: tuple[bytes, ...], policy=None) -> dict[bytes, object]:
    """Publish m1..m6 (at 1 s .. 6 s), pull them all and ack `acked` (m1 unacked keeps the
    subscription's ack floor below them all); the deliveries by data."""
    from pubsub_emulator.store import DEFAULT_POLICY

    policy = policy or DEFAULT_POLICY
    for i in range(1, 7):
        store.messages.publish(T, [msg(b"m%d" % i)], i * 1_000)
    got = {data_of(d): d for d in store.messages.pull(S, 10, 600_000, 6_500, policy=policy)}
    assert sorted(got) == [b"m1", b"m2", b"m3", b"m4", b"m5", b"m6"]
    store.messages.acknowledge(S, [got[m].ack_id for m in acked], policy)
    return got


def _drain(store, at_ms: int, policy=None, batch: int = 100) -> list:
    """Every delivery a subscription has now (long leases), pulled until none comes."""
    from pubsub_emulator.store import DEFAULT_POLICY

    got: list = []
    while more := store.messages.pull(S, batch, 600_000, at_ms, policy=policy or DEFAULT_POLICY):
        got += more
    return got


def _datas(deliveries) -> list[bytes]:
    return sorted(data_of(d) for d in deliveries)


def test_a_seek_to_a_snapshot_brings_back_exactly_what_it_kept(backend):
    open_store, durable = backend
    store = open_store()
    store.resources.create(Kind.TOPIC, T, b"topic")
    store.resources.create(Kind.SUBSCRIPTION, S, b"sub", topic=T)
    got = _six(store, (b"m2", b"m4"))
    store.messages.save_snapshot(SNAP, S)  # unacked: m1, m3, m5, m6
    store.messages.acknowledge(S, [got[b"m1"].ack_id, got[b"m3"].ack_id])
    store.messages.seek_to_snapshot(S, SNAP, 7_000)
    if durable:  # what a seek decided holds for a process that opens the store afterwards
        store.close()
        store = open_store()
    assert store.messages.backlog(S) == 4
    assert _datas(_drain(store, 7_000)) == [b"m1", b"m3", b"m5", b"m6"]  # m2, m4 never
    assert store.messages.backlog(S) == 4  # (leased, not acked)
    store.messages.seek_to_snapshot(S, SNAP, 8_000)  # again, after acks of the new deliveries
    assert _datas(_drain(store, 8_000)) == [b"m1", b"m3", b"m5", b"m6"]


def test_a_seek_to_a_time_keeps_acked_messages_acked(store):
    _six(store, (b"m2", b"m4"))
    store.messages.seek_to_time(S, 500, 7_000)  # before m1, without retained acks
    again = {data_of(d): d for d in _drain(store, 7_000)}
    assert sorted(again) == [b"m1", b"m3", b"m5", b"m6"]  # m2 and m4 stay acked
    store.messages.acknowledge(S, [again[b"m5"].ack_id])
    store.messages.seek_to_time(S, 3_000, 8_000)  # m1, m2 before the time: acked anyway
    assert _datas(_drain(store, 8_000)) == [b"m3", b"m6"]
    store.messages.save_snapshot(SNAP, S)  # what the seeks left acked, a snapshot keeps so
    store.messages.seek_to_snapshot(S, SNAP, 9_000)
    assert _datas(_drain(store, 9_000)) == [b"m3", b"m6"]


def test_a_seek_to_a_time_with_retained_acks_brings_acked_messages_back(store):
    from pubsub_emulator.store import DeliveryPolicy

    kept = DeliveryPolicy(retain_acked=True)
    _six(store, (b"m2", b"m4"), kept)
    store.messages.seek_to_time(S, 500, 7_000, kept)
    again = {data_of(d): d for d in _drain(store, 7_000, kept)}
    assert sorted(again) == [b"m1", b"m2", b"m3", b"m4", b"m5", b"m6"]
    store.messages.acknowledge(S, [again[m].ack_id for m in (b"m1", b"m5", b"m6")], kept)
    store.messages.seek_to_time(S, 3_500, 8_000, kept)
    assert _datas(_drain(store, 8_000, kept)) == [b"m4", b"m5", b"m6"]


def test_a_seek_to_a_snapshot_is_exact_for_thousands_of_acks_above_a_stuck_floor(
        store, monkeypatch):
    from pubsub_emulator.store.nats import acklog

    # (NATS: small records, so the snapshot's and the seek's sets span many of them)
    monkeypatch.setattr(acklog, "RECORD_BYTES", 1_000)
    count = 10_000
    for start in range(0, count, 1_000):
        store.messages.publish(T, [msg(b"%05d" % i) for i in range(start, start + 1_000)], 1_000)
    got = {data_of(d): d for d in _drain(store, 2_000, batch=1_000)}
    assert len(got) == count
    acked = [b"%05d" % i for i in range(1, count, 2)]  # 00000 unacked: the floor stays below
    for start in range(0, len(acked), 50):  # 100 acks of 50
        store.messages.acknowledge(S, [got[m].ack_id for m in acked[start:start + 50]])
    store.messages.save_snapshot(SNAP, S)
    store.messages.acknowledge(S, [got[b"%05d" % i].ack_id for i in range(0, count, 4)])
    store.messages.seek_to_snapshot(S, SNAP, 3_000)
    assert store.messages.backlog(S) == count // 2
    again = _datas(_drain(store, 3_000, batch=1_000))
    assert again == [b"%05d" % i for i in range(0, count, 2)]


def test_sweep_reclaims_only_unneeded_messages(store):
    store.messages.publish(T, [msg(b"a"), msg(b"b")], now())
    got = {data_of(d): d for d in store.messages.pull(S, 10, LEASE_MS, now())}
    store.messages.acknowledge(S, [got[b"a"].ack_id])
    assert store.messages.sweep(now()) == 1
    assert [data_of(d) for d in pull_until(store, 1)] == [b"b"]


def test_durable_across_reopen(backend):
    open_store, durable = backend
    if not durable:
        pytest.skip("this backend keeps nothing across processes by design (--in-memory)")
    first = open_store()
    first.resources.create(Kind.TOPIC, T, b"topic")
    first.resources.create(Kind.SUBSCRIPTION, S, b"sub", topic=T)
    ids = first.messages.publish(T, [msg(b"keep"), msg(b"acked")], now())
    got = {data_of(d): d for d in first.messages.pull(S, 10, LEASE_MS, now())}
    first.messages.acknowledge(S, [got[b"acked"].ack_id])
    first.close()
    second = open_store()
    assert second.resources.get(Kind.SUBSCRIPTION, S) == b"sub"
    assert [data_of(d) for d in pull_until(second, 1)] == [b"keep"]  # once its lease is over
    more = second.messages.publish(T, [msg(b"later")], now())
    assert int(more[0]) > max(int(i) for i in ids)  # ids never repeat after a restart


def test_publish_skips_what_a_subscription_must_not_receive(store):
    other = "projects/p/subscriptions/other"
    store.resources.create(Kind.SUBSCRIPTION, other, b"sub", topic=T)
    store.messages.publish(T, [msg(b"a"), msg(b"b"), msg(b"c")], 0, skip={S: {0, 2}})
    assert [data_of(d) for d in store.messages.pull(S, 10, 1_000, 0)] == [b"b"]
    assert [data_of(d) for d in store.messages.pull(other, 10, 1_000, 0)] == [b"a", b"b", b"c"]


def test_retry_policy_delays_redelivery(store):
    from pubsub_emulator.store import DeliveryPolicy, RetryPolicy

    policy = DeliveryPolicy(retry=RetryPolicy(minimum_ms=1_000, maximum_ms=3_000))
    assert [policy.retry.delay_ms(n) for n in (1, 2, 3, 4)] == [1_000, 2_000, 3_000, 3_000]
    store.messages.publish(T, [msg(b"x")], now())
    [d] = store.messages.pull(S, 1, LEASE_MS, now(), policy=policy)
    nacked = time.monotonic()
    store.messages.modify_deadline(S, [d.ack_id], 0, now(), policy=policy)  # nack: back after 1 s
    assert store.messages.pull(S, 1, LEASE_MS, now(), policy=policy) == []
    [d2] = pull_until(store, 1, policy=policy)
    assert time.monotonic() - nacked >= 0.9 and d2.delivery_attempt == 2
    leased = time.monotonic()  # lease expiry plus the second attempt's delay (2 s)
    [d3] = pull_until(store, 1, policy=policy)
    assert time.monotonic() - leased >= (LEASE_MS + 2_000) / 1000 - 0.1
    assert d3.delivery_attempt == 3


def test_ordering_keys_keep_publish_order_through_redelivery(store):
    from pubsub_emulator.store import DeliveryPolicy

    ordered = DeliveryPolicy(ordered=True)
    store.messages.publish(T, [msg(b"a1"), msg(b"b1"), msg(b"a2"), msg(b"n1"), msg(b"a3")], 0,
                  ordering_keys=["a", "b", "a", "", "a"])
    first = store.messages.pull(S, 2, 10_000, 0, policy=ordered)
    assert [data_of(d) for d in first] == [b"a1", b"b1"]
    # a1 is leased, so a2 and a3 wait; unkeyed n1 does not.
    second = store.messages.pull(S, 10, 10_000, 0, policy=ordered)
    assert [data_of(d) for d in second] == [b"n1"]
    store.messages.acknowledge(S, [first[0].ack_id], ordered)
    third = store.messages.pull(S, 10, 10_000, 1, policy=ordered)
    assert [data_of(d) for d in third] == [b"a2", b"a3"]
    # Nacking a2 brings a3 back with it: both come again, in order.
    store.messages.modify_deadline(S, [third[0].ack_id], 0, 2, policy=ordered)
    again = store.messages.pull(S, 10, 10_000, 2, policy=ordered)
    assert [data_of(d) for d in again] == [b"a2", b"a3"]


def test_ids_never_repeat_after_reopen_even_when_nothing_was_stored(backend):
    open_store, durable = backend
    if not durable:
        pytest.skip("this backend keeps nothing across processes by design (--in-memory)")
    lonely = "projects/p/topics/lonely"  # no subscription, no retention: no message is kept
    first = open_store()
    first.resources.create(Kind.TOPIC, lonely, b"topic")
    ids = first.messages.publish(lonely, [msg(b"a"), msg(b"b")], now())
    first.close()
    second = open_store()
    more = second.messages.publish(lonely, [msg(b"c"), msg(b"d")], now())
    assert len(set(ids + more)) == 4


def test_a_subscription_made_again_under_a_deleted_name_starts_empty(store):
    store.messages.publish(T, [msg(b"old %d" % i) for i in range(20)], 0)
    assert store.resources.delete(Kind.SUBSCRIPTION, S)
    store.resources.create(Kind.SUBSCRIPTION, S, b"sub", topic=T)
    assert store.messages.backlog(S) == 0
    store.messages.publish(T, [msg(b"new")], 0)
    assert [data_of(d) for d in store.messages.pull(S, 50, 10_000, 0)] == [b"new"]


def test_a_snapshot_saved_again_under_a_deleted_name_has_only_its_new_state(store):
    snap = "projects/p/snapshots/again"
    store.messages.publish(T, [msg(b"old")], 1_000)
    store.resources.create(Kind.SNAPSHOT, snap, b"snap", topic=T)
    store.messages.save_snapshot(snap, S)
    assert store.resources.delete(Kind.SNAPSHOT, snap)
    store.messages.acknowledge(S, [d.ack_id for d in store.messages.pull(S, 10, 60_000, 2_000)])
    store.messages.publish(T, [msg(b"new")], 3_000)
    store.resources.create(Kind.SNAPSHOT, snap, b"snap", topic=T)
    store.messages.save_snapshot(snap, S)
    store.messages.acknowledge(S, [d.ack_id for d in store.messages.pull(S, 10, 60_000, 4_000)])
    store.messages.seek_to_snapshot(S, snap, 5_000)
    assert [data_of(d) for d in store.messages.pull(S, 10, 60_000, 5_000)] == [b"new"]


# --- Pub/Sub's 10 MB limits (a NATS server's default max_payload is 1 MB) ----------------------
TEN_MB = 10 * 1000 * 1000


def test_a_10_mb_message_is_pulled_whole_and_acked(store):
    data = os.urandom(TEN_MB - 1_000)  # (a publish request of it is within the 10 MB)
    raw = PubsubMessage(data=data, attributes={"k": "v"}).SerializeToString()
    [message_id] = store.messages.publish(T, [raw], 1_000)
    [d] = _pull_until(store, S, 1, 60_000)
    got = PubsubMessage.FromString(d.message)
    assert got.data == data and dict(got.attributes) == {"k": "v"}
    assert got.message_id == message_id and got.publish_time.ToMilliseconds() == 1_000
    assert d.size == len(raw) and d.delivery_attempt == 1
    store.messages.acknowledge(S, [d.ack_id])
    assert store.messages.backlog(S) == 0
    assert store.messages.pull(S, 10, 60_000, now()) == []


def test_a_10_mb_publish_request_of_several_messages(store):
    datas = [os.urandom(1_990_000) for _ in range(5)] + [b"small"]
    ids = store.messages.publish(T, [msg(x) for x in datas], 1_000)
    assert len(set(ids)) == 6
    # Byte limits count each message's real size: two of ~2 MB are more than 3 MB.
    first = _pull_until(store, S, 1, 60_000, max_bytes=3_000_000)
    assert [d.size for d in first if d.size > 1_000_000] == [len(msg(datas[0]))]
    assert sum(d.size for d in first) <= 3_000_000
    rest = _pull_until(store, S, 6 - len(first), 60_000)
    got = sorted(first + rest, key=lambda d: ids.index(PubsubMessage.FromString(d.message)
                                                       .message_id))
    assert [data_of(d) for d in got] == datas
    store.messages.acknowledge(S, [d.ack_id for d in got])
    assert store.messages.backlog(S) == 0


# --- state that grows with the backlog: no ceiling per subscription ---------------------------
def _pull_all(store: SyncStore, count: int, policy=None, batch: int = 5_000,
              timeout: float = 60.0) -> list:
    """Pull (real time, in big pulls) until `count` deliveries came back."""
    from pubsub_emulator.store import DEFAULT_POLICY

    got: list = []

    def enough() -> bool:
        got.extend(store.messages.pull(S, min(batch, count - len(got)), 120_000, now(),
                                       policy=policy or DEFAULT_POLICY))
        return len(got) >= count

    wait_for(enough, timeout=timeout, interval=0.05, message=f"{count} deliveries")
    return got


def _in_chunks(call: Callable[[list[str]], object], ack_ids: list[str], size: int = 5_000
               ) -> None:
    for start in range(0, len(ack_ids), size):
        call(ack_ids[start:start + size])


def test_a_hundred_thousand_unacked_keyed_messages_keep_their_order(store):
    """100,000 fetched, unacknowledged keyed messages on an ordered subscription (1,000 keys
    with 100 messages each, interleaved): a big pull hands out the first five of each key and
    the rest wait behind them; once those are nacked (half the keys) or their leases run out
    (the other half), everything comes again in order per key, and is acked."""
    from pubsub_emulator.store import DeliveryPolicy

    ordered = DeliveryPolicy(ordered=True)
    keys, per_key, batch = 1_000, 100, 5_000
    for index in range(0, per_key, 10):  # messages index..index+9 of every key, in rounds
        store.messages.publish(
            T, [msg(b"%d:%d" % (k, i)) for i in range(index, index + 10) for k in range(keys)],
            now(), ordering_keys=[f"key-{k}" for _ in range(10) for k in range(keys)])
    first = _pull_all(store, batch, ordered)
    heads = batch // keys  # (of each key, the first five come together)
    assert sorted(data_of(d) for d in first) == sorted(
        b"%d:%d" % (k, i) for k in range(keys) for i in range(heads))
    # The other 95,000 wait behind them: pulls may fetch them (NATS does), none comes out.
    for _ in range(keys * per_key // batch + 1):
        assert store.messages.pull(S, batch, 120_000, now(), policy=ordered) == []
    _in_chunks(lambda ids: store.messages.modify_deadline(S, ids, 0, now(), ordered),
               [d.ack_id for d in first  # nacked: the key's others come again with it
                if data_of(d).endswith(b":0") and int(data_of(d).split(b":")[0]) % 2 == 0])
    _in_chunks(lambda ids: store.messages.modify_deadline(S, ids, LEASE_MS, now(), ordered),
               [d.ack_id for d in first if int(data_of(d).split(b":")[0]) % 2])  # run out
    seen = [0] * keys
    deadline = time.monotonic() + 90
    while sum(seen) < keys * per_key:
        assert time.monotonic() < deadline, f"only {sum(seen)} came again"
        got = store.messages.pull(S, batch, 120_000, now(), policy=ordered)
        for d in got:
            key, index = (int(part) for part in data_of(d).split(b":"))
            assert index == seen[key], (key, index, seen[key])  # in order, each once
            assert d.delivery_attempt == (2 if index < heads else 1), (key, index)
            seen[key] += 1
        if got:
            store.messages.acknowledge(S, [d.ack_id for d in got], ordered)
        else:
            time.sleep(0.05)
    assert store.messages.backlog(S) == 0
    assert store.messages.pull(S, batch, 120_000, now(), policy=ordered) == []


def test_a_hundred_thousand_unacked_messages_of_one_ordering_key(store):
    """100,000 fetched, unacknowledged messages of ONE ordering key: a big pull hands out the
    first 5,000 in order and nothing more comes while they are leased (NATS fetches, records
    and holds back all the others); the first half is acked, a few of the second half are
    nacked, and the rest of the key comes again in order, acked as it comes, but for one batch
    in the middle that is nacked (its first and last message) and comes again, in order,
    before anything after it."""
    from pubsub_emulator.store import DeliveryPolicy

    ordered = DeliveryPolicy(ordered=True)
    count, batch, acked = 100_000, 5_000, 2_500
    for start in range(0, count, 10_000):
        store.messages.publish(T, [msg(b"%d" % i) for i in range(start, start + 10_000)],
                               now(), ordering_keys=["one key"] * 10_000)
    first = _pull_all(store, batch, ordered)
    assert [data_of(d) for d in first] == [b"%d" % i for i in range(batch)]
    for _ in range(count // batch + 1):
        assert store.messages.pull(S, batch, 120_000, now(), policy=ordered) == []
    _in_chunks(lambda ids: store.messages.acknowledge(S, ids, ordered),
               [d.ack_id for d in first[:acked]])
    # A nack takes the key's later messages back with it: they all come after it, in order.
    store.messages.modify_deadline(S, [d.ack_id for d in first[acked:]], 0, now(), ordered)
    attempts = {i: 2 if i < batch else 1 for i in range(acked, count)}
    expected, nacked_once = acked, False
    deadline = time.monotonic() + 120
    while expected < count:
        assert time.monotonic() < deadline, f"only up to {expected} came again"
        got = store.messages.pull(S, batch, 120_000, now(), policy=ordered)
        for d in got:
            assert int(data_of(d)) == expected, (int(data_of(d)), expected)  # in key order
            assert d.delivery_attempt == attempts[expected], expected
            expected += 1
        if got and not nacked_once and expected > count * 3 // 4:
            nacked_once = True  # (first, NATS fetches and holds back the rest again)
            for _ in range((count - expected) // batch + 1):
                assert store.messages.pull(S, batch, 120_000, now(), policy=ordered) == []
            expected = int(data_of(got[0]))  # this batch comes again, before the next ones
            attempts.update({int(data_of(d)): d.delivery_attempt + 1 for d in got})
            store.messages.modify_deadline(S, [got[0].ack_id, got[-1].ack_id], 0, now(),
                                           ordered)
        elif got:
            store.messages.acknowledge(S, [d.ack_id for d in got], ordered)
        else:
            time.sleep(0.05)
    assert nacked_once
    assert store.messages.backlog(S) == 0
    assert store.messages.pull(S, batch, 120_000, now(), policy=ordered) == []


def test_a_hundred_thousand_redeliveries(store):
    """100,000 messages pulled, nacked and pulled again: the second delivery is the current
    one, a stale nack (with a first delivery's ack id) leaves its lease alone, acks hold."""
    count = 100_000
    for start in range(0, count, 10_000):
        store.messages.publish(T, [msg(b"%d" % i) for i in range(start, start + 10_000)], now())
    first = _pull_all(store, count)
    assert {d.delivery_attempt for d in first} == {1}
    _in_chunks(lambda ids: store.messages.modify_deadline(S, ids, 0, now()),
               [d.ack_id for d in first])
    second = _pull_all(store, count)
    assert sorted(data_of(d) for d in second) == sorted(b"%d" % i for i in range(count))
    assert {d.delivery_attempt for d in second} == {2}
    _in_chunks(lambda ids: store.messages.modify_deadline(S, ids, 0, now()),
               [d.ack_id for d in first])  # stale: changes nothing
    assert store.messages.pull(S, 1_000, 120_000, now()) == []
    _in_chunks(lambda ids: store.messages.acknowledge(S, ids), [d.ack_id for d in second])
    assert store.messages.backlog(S) == 0
    assert store.messages.pull(S, 1_000, 120_000, now()) == []


# --- peek: the unacknowledged messages, read without changing their delivery ------------------
def _peeked(store, max_messages: int = 100) -> list[tuple[bytes, int, int | None]]:
    """(data, delivery attempt, lease end) of what a peek shows, in its order."""
    return [(PubsubMessage.FromString(p.message).data, p.delivery_attempt, p.leased_until_ms)
            for p in store.messages.peek(S, max_messages, now())]


def _peeked_datas(store, max_messages: int = 100) -> list[bytes]:
    return [data for data, _, _ in _peeked(store, max_messages)]


def _knows_every_lease(request) -> bool:
    """JetStream keeps the leases of subscriptions without exactly-once delivery to itself
    (docs/nats.md, Peek): NATS reports those messages delivered, with no lease end."""
    return request.node.callspec.params["backend"] != "nats"


PEEK_POLICIES = {"at-least-once": {}, "exactly-once": {"exactly_once": True},
                 "ordered": {"ordered": True}}


@pytest.mark.parametrize("settings", sorted(PEEK_POLICIES))
def test_peek_shows_the_backlog_oldest_first_and_changes_nothing(store, settings):
    from pubsub_emulator.store import DeliveryPolicy

    policy = DeliveryPolicy(**PEEK_POLICIES[settings])
    raws = [PubsubMessage(data=b"m%d" % i, attributes={"i": str(i)},
                          ordering_key="k" if i != 2 else "").SerializeToString()
            for i in range(4)]
    ids = store.messages.publish(T, raws, 5_000, ordering_keys=["k", "k", "", "k"])
    peeked = store.messages.peek(S, 10, now())
    assert store.messages.peek(S, 10, now()) == peeked  # twice: the same answer
    messages = [PubsubMessage.FromString(p.message) for p in peeked]
    assert [m.message_id for m in messages] == ids
    assert [m.data for m in messages] == [b"m0", b"m1", b"m2", b"m3"]
    assert [dict(m.attributes) for m in messages] == [{"i": str(i)} for i in range(4)]
    assert [m.ordering_key for m in messages] == ["k", "k", "", "k"]
    assert {m.publish_time.ToMilliseconds() for m in messages} == {5_000}
    assert [(p.delivery_attempt, p.leased_until_ms) for p in peeked] == [(0, None)] * 4
    # Nothing leased, counted or held: a pull gets them all, on their first delivery.
    got = store.messages.pull(S, 10, 60_000, now(), policy=policy)
    assert [PubsubMessage.FromString(d.message).message_id for d in got] == ids
    assert [d.delivery_attempt for d in got] == [1] * 4
    assert [p.message for p in peeked] == [d.message for d in got]  # byte for byte


@pytest.mark.parametrize("settings", ["at-least-once", "exactly-once"])
def test_peek_shows_leases_and_what_acks_and_nacks_change(store, request, settings):
    from pubsub_emulator.store import DeliveryPolicy

    policy = DeliveryPolicy(**PEEK_POLICIES[settings])
    known = policy.exactly_once or _knows_every_lease(request)
    store.messages.publish(T, [msg(b"a"), msg(b"b"), msg(b"c")], now())
    pulled_at = now()
    first = store.messages.pull(S, 2, 60_000, pulled_at, policy=policy)
    assert [data_of(d) for d in first] == [b"a", b"b"]
    lease = pulled_at + 60_000 if known else None
    assert _peeked(store) == [(b"a", 1, lease), (b"b", 1, lease), (b"c", 0, None)]
    assert _peeked(store, 1) == [(b"a", 1, lease)]
    assert store.messages.pull(S, 10, 60_000, now(), policy=policy)[0].delivery_attempt == 1
    assert store.messages.acknowledge(S, [first[0].ack_id], policy, now()) == []
    assert _peeked_datas(store) == [b"b", b"c"]  # acked (above the ack floor on NATS): gone
    assert store.messages.modify_deadline(S, [first[1].ack_id], 0, now(), policy) == []
    assert _peeked(store)[0] == (b"b", 1, None)  # nacked: back, not leased
    [again] = pull_until(store, 1, policy=policy)
    assert (data_of(again), again.delivery_attempt) == (b"b", 2)  # the peeks counted nothing
    assert _peeked(store)[0][:2] == (b"b", 2)


def test_peek_leaves_out_what_a_filter_rejected(store):
    store.messages.publish(T, [msg(b"a"), msg(b"b"), msg(b"c"), msg(b"d")], 0,
                           skip={S: {0, 2}})
    assert _peeked_datas(store) == [b"b", b"d"]
    assert _peeked_datas(store, 1) == [b"b"]
    assert [data_of(d) for d in store.messages.pull(S, 10, 1_000, 0)] == [b"b", b"d"]


def test_peek_follows_seeks_and_purges(store):
    got = _six(store, (b"m2", b"m4"))  # m1 unacked: m2 and m4 are acked above the ack floor
    assert _peeked_datas(store) == [b"m1", b"m3", b"m5", b"m6"]
    store.messages.save_snapshot(SNAP, S)
    store.messages.acknowledge(S, [got[b"m1"].ack_id, got[b"m5"].ack_id])
    assert _peeked_datas(store) == [b"m3", b"m6"]
    store.messages.seek_to_time(S, 500, now())  # before m1: what was acked stays acked
    assert [(data, lease) for data, _, lease in _peeked(store)] == [(b"m3", None), (b"m6", None)]
    store.messages.seek_to_snapshot(S, SNAP, now())
    assert _peeked_datas(store) == [b"m1", b"m3", b"m5", b"m6"]
    assert _peeked_datas(store) == _datas(_drain(store, now()))
    store.messages.purge(S)
    assert _peeked(store) == []
    store.messages.publish(T, [msg(b"after")], now())
    assert _peeked(store) == [(b"after", 0, None)]


def test_peek_of_a_large_message_returns_it_whole(store):
    data = os.urandom(3_000_000)  # (three times a NATS server's default max_payload)
    raw = PubsubMessage(data=data, attributes={"k": "v"}).SerializeToString()
    [message_id] = store.messages.publish(T, [raw, msg(b"small")], 1_000)[:1]
    [large, small] = store.messages.peek(S, 10, now())
    got = PubsubMessage.FromString(large.message)
    assert got.data == data and dict(got.attributes) == {"k": "v"}
    assert got.message_id == message_id and got.publish_time.ToMilliseconds() == 1_000
    assert PubsubMessage.FromString(small.message).data == b"small"
    [d, _] = _pull_until(store, S, 2, 60_000)
    assert d.message == large.message and d.delivery_attempt == 1


def test_peek_of_a_missing_or_detached_subscription(store):
    with pytest.raises(KeyError):
        store.messages.peek("projects/p/subscriptions/none", 10, now())
    store.messages.publish(T, [msg(b"x")], 0)
    store.resources.update(Kind.SUBSCRIPTION, S, b"sub", topic="")
    store.messages.purge(S)  # (as detaching does)
    assert _peeked(store) == []
    assert store.resources.delete(Kind.SUBSCRIPTION, S)
    with pytest.raises(KeyError):
        store.messages.peek(S, 10, now())


def test_peek_of_a_large_backlog_reads_only_its_front(store, monkeypatch):
    from pubsub_emulator.store.nats.client import JetStream

    count = 5_000
    for start in range(0, count, 1_000):
        store.messages.publish(T, [msg(b"%04d" % i) for i in range(start, start + 1_000)], 0)
    got = store.messages.pull(S, 20, 600_000, now())
    assert [data_of(d) for d in got] == [b"%04d" % i for i in range(20)]
    store.messages.acknowledge(S, [d.ack_id for d in got[1:]])  # 0000 keeps the floor below
    reads: list[str] = []  # (NATS: topic stream messages read one by one)
    api = JetStream.api

    async def counted(self, subject, *args, **kwargs):
        if subject.startswith("STREAM.MSG.GET.") and "_T_" in subject:
            reads.append(subject)
        return await api(self, subject, *args, **kwargs)

    monkeypatch.setattr(JetStream, "api", counted)
    front = _peeked(store, 3)
    assert [(data, attempt) for data, attempt, _ in front] == [(b"0000", 1), (b"0020", 0),
                                                              (b"0021", 0)]
    assert len(reads) <= 3  # the front, not the backlog (nor what was acked above 0000)
    assert len(_peeked(store, 1_000)) == 1_000
    assert store.messages.backlog(S) == count - 19
