"""The storage contract: every backend must pass these (run once per backend)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from google.pubsub_v1 import types

from pubsub_emulator.store import InvalidAckId, Kind, Store
from pubsub_emulator.store.sqlite import SqliteStore
from store_helpers import SyncStore, data_of, msg, now
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
