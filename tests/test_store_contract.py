"""The storage contract: every backend must pass these (run once per backend)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from google.pubsub_v1 import types

from pubsub_emulator._sqlite_store import SqliteStore
from pubsub_emulator._store import InvalidAckId, Store
from support import SyncStore, wait_for

PubsubMessage = types.PubsubMessage.pb()
# Leases, expiries and backoffs run in real time, so every backend is held to the same clock
# (JetStream's timers are the server's): short leases keep the suite quick.
LEASE_MS = 600


def now() -> int:
    return time.time_ns() // 1_000_000


def pull_until(store: SyncStore, count: int, timeout: float = 15.0, **kwargs):
    """Pull (real time) until `count` deliveries came back; fail after `timeout` seconds."""
    got: list = []

    def enough() -> bool:
        got.extend(store.pull(S, 10, LEASE_MS, now(), **kwargs))
        return len(got) >= count

    wait_for(enough, timeout=timeout, interval=0.02, message=f"{count} deliveries")
    return got
T = "projects/p/topics/t"
S = "projects/p/subscriptions/s"


async def _sqlite_file(tmp: Path) -> Store:
    return SqliteStore(tmp / "store.sqlite3")


async def _sqlite_memory(tmp: Path) -> Store:
    return SqliteStore(None)


_NATS_URL: list[str] = []  # the session's nats-server, set by the backend fixture


async def _nats(tmp: Path) -> Store:
    import hashlib

    from pubsub_emulator._nats_store import NatsStore

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
    s.create_resource("topics", T, b"topic")
    s.create_resource("subscriptions", S, b"sub", topic=T)
    return s


def msg(data: bytes) -> bytes:
    return PubsubMessage(data=data).SerializeToString()


def data_of(delivery) -> bytes:
    return PubsubMessage.FromString(delivery.message).data


def test_resources_create_get_update_delete(store):
    assert not store.create_resource("topics", T, b"again")
    assert store.get_resource("topics", T) == b"topic"
    assert store.update_resource("topics", T, b"changed")
    assert store.get_resource("topics", T) == b"changed"
    assert not store.update_resource("topics", "projects/p/topics/none", b"x")
    assert store.delete_resource("topics", T)
    assert store.get_resource("topics", T) is None
    assert not store.delete_resource("topics", T)


def test_update_with_expected_bytes_is_a_compare_and_set(store):
    assert not store.update_resource("topics", T, b"lost", expected=b"not what is stored")
    assert store.get_resource("topics", T) == b"topic"
    assert store.update_resource("topics", T, b"second", expected=b"topic")
    assert not store.update_resource("topics", T, b"third", expected=b"topic")  # stale read
    assert store.get_resource("topics", T) == b"second"
    assert not store.update_resource("topics", "projects/p/topics/none", b"x", expected=b"x")


def test_listing_pages_in_name_order(store):
    for i in (3, 1, 2):
        store.create_resource("topics", f"projects/q/topics/t{i}", b"%d" % i)
    store.create_resource("topics", "projects/qq/topics/other", b"x")
    page = store.list_resources("topics", "projects/q/topics/", 2, "")
    assert [n for n, _ in page.items] == ["projects/q/topics/t1", "projects/q/topics/t2"]
    rest = store.list_resources("topics", "projects/q/topics/", 2, page.next_token)
    assert [n for n, _ in rest.items] == ["projects/q/topics/t3"] and rest.next_token == ""
    assert [n for n, _ in store.list_by_topic("subscriptions", T, 10, "").items] == [S]
    with pytest.raises(ValueError):
        store.list_resources("topics", "projects/q/topics/", 2, "%%%")


def test_publish_assigns_unique_ids_and_fans_out(store):
    other = "projects/p/subscriptions/other"
    store.create_resource("subscriptions", other, b"sub", topic=T)
    ids = store.publish(T, [msg(b"a"), msg(b"b")], 1000)
    assert len(set(ids)) == 2
    for sub in (S, other):
        got = store.pull(sub, 10, 10_000, 1000)
        assert [data_of(d) for d in got] == [b"a", b"b"]
        full = PubsubMessage.FromString(got[0].message)
        assert full.message_id == ids[0] and full.publish_time.ToMilliseconds() == 1000
        assert got[0].delivery_attempt == 1


def test_only_messages_after_subscription_creation(store):
    store.publish(T, [msg(b"before")], 1000)
    late = "projects/p/subscriptions/late"
    store.create_resource("subscriptions", late, b"sub", topic=T)
    store.publish(T, [msg(b"after")], 2000)
    assert [data_of(d) for d in store.pull(late, 10, 10_000, 2000)] == [b"after"]


def test_lease_expiry_redelivers_with_next_attempt(store):
    store.publish(T, [msg(b"x")], now())
    [first] = store.pull(S, 10, LEASE_MS, now())
    assert store.pull(S, 10, LEASE_MS, now()) == []  # leased
    [second] = pull_until(store, 1)
    assert second.delivery_attempt == 2 and second.ack_id != first.ack_id
    due = store.next_due_ms(S)
    assert due is not None and due > now()  # leased again: due when that lease ends


def test_ack_removes_and_stale_ack_still_acks(store):
    store.publish(T, [msg(b"x"), msg(b"y")], now())
    first = {data_of(d): d for d in store.pull(S, 10, LEASE_MS, now())}
    again = {data_of(d): d for d in pull_until(store, 2)}  # redelivered: new ack ids
    assert again[b"x"].ack_id != first[b"x"].ack_id
    store.acknowledge(S, [first[b"x"].ack_id])  # an older ack id of x still acks it
    store.acknowledge(S, [again[b"y"].ack_id])
    assert store.backlog(S) == 0
    assert store.pull(S, 10, LEASE_MS, now()) == []


def test_invalid_ack_ids_are_rejected(store):
    for bad in ("garbage", "1-2", "x-y-z"):
        with pytest.raises(InvalidAckId):
            store.acknowledge(S, [bad])
    other = "projects/p/subscriptions/other"
    store.create_resource("subscriptions", other, b"sub", topic=T)
    store.publish(T, [msg(b"x")], 0)
    [d] = store.pull(other, 1, 1_000, 0)
    with pytest.raises(InvalidAckId):
        store.acknowledge(S, [d.ack_id])  # not this subscription's


def test_modify_deadline_extends_and_nacks(store):
    store.publish(T, [msg(b"x")], now())
    [d] = store.pull(S, 1, LEASE_MS, now())
    store.modify_deadline(S, [d.ack_id], 60_000, now())
    passed = now() + 2 * LEASE_MS
    wait_for(lambda: now() > passed, message="the original lease to be over")
    assert store.pull(S, 1, LEASE_MS, now()) == []  # extended: still leased
    store.modify_deadline(S, [d.ack_id], 0, now())  # nack: available at once
    [d2] = pull_until(store, 1)
    assert d2.delivery_attempt == 2


def test_stale_modify_deadline_leaves_the_current_lease_alone(store):
    store.publish(T, [msg(b"x")], now())
    [d] = store.pull(S, 1, LEASE_MS, now())
    store.modify_deadline(S, [d.ack_id], 0, now())
    [d2] = pull_until(store, 1)
    store.modify_deadline(S, [d.ack_id], 600_000, now())  # stale lease: no effect
    [d3] = pull_until(store, 1)  # d2's lease runs out as it would have
    assert (d2.delivery_attempt, d3.delivery_attempt) == (2, 3)


def test_stale_nack_leaves_the_current_lease_alone(store):
    store.publish(T, [msg(b"x")], now())
    [d] = store.pull(S, 1, LEASE_MS, now())
    [d2] = pull_until(store, 1)  # d's lease ran out: redelivered
    store.modify_deadline(S, [d2.ack_id], 600_000, now())
    store.modify_deadline(S, [d.ack_id], 0, now())  # stale nack: no effect
    assert store.pull(S, 10, LEASE_MS, now()) == []
    store.modify_deadline(S, [d2.ack_id], 0, now())  # the current one does
    [d3] = pull_until(store, 1)
    assert (d2.delivery_attempt, d3.delivery_attempt) == (2, 3)


def test_pull_respects_max_messages_and_bytes(store):
    store.publish(T, [msg(b"x" * 100) for _ in range(10)], 0)
    assert len(store.pull(S, 3, 1_000, 0)) == 3
    got = store.pull(S, 10, 1_000, 0, max_bytes=250)
    assert len(got) == 2
    assert len(store.pull(S, 10, 1_000, 0, max_bytes=1)) == 1  # at least one


def test_delete_subscription_drops_backlog_and_purge(store):
    store.publish(T, [msg(b"x")], 0)
    assert store.backlog(S) == 1
    store.purge(S)
    assert store.backlog(S) == 0
    store.publish(T, [msg(b"y")], 0)
    assert store.delete_resource("subscriptions", S)
    with pytest.raises(KeyError):
        store.pull(S, 1, 1_000, 0)


def test_detached_subscription_gets_no_new_messages(store):
    store.update_resource("subscriptions", S, b"sub", topic="")
    store.publish(T, [msg(b"x")], 0)
    assert store.backlog(S) == 0


def test_seek_to_time_and_snapshot(store):
    store.publish(T, [msg(b"old")], 1_000)
    store.publish(T, [msg(b"new")], 5_000)
    store.save_snapshot("projects/p/snapshots/snap", S)
    store.acknowledge(S, [d.ack_id for d in store.pull(S, 10, 60_000, 6_000)])
    assert store.backlog(S) == 0
    store.seek_to_snapshot(S, "projects/p/snapshots/snap", 7_000)
    assert sorted(data_of(d) for d in store.pull(S, 10, 60_000, 7_000)) == [b"new", b"old"]
    store.seek_to_time(S, 3_000, 8_000)  # old counts as acked; new is available again
    assert [data_of(d) for d in store.pull(S, 10, 60_000, 8_000)] == [b"new"]


def test_sweep_reclaims_only_unneeded_messages(store):
    store.publish(T, [msg(b"a"), msg(b"b")], now())
    got = {data_of(d): d for d in store.pull(S, 10, LEASE_MS, now())}
    store.acknowledge(S, [got[b"a"].ack_id])
    assert store.sweep(now()) == 1
    assert [data_of(d) for d in pull_until(store, 1)] == [b"b"]


def test_durable_across_reopen(backend):
    open_store, durable = backend
    if not durable:
        pytest.skip("this backend keeps nothing across processes by design (--in-memory)")
    first = open_store()
    first.create_resource("topics", T, b"topic")
    first.create_resource("subscriptions", S, b"sub", topic=T)
    ids = first.publish(T, [msg(b"keep"), msg(b"acked")], now())
    got = {data_of(d): d for d in first.pull(S, 10, LEASE_MS, now())}
    first.acknowledge(S, [got[b"acked"].ack_id])
    first.close()
    second = open_store()
    assert second.get_resource("subscriptions", S) == b"sub"
    assert [data_of(d) for d in pull_until(second, 1)] == [b"keep"]  # once its lease is over
    more = second.publish(T, [msg(b"later")], now())
    assert int(more[0]) > max(int(i) for i in ids)  # ids never repeat after a restart


def test_publish_skips_what_a_subscription_must_not_receive(store):
    other = "projects/p/subscriptions/other"
    store.create_resource("subscriptions", other, b"sub", topic=T)
    store.publish(T, [msg(b"a"), msg(b"b"), msg(b"c")], 0, skip={S: {0, 2}})
    assert [data_of(d) for d in store.pull(S, 10, 1_000, 0)] == [b"b"]
    assert [data_of(d) for d in store.pull(other, 10, 1_000, 0)] == [b"a", b"b", b"c"]


def test_retry_policy_delays_redelivery(store):
    from pubsub_emulator._store import DeliveryPolicy, RetryPolicy

    policy = DeliveryPolicy(retry=RetryPolicy(minimum_ms=1_000, maximum_ms=3_000))
    assert [policy.retry.delay_ms(n) for n in (1, 2, 3, 4)] == [1_000, 2_000, 3_000, 3_000]
    store.publish(T, [msg(b"x")], now())
    [d] = store.pull(S, 1, LEASE_MS, now(), policy=policy)
    nacked = time.monotonic()
    store.modify_deadline(S, [d.ack_id], 0, now(), policy=policy)  # nack: back after 1 s
    assert store.pull(S, 1, LEASE_MS, now(), policy=policy) == []
    [d2] = pull_until(store, 1, policy=policy)
    assert time.monotonic() - nacked >= 0.9 and d2.delivery_attempt == 2
    leased = time.monotonic()  # lease expiry plus the second attempt's delay (2 s)
    [d3] = pull_until(store, 1, policy=policy)
    assert time.monotonic() - leased >= (LEASE_MS + 2_000) / 1000 - 0.1
    assert d3.delivery_attempt == 3


def test_ordering_keys_keep_publish_order_through_redelivery(store):
    from pubsub_emulator._store import DeliveryPolicy

    ordered = DeliveryPolicy(ordered=True)
    store.publish(T, [msg(b"a1"), msg(b"b1"), msg(b"a2"), msg(b"n1"), msg(b"a3")], 0,
                  ordering_keys=["a", "b", "a", "", "a"])
    first = store.pull(S, 2, 10_000, 0, policy=ordered)
    assert [data_of(d) for d in first] == [b"a1", b"b1"]
    # a1 is leased, so a2 and a3 wait; unkeyed n1 does not.
    second = store.pull(S, 10, 10_000, 0, policy=ordered)
    assert [data_of(d) for d in second] == [b"n1"]
    store.acknowledge(S, [first[0].ack_id], ordered)
    third = store.pull(S, 10, 10_000, 1, policy=ordered)
    assert [data_of(d) for d in third] == [b"a2", b"a3"]
    # Nacking a2 brings a3 back with it: both come again, in order.
    store.modify_deadline(S, [third[0].ack_id], 0, 2, policy=ordered)
    again = store.pull(S, 10, 10_000, 2, policy=ordered)
    assert [data_of(d) for d in again] == [b"a2", b"a3"]
