"""Retention and expiration, on the service core with a clock the test moves (Google's minimum
durations are minutes to days; nothing here sleeps)."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3

import pytest
from google.pubsub_v1 import types as t

from pubsub_emulator.core.errors import ApiError, Status
from pubsub_emulator.core.service import PubSubService
from pubsub_emulator.store import Kind
from pubsub_emulator.store.sqlite import SqliteStore

T = "projects/p/topics/topic"
S = "projects/p/subscriptions/sub"
MINUTE, DAY = 60_000, 24 * 3600_000


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000_000

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def db_file(tmp_path):
    return tmp_path / "store.sqlite3"


@pytest.fixture
def env(db_file):
    clock = Clock()
    store = SqliteStore(db_file)
    yield PubSubService(store, clock=clock), clock
    asyncio.run(store.close())


def req(type_name: str, **fields):
    return getattr(t, type_name).pb()(**fields)


async def publish(service, *payloads: bytes) -> list[str]:
    response = await service.publishing.publish(req("PublishRequest", topic=T, messages=[
        req("PubsubMessage", data=p) for p in payloads]))
    return list(response.message_ids)


async def pull(service, sub: str = S) -> list:
    response = await service.pulls.pull(req("PullRequest", subscription=sub, max_messages=100,
                                      return_immediately=True))
    return list(response.received_messages)


async def ack_all(service, sub: str = S) -> int:
    received = await pull(service, sub)
    if received:
        await service.pulls.acknowledge(req("AcknowledgeRequest", subscription=sub,
                                      ack_ids=[m.ack_id for m in received]))
    return len(received)


def run(coro):
    return asyncio.run(coro)


def test_subscription_retention_drops_old_unacked_messages(env):
    service, clock = env

    async def scenario():
        await service.topics.create_topic(req("Topic", name=T))
        await service.subscriptions.create_subscription(req(
            "Subscription", name=S, topic=T, message_retention_duration={"seconds": 600}))
        await publish(service, b"old")
        clock.now += 5 * MINUTE
        await publish(service, b"young")
        clock.now += 6 * MINUTE  # "old" is 11 minutes old now, "young" 6
        await service.sweeper.sweep()
        return [m.message.data for m in await pull(service)]

    assert run(scenario()) == [b"young"]


def test_retain_acked_messages_and_seek_to_time_replays_them(env):
    service, clock = env

    async def scenario():
        await service.topics.create_topic(req("Topic", name=T))
        await service.subscriptions.create_subscription(req("Subscription", name=S, topic=T,
                                              retain_acked_messages=True))
        start = clock.now
        await publish(service, b"first")
        clock.now += 1000
        await publish(service, b"second")
        assert await ack_all(service) == 2
        await service.sweeper.sweep()
        assert await pull(service) == []
        seek = req("SeekRequest", subscription=S)
        seek.time.FromMilliseconds(start + 500)
        await service.snapshots.seek(seek)
        after_half = [m.message.data for m in await pull(service)]
        seek.time.FromMilliseconds(start)
        await service.snapshots.seek(seek)
        everything = sorted(m.message.data for m in await pull(service))
        return after_half, everything

    after_half, everything = run(scenario())
    assert after_half == [b"second"]
    assert everything == [b"first", b"second"]


def test_without_retain_acked_seek_cannot_replay_acked(env):
    service, clock = env

    async def scenario():
        await service.topics.create_topic(req("Topic", name=T))
        await service.subscriptions.create_subscription(req("Subscription", name=S, topic=T))
        start = clock.now
        await publish(service, b"gone")
        await ack_all(service)
        seek = req("SeekRequest", subscription=S)
        seek.time.FromMilliseconds(start)
        await service.snapshots.seek(seek)
        return await pull(service)

    assert run(scenario()) == []


def test_topic_retention_keeps_messages_for_later_subscriptions_to_seek(env):
    service, clock = env

    async def scenario():
        await service.topics.create_topic(req("Topic", name=T,
                                       message_retention_duration={"seconds": 3600}))
        start = clock.now
        await publish(service, b"before any subscription")
        clock.now += MINUTE
        await service.sweeper.sweep()
        await service.subscriptions.create_subscription(req("Subscription", name=S, topic=T))
        assert await pull(service) == []  # a new subscription starts at its creation...
        seek = req("SeekRequest", subscription=S)
        seek.time.FromMilliseconds(start)
        await service.snapshots.seek(seek)  # ...but can seek back into what the topic retains
        replayed = [m.message.data for m in await pull(service)]
        clock.now += 2 * 3600_000
        await ack_all(service)
        await service.sweeper.sweep()
        await service.snapshots.seek(seek)
        return replayed, await pull(service)

    replayed, after_expiry = run(scenario())
    assert replayed == [b"before any subscription"]
    assert after_expiry == []  # past the topic's retention the message is gone


def test_expiration_policy_deletes_idle_subscriptions_only(env):
    service, clock = env

    async def scenario():
        await service.topics.create_topic(req("Topic", name=T))
        idle = "projects/p/subscriptions/idle"
        used = "projects/p/subscriptions/used"
        never = "projects/p/subscriptions/never"
        for name in (idle, used):
            await service.subscriptions.create_subscription(req(
                "Subscription", name=name, topic=T, expiration_policy={"ttl": {"seconds": 86400}}))
        await service.subscriptions.create_subscription(req("Subscription", name=never, topic=T,
                                              expiration_policy={}))
        await service.sweeper.sweep()
        clock.now += DAY // 2
        await pull(service, used)
        clock.now += DAY // 2 + 1
        await service.sweeper.sweep()
        results = {}
        for name in (idle, used, never):
            try:
                await service.subscriptions.get_subscription(req("GetSubscriptionRequest",
                                                               subscription=name))
                results[name] = "exists"
            except ApiError as exc:
                results[name] = exc.status
        return results

    results = run(scenario())
    assert results == {"projects/p/subscriptions/idle": Status.NOT_FOUND,
                       "projects/p/subscriptions/used": "exists",
                       "projects/p/subscriptions/never": "exists"}


def stored_messages(db_file) -> int:
    """Messages in the store's database, read through a connection of the test's own."""
    with contextlib.closing(sqlite3.connect(db_file)) as db:
        return db.execute("SELECT COUNT(*) FROM messages").fetchone()[0]


def test_storage_does_not_grow_once_messages_are_acked(env, db_file):
    service, clock = env

    async def scenario():
        await service.topics.create_topic(req("Topic", name=T))
        await service.subscriptions.create_subscription(req("Subscription", name=S, topic=T))
        for _ in range(5):
            await publish(service, *[b"x" * 100] * 200)
            while await ack_all(service):
                pass
        await service.sweeper.sweep()

    run(scenario())
    assert stored_messages(db_file) == 0


def test_snapshot_restores_messages_acked_after_it_and_expires(env):
    service, clock = env

    async def scenario():
        await service.topics.create_topic(req("Topic", name=T))
        await service.subscriptions.create_subscription(req("Subscription", name=S, topic=T))
        await publish(service, b"before")
        await ack_all(service)
        # The snapshot is taken with nothing unacked; later messages belong to it too.
        snapshot = await service.snapshots.create_snapshot(
            req("CreateSnapshotRequest", subscription=S))
        assert snapshot.name.startswith("projects/p/snapshots/snapshot-")  # server-assigned
        await publish(service, b"after")
        await ack_all(service)
        await service.sweeper.sweep()
        await service.snapshots.seek(req("SeekRequest", subscription=S, snapshot=snapshot.name))
        restored = [m.message.data for m in await pull(service)]
        clock.now += 7 * DAY + 1
        await service.sweeper.sweep()
        try:
            await service.snapshots.get_snapshot(req("GetSnapshotRequest", snapshot=snapshot.name))
            expired = False
        except ApiError as exc:
            expired = exc.status is Status.NOT_FOUND
        return restored, expired

    restored, expired = run(scenario())
    assert restored == [b"after"]
    assert expired


def test_expiration_sees_activity_through_another_process_on_the_same_store(env):
    """Two emulator processes sharing a store (as on NATS): use through one keeps the
    subscription alive in the other's sweeper."""
    service, clock = env
    other = PubSubService(service.store, clock=clock)

    async def scenario():
        await service.topics.create_topic(req("Topic", name=T))
        await service.subscriptions.create_subscription(req(
            "Subscription", name=S, topic=T, expiration_policy={"ttl": {"seconds": 86400}}))
        # the sweeping process has seen the subscription from the start
        await service.sweeper.sweep()
        clock.now += DAY // 2
        await pull(other, S)  # used only through the other process
        clock.now += DAY // 2 + 1
        await service.sweeper.sweep()
        alive = await service.subscriptions.get_subscription(
            req("GetSubscriptionRequest", subscription=S))
        clock.now += DAY + 1  # now idle everywhere beyond its ttl
        await service.sweeper.sweep()
        try:
            await service.subscriptions.get_subscription(
                req("GetSubscriptionRequest", subscription=S))
            return alive.name, False
        except ApiError as exc:
            return alive.name, exc.status is Status.NOT_FOUND

    name, expired_later = run(scenario())
    assert name == S and expired_later


