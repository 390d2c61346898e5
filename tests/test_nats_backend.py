"""The NATS JetStream backend: real time (server-side timers), real processes, Google's clients.

Needs `nats-server` (apt-get install nats-server); without it these tests fail, saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import pytest

from clients import make_clients, unique
from pubsub_emulator.store import DEFAULT_POLICY, Kind
from store_helpers import PubsubMessage, RecordingListener, SyncStore, data_of, msg
from store_helpers import pull_until as _pull_until_
from support import EmulatorProcess, NatsServer, free_port, wait_for

T = "projects/p/topics/t"
S = "projects/p/subscriptions/s"


@pytest.fixture
def namespace() -> str:
    """The test's own namespace on the session's nats-server."""
    return "n" + uuid.uuid4().hex[:12]


@pytest.fixture
def open_store(nats_server, namespace):
    from pubsub_emulator.store.nats import NatsStore

    opened = []

    def open_() -> SyncStore:
        store = SyncStore(lambda: NatsStore.open([nats_server.url], namespace=namespace))
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store):
    s = open_store()
    s.resources.create(Kind.TOPIC, T, b"topic")
    s.resources.create(Kind.SUBSCRIPTION, S, b"sub", topic=T)
    return s


async def _jetstream(url: str, subject: str, body: bytes) -> Any:
    """An answer to a request (a JetStream API call, a publish), on a connection of its own."""
    import nats

    nc = await nats.connect(url)
    try:
        return json.loads((await nc.request(subject, body, timeout=5)).data)
    finally:
        await nc.close()


def _pull_until(store, sub: str, count: int, lease_ms: int = 1_000, policy=None,
                timeout: float = 15.0):
    return _pull_until_(store, sub, count, lease_ms, timeout, interval=0.05,
                        policy=policy or DEFAULT_POLICY)


# --- the store, in real time -------------------------------------------------------------------
def test_lease_expiry_redelivers_with_next_attempt(store):
    store.messages.publish(T, [msg(b"x")], 0)
    [first] = store.messages.pull(S, 10, 1_000, 0)
    assert store.messages.pull(S, 10, 1_000, 0) == []  # leased
    [second] = _pull_until(store, S, 1)
    assert second.delivery_attempt == 2 and second.ack_id != first.ack_id
    assert data_of(second) == b"x"


def test_stale_ack_still_acks_and_nack_redelivers_now(store):
    store.messages.publish(T, [msg(b"x"), msg(b"y")], 0)
    first = store.messages.pull(S, 10, 1_000, 0)
    again = _pull_until(store, S, 2)  # redelivered after the lease: new ack ids
    store.messages.acknowledge(S, [first[0].ack_id])  # an older ack id of x
    store.messages.modify_deadline(S, [again[1].ack_id], 0, 0)  # nack y: back at once
    [y] = store.messages.pull(S, 10, 60_000, 0)
    assert data_of(y) == b"y" and y.delivery_attempt == 3
    store.messages.acknowledge(S, [y.ack_id])
    wait_for(lambda: store.messages.backlog(S) == 0, timeout=5, message="an empty backlog")
    assert store.messages.pull(S, 10, 1_000, 0) == []


def test_an_ack_jetstream_lost_does_not_bring_the_message_back(store, monkeypatch):
    """JetStream can lose an ack whose call was answered (a consumer leader changing on a
    cluster as it applies it). The ack log, written before the call answers, keeps such a
    message from coming back to a client told its ack succeeded. Here the acks of x never
    reach JetStream: x comes due again with y, whose lease simply ran out; only y comes."""
    from pubsub_emulator.store.nats.acks import ACK
    from pubsub_emulator.store.nats.client import JetStream

    store.messages.publish(T, [msg(b"x"), msg(b"y")], 0)
    x, y = store.messages.pull(S, 10, 1_000, 0)
    real_send = JetStream.send

    async def losing_acks(self, sends):
        await real_send(self, [(subject, body) for subject, body in sends if body != ACK])

    monkeypatch.setattr(JetStream, "send", losing_acks)
    store.messages.acknowledge(S, [x.ack_id])  # logged, answered; JetStream never hears it
    monkeypatch.setattr(JetStream, "send", real_send)
    again = _pull_until(store, S, 1)  # y, once its lease ran out (x's ran out with it)
    assert [data_of(d) for d in again] == [b"y"]
    store.messages.acknowledge(S, [again[0].ack_id])
    wait_for(lambda: store.messages.backlog(S) == 0, timeout=10,
             message="x acked again when it came back, y acked")
    assert store.messages.pull(S, 10, 1_000, 0) == []


def test_modify_deadline_extends_the_lease(store):
    store.messages.publish(T, [msg(b"x")], 0)
    [d] = store.messages.pull(S, 1, 1_000, 0)
    store.messages.modify_deadline(S, [d.ack_id], 60_000, 0)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # past the original 1 s lease: still leased
        assert store.messages.pull(S, 1, 1_000, 0) == []
        time.sleep(0.2)


def test_retry_policy_delays_redelivery(store):
    from pubsub_emulator.store import DeliveryPolicy, RetryPolicy

    policy = DeliveryPolicy(retry=RetryPolicy(minimum_ms=1_000, maximum_ms=3_000))
    store.messages.publish(T, [msg(b"x")], 0)
    [d] = store.messages.pull(S, 1, 10_000, 0, policy=policy)
    nacked = time.monotonic()
    store.messages.modify_deadline(S, [d.ack_id], 0, 0, policy=policy)  # nack: back after 1 s
    [d2] = _pull_until(store, S, 1, 10_000, policy)
    assert time.monotonic() - nacked >= 0.9 and d2.delivery_attempt == 2


def test_exactly_once_refuses_stale_ack_ids(open_store, store):
    from pubsub_emulator.store import DeliveryPolicy

    eo = DeliveryPolicy(exactly_once=True)
    now = lambda: int(time.time() * 1000)  # noqa: E731
    store.messages.publish(T, [msg(b"x"), msg(b"y")], now())
    [x, y] = store.messages.pull(S, 10, 1_000, now(), policy=eo)
    assert store.messages.acknowledge(S, [x.ack_id], eo, now()) == []
    assert store.messages.acknowledge(S, [x.ack_id], eo, now()) == [x.ack_id]  # already acked
    # y's lease runs out: the redelivery has a new id, the old one is refused
    [y2] = _pull_until(store, S, 1, policy=eo)
    assert data_of(y2) == b"y" and y2.delivery_attempt == 2
    assert store.messages.modify_deadline(S, [y.ack_id], 60_000, now(), eo) == [y.ack_id]
    # another process (store) sees the same lease state
    other = open_store()
    assert other.messages.acknowledge(S, [y2.ack_id, y.ack_id], eo, now()) == [y.ack_id]
    wait_for(lambda: store.messages.backlog(S) == 0, timeout=5, message="an empty backlog")
    # a nacked lease is no longer current
    store.messages.publish(T, [msg(b"z")], now())
    [z] = store.messages.pull(S, 10, 60_000, now(), policy=eo)
    assert store.messages.modify_deadline(S, [z.ack_id], 0, now(), eo) == []
    assert store.messages.acknowledge(S, [z.ack_id], eo, now()) == [z.ack_id]
    [z2] = store.messages.pull(S, 10, 60_000, now(), policy=eo)
    assert store.messages.acknowledge(S, [z2.ack_id], eo, now()) == []
    store.messages.sweep(now())  # also drops the lease records of acked messages


def test_seek_replays_only_the_subscriptions_own_messages(store):
    store.messages.publish(T, [msg(b"before")], 1_000)
    late = "projects/p/subscriptions/late"
    store.resources.create(Kind.SUBSCRIPTION, late, b"sub", topic=T)
    store.messages.publish(T, [msg(b"after")], 2_000)
    [d] = store.messages.pull(late, 10, 60_000, 2_000)
    store.messages.acknowledge(late, [d.ack_id])
    store.messages.seek_to_time(late, 0, 3_000)  # acked and below the ack floor: stays acked
    assert store.messages.pull(late, 10, 60_000, 3_000) == []
    from pubsub_emulator.store import DeliveryPolicy

    store.messages.seek_to_time(late, 0, 3_000, DeliveryPolicy(retain_acked=True))
    assert [data_of(d) for d in store.messages.pull(late, 10, 60_000, 3_000)] == [b"after"]
    store.messages.seek_to_time(late, 0, 3_000, from_topic=True)
    replayed = store.messages.pull(late, 10, 60_000, 3_000)
    assert [data_of(d) for d in replayed] == [b"before", b"after"]


def test_durable_across_reopen(open_store):
    first = open_store()
    first.resources.create(Kind.TOPIC, T, b"topic")
    first.resources.create(Kind.SUBSCRIPTION, S, b"sub", topic=T)
    ids = first.messages.publish(T, [msg(b"keep"), msg(b"acked")], 0)
    got = first.messages.pull(S, 10, 1_000, 0)
    first.messages.acknowledge(S, [got[1].ack_id])
    first.close()
    second = open_store()
    assert second.resources.get(Kind.SUBSCRIPTION, S) == b"sub"
    assert [data_of(d) for d in _pull_until(second, S, 1)] == [b"keep"]
    assert second.messages.pull(S, 10, 1_000, 0) == []
    more = second.messages.publish(T, [msg(b"later")], 20_000)
    assert int(more[0]) > max(int(i) for i in ids)  # ids never repeat after a restart


def test_sweep_reclaims_only_unneeded_messages(store):
    store.messages.publish(T, [msg(b"a"), msg(b"b")], 0)
    [a, b] = store.messages.pull(S, 10, 1_000, 0)
    store.messages.acknowledge(S, [a.ack_id])
    assert store.messages.sweep(10) == 1
    assert [data_of(d) for d in _pull_until(store, S, 1)] == [b"b"]


def test_subscription_retention_drops_old_unacked_messages(store):
    from pubsub_emulator.store import RetentionRules

    now = lambda: int(time.time() * 1000)  # noqa: E731
    store.messages.publish(T, [msg(b"old")], now() - 5_000)
    store.messages.publish(T, [msg(b"new")], now())
    store.messages.sweep(now(), RetentionRules(subscription_ms={S: 2_000}))
    assert [data_of(d) for d in store.messages.pull(S, 10, 60_000, now())] == [b"new"]
    assert store.messages.backlog(S) == 1


def test_message_ids_are_unique_across_topics(store):
    other = "projects/p/topics/other"
    store.resources.create(Kind.TOPIC, other, b"topic")
    ids = store.messages.publish(T, [msg(b"a")], 0) + store.messages.publish(other, [msg(b"b")], 0)
    assert len(set(ids)) == 2 and all(i.isdigit() for i in ids)


# --- messages larger than the server's max_payload: pieces and a reference --------------------
def _large(size: int, **attributes: str) -> bytes:
    return PubsubMessage(data=os.urandom(size), attributes=attributes).SerializeToString()


def _as_published(delivery) -> bytes:
    got = PubsubMessage.FromString(delivery.message)
    return PubsubMessage(data=got.data, attributes=got.attributes).SerializeToString()


def test_large_messages_keep_seeks_snapshots_filters_and_ordering(store):
    from pubsub_emulator.store import DeliveryPolicy

    a, b = _large(3 << 20, k="yes"), _large(2 << 20, k="no")
    store.messages.publish(T, [a], 1_000)
    store.messages.publish(T, [b], 5_000)
    store.messages.save_snapshot("projects/p/snapshots/big", S)
    got = store.messages.pull(S, 10, 60_000, 6_000)
    assert [_as_published(d) for d in got] == [a, b]
    store.messages.acknowledge(S, [d.ack_id for d in got])
    store.messages.seek_to_snapshot(S, "projects/p/snapshots/big", 7_000)
    again = store.messages.pull(S, 10, 60_000, 7_000)
    assert [_as_published(d) for d in again] == [a, b]
    store.messages.acknowledge(S, [d.ack_id for d in again])
    kept = DeliveryPolicy(retain_acked=True)
    store.messages.seek_to_time(S, 3_000, 8_000, kept)
    assert [_as_published(d) for d in store.messages.pull(S, 10, 60_000, 8_000, policy=kept)
            ] == [b]
    # A filter reads the attributes of a large message without its pieces.
    store.messages.seek_to_time(S, 0, 9_000, from_topic=True)
    yes = DeliveryPolicy(accepts=lambda raw: PubsubMessage.FromString(raw).attributes["k"]
                         == "yes")
    assert [_as_published(d) for d in store.messages.pull(S, 10, 60_000, 9_000, policy=yes)
            ] == [a]
    # Ordering keys hold for large messages: the second waits for the first's ack.
    ordered = DeliveryPolicy(ordered=True)
    keyed = "projects/p/subscriptions/keyed"
    store.resources.create(Kind.SUBSCRIPTION, keyed, b"sub", topic=T)
    store.messages.publish(T, [a, b], 10_000, ordering_keys=["k", "k"])
    [first] = store.messages.pull(keyed, 1, 60_000, 10_000, policy=ordered)
    assert _as_published(first) == a
    assert store.messages.pull(keyed, 10, 60_000, 10_000, policy=ordered) == []
    store.messages.acknowledge(keyed, [first.ack_id], ordered)
    [second] = _pull_until(store, keyed, 1, 60_000, policy=ordered)
    assert _as_published(second) == b


def test_pieces_go_with_their_messages_and_orphans_too(nats_server, monkeypatch, caplog):
    import asyncio

    from pubsub_emulator.store.nats import NatsStore, pieces
    from pubsub_emulator.store.nats.layout import name_hash

    monkeypatch.setattr(pieces, "RECLAIM_MARGIN_NS", 2 * 10**9)
    namespace = "r" + uuid.uuid4().hex[:12]
    prefix = f"{namespace}.blob.{name_hash(T)}"

    async def jetstream(subject: str, body: bytes) -> Any:
        return await _jetstream(nats_server.url, subject, body)

    def blob() -> dict[str, int]:  # T's marks and pieces in the blob stream
        info = asyncio.run(jetstream(f"$JS.API.STREAM.INFO.{namespace.upper()}_BLOB",
                                     json.dumps({"subjects_filter": ">"}).encode()))
        return info["state"].get("subjects") or {}

    store = SyncStore(lambda: NatsStore.open([nats_server.url], namespace=namespace))
    try:
        store.resources.create(Kind.TOPIC, T, b"topic")
        store.resources.create(Kind.SUBSCRIPTION, S, b"sub", topic=T)
        # an orphan: the pieces of a publish that ended before its reference was written
        asyncio.run(jetstream(f"{prefix}.m", b""))
        asyncio.run(jetstream(f"{prefix}.p", b"lost"))
        old, new = _large(2 << 20), _large(2 << 20)  # three pieces each
        store.messages.publish(T, [old], 0)
        time.sleep(2.5)
        store.messages.publish(T, [new], 0)
        assert blob() == {f"{prefix}.m": 3, f"{prefix}.p": 7}
        got = {_as_published(d): d for d in store.messages.pull(S, 10, 60_000, 0)}
        store.messages.acknowledge(S, [got[old].ack_id])
        store.messages.sweep(0)  # the topic stream keeps `new` only: so does the blob stream
        assert blob() == {f"{prefix}.m": 1, f"{prefix}.p": 3}
        store.messages.modify_deadline(S, [got[new].ack_id], 0, 0)
        [again] = _pull_until(store, S, 1, 60_000)
        assert _as_published(again) == new
        store.messages.acknowledge(S, [again.ack_id])
        time.sleep(2.1)
        store.messages.sweep(0)
        assert blob() == {}
        # A reference whose pieces are gone (cannot happen to a publish that returned ids) is
        # dropped when delivered, with an error in the log.
        store.messages.publish(T, [_large(2 << 20)], 0)
        asyncio.run(jetstream(f"$JS.API.STREAM.PURGE.{namespace.upper()}_BLOB",
                              json.dumps({"filter": f"{prefix}.p"}).encode()))
        assert store.messages.pull(S, 10, 60_000, 0) == []
        assert store.messages.backlog(S) == 0
        assert "are gone or do not match" in caplog.text
    finally:
        store.close()


def test_other_process_publish_wakes_the_listener(open_store, store):
    import asyncio

    woke = RecordingListener()
    store.set_listener(woke)
    listening = open_store()
    listening.set_listener(woke)
    store.messages.publish(T, [msg(b"x")], 0)

    def woken() -> bool:
        listening.run(asyncio.sleep(0.02))  # (its connection reads while its loop runs)
        return T in woke.published_topics

    wait_for(woken, timeout=10, message="a wake-up from the other store")
    store.run(asyncio.sleep(0.05))
    assert woke.published_topics == [T]  # the publishing store does not wake itself


def test_ordering_keys_hold_across_two_processes(open_store, store):
    from pubsub_emulator.store import DeliveryPolicy

    ordered = DeliveryPolicy(ordered=True)
    other = open_store()  # a second process: it shares nothing with `store` but the server
    store.messages.publish(T, [msg(b"a1"), msg(b"a2"), msg(b"b1"), msg(b"a3"), msg(b"n1")], 0,
                  ordering_keys=["a", "a", "b", "a", ""])
    [a1] = store.messages.pull(S, 1, 60_000, 0, policy=ordered)
    assert data_of(a1) == b"a1"
    # a1 is leased by the first process: the second gets b1 and n1, never a2 or a3
    got = other.messages.pull(S, 10, 60_000, 0, policy=ordered)
    assert [data_of(d) for d in got] == [b"b1", b"n1"]
    assert other.messages.pull(S, 10, 60_000, 0, policy=ordered) == []
    other.messages.acknowledge(S, [a1.ack_id], ordered)  # acked on the second process
    got = _pull_until(store, S, 2, 60_000, ordered, timeout=10)
    assert [data_of(d) for d in got] == [b"a2", b"a3"]
    assert [d.delivery_attempt for d in got] == [1, 1]  # being held back is not an attempt
    # a nack on the second process brings a3 back with a2, in order, to either process
    other.messages.modify_deadline(S, [got[0].ack_id], 0, 0, ordered)
    again = _pull_until(store, S, 2, 1_000, ordered, timeout=10)
    assert [data_of(d) for d in again] == [b"a2", b"a3"]
    assert [d.delivery_attempt for d in again] == [2, 2]
    # a2's lease (1 s) runs out while a3's is extended: a3 comes again after a2
    other.messages.modify_deadline(S, [again[1].ack_id], 60_000, 0, ordered)
    [a2] = _pull_until(other, S, 1, 60_000, ordered, timeout=10)
    assert data_of(a2) == b"a2" and a2.delivery_attempt == 3
    assert store.messages.pull(S, 10, 60_000, 0, policy=ordered) == []
    store.messages.acknowledge(S, [a2.ack_id], ordered)
    [a3] = _pull_until(other, S, 1, 60_000, ordered, timeout=10)
    assert data_of(a3) == b"a3" and a3.delivery_attempt == 3
    store.messages.acknowledge(S, [a3.ack_id], ordered)


def _pull_ack_and_nack_on_each(stores, keys, count: int, batch: tuple[int, int],
                               nack_rate: float) -> tuple[dict[str, list[int]], dict[bytes, int]]:
    """Every store ("process") pulls batches of random size from the ordered subscription S
    at once, nacks a message now and then (the rest of its key in that batch comes again
    after it) and acks the others, until every one of `count` messages per key ("key:i") was
    acked or a minute passed. Returns the indexes acked per key, in the order acked, and each
    message's first delivery attempt."""
    import random

    from pubsub_emulator.store import DeliveryPolicy

    ordered = DeliveryPolicy(ordered=True)
    acked: dict[str, list[int]] = {k: [] for k in keys}
    first_attempts: dict[bytes, int] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []
    stop = time.monotonic() + 60

    def work(s: SyncStore, seed: int) -> None:
        rnd = random.Random(seed)
        try:
            while time.monotonic() < stop and sum(map(len, acked.values())) < len(keys) * count:
                got = s.messages.pull(S, rnd.randint(*batch), 30_000, 0, policy=ordered)
                nacked: set[str] = set()
                for d in got:
                    key, index = data_of(d).decode().split(":")
                    with lock:
                        first_attempts.setdefault(data_of(d), d.delivery_attempt)
                    if key in nacked:
                        continue  # comes again after the nacked one
                    if rnd.random() < nack_rate:
                        nacked.add(key)
                        s.messages.modify_deadline(S, [d.ack_id], 0, 0, ordered)
                        continue
                    with lock:  # (noted before the ack: the next one can follow at once)
                        acked[key].append(int(index))
                    s.messages.acknowledge(S, [d.ack_id], ordered)
                time.sleep(0.01 if got else 0.05)  # (a pace: the loop's end is a deadline)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s, n)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not errors, errors
    return acked, first_attempts


