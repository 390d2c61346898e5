"""One pusher per push subscription across every process sharing a store (push/ownership.py).

The NATS cases run two real emulator processes on one real nats-server (without nats-server
they fail, saying how to install it, as tests/test_nats_backend.py does) against a slow
recording endpoint; the embedded-store case runs two PushDispatchers in-process on one SQLite
store, the second standing for a second process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

from google.pubsub_v1 import types as t

from clients import gapic_clients, unique
from pubsub_emulator.core.service import PubSubService
from pubsub_emulator.push import PushDispatcher, TokenIssuer
from pubsub_emulator.push.ownership import JITTER, LEASE_MS, RENEW_MS, RETRY_MS, Record
from pubsub_emulator.push.pusher import BACKOFF
from pubsub_emulator.store import Kind
from pubsub_emulator.store.sqlite import SqliteStore
from push_endpoint import Got, Receiver
from support import EmulatorProcess, wait_for

MAX_OUTSTANDING = 3
HOLD_S = 0.2  # the endpoint holds each request open this long
# A dead owner's subscription is taken over within its lease plus one (jittered) retry.
TAKEOVER_S = (LEASE_MS + RETRY_MS * (1 + JITTER)) / 1000


class Concurrency:
    """A push endpoint's answer: holds each request HOLD_S, counts requests open at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open = 0
        self.most = 0

    def __call__(self, _got: Got, _index: int) -> int:
        with self.lock:
            self.open += 1
            self.most = max(self.most, self.open)
        time.sleep(HOLD_S)
        with self.lock:
            self.open -= 1
        return 200