async def _rounds_pass(sweeper, rounds: int, deadline_s: float = 30.0) -> None:
    """Until the background sweeper has woken `rounds` more times (swept or skipped)."""
    target = sweeper.rounds + rounds
    deadline = asyncio.get_running_loop().time() + deadline_s
    while sweeper.rounds < target:
        assert asyncio.get_running_loop().time() < deadline, "the sweeper stopped waking"
        await asyncio.sleep(0.001)


def test_the_background_sweeper_skips_its_rounds_while_nothing_happens(env):
    """An idle emulator does not sweep every few seconds (on NATS each sweep costs requests per
    subscription); a publish, pull or ack makes the next round sweep."""
    service, _ = env
    sweeper = service.sweeper
    swept: list[int] = []  # the rounds that swept

    async def scenario():
        real_sweep = sweeper.sweep

        async def counted_sweep() -> None:
            swept.append(sweeper.rounds)
            await real_sweep()

        sweeper.sweep = counted_sweep
        await service.topics.create_topic(req("Topic", name=T))
        await service.subscriptions.create_subscription(req("Subscription", name=S, topic=T))
        task = asyncio.ensure_future(sweeper.run_forever(every_s=0.001, idle_every_s=3600))
        try:
            await _rounds_pass(sweeper, 30)
            idle = list(swept)
            phases = []
            for act in (lambda: publish(service, b"m"), lambda: ack_all(service)):
                before = sweeper.rounds
                await act()
                await _rounds_pass(sweeper, 30)
                phases.append(([r for r in swept if r > before], sweeper.rounds))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        return idle, phases

    idle, phases = run(scenario())
    assert idle == [1]  # the first round sweeps; then nothing happened for 29 rounds
    for sweeps, end in phases:  # the publish, then the pull and ack
        assert sweeps, "activity did not make the sweeper sweep"
        assert max(sweeps) <= end - 25, "the sweeper kept sweeping once things were quiet"