def test_ordering_keys_under_concurrent_pulls_on_two_processes(open_store, store):
    keys, count = ("k1", "k2", "k3"), 15
    for i in range(count):  # (several publishes: pulls race with them too)
        store.messages.publish(T, [msg(f"{k}:{i}".encode()) for k in keys], 0,
                               ordering_keys=list(keys))
    acked, first_attempts = _pull_ack_and_nack_on_each(
        (store, open_store(), open_store(), open_store()), keys, count, (1, 4), 0.2)
    for key in keys:
        assert acked[key] == list(range(count)), (key, acked[key])
    assert set(first_attempts.values()) == {1}, first_attempts


# --- one ordering key past a head's inline budget: its entries in chunks ----------------------
def _ordering_subjects(url: str, namespace: str, pattern: str) -> dict[str, int]:
    """The subjects of the ordering stream that match a pattern (with their message counts)."""
    import asyncio

    from pubsub_emulator.store.nats.layout import Layout

    info = asyncio.run(_jetstream(url, f"$JS.API.STREAM.INFO.{Layout(namespace).order_stream}",
                                  json.dumps({"subjects_filter": pattern}).encode()))
    return info["state"].get("subjects") or {}


def _key_chunks(url: str, namespace: str, key: str) -> tuple[set[str], set[str]]:
    """The chunks of S's record of an ordering key in the ordering stream, and those its head
    names."""
    import asyncio
    import base64

    from pubsub_emulator.store.nats.layout import Layout
    from pubsub_emulator.store.nats.ordering_chunks import chunk_subject

    layout = Layout(namespace)
    record = layout.order_record(layout.consumer(S), key)
    head = asyncio.run(_jetstream(url, f"$JS.API.STREAM.MSG.GET.{layout.order_stream}",
                                  json.dumps({"last_by_subj": record}).encode()))
    refs = json.loads(base64.b64decode(head["message"]["data"])).get("x", []) \
        if "message" in head else []
    return (set(_ordering_subjects(url, namespace, f"{record}.*")),
            {chunk_subject(record, ref[0]) for ref in refs})


