"""A push subscription's loop stops when cancelled, even as something wakes it at that moment,
and its acks and nacks are written before the stop returns.

In-process: a SubscriptionPusher over an in-memory store, against a recording endpoint on
127.0.0.1 (tests/push_endpoint.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

from google.pubsub_v1 import types as t

from pubsub_emulator.core.service import PubSubService
from pubsub_emulator.push import TokenIssuer
from pubsub_emulator.push.ownership import Ownership
from pubsub_emulator.push.pusher import SubscriptionPusher
from pubsub_emulator.store.sqlite import SqliteStore
from support import until

T = "projects/p/topics/topic"
S = "projects/p/subscriptions/sub"


def req(type_name: str, **fields: Any) -> Any:
    return getattr(t, type_name).pb()(**fields)


async def setup(endpoint: str) -> tuple[SqliteStore, PubSubService]:
    store = SqliteStore(None)
    service = PubSubService(store)
    await service.topics.create_topic(req("Topic", name=T))
    await service.subscriptions.create_subscription(
        req("Subscription", name=S, topic=T, push_config={"push_endpoint": endpoint}))
    return store, service


def pusher_of(store: SqliteStore, service: PubSubService) -> SubscriptionPusher:
    return SubscriptionPusher(S, service.engine, service.events, TokenIssuer(store.resources),
                              on_idle=lambda _p: None, on_failure=lambda _n: None,
                              ownership=Ownership(store.resources, S, "this-process"))


def test_a_loop_woken_as_it_is_cancelled_stops(receiver):
    async def scenario() -> None:
        store, service = await setup(receiver.url())
        for _ in range(5):
            pusher = pusher_of(store, service)
            pusher.start()
            await until(lambda p=pusher: p.stats()["owner"], "ownership")  # then it waits
            pusher.poke()  # (an answer settled, a publish...) in the same turn as the stop
            await asyncio.wait_for(pusher.cancel(), 5)
            assert not pusher.running
        await store.close()

    asyncio.run(scenario())


def test_outcomes_are_written_before_the_stop_returns(receiver):
    async def scenario() -> None:
        store, service = await setup(receiver.url())
        await service.publishing.publish(req("PublishRequest", topic=T, messages=[
            req("PubsubMessage", data=f"m{i}".encode()) for i in range(20)]))
        pusher = pusher_of(store, service)
        pusher.start()
        await until(lambda: pusher.stats()["delivered"] >= 5, "some deliveries")
        await pusher.cancel()
        stats = pusher.stats()
        assert stats["in_flight"] == 0 and stats["attempts"] == stats["delivered"] + stats[
            "nacked"]
        # Whatever was acked is gone; the rest is there to pull again at once (nacked) or
        # was never leased.
        sub = await service.engine.deliverable(S)
        left, _ = await service.engine.receive(sub, 50, 10_000)
        assert len(left) == 20 - stats["delivered"]
        await store.close()

    asyncio.run(scenario())
