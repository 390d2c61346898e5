"""Topic streams and the subscriptions' durable pull consumers on them.

A consumer is recreated (a seek, a purge) with what it must not hand out (its skip set,
acklog.py) written in between, and the restart told to the other processes as a change of the
subscription, before the new consumer exists: a process hears of it before it can fetch from
the new consumer, and drops what it cached of the old one.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from ..base import Kind, NotFound
from .acklog import AckLog, Sets, SkipSets, skip_description
from .client import CONSUMER_NOT_FOUND, STREAM_NOT_FOUND, JetStream, NatsError
from .layout import DETACHED, REDELIVERED, SUB_START, Layout

T = TypeVar("T")

# A consumer's own redelivery timer; a lease of another length is set with a delayed nack.
ACK_WAIT_MS = 10_000
_MAX_AGE_S = 31 * 24 * 3600  # the longest retention Pub/Sub allows


class Topics:
    """Topic streams (with their message id prefixes) and subscription consumers."""

    def __init__(self, js: JetStream, layout: Layout) -> None:
        self._js = js
        self._layout = layout
        self._prefixes: dict[str, int] = {}  # stream name -> message id prefix
        self._links: dict[str, str] = {}  # subscription -> topic link (cache)
        # what consumers acknowledged above their ack floor, and their skip sets (acklog.py)
        self.sets = Sets(js, layout)
        self.acklog = AckLog(self.sets, layout)
        self.skips = SkipSets(self.sets, layout)
        js.reconnected.append(self.skips.forget_all)

    # --- topic streams ----------------------------------------------------------------------
    async def stream(self, topic: str) -> str:
        """The topic's stream, created if it does not exist yet."""
        stream = self._layout.topic_stream(topic)
        if stream not in self._prefixes:
            info = await self._js.ensure_stream(
                stream, [self._layout.topic_subject(topic)],
                description=f"pubsub topic {topic}; id-prefix {random.randrange(1, 1 << 23)}",
                max_age=_MAX_AGE_S * 10**9)
            self._remember(stream, info)
        return stream

    def forget_stream(self, topic: str) -> None:
        """The topic's stream went away (deleted by hand): create it again when next used."""
        self._prefixes.pop(self._layout.topic_stream(topic), None)

    def _remember(self, stream: str, info: Mapping[str, Any]) -> None:
        description = info.get("config", {}).get("description", "")
        self._prefixes[stream] = int(description.rpartition(" ")[2] or 0)

    async def id_prefix(self, stream: str) -> int:
        """The random prefix of the stream's message ids (unique across topics)."""
        if stream not in self._prefixes:
            self._remember(stream, await self._js.api(f"STREAM.INFO.{stream}"))
        return self._prefixes[stream]

    # --- consumers --------------------------------------------------------------------------
    async def create_consumer(self, topic: str, subscription: str,
                              start: Mapping[str, Any]) -> None:
        stream = await self.stream(topic)
        consumer = self._layout.consumer(subscription)
        settings = {k: v for k, v in start.items() if k != "keep_origin"}
        if start.get("deliver_policy") == "new":
            # From the next stream sequence rather than "deliver new": JetStream reports an ack
            # floor of 0 until a consumer's first delivery is acked, and the start in its
            # config tells the real one (acklog.ack_floor).
            state = (await self._js.api(f"STREAM.INFO.{stream}"))["state"]
            settings.update(deliver_policy="by_start_sequence",
                            opt_start_seq=int(state["last_seq"]) + 1)
        config = {"durable_name": consumer, "ack_policy": "explicit",
                  "ack_wait": ACK_WAIT_MS * 10**6, "max_deliver": -1,
                  "max_ack_pending": 1_000_000, "max_waiting": 512, "replay_policy": "instant",
                  "filter_subject": self._layout.topic_subject(topic), **settings}
        await self._js.api(f"CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
                           {"stream_name": stream, "config": config})
        if start.get("deliver_policy") == "new" and not start.get("keep_origin"):
            # Where the subscription began: a seek never goes back beyond it (unless the topic
            # retains messages), and retained acked messages are kept from there on.
            await self._js.kv_put(self._layout.key(SUB_START, subscription),
                                  {"t": topic, "seq": settings["opt_start_seq"], "p": ""}, None)

    async def delete_consumer(self, topic: str, subscription: str) -> None:
        """Delete the consumer with its ordering record and its record of redeliveries, then
        its ack log, skip set and exactly-once leases."""
        consumer = self._layout.consumer(subscription)
        await self._js.kv_delete(self._layout.order_key(consumer), self._layout.order_stream)
        await self._js.kv_delete(self._layout.key(REDELIVERED, consumer))
        try:
            await self._js.api(f"CONSUMER.DELETE.{self._layout.topic_stream(topic)}.{consumer}")
        except NatsError as exc:
            if exc.err_code not in (STREAM_NOT_FOUND, CONSUMER_NOT_FOUND):
                raise
        # (after the consumer: acks of its deliveries are not logged for the next one)
        await self.sets.purge(self._layout.acked_all(consumer))
        await self._js.kv_delete(self._layout.leases_of(consumer))
        self.skips.forget(consumer)

    async def restart(self, subscription: str, start: Mapping[str, Any],
                      skip: Sequence[int] = (), origin: str = "") -> None:
        """Recreate the subscription's consumer at another start (purge, seek), with the
        sorted stream sequences it must not hand out (acked); `origin` (this process) tells
        the other processes."""
        topic = await self.topic_of(subscription, fresh=True)
        if not topic:
            return
        consumer = self._layout.consumer(subscription)
        await self.delete_consumer(topic, subscription)
        token = await self.skips.write(consumer, skip)
        self.skips.forget(consumer)
        notice = f"{origin}\n{Kind.SUBSCRIPTION.value}\n{subscription}".encode()
        if origin:  # before: the others drop their skip set and link before the new consumer
            await self._js.publish(self._layout.changes, notice)
        await self.create_consumer(topic, subscription,
                                   {**start, "description": skip_description(token)})
        if origin:  # and after: a stream the first one woke may have looked in between
            await self._js.publish(self._layout.changes, notice)

    # --- subscriptions' topic links -----------------------------------------------------------
    async def topic_of(self, subscription: str, fresh: bool = False) -> str:
        """The subscription's topic link ("" when detached); NotFound if it does not exist."""
        if fresh or subscription not in self._links:
            found = await self._js.kv_get(self._layout.key(Kind.SUBSCRIPTION.value,
                                                           subscription))
            if found is None:
                self._links.pop(subscription, None)
                raise NotFound(subscription)
            topic = found.value.get("t", "")
            self._links[subscription] = "" if topic in DETACHED else topic
        return self._links[subscription]

    def learn(self, subscription: str, topic: str) -> None:
        """The subscription's topic link, as read with the subscription by the resource table
        (no change dropped meanwhile)."""
        self._links[subscription] = "" if topic in DETACHED else topic

    def forget(self, subscription: str) -> None:
        """The subscription changed: read its topic link (and skip set) again when next
        needed."""
        self._links.pop(subscription, None)
        self.skips.forget(self._layout.consumer(subscription))

    async def call(self, subscription: str, call: Callable[[str, str], Awaitable[T]],
                   default: T) -> T:
        """Run `call(stream, consumer)`; refresh the cached topic link once if it is gone."""
        for fresh in (False, True):
            topic = await self.topic_of(subscription, fresh)
            if not topic:
                return default
            try:
                return await call(self._layout.topic_stream(topic),
                                  self._layout.consumer(subscription))
            except NatsError as exc:
                if exc.err_code not in (STREAM_NOT_FOUND, CONSUMER_NOT_FOUND):
                    raise
        return default