def test_two_processes_share_one_ordering_key_past_the_inline_budget(
        open_store, store, nats_server, namespace):
    """Two processes on one key whose record outgrows its head: each writes on top of the
    other's chunks (reading them), a stale copy loses its compare-and-set and leaves no chunk
    behind, and order holds through acks and a nack on either process."""
    from pubsub_emulator.store import DeliveryPolicy

    ordered = DeliveryPolicy(ordered=True)
    other = open_store()
    count = 3_000  # (some 400 KB of entries: the head holds 64 KiB)
    store.messages.publish(T, [msg(b"%d" % i) for i in range(count)], 0,
                           ordering_keys=["k"] * count)
    first = store.messages.pull(S, 1_000, 60_000, 0, policy=ordered)
    assert [int(data_of(d)) for d in first] == list(range(1_000))
    stored, named = _key_chunks(nats_server.url, namespace, "k")
    assert named and stored == named
    # The other process holds the rest back behind them: it reads the chunks, adds its own.
    assert other.messages.pull(S, count, 60_000, 0, policy=ordered) == []
    stored, later = _key_chunks(nats_server.url, namespace, "k")
    assert named < later and stored == later
    # `store` still has the record it wrote: its ack loses the compare-and-set, reads the
    # record again and writes it; the chunks of the write that lost are gone.
    store.messages.acknowledge(S, [d.ack_id for d in first[:500]], ordered)
    stored, named = _key_chunks(nats_server.url, namespace, "k")
    assert stored == named
    other.messages.modify_deadline(S, [first[500].ack_id], 0, 0, ordered)  # the rest follow
    expected, turn = 500, 0
    stores = (store, other)
    deadline = time.monotonic() + 60
    while expected < count:
        assert time.monotonic() < deadline, f"only up to {expected} came again"
        got = stores[turn % 2].messages.pull(S, 500, 60_000, 0, policy=ordered)
        assert [int(data_of(d)) for d in got] == list(range(expected, expected + len(got)))
        assert [d.delivery_attempt for d in got] == [2 if i < 1_000 else 1 for i in
                                                     range(expected, expected + len(got))]
        expected += len(got)
        turn += 1
        stores[turn % 2].messages.acknowledge(S, [d.ack_id for d in got], ordered)
        stored, named = _key_chunks(nats_server.url, namespace, "k")
        assert stored == named
        if not got:
            time.sleep(0.05)
    assert _key_chunks(nats_server.url, namespace, "k") == (set(), set())  # (all acked)