def test_a_sweep_reads_no_activity_records_of_subscriptions_used_within_their_ttl(env,
                                                                               monkeypatch):
    """Whether a subscription expired is settled by this process's own record while that is
    within the TTL: a sweep of many subscriptions costs no store reads (on NATS each was a
    JetStream request, every round). Past it, the store is asked (another process may have
    used it: the test above)."""
    service, clock = env
    reads: list[str] = []
    real_get = service.store.resources.get

    async def counted_get(kind, name):
        if kind is Kind.ACTIVITY:
            reads.append(name)
        return await real_get(kind, name)

    monkeypatch.setattr(service.store.resources, "get", counted_get)
    names = [f"{S}-{i}" for i in range(20)]

    async def scenario():
        await service.topics.create_topic(req("Topic", name=T))
        for name in names:
            await service.subscriptions.create_subscription(req(
                "Subscription", name=name, topic=T,
                expiration_policy={"ttl": {"seconds": 86400}}))
        await service.sweeper.sweep()
        clock.now += DAY // 2
        await service.sweeper.sweep()
        within = list(reads)
        clock.now += DAY
        await service.sweeper.sweep()  # idle beyond the TTL here: the store has the last word
        return within

    within = run(scenario())
    assert within == []
    assert sorted(reads) == sorted(names)
