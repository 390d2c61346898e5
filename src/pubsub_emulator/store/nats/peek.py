"""Peek: a subscription's unacknowledged messages, read without touching its consumer.

A fetch from the subscription's consumer would lease what it returns and count a delivery, so
peek never fetches. It reads the consumer's info (its ack floor and the last stream sequence
it delivered), the ack log and skip set (acklog.py: what was acknowledged above the floor), then
the topic stream itself from the floor up, message by message by stream sequence
(`STREAM.MSG.GET`, a few hundred at a time), leaving out what was acknowledged and what the
subscription's filter rejected when it was published (the `Ps-Skip` header), until it has as
many as asked for: a large backlog costs what the first messages cost. Large messages are read
whole from their pieces (pieces.py), as a pull does, but one whose pieces are gone is only left
out, not terminated.

What peek says of each message, from records other parts of the store keep:
- delivery attempt: 0 above the last stream sequence the consumer delivered; below it, the
  exactly-once lease record's delivery count (leases.py), else the recorded redelivery count,
  else 1;
- lease: known only under exactly-once delivery (the lease record's "until"). JetStream keeps
  the lease of any other delivery to itself (no API reads a consumer's pending messages), so a
  delivered, unacknowledged message of a subscription without exactly-once is reported with
  `leased_until_ms` None, whether it is leased or waiting for its redelivery.
Differences from the embedded store (docs/nats.md, Peek): a message a filter rejected only when
delivered (the publishing process did not know the filter yet) still shows, and so does one an
exactly-once lease that just ended was about to hand out; on an ordered subscription the
delivery count of a message held back behind its key includes the holds.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Container, Sequence
from typing import Any, NamedTuple

from ..base import Pending, stamp
from .acklog import ack_floor
from .acks import AckId, Fetched
from .client import JetStream, parse_headers
from .layout import H_PIECES, H_SIZE, H_SKIP, H_TIME, Layout
from .leases import Redeliveries
from .pieces import Pieces
from .topics import Topics

_IN_FLIGHT = 256  # stream messages read at once


class Stored(NamedTuple):
    """A message read from a topic stream by sequence (shaped as a fetched one: no reply)."""

    data: bytes
    headers: dict[str, str]
    reply: str = ""


class _Found(NamedTuple):
    """An unacknowledged message peek found, before its delivery state is known."""

    sseq: int
    fetched: Fetched


class Peek:
    """MessageLog.peek for NATS (see the module docstring)."""

    def __init__(self, js: JetStream, layout: Layout, topics: Topics, pieces: Pieces,
                 redeliveries: Redeliveries, id_scale: int) -> None:
        self._js = js
        self._layout = layout
        self._topics = topics
        self._pieces = pieces
        self._redeliveries = redeliveries
        self._id_scale = id_scale  # message id = the stream's id prefix * this + sequence

    async def peek(self, subscription: str, max_messages: int, now_ms: int) -> list[Pending]:
        async def peek(stream: str, consumer: str) -> list[Pending]:
            return await self._peek(stream, consumer, max_messages, now_ms)

        if max_messages <= 0:
            await self._topics.topic_of(subscription)  # (NotFound all the same)
            return []
        return await self._topics.call(subscription, peek, [])

    async def _peek(self, stream: str, consumer: str, max_messages: int, now_ms: int
                    ) -> list[Pending]:
        info, stream_info, skip, (logged, _) = await asyncio.gather(
            self._js.consumer_info(stream, consumer), self._js.api(f"STREAM.INFO.{stream}"),
            self._topics.skips.of(stream, consumer), self._topics.acklog.read(consumer))
        delivered = int(info["delivered"]["stream_seq"])
        last = max(int(stream_info["state"]["last_seq"]), delivered)
        acked = _Acked(set(logged), skip)
        found = await self._unacked(stream, consumer, ack_floor(info), last, acked,
                                    max_messages)
        attempts, leases = await self._delivery_state(
            consumer, [f.sseq for f in found if f.sseq <= delivered], now_ms)
        found = [f for f in found if f.sseq not in leases or leases[f.sseq] is not None]
        whole = await self._pieces.whole(stream, [f.fetched for f in found
                                                  if H_PIECES in f.fetched.headers])
        prefix = await self._topics.id_prefix(stream)
        peeked = []
        for item in found:
            headers, size = item.fetched.headers, item.fetched.size
            if H_PIECES in headers and item.sseq not in whole:
                continue  # (its pieces are gone: a pull would drop it)
            raw = whole.get(item.sseq, item.fetched.msg.data[:size])
            message = stamp(raw, str(prefix * self._id_scale + item.sseq),
                            int(headers.get(H_TIME, 0)))
            lease = leases.get(item.sseq)
            peeked.append(Pending(message, attempts.get(item.sseq, 0),
                                  lease[1] if lease is not None and lease[1] > now_ms else None))
        return peeked

    async def _unacked(self, stream: str, consumer: str, floor: int, last: int,
                       acked: Container[int], wanted: int) -> list[_Found]:
        """The first `wanted` messages above the ack floor that are neither acknowledged nor
        rejected by the subscription's filter, read by stream sequence."""
        found: list[_Found] = []
        seq = floor + 1
        while len(found) < wanted and seq <= last:
            batch: list[int] = []
            while seq <= last and len(batch) < min(wanted - len(found), _IN_FLIGHT):
                if seq not in acked:
                    batch.append(seq)
                seq += 1
            for sseq, stored in zip(batch, await asyncio.gather(
                    *(self._read(stream, s) for s in batch)), strict=True):
                if stored is None or consumer in stored.headers.get(H_SKIP, "").split(","):
                    continue  # gone (swept, a message the stream deleted) or filtered out
                size = int(stored.headers.get(H_SIZE, len(stored.data)))
                ack = AckId(f"{stream}.{consumer}.0.{sseq}.0.0.0")  # (names the message)
                found.append(_Found(sseq, Fetched(stored, ack, size)))
        return found[:wanted]

    async def _read(self, stream: str, seq: int) -> Stored | None:
        """A topic stream's message by sequence (None if there is none)."""
        message = await self._js.msg_get(stream, {"seq": seq})
        if message is None:
            return None
        return Stored(base64.b64decode(message.get("data") or b""),
                      parse_headers(base64.b64decode(message.get("hdrs") or b"")))

    async def _delivery_state(self, consumer: str, delivered: Sequence[int], now_ms: int
                              ) -> tuple[dict[int, int], dict[int, tuple[int, int] | None]]:
        """Of messages the consumer delivered: their delivery counts, and their exactly-once
        lease records by sequence ((count, until), None for one acknowledged)."""
        if not delivered:
            return {}, {}
        leases: dict[int, tuple[int, int] | None] = {}
        if await self._js.subjects(self._layout.leases_of(consumer)):  # exactly-once
            for start in range(0, len(delivered), _IN_FLIGHT):
                chunk = delivered[start:start + _IN_FLIGHT]
                records = await asyncio.gather(*(self._js.kv_get(self._layout.lease(consumer, s))
                                                 for s in chunk))
                leases.update((s, _lease(found.value)) for s, found
                              in zip(chunk, records, strict=True) if found is not None)
        counts = await self._redeliveries.counts(consumer, [s for s in delivered
                                                            if s not in leases])
        attempts = {s: max(1, counts.get(s, 0)) for s in delivered}
        attempts.update((s, max(1, lease[0])) for s, lease in leases.items() if lease)
        return attempts, leases


def _lease(value: dict[str, Any]) -> tuple[int, int] | None:
    """An exactly-once lease record as (delivery count, until ms); None if acknowledged."""
    if value.get("acked"):
        return None
    return int(value.get("d", 1)), int(value.get("until", 0))


class _Acked:
    """Stream sequences acknowledged above the ack floor: the ack log's and the skip set's."""

    def __init__(self, logged: set[int], skip: Container[int]) -> None:
        self._logged = logged
        self._skip = skip

    def __contains__(self, seq: object) -> bool:
        return seq in self._logged or seq in self._skip