def test_ordering_in_small_chunks_under_concurrent_pulls_on_two_processes(
        open_store, store, nats_server, namespace, monkeypatch):
    """Heads of a few entries and chunks of some eight: concurrent pulls, acks and nacks on two
    processes keep every key in order and leave no chunk behind."""
    from pubsub_emulator.store import DeliveryPolicy
    from pubsub_emulator.store.nats import ordering_chunks

    monkeypatch.setattr(ordering_chunks, "INLINE_BYTES", 600)
    monkeypatch.setattr(ordering_chunks, "CHUNK_BYTES", 1_200)
    ordered = DeliveryPolicy(ordered=True)
    keys, count = ("k1", "k2"), 40
    store.messages.publish(T, [msg(f"{k}:{i}".encode()) for i in range(count) for k in keys], 0,
                           ordering_keys=[k for _ in range(count) for k in keys])
    first = store.messages.pull(S, 40, 30_000, 0, policy=ordered)  # (20 of each key)
    for key in keys:
        stored, named = _key_chunks(nats_server.url, namespace, key)
        assert len(named) > 1 and stored == named
    store.messages.modify_deadline(S, [d.ack_id for d in first], 0, 0, ordered)
    acked, _ = _pull_ack_and_nack_on_each((store, open_store()), keys, count, (5, 40), 0.1)
    for key in keys:
        assert acked[key] == list(range(count)), (key, acked[key])
        assert _key_chunks(nats_server.url, namespace, key) == (set(), set())


