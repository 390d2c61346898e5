"""Messages handed to open streams at publish (core/publishing.py, DeliveryEngine.claim): a
StreamingPull open on a plain subscription gets what is published to its topic leased in the
publish's own commit and sends it without reading it back from the store; whatever goes wrong
on the way, the messages stay deliverable."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from google.pubsub_v1 import types as t

from pubsub_emulator.core.model import now_ms
from pubsub_emulator.core.service import PubSubService
from pubsub_emulator.store import Kind
from pubsub_emulator.store.sqlite import SqliteStore

TOPIC, SUB = "projects/p/topics/topic", "projects/p/subscriptions/sub"
DEAD = "projects/p/topics/dead"
DEADLINE_S = 30


class Stream:
    """One StreamingPull on the service, driven from the test: its responses, and how many
    times it read the store (receive_encoded) and looked for due messages (next_due_ms)."""

    def __init__(self, service: PubSubService) -> None:
        self.service = service
        self.requests: asyncio.Queue = asyncio.Queue()
        self.reads = self.looks = 0
        engine = service.engine
        real_receive, real_due = engine.receive_encoded, engine.next_due_ms

        async def counted_receive(*args: Any, **kwargs: Any) -> Any:
            self.reads += 1
            return await real_receive(*args, **kwargs)

        async def counted_due(*args: Any, **kwargs: Any) -> Any:
            self.looks += 1
            return await real_due(*args, **kwargs)

        engine.receive_encoded, engine.next_due_ms = counted_receive, counted_due  # type: ignore[method-assign]
        self.responses = service.streaming(self._requests())
        self.next: asyncio.Future = asyncio.ensure_future(anext(self.responses))

    async def _requests(self) -> AsyncIterator[Any]:
        await self.requests.put(t.StreamingPullRequest.pb()(subscription=SUB,
                                                            stream_ack_deadline_seconds=60))
        while True:
            yield await self.requests.get()

    async def asleep(self) -> None:
        """Until the stream has had its first turn and gone to sleep (looked for due ones)."""
        await until(lambda: self.looks >= 1, "the stream's first turn")

    async def received(self) -> list[Any]:
        response = await asyncio.wait_for(self.next, DEADLINE_S)
        self.next = asyncio.ensure_future(anext(self.responses))
        return list(t.StreamingPullResponse.pb().FromString(response).received_messages)

    async def close(self) -> None:
        """The client goes away: its call's task is cancelled wherever it waits."""
        self.next.cancel()
        try:
            await self.next
        except (asyncio.CancelledError, StopAsyncIteration):
            pass
        await self.responses.aclose()


