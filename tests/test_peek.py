"""PubSubService.peek (core/peek.py): names and limits checked as the RPCs check them, store
errors answered as theirs are, and a Pull after a peek gets what it would have got. What peek
sees on each backend is in the store contract (tests/test_store_contract.py, `peek`)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from google.pubsub_v1 import types as t

from pubsub_emulator.core.errors import ApiError, Status
from pubsub_emulator.core.peek import MAX_PEEK_MESSAGES, PeekedMessage
from pubsub_emulator.core.service import PubSubService
from pubsub_emulator.store import NotFound, StoreError, StoreUnavailable
from pubsub_emulator.store.sqlite import SqliteStore

T = "projects/p/topics/peeked"
S = "projects/p/subscriptions/peeked"


def req(type_name: str, **fields):
    return getattr(t, type_name).pb()(**fields)


@pytest.fixture
def service() -> Iterator[PubSubService]:
    store = SqliteStore(None)
    yield PubSubService(store)
    asyncio.run(store.close())


async def _setup(service: PubSubService, **subscription) -> list[str]:
    await service.topics.create_topic(req("Topic", name=T))
    await service.subscriptions.create_subscription(req("Subscription", name=S, topic=T,
                                                        **subscription))
    response = await service.publishing.publish(req("PublishRequest", topic=T, messages=[
        req("PubsubMessage", data=b"m%d" % i, attributes={"i": str(i)}) for i in range(3)]))
    return list(response.message_ids)


async def _pull(service: PubSubService, max_messages: int = 10) -> list:
    response = await service.pulls.pull(req("PullRequest", subscription=S,
                                            max_messages=max_messages,
                                            return_immediately=True))
    return list(response.received_messages)


def _status(call) -> tuple[Status, str]:
    with pytest.raises(ApiError) as caught:
        asyncio.run(call)
    return caught.value.status, caught.value.message


def test_peek_returns_messages_and_leaves_them_to_pull(service):
    async def scenario():
        ids = await _setup(service)
        peeked = await service.peek(S)
        again = await service.peek(S, max_messages=2)
        received = await _pull(service)
        return ids, peeked, again, received

    ids, peeked, again, received = asyncio.run(scenario())
    assert all(isinstance(p, PeekedMessage) for p in peeked)
    assert [p.message.message_id for p in peeked] == ids
    assert [p.message.data for p in peeked] == [b"m0", b"m1", b"m2"]
    assert [dict(p.message.attributes) for p in peeked] == [{"i": "0"}, {"i": "1"}, {"i": "2"}]
    assert all(p.message.publish_time.seconds > 0 for p in peeked)
    assert [(p.delivery_attempt, p.leased_until_ms) for p in peeked] == [(0, None)] * 3
    assert again == peeked[:2]
    assert [r.message for r in received] == [p.message for p in peeked]


def test_peek_shows_what_a_pull_leased(service):
    async def scenario():
        await _setup(service, ack_deadline_seconds=30)
        [first] = await _pull(service, 1)
        peeked = await service.peek(S)
        return first, peeked

    first, peeked = asyncio.run(scenario())
    assert peeked[0].message == first.message and peeked[0].delivery_attempt == 1
    assert peeked[0].leased_until_ms is not None
    assert [(p.delivery_attempt, p.leased_until_ms) for p in peeked[1:]] == [(0, None)] * 2


def test_peek_checks_the_name_and_the_count(service):
    asyncio.run(_setup(service))
    status, message = _status(service.peek("projects/p/subscriptions/x"))  # too short an id
    assert status is Status.INVALID_ARGUMENT and "subscriptions" in message
    status, message = _status(service.peek("projects/p/subscriptions/missing"))
    assert (status, message) == (Status.NOT_FOUND, "Resource not found (resource=missing).")
    for count in (0, -1, MAX_PEEK_MESSAGES + 1):
        status, message = _status(service.peek(S, count))
        assert status is Status.INVALID_ARGUMENT and "max_messages" in message
    assert len(asyncio.run(service.peek(S, MAX_PEEK_MESSAGES))) == 3


@pytest.mark.parametrize(("error", "expected"), [
    (NotFound(S), (Status.NOT_FOUND, f"Resource not found (resource={S}).")),
    (StoreUnavailable("down"), (Status.UNAVAILABLE, None)),
    (StoreError("broken"), (Status.INTERNAL, "Internal error encountered.")),
])
def test_store_errors_are_answered_as_the_rpcs_answer_them(service, monkeypatch, error,
                                                           expected):
    asyncio.run(_setup(service))

    async def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(service.store.messages, "peek", failing)
    status, message = _status(service.peek(S))
    assert status is expected[0] and message == (expected[1] or message)