def test_a_seek_a_purge_and_a_deletion_leave_no_ordering_chunk_behind(store, nats_server,
                                                                       namespace):
    from pubsub_emulator.store import DeliveryPolicy
    from pubsub_emulator.store.nats.layout import Layout

    ordered = DeliveryPolicy(ordered=True)
    layout = Layout(namespace)
    everything = layout.order_key(layout.consumer(S))  # the subscription's ordering records
    store.messages.publish(T, [msg(b"%d" % i) for i in range(2_000)], 0,
                           ordering_keys=["k"] * 2_000)

    def recorded() -> None:  # the first 1,000 pulled, the rest held back: all in chunks
        got = store.messages.pull(S, 1_000, 60_000, 0, policy=ordered)
        assert [int(data_of(d)) for d in got] == list(range(1_000))
        assert store.messages.pull(S, 1_000, 60_000, 0, policy=ordered) == []
        stored, named = _key_chunks(nats_server.url, namespace, "k")
        assert len(named) > 1 and stored == named

    recorded()
    store.messages.seek_to_time(S, 0, 0)
    assert _ordering_subjects(nats_server.url, namespace, everything) == {}
    recorded()  # (after the seek, everything comes again from the start)
    store.messages.purge(S)
    assert _ordering_subjects(nats_server.url, namespace, everything) == {}
    store.messages.publish(T, [msg(b"%d" % i) for i in range(2_000)], 0,
                           ordering_keys=["k"] * 2_000)
    recorded()
    store.resources.delete(Kind.SUBSCRIPTION, S)
    assert _ordering_subjects(nats_server.url, namespace, everything) == {}


# --- the emulator on NATS ----------------------------------------------------------------------
def _emulator(nats_url: str, *extra: str) -> EmulatorProcess:
    return EmulatorProcess(extra_args=["--store", nats_url, *extra])


def test_unreachable_nats_is_one_clear_error():
    import subprocess

    from support import VENV_BIN

    nowhere = f"nats://127.0.0.1:{free_port()}"  # nothing listens there
    done = subprocess.run([str(VENV_BIN / "pubsub-emulator"), "start", "--store", nowhere,
                           "--port", str(free_port())], capture_output=True, timeout=60)
    assert done.returncode == 1
    err = done.stderr.decode()
    assert f"cannot open the store {nowhere}: no NATS server with JetStream answered" in err
    assert "Connect call failed" in err and "Traceback" not in err


def test_messages_up_to_pubsubs_10_mb_on_a_default_nats_server(nats_server):
    """nats-server's default max_payload is 1 MB, Pub/Sub's limits 10 MB: large messages (and a
    publish request of several) pass whole over both transports, and a dead-lettered large
    message reaches its dead-letter topic whole."""
    from clients import gapic_clients

    with _emulator(nats_server.url) as emu:
        for transport in ("grpc", "rest"):
            _large_round_trip(*gapic_clients(emu.host, transport), transport)
        _large_dead_letter(*gapic_clients(emu.host, "grpc"))
        assert "Traceback" not in emu.log_path.read_text()


def _large_round_trip(publisher, subscriber, transport: str) -> None:
    topic = publisher.topic_path("p", unique("big"))
    sub = subscriber.subscription_path("p", unique("big"))
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    sent = [os.urandom(2 << 20), os.urandom(9_900_000)]
    for data in sent:
        assert publisher.publish(topic=topic, messages=[{"data": data,
                                                         "attributes": {"k": "v"}}]).message_ids
    several = [os.urandom(2_400_000) for _ in range(4)]
    publisher.publish(topic=topic, messages=[{"data": d} for d in several])
    got: list = []

    def pulled() -> bool:
        got.extend(subscriber.pull(subscription=sub, max_messages=10).received_messages)
        return len(got) >= 6

    wait_for(pulled, timeout=60, message=f"six large messages pulled ({transport})")
    assert sorted(m.message.data for m in got) == sorted(sent + several)
    assert sorted(m.message.attributes.get("k", "") for m in got) == [""] * 4 + ["v"] * 2
    subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in got])