async def until(condition: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"waited too long for {what}"
        await asyncio.sleep(0.005)


async def open_service(tmp: Path) -> PubSubService:
    service = PubSubService(SqliteStore(tmp / "store.sqlite3"))
    for topic in (TOPIC, DEAD):
        await service.topics.create_topic(t.Topic.pb()(name=topic))
    await service.subscriptions.create_subscription(t.Subscription.pb()(name=SUB, topic=TOPIC))
    return service


async def open_stream(tmp: Path) -> tuple[PubSubService, Stream]:
    """The service, and one stream on SUB that has had its first turn and sleeps."""
    service = await open_service(tmp)
    stream = Stream(service)
    await stream.asleep()
    return service, stream


def the_open_call(service: PubSubService) -> Any:
    """The OpenPull of the one stream open on SUB (as a publish would claim it)."""
    return service.engine.claim(TOPIC, 1, 1)[SUB]


async def publish(service: PubSubService, *payloads: bytes) -> list[str]:
    response = await service.publishing.publish(t.PublishRequest.pb()(
        topic=TOPIC, messages=[t.PubsubMessage.pb()(data=p) for p in payloads]))
    return list(response.message_ids)


def test_a_stream_sends_what_is_published_without_reading_the_store(tmp_path) -> None:
    async def scenario() -> None:
        service, stream = await open_stream(tmp_path)
        reads = stream.reads
        ids = await publish(service, b"one", b"two", b"three")
        received = await stream.received()
        assert [m.message.data for m in received] == [b"one", b"two", b"three"]
        assert [m.message.message_id for m in received] == ids
        assert stream.reads == reads  # handed at publish: no read of the store
        messages = service.store.messages
        # Leased, not available to anyone else; acked by the ack ids the stream sent.
        assert await messages.backlog(SUB) == 3
        assert await messages.pull(SUB, 10, 60_000, 0) == []
        await stream.requests.put(t.StreamingPullRequest.pb()(
            ack_ids=[m.ack_id for m in received]))
        await until(lambda: service.engine.work >= 2, "the ack")
        await until_async(lambda: messages.backlog(SUB), 0)
        await stream.close()
        await service.store.close()

    asyncio.run(scenario())


async def until_async(value: Any, expected: Any) -> None:
    deadline = asyncio.get_running_loop().time() + DEADLINE_S
    while (got := await value()) != expected:
        assert asyncio.get_running_loop().time() < deadline, f"{got} is not {expected}"
        await asyncio.sleep(0.005)


def test_what_a_stream_closed_before_sending_is_available_again_at_once(tmp_path) -> None:
    """The client goes away between the publish that handed messages to its stream and the
    stream's next turn: the leases are let go, not left to run out (60 s here)."""
    async def scenario() -> list[Any]:
        service, stream = await open_stream(tmp_path)
        await publish(service, b"handed")
        await stream.close()  # before the stream had a turn to send them
        got: list[Any] = []

        async def pulled() -> bool:
            got.extend(await service.store.messages.pull(SUB, 10, 60_000, now_ms()))
            return bool(got)

        await until_async(pulled, True)
        await service.store.close()
        return got

    got = asyncio.run(scenario())
    assert [d.delivery_attempt for d in got] == [2]  # the handed lease counted as the first


def test_a_subscription_changed_under_an_open_stream_is_read_again_before_more_is_handed(
        tmp_path) -> None:
    """A policy added while a stream is open (here dead-lettering, whose deliveries show their
    attempt) applies to the next message: the stream reads it from the store, by the new
    policy, rather than taking it as handed."""
    async def scenario() -> list[Any]:
        service, stream = await open_stream(tmp_path)
        await publish(service, b"before")
        before = await stream.received()
        assert [m.delivery_attempt for m in before] == [0]  # not shown without the policy
        policy = t.DeadLetterPolicy.pb()(dead_letter_topic=DEAD, max_delivery_attempts=5)
        await service.subscriptions.update_subscription(t.UpdateSubscriptionRequest.pb()(
            subscription=t.Subscription.pb()(name=SUB, topic=TOPIC, dead_letter_policy=policy),
            update_mask={"paths": ["dead_letter_policy"]}))
        reads = stream.reads
        await publish(service, b"after")
        after = await stream.received()
        assert stream.reads > reads  # read back, not handed
        await stream.close()
        await service.store.close()
        return after

    after = asyncio.run(scenario())
    assert [(m.message.data, m.delivery_attempt) for m in after] == [(b"after", 1)]


def test_a_seek_drops_what_was_handed_and_not_yet_sent(tmp_path) -> None:
    async def scenario() -> None:
        service, stream = await open_stream(tmp_path)
        call = the_open_call(service)
        await publish(service, b"handed")
        assert call.inbox  # not sent yet: the stream has not had its turn
        service.engine.release_everything(SUB)
        assert not call.inbox and not call.outstanding
        await stream.close()
        assert await service.store.messages.backlog(SUB) == 1
        await service.store.close()

    asyncio.run(scenario())


def test_a_stream_whose_window_is_full_is_not_handed_anything(tmp_path) -> None:
    async def scenario() -> None:
        service, stream = await open_stream(tmp_path)
        call = the_open_call(service)
        call.max_messages = 2  # type: ignore[attr-defined]
        assert not service.engine.claim(TOPIC, 3, 30)
        assert set(service.engine.claim(TOPIC, 2, 20)) == {SUB}
        await stream.close()
        assert not service.engine.claim(TOPIC, 1, 10)  # closed: nobody to hand to
        await service.store.close()

    asyncio.run(scenario())


def test_the_store_leases_at_publish_only_the_subscriptions_asked(tmp_path) -> None:
    async def scenario() -> None:
        store = SqliteStore(tmp_path / "store.sqlite3")
        for sub in (SUB, "projects/p/subscriptions/other"):
            await store.resources.create(Kind.SUBSCRIPTION, sub, b"", topic=TOPIC)
        message = t.PubsubMessage.pb()(data=b"x").SerializeToString()
        _, handed = await store.messages.publish_leased(TOPIC, [message], 1_000,
                                                        {SUB: 61_000, "projects/p/nope": 1})
        assert set(handed) == {SUB}
        assert await store.messages.pull(SUB, 10, 1_000, 60_999) == []
        assert len(await store.messages.pull(SUB, 10, 1_000, 61_000)) == 1  # ran out
        assert len(await store.messages.pull("projects/p/subscriptions/other", 10, 1_000,
                                             1_000)) == 1
        await store.close()

    asyncio.run(scenario())