def _debug(emu: EmulatorProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{emu.host}/debug/push", timeout=5) as r:
        return json.load(r)


def _publish(publisher: Any, topic: str, prefix: str, count: int) -> set[str]:
    response = publisher.publish(topic=topic, messages=[
        {"data": f"{prefix}{i}".encode()} for i in range(count)])
    return set(response.message_ids)


@contextlib.contextmanager
def _two_processes(nats_url: str, endpoint: str) -> Iterator[tuple[list[EmulatorProcess],
                                                                   list[Any], str, str]]:
    """Two emulators on one NATS server, each with --push-max-outstanding 3, and a push
    subscription made on the first: (emulators, their publishers, topic, subscription)."""
    args = ["--store", nats_url, "--push-max-outstanding", str(MAX_OUTSTANDING)]
    with EmulatorProcess(extra_args=args) as one, EmulatorProcess(extra_args=args) as two:
        clients = [gapic_clients(emu.host, "grpc") for emu in (one, two)]
        publisher, subscriber = clients[0]
        topic = publisher.create_topic(name=f"projects/p/topics/{unique('t')}").name
        sub = subscriber.create_subscription(request={
            "name": f"projects/p/subscriptions/{unique('s')}", "topic": topic,
            "ack_deadline_seconds": 10, "push_config": {"push_endpoint": endpoint}}).name
        yield [one, two], [c[0] for c in clients], topic, sub


def _owners(emus: list[EmulatorProcess], sub: str) -> list[EmulatorProcess]:
    return [emu for emu in emus if _debug(emu)["subscriptions"].get(sub, {}).get("owner")]


def test_two_processes_push_a_subscription_with_its_configured_concurrency(nats_server):
    answer = Concurrency()
    receiver = Receiver(answer).start()
    try:
        with _two_processes(nats_server.url, receiver.url()) as (emus, publishers, topic, sub):
            ids = _publish(publishers[1], topic, "m", 60)
            wait_for(lambda: set(receiver.acked_ids()) >= ids, timeout=60,
                     message="60 messages acked by the endpoint")
            # Slow start opens the window one ack at a time: with 60 messages waiting and each
            # request held 200 ms it reaches the cap; two processes pushing each on its own
            # would have reached twice the cap.
            assert 2 <= answer.most <= MAX_OUTSTANDING, answer.most
            [owner] = _owners(emus, sub)
            [other] = [emu for emu in emus if emu is not owner]
            mine, theirs = _debug(owner), _debug(other)
            assert mine["max_outstanding"] == MAX_OUTSTANDING
            assert mine["subscriptions"][sub]["owner_id"] == mine["owner_id"]
            assert mine["subscriptions"][sub]["window"] == MAX_OUTSTANDING
            assert mine["subscriptions"][sub]["delivered"] >= 60
            assert theirs["subscriptions"][sub]["owner"] is False
            assert theirs["subscriptions"][sub]["owner_id"] == mine["owner_id"]
            assert theirs["subscriptions"][sub]["attempts"] == 0
    finally:
        receiver.stop()


def test_killing_the_owner_moves_delivery_to_the_other_process(nats_server):
    answer = Concurrency()
    receiver = Receiver(answer).start()
    try:
        with _two_processes(nats_server.url, receiver.url()) as (emus, publishers, topic, sub):
            first = _publish(publishers[0], topic, "a", 10)
            wait_for(lambda: set(receiver.acked_ids()) >= first, timeout=30,
                     message="the first 10 messages acked")
            [owner] = _owners(emus, sub)
            survivor = emus[1 - emus.index(owner)]
            owner.kill()  # SIGKILL: no release, the lease has to run out
            killed = time.monotonic()
            second = _publish(publishers[emus.index(survivor)], topic, "b", 10)
            wait_for(lambda: set(receiver.acked_ids()) >= second, timeout=TAKEOVER_S + 10,
                     message="the next 10 messages acked through the surviving process")
            took = time.monotonic() - killed
            stats = _debug(survivor)
            assert stats["subscriptions"][sub]["owner"] is True
            assert stats["subscriptions"][sub]["owner_id"] == stats["owner_id"]
            assert took <= TAKEOVER_S + 3, took
            assert answer.most <= MAX_OUTSTANDING
    finally:
        receiver.stop()


# --- the embedded store: one process, the same code ---------------------------------------------
T = "projects/p/topics/topic"
S = "projects/p/subscriptions/sub"


def req(type_name: str, **fields: Any) -> Any:
    return getattr(t, type_name).pb()(**fields)


def _count_owner_writes(store: SqliteStore) -> list[float]:
    """The times of every write of a push ownership record (create or update)."""
    table, writes = store.resources, []
    update, create = table.update, table.create

    async def counted_update(kind, name, data, topic=None, expected=None):
        if kind is Kind.PUSH_OWNER:
            writes.append(time.monotonic())
        return await update(kind, name, data, topic, expected)

    async def counted_create(kind, name, data, topic=""):
        if kind is Kind.PUSH_OWNER:
            writes.append(time.monotonic())
        return await create(kind, name, data, topic)

    table.update, table.create = counted_update, counted_create  # type: ignore[method-assign]
    return writes


async def _until(what: str, check, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _sub_stats(dispatcher: PushDispatcher) -> dict[str, Any]:
    return dispatcher.stats()["subscriptions"].get(S, {})


async def _set_push(service: PubSubService, endpoint: str) -> None:
    await service.subscriptions.modify_push_config(req(
        "ModifyPushConfigRequest", subscription=S,
        push_config=req("PushConfig", push_endpoint=endpoint)))


async def _deliver_without_per_message_writes(service, first, second, writes, status):
    """Phase one: the first dispatcher owns the subscription, the second waits; 100
    messages cost no ownership write, and the owner renews every RENEW_MS."""
    status[0] = 200
    await service.publishing.publish(req("PublishRequest", topic=T, messages=[
        req("PubsubMessage", data=f"m{i}".encode()) for i in range(100)]))
    started, before = time.monotonic(), len(writes)
    await _until("100 pushes", lambda: _sub_stats(first).get("delivered", 0) >= 100)
    renewals_due = int((time.monotonic() - started) * 1000 // RENEW_MS) + 1
    assert len(writes) - before <= renewals_due  # renewals only, never one per message
    assert _sub_stats(second)["owner"] is False and _sub_stats(second)["delivered"] == 0
    assert _sub_stats(second)["owner_id"] == first.owner_id
    renewed = len(writes)
    # the lease is renewed while nothing is delivered (within a renewal period and a half)
    await _until("a renewal", lambda: len(writes) > renewed, timeout=RENEW_MS / 1000 * 1.5)
    assert _sub_stats(first)["owner"] is True


async def _released(store: SqliteStore, owner: PushDispatcher) -> Record:
    """The ownership record once the owner's loop ended and released it."""
    for _ in range(500):
        raw = await store.resources.get(Kind.PUSH_OWNER, S)
        record = Record.decode(raw or b"")
        if raw is not None and not record.owner and not _sub_stats(owner).get("active"):
            return record
        await asyncio.sleep(0.02)
    raise AssertionError(f"not released: {raw!r}, {_sub_stats(owner)}")


def test_embedded_store_owns_renews_releases_and_hands_the_backoff_over():
    status, gate = [200], threading.Event()
    gate.set()
    receiver = Receiver(lambda _g, _i: (gate.wait(20), status[0])[1]).start()

    async def scenario() -> None:
        store = SqliteStore(None)
        service = PubSubService(store)
        writes = _count_owner_writes(store)
        first = PushDispatcher(service, TokenIssuer(store.resources))
        second = PushDispatcher(service, TokenIssuer(store.resources))  # "another process"
        try:
            await first.start()
            await service.topics.create_topic(req("Topic", name=T))
            await service.subscriptions.create_subscription(req(
                "Subscription", name=S, topic=T,
                push_config=req("PushConfig", push_endpoint=receiver.url())))
            await _until("the first dispatcher owning it", lambda: _sub_stats(first).get("owner"))
            await second.start()
            await _until("the second one following", lambda: _sub_stats(second))
            await _deliver_without_per_message_writes(service, first, second, writes, status)
            # Phase two: nacks build up a backoff; switching push off releases the record with
            # that state, once the POSTs in flight are done.
            status[0] = 503
            await service.publishing.publish(req("PublishRequest", topic=T, messages=[
                req("PubsubMessage", data=b"nacked")]))
            await _until("three nacks", lambda: _sub_stats(first)["nacked"] >= 3)
            await _set_push(service, "")

            record = await _released(store, first)
            assert record.state.failures >= 2, record
            await first.stop()  # it holds nothing now: a clean stop writes nothing more
            assert Record.decode(await store.resources.get(Kind.PUSH_OWNER, S)) == record
            # Phase three: push on again; the second dispatcher takes over at once (no lease
            # to wait out) and continues the backoff where the first left it (the endpoint
            # holds its POSTs meanwhile, so no outcome changes the backoff under the check).
            gate.clear()
            switched = time.monotonic()
            await _set_push(service, receiver.url())
            stats = await _until("the second dispatcher owning it",
                                 lambda: _sub_stats(second).get("owner") and _sub_stats(second))
            assert time.monotonic() - switched < RETRY_MS / 1000 * (1 - JITTER)
            assert stats["owner_id"] == second.owner_id
            assert stats["backoff_ms"] == round(BACKOFF.cap(record.state.failures) * 1000)
            status[0] = 200
            gate.set()
            await _until("the nacked message pushed by the second dispatcher",
                         lambda: _sub_stats(second)["delivered"] >= 1, timeout=20)
            # Deleting the subscription deletes its ownership record.
            await service.subscriptions.delete_subscription(req(
                "DeleteSubscriptionRequest", subscription=S))
            await _until("no pusher loop", lambda: not _sub_stats(second).get("active"))
            assert await store.resources.get(Kind.PUSH_OWNER, S) is None
        finally:
            gate.set()
            await first.stop()
            await second.stop()
            await store.close()

    try:
        asyncio.run(scenario())
    finally:
        receiver.stop()