def _large_dead_letter(publisher, subscriber) -> None:
    topic, dead = (publisher.topic_path("p", unique(n)) for n in ("dl-src", "dl-dead"))
    sub, dead_sub = (subscriber.subscription_path("p", unique(n)) for n in ("dl", "dead"))
    for name in (topic, dead):
        publisher.create_topic(name=name)
    subscriber.create_subscription(name=dead_sub, topic=dead)
    subscriber.create_subscription(request={
        "name": sub, "topic": topic,
        "dead_letter_policy": {"dead_letter_topic": dead, "max_delivery_attempts": 5}})
    data = os.urandom(3 << 20)
    publisher.publish(topic=topic, messages=[{"data": data, "attributes": {"k": "v"}}])

    def pull(name: str) -> list:
        return list(subscriber.pull(subscription=name, max_messages=1,
                                    return_immediately=True).received_messages)

    for attempt in range(1, 6):  # five deliveries, each nacked
        [m] = wait_for(lambda: pull(sub), timeout=20, message=f"delivery {attempt}")
        assert m.message.data == data and m.delivery_attempt == attempt
        subscriber.modify_ack_deadline(subscription=sub, ack_ids=[m.ack_id],
                                       ack_deadline_seconds=0)
    [m] = wait_for(lambda: pull(sub) + pull(dead_sub), timeout=20,
                   message="the dead-lettered message")
    assert m.message.data == data and m.message.attributes["k"] == "v"
    assert m.message.attributes["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"


class _SmallPayloadNats(NatsServer):
    """A nats-server whose max_payload is 64 KiB."""

    @property
    def cmd(self) -> list[str]:
        conf = self.store_dir.parent / "small-payload.conf"
        conf.write_text("max_payload: 65536\n")
        return [*super().cmd, "-c", str(conf)]


def test_a_nats_server_with_a_tiny_max_payload_is_refused_at_start(tmp_path):
    from pubsub_emulator.store.nats import NatsStore

    server = _SmallPayloadNats(tmp_path / "js").start()
    try:
        with pytest.raises(ValueError, match="max_payload is 65536 bytes.*set max_payload to 1MB"):
            SyncStore(lambda: NatsStore.open([server.url], namespace="small"))
    finally:
        server.stop()


def test_google_client_round_trip(nats_server):
    with _emulator(nats_server.url) as emu:
        publisher, subscriber = make_clients(emu.host, "grpc")
        topic = publisher.topic_path("p", unique("t"))
        sub = subscriber.subscription_path("p", unique("s"))
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=sub, topic=topic)
        ids = [publisher.publish(topic, f"m{i}".encode(), k="v").result() for i in range(5)]
        assert len(set(ids)) == 5
        got: list = []
        wait_for(lambda: got.extend(subscriber.pull(subscription=sub, max_messages=10)
                                    .received_messages) or len(got) >= 5,
                 timeout=20, message="five pulled messages")
        assert sorted(m.message.data for m in got) == [f"m{i}".encode() for i in range(5)]
        assert {m.message.message_id for m in got} == set(ids)
        assert got[0].message.attributes["k"] == "v"
        subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in got])

        # streaming pull through the high-level subscriber
        received: list[bytes] = []
        lock = threading.Lock()

        def callback(message) -> None:
            with lock:
                received.append(message.data)
            message.ack()

        future = subscriber.subscribe(sub, callback)
        try:
            for i in range(10):
                publisher.publish(topic, f"s{i}".encode()).result()
            wait_for(lambda: len(received) >= 10, timeout=30, message="streamed messages")
        finally:
            future.cancel()
            try:
                future.result(timeout=10)
            except (FutureTimeout, Exception):  # noqa: BLE001 - cancelled
                pass
        assert sorted(received) == sorted(f"s{i}".encode() for i in range(10))
        # everything was acked: nothing comes back
        response = subscriber.pull(subscription=sub, max_messages=10, return_immediately=True)
        assert not response.received_messages
        subscriber.close()


@contextlib.contextmanager
def _two_processes(nats_url: str) -> Iterator[tuple[Any, Any, Any, str]]:
    """Two emulator processes on one NATS server: (publisher on one, subscriber on one,
    subscriber on two, a topic made on one)."""
    with _emulator(nats_url) as one, _emulator(nats_url) as two:
        pub1, sub1 = make_clients(one.host, "grpc")
        _, sub2 = make_clients(two.host, "grpc")
        topic = pub1.topic_path("p", unique("t"))
        pub1.create_topic(name=topic)
        try:
            yield pub1, sub1, sub2, topic
        finally:
            for client in (sub1, sub2):
                client.close()


def test_two_emulators_share_one_nats_server(nats_server):
    with _two_processes(nats_server.url) as (pub1, sub1, sub2, topic):
        sub = sub1.subscription_path("p", unique("s"))
        sub1.create_subscription(name=sub, topic=topic, ack_deadline_seconds=10)
        assert sub2.get_subscription(subscription=sub).topic == topic
        futures = [pub1.publish(topic, f"m{i}".encode()) for i in range(20)]
        for f in futures:
            f.result()
        got: list = []
        wait_for(lambda: got.extend(sub2.pull(subscription=sub, max_messages=20)
                                    .received_messages) or len(got) >= 20,
                 timeout=20, message="twenty messages pulled on the second emulator")
        # acked through the FIRST process with the second one's ack ids
        sub1.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in got])
        # well past the 10 s lease: nothing is redelivered, on either process
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            for client in (sub1, sub2):
                response = client.pull(subscription=sub, max_messages=10,
                                       return_immediately=True)
                assert not response.received_messages
            time.sleep(1)

        # a pull on process two, waiting or not yet, gets what process one publishes (that a
        # publish on one process wakes the pulls waiting on another is
        # test_other_process_publish_wakes_the_listener's)
        result: list = []
        waiter = threading.Thread(target=lambda: result.append(
            sub2.pull(subscription=sub, max_messages=1, timeout=60)))
        waiter.start()
        pub1.publish(topic, b"wake").result()
        waiter.join(30)
        assert result and result[0].received_messages[0].message.data == b"wake"


def test_two_emulators_keep_ordering_keys(nats_server):
    with _two_processes(nats_server.url) as (pub1, sub1, sub2, topic):
        sub = sub1.subscription_path("p", unique("s"))
        sub1.create_subscription(request={"name": sub, "topic": topic,
                                          "enable_message_ordering": True})
        pub1.api.publish(topic=topic, messages=[
            {"data": b"a1", "ordering_key": "a"}, {"data": b"a2", "ordering_key": "a"},
            {"data": b"b1", "ordering_key": "b"}, {"data": b"a3", "ordering_key": "a"}])

        def pull(client, n=10):
            return client.pull(subscription=sub, max_messages=n,
                               return_immediately=True).received_messages

        [a1] = wait_for(lambda: pull(sub1, 1), timeout=15, message="a1 on process one")
        assert a1.message.data == b"a1"
        # a1 is leased through process one: process two hands out b1 only
        [b1] = wait_for(lambda: pull(sub2), timeout=15, message="b1 on process two")
        assert b1.message.data == b"b1"
        assert pull(sub2) == [] and pull(sub1) == []
        sub2.acknowledge(subscription=sub, ack_ids=[a1.ack_id, b1.ack_id])
        later = wait_for(lambda: pull(sub2), timeout=15, message="a2 and a3 after a1's ack")
        assert [m.message.data for m in later] == [b"a2", b"a3"]
        # a nack through process one brings a3 back with a2, in order
        sub1.modify_ack_deadline(subscription=sub, ack_ids=[later[0].ack_id],
                                 ack_deadline_seconds=0)
        again = wait_for(lambda: pull(sub1), timeout=15, message="the redelivery")
        assert [m.message.data for m in again] == [b"a2", b"a3"]
        sub2.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in again])


def test_a_filter_holds_when_another_process_creates_the_subscription(nats_server):
    """Process one has published to the topic (and knows its subscriptions) before process
    two creates a filtered subscription: what process one publishes next follows the filter."""
    with _two_processes(nats_server.url) as (pub1, sub1, sub2, topic):
        pub1.api.publish(topic=topic, messages=[{"data": b"before", "attributes": {"k": "no"}}])
        filtered = sub2.subscription_path("p", unique("f"))
        sub2.create_subscription(request={"name": filtered, "topic": topic,
                                          "filter": 'attributes.k = "yes"'})
        pub1.api.publish(topic=topic, messages=[{"data": b"no", "attributes": {"k": "no"}},
                                                {"data": b"yes", "attributes": {"k": "yes"}}])
        got = []

        def pulled_yes() -> bool:
            for client in (sub1, sub2):
                got.extend(client.pull(subscription=filtered, max_messages=10,
                                       return_immediately=True).received_messages)
            return any(m.message.data == b"yes" for m in got)

        wait_for(pulled_yes, timeout=15, message="the matching message")
        sub1.acknowledge(subscription=filtered, ack_ids=[m.ack_id for m in got])
        assert [m.message.data for m in got] == [b"yes"]
        for client in (sub1, sub2):
            assert not client.pull(subscription=filtered, max_messages=10,
                                   return_immediately=True).received_messages


