"""Backlog figures of subscriptions for metrics (MessageLog.stats), from their consumers.

Per subscription, at each scrape: the consumer's info (JetStream counts what it has not
delivered, `num_pending`, and what it delivered and awaits an ack for, `num_ack_pending`), its
skip set (messages acknowledged before a seek, pending but never handed out: left out, as
`backlog()` does), and the stored message just above its ack floor, whose `Ps-Time` header is
the publish time of the oldest unacked message. That message may have been acked on its own
(acks above the floor are not in the consumer's info): the age shown is then older than the
true one, an upper bound, exact when acks come in order. Outstanding messages are those
JetStream awaits an ack for: leased, or waiting out a nack's delay.

Three JetStream requests per subscription, CONCURRENCY subscriptions at a time.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
from collections.abc import Sequence
from typing import Any

from ..base import NotFound, StoreUnavailable, SubscriptionStats
from .acklog import ack_floor
from .client import JetStream, NatsError, parse_headers
from .layout import H_TIME
from .topics import Topics

CONCURRENCY = 16
DETACHED = SubscriptionStats(0, 0, None)  # no consumer: nothing to deliver


async def subscription_stats(js: JetStream, topics: Topics, subscriptions: Sequence[str]
                             ) -> dict[str, SubscriptionStats]:
    """The figures of each named subscription that exists."""
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(name: str) -> SubscriptionStats | None:
        async def of_consumer(stream: str, consumer: str) -> SubscriptionStats:
            return await _consumer_stats(js, topics, stream, consumer)

        async with gate:
            try:
                return await topics.call(name, of_consumer, DETACHED)
            except NotFound:
                return None
            except NatsError as exc:  # this one's figures are lost; the server's down: raise
                if isinstance(exc, StoreUnavailable):
                    raise
                return None

    figures = await asyncio.gather(*(one(name) for name in subscriptions))
    return {name: found for name, found in zip(subscriptions, figures, strict=True)
            if found is not None}


async def _consumer_stats(js: JetStream, topics: Topics, stream: str, consumer: str
                          ) -> SubscriptionStats:
    info = await js.consumer_info(stream, consumer)
    skip = await topics.skips.of(stream, consumer)
    skipped = skip.count_above(int(info["delivered"]["stream_seq"])) if skip else 0
    outstanding = int(info.get("num_ack_pending", 0))
    unacked = max(0, int(info.get("num_pending", 0)) - skipped) + outstanding
    if not unacked:
        return SubscriptionStats(0, 0, None)
    first = ack_floor(info) + 1
    seqs = getattr(skip, "seqs", ())
    index = bisect.bisect_left(seqs, first)
    while index < len(seqs) and seqs[index] == first:  # acked before a seek: not a backlog
        first, index = first + 1, index + 1
    oldest = await _publish_time(js, stream, first, info.get("config", {}))
    return SubscriptionStats(unacked, outstanding, oldest)


async def _publish_time(js: JetStream, stream: str, seq: int, config: dict[str, Any]
                        ) -> int | None:
    """The publish time of the first message of the consumer's subject from `seq` on."""
    request: dict[str, Any] = {"seq": seq}
    if config.get("filter_subject"):
        request["next_by_subj"] = config["filter_subject"]
    try:
        found = await js.api(f"STREAM.MSG.GET.{stream}", request)
    except NatsError:  # gone (swept, deleted): no age to tell
        return None
    headers = parse_headers(base64.b64decode(found["message"].get("hdrs") or b""))
    published = int(headers.get(H_TIME, 0))
    return published or None