def test_a_subscription_changed_or_deleted_on_one_process_is_seen_so_on_another(nats_server):
    from google.api_core import exceptions

    with _two_processes(nats_server.url) as (_, sub1, sub2, topic):
        sub = sub1.subscription_path("p", unique("s"))
        sub1.create_subscription(name=sub, topic=topic)
        assert sub2.get_subscription(subscription=sub).ack_deadline_seconds == 10  # (read)
        sub1.update_subscription(request={"subscription": {"name": sub,
                                                           "ack_deadline_seconds": 42},
                                          "update_mask": {"paths": ["ack_deadline_seconds"]}})
        wait_for(lambda: sub2.get_subscription(subscription=sub).ack_deadline_seconds == 42,
                 timeout=2, message="the new deadline on process two")  # (< cache life)
        sub1.delete_subscription(subscription=sub)

        def gone() -> bool:
            try:
                sub2.get_subscription(subscription=sub)
            except exceptions.NotFound:
                return True
            return False

        wait_for(gone, timeout=2, message="NOT_FOUND on process two")


def test_a_schema_revision_committed_on_another_process_validates_at_once(nats_server):
    import grpc
    from google import pubsub_v1 as gapic
    from google.pubsub_v1.services.schema_service.transports import SchemaServiceGrpcTransport

    item_v1 = json.dumps({"type": "record", "name": "Item", "fields": [
        {"name": "name", "type": "string"}]})
    item_v2 = json.dumps({"type": "record", "name": "Item", "fields": [
        {"name": "price", "type": "double"}]})
    with _emulator(nats_server.url) as one, _emulator(nats_server.url) as two:
        pub1, _ = make_clients(one.host, "grpc")
        schemas2 = gapic.SchemaServiceClient(transport=SchemaServiceGrpcTransport(
            channel=grpc.insecure_channel(two.host)))
        schema = schemas2.create_schema(request={
            "parent": "projects/p", "schema_id": unique("s"),
            "schema": {"type_": gapic.Schema.Type.AVRO, "definition": item_v1}})
        topic = pub1.topic_path("p", unique("t"))
        pub1.create_topic(request={"name": topic, "schema_settings": {
            "schema": schema.name, "encoding": gapic.Encoding.JSON}})
        pub1.api.publish(topic=topic, messages=[{"data": b'{"name": "a"}'}])  # (cached now)
        schemas2.commit_schema(request={"name": schema.name, "schema": {
            "type_": gapic.Schema.Type.AVRO, "definition": item_v2}})
        # any revision of the schema validates: process one takes a v2 message at once
        pub1.api.publish(topic=topic, messages=[{"data": b'{"price": 1.5}'}])


def test_schema_revisions_committed_at_once_on_two_processes_are_all_kept(nats_server):
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    from google import pubsub_v1 as gapic
    from google.pubsub_v1.services.schema_service.transports import SchemaServiceGrpcTransport

    def definition(n: int) -> str:
        return json.dumps({"type": "record", "name": "Item", "fields": [
            {"name": f"f{n}", "type": "string"}]})

    avro = gapic.Schema.Type.AVRO
    with _emulator(nats_server.url) as one, _emulator(nats_server.url) as two:
        clients = [gapic.SchemaServiceClient(transport=SchemaServiceGrpcTransport(
            channel=grpc.insecure_channel(emu.host))) for emu in (one, two)]
        schema = clients[0].create_schema(request={
            "parent": "projects/p", "schema_id": unique("s"),
            "schema": {"type_": avro, "definition": definition(0)}})

        def commit(n: int) -> str:
            return clients[n % 2].commit_schema(request={"name": schema.name, "schema": {
                "type_": avro, "definition": definition(n)}}).revision_id

        with ThreadPoolExecutor(4) as pool:
            committed = list(pool.map(commit, range(1, 21)))
        listed = [r.revision_id for r in clients[1].list_schema_revisions(
            request={"name": schema.name, "page_size": 100})]
        assert set(committed) | {schema.revision_id} == set(listed)
        assert len(listed) == 21


def test_push_subscription_made_on_a_process_that_goes_away_is_pushed_by_another(nats_server):
    from push_endpoint import Receiver

    receiver = Receiver().start()
    try:
        with _emulator(nats_server.url) as one:
            with _emulator(nats_server.url) as two:
                _, sub2 = make_clients(two.host, "grpc")
                pub1, _ = make_clients(one.host, "grpc")
                topic = pub1.topic_path("p", unique("t"))
                pub1.create_topic(name=topic)
                sub = sub2.subscription_path("p", unique("s"))
                sub2.create_subscription(request={"name": sub, "topic": topic, "push_config": {
                    "push_endpoint": receiver.url()}})
                sub2.close()
            # process two is gone: process one, which heard of the subscription, pushes
            pub1.api.publish(topic=topic, messages=[{"data": f"m{i}".encode()}
                                                    for i in range(5)])
            wait_for(lambda: {g.data for g in receiver.snapshot()} >= {
                f"m{i}".encode() for i in range(5)}, timeout=30, message="five pushes")
    finally:
        receiver.stop()


def test_cluster_r3_survives_losing_a_node_and_an_emulator(tmp_path):
    """Three emulator processes on a 3-node R3 cluster, publishers and pullers spread over
    them; mid-stream one emulator is killed and one NATS node stopped. Every message whose
    publish returned an id is delivered at least once; none whose ack was confirmed comes back.
    Some messages are over the servers' 1 MB max_payload (stored as pieces).
    """
    ports = [free_port() for _ in range(3)]
    routes = [free_port() for _ in range(3)]
    nodes = [NatsServer(tmp_path / f"n{i}" / "js", name=f"n{i}", port=ports[i],
                        cluster_port=routes[i], routes=[r for r in routes if r != routes[i]])
             for i in range(3)]
    for node in nodes:
        node.start()
    urls = ",".join(node.url for node in nodes)
    emus: list[EmulatorProcess] = []
    stop = threading.Event()  # the pullers
    stop_publishing = threading.Event()
    lock = threading.Lock()
    published: set[str] = set()
    acked: dict[str, float] = {}  # message id -> when its ack was confirmed (monotonic)
    received: set[str] = set()
    redelivered_after_ack: list[str] = []
    try:
        # JetStream needs a meta leader before the first stream can be created.
        first = wait_for(lambda: _try_start(EmulatorProcess(
            extra_args=["--store", urls, "--nats-replicas", "3"])), timeout=60,
            interval=1, message="an emulator on the NATS cluster")
        emus = [first] + [_emulator(urls, "--nats-replicas", "3").start() for _ in range(2)]
        clients = [make_clients(emu.host, "grpc") for emu in emus]
        topic = clients[0][0].topic_path("p", unique("t"))
        sub = clients[0][1].subscription_path("p", unique("s"))
        clients[0][0].create_topic(name=topic)
        clients[0][1].create_subscription(name=sub, topic=topic, ack_deadline_seconds=10)

        def publish(i: int) -> None:  # one publisher per emulator process
            publisher = clients[i][0]
            n = 0
            while not stop_publishing.is_set() and n < 300:
                try:
                    data = os.urandom(1_200_000) if n % 50 == 25 else f"p{i}-{n}".encode()
                    message_id = publisher.publish(topic, data).result(timeout=30)
                except Exception:  # noqa: BLE001 - its emulator was killed: not published
                    if emus[i].proc is not None and emus[i].proc.poll() is not None:
                        return
                    continue
                with lock:
                    published.add(message_id)
                n += 1

        def pull(i: int) -> None:  # one puller per emulator process, unary pull + ack
            subscriber = clients[i][1]
            while not stop.is_set():
                asked = time.monotonic()
                try:
                    batch = subscriber.pull(subscription=sub, max_messages=20,
                                            timeout=10).received_messages
                except Exception:  # noqa: BLE001 - leader election, or its emulator died
                    if emus[i].proc is not None and emus[i].proc.poll() is not None:
                        return
                    continue
                ids = {m.message.message_id for m in batch}
                with lock:
                    # Delivered again although the pull was asked for after the ack was
                    # confirmed. (A pull asked for before it may rightly return the message:
                    # its lease ran out while a slow ack was still on its way.)
                    redelivered_after_ack.extend(i for i in ids if acked.get(i, asked) < asked)
                    received.update(ids)
                try:
                    if batch:
                        subscriber.acknowledge(subscription=sub,
                                               ack_ids=[m.ack_id for m in batch], timeout=10)
                except Exception:  # noqa: BLE001 - not confirmed: may come back, rightly
                    continue
                with lock:
                    confirmed = time.monotonic()
                    acked.update((i, confirmed) for i in ids)

        publishers = [threading.Thread(target=publish, args=(i,), daemon=True) for i in range(3)]
        pullers = [threading.Thread(target=pull, args=(i,), daemon=True) for i in range(3)]
        threads = publishers + pullers
        for thread in threads:
            thread.start()
        wait_for(lambda: len(acked) >= 100, timeout=60, message="traffic on all processes")
        emus[0].kill()  # mid-stream: its publisher and puller are cut off
        nodes[0].stop()  # and a NATS node goes away
        at_failure = len(published)
        wait_for(lambda: len(published) >= at_failure + 100, timeout=120,
                 message="publishing to go on after the failures")
        stop_publishing.set()  # then every message whose publish returned must arrive
        for thread in publishers:
            thread.join(60)
        assert not any(thread.is_alive() for thread in publishers)
        wait_for(lambda: published <= received, timeout=120, interval=0.2,
                 message="every published message to be delivered")
        stop.set()
        for thread in pullers:
            thread.join(30)
        assert published <= received
        assert not redelivered_after_ack, redelivered_after_ack[:5]
    finally:
        stop.set()
        stop_publishing.set()
        for emu in emus:
            emu.close()
        for node in nodes:
            node.stop()


def _try_start(emu: EmulatorProcess) -> EmulatorProcess | None:
    try:
        return emu.start()
    except RuntimeError:
        emu.close()
        return None


def test_a_reconnection_tells_the_listener_that_wake_ups_may_have_been_lost(tmp_path):
    """Wake-ups between processes are core NATS: those sent while the connection was down are
    gone. After a reconnection the store says so, and the service wakes everything waiting
    (open streams no longer look on their own for minutes)."""
    import asyncio

    from pubsub_emulator.store.nats import NatsStore

    port = free_port()
    nats = NatsServer(tmp_path / "js", port=port).start()
    store = SyncStore(lambda: NatsStore.open([nats.url], namespace="reconnect"))
    try:
        heard = RecordingListener()
        store.set_listener(heard)
        nats.stop()
        nats = NatsServer(tmp_path / "js", port=port).start()  # the same server, back

        def told() -> bool:
            store.run(asyncio.sleep(0.05))  # (the client reconnects while its loop runs)
            return heard.missed_reports > 0

        wait_for(told, timeout=20, message="a missed-reports notice after reconnecting")
        assert heard.missed_reports == 1
    finally:
        store.close()
        nats.stop()


def test_a_seek_on_one_process_reaches_a_stream_open_on_another_at_once(nats_server):
    """The seek recreates the subscription's consumer and tells the other processes (before,
    so they drop what they cached of it, and after the new consumer exists, so a stream woken
    in between looks again): the other process's open stream redelivers now, not at its next
    idle look (IDLE_LOOK_S, minutes)."""
    from google.pubsub_v1 import types as gapic

    with _two_processes(nats_server.url) as (pub1, sub1, sub2, topic):
        sub = sub1.subscription_path("p", unique("s"))
        sub1.create_subscription(request={  # retaining acked messages: a seek replays them
            "name": sub, "topic": topic, "ack_deadline_seconds": 60,
            "retain_acked_messages": True})
        received: list[bytes] = []
        lock = threading.Lock()

        def callback(message: Any) -> None:
            with lock:
                received.append(message.data)
            message.ack()

        future = sub2.subscribe(sub, callback)
        try:
            pub1.publish(topic, b"once").result()
            wait_for(lambda: received == [b"once"], timeout=20, message="the first delivery")
            # Acked on process two (or its ack still on the way: either way a seek to before
            # its publish makes it due again); the seek is made on process one.
            sub1.seek(request=gapic.SeekRequest(
                subscription=sub, time={"seconds": int(time.time()) - 3600}))
            wait_for(lambda: len(received) >= 2, timeout=20,
                     message="the replay on process two's open stream")
            assert received[1] == b"once"
        finally:
            future.cancel()
            with contextlib.suppress(Exception):
                future.result(timeout=10)
