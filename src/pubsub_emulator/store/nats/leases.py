"""Which delivery of a message is current: exactly-once lease records and redelivery records.

Both are records changed only by compare-and-set, so every process sees one history of them;
both are per message (redeliveries grouped in buckets of stream sequences), so they grow with
the backlog, not against a record's size limit.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .acks import ACK, AckId, Fetched
from .client import JetStream, Record
from .layout import REDELIVERED, Layout

_BUCKET = 1024  # stream sequences per record of redeliveries
_IN_FLIGHT = 256  # requests sent at once


def _range(found: Record | None) -> tuple[int, int]:
    """The stream sequences a summary of redeliveries covers (empty: low > high)."""
    if found is None:
        return 1, 0
    return int(found.value["lo"]), int(found.value["hi"])


def _first_bucket(found: Record) -> int:
    """The first bucket of redeliveries that may still exist."""
    return int(found.value.get("b", int(found.value["lo"]) // _BUCKET))


async def _subjects(js: JetStream, stream: str, pattern: str) -> list[str]:
    """The subjects of a stream that match a pattern (every page of them)."""
    subjects: list[str] = []
    while True:
        resp = await js.api(f"STREAM.INFO.{stream}",
                            {"subjects_filter": pattern, "offset": len(subjects)})
        page = list((resp.get("state", {}).get("subjects") or {}).keys())
        subjects += page
        if not page or len(subjects) >= int(resp.get("total", 0)):
            return subjects


class Redeliveries:
    """Stale ack ids of subscriptions without exactly-once delivery.

    JetStream applies a NAK (our modack) to a message's current delivery whatever delivery its
    reply subject names, so a modack with the ack id of an earlier delivery would move the
    current lease. A consumer's redelivered messages are recorded, before a redelivery is
    handed out, in the ordering stream: bucket records `<ns>.okey.<consumer>.rd.<sseq // 1024>`
    ({"d": {sseq: delivery count}}) and a summary `<ns>.okey.<consumer>.rd` ({"lo", "hi"}: the
    stream sequences the buckets may cover, "b": the first bucket that may exist), each changed
    by compare-and-set. A modack whose
    delivery count is below the recorded one changes nothing, as on the embedded store; one
    with no ack id in the summary's range costs one read. First deliveries write nothing (a
    message delivered once has no stale ack id). The sweeper drops the buckets below the ack
    floor; deleting or recreating the consumer drops them all (Layout.order_key).
    """

    def __init__(self, js: JetStream, layout: Layout) -> None:
        self._js = js
        self._layout = layout
        self._stream = layout.order_stream

    async def note(self, consumer: str, acks: Sequence[AckId]) -> None:
        """Record redeliveries about to be handed out."""
        if not acks:
            return
        buckets: dict[int, list[AckId]] = {}
        for ack in acks:
            buckets.setdefault(ack.sseq // _BUCKET, []).append(ack)
        seqs = [ack.sseq for ack in acks]
        await asyncio.gather(self._widen(consumer, min(seqs), max(seqs)),
                             *(self._note_bucket(consumer, bucket, items)
                               for bucket, items in buckets.items()))

    async def _widen(self, consumer: str, low: int, high: int) -> None:
        """Make the summary cover stream sequences low..high."""
        subject = self._layout.redeliveries(consumer)
        while True:
            found = await self._js.kv_get(subject, self._stream)
            lo, hi = _range(found)
            if lo <= low and high <= hi:
                return
            value = {"lo": low, "hi": high} if lo > hi else {"lo": min(lo, low),
                                                             "hi": max(hi, high)}
            value["b"] = min(_first_bucket(found), low // _BUCKET) if found else low // _BUCKET
            if await self._js.kv_put(subject, value, found.seq if found else 0):
                return

    async def _note_bucket(self, consumer: str, bucket: int, acks: list[AckId]) -> None:
        subject = self._layout.redeliveries(consumer, bucket)
        while True:
            found = await self._js.kv_get(subject, self._stream)
            counts: dict[str, int] = dict(found.value["d"]) if found else {}
            for ack in acks:
                counts[str(ack.sseq)] = max(counts.get(str(ack.sseq), 0), ack.delivered)
            if found is not None and counts == found.value["d"]:
                return
            if await self._js.kv_put(subject, {"d": counts}, found.seq if found else 0):
                return

    async def current(self, parsed: Sequence[AckId]) -> list[AckId]:
        """The ack ids that name their message's latest delivery."""
        consumers = sorted({ack.consumer for ack in parsed})
        summaries = await asyncio.gather(*(self._js.kv_get(self._layout.redeliveries(c),
                                                           self._stream) for c in consumers))
        ranges = {c: _range(found) for c, found in zip(consumers, summaries, strict=True)}

        def bucket_of(ack: AckId) -> tuple[str, int] | None:
            lo, hi = ranges[ack.consumer]
            return (ack.consumer, ack.sseq // _BUCKET) if lo <= ack.sseq <= hi else None

        wanted = sorted({b for b in map(bucket_of, parsed) if b is not None})
        records = await asyncio.gather(*(self._js.kv_get(self._layout.redeliveries(*b),
                                                         self._stream) for b in wanted))
        latest = {b: found.value["d"] if found else {}
                  for b, found in zip(wanted, records, strict=True)}
        return [ack for ack in parsed if (b := bucket_of(ack)) is None
                or ack.delivered >= latest[b].get(str(ack.sseq), 0)]

    async def counts(self, consumer: str, seqs: Sequence[int]) -> dict[int, int]:
        """The recorded delivery counts of those of a consumer's messages (stream sequences)
        that were redelivered; read only (peek.py)."""
        lo, hi = _range(await self._js.kv_get(self._layout.redeliveries(consumer), self._stream))
        wanted = sorted({seq // _BUCKET for seq in seqs if lo <= seq <= hi})
        records = await asyncio.gather(*(self._js.kv_get(self._layout.redeliveries(consumer, b),
                                                         self._stream) for b in wanted))
        recorded = {int(seq): int(count) for found in records if found is not None
                    for seq, count in found.value["d"].items()}
        return {seq: recorded[seq] for seq in seqs if seq in recorded}

    async def prune(self, needed: Mapping[str, int]) -> None:
        """Forget redeliveries below each consumer's ack floor (and of consumers gone)."""
        summaries = await _subjects(self._js, self._stream, self._layout.redeliveries("*"))
        for subject in summaries:
            consumer = subject.split(".")[-2]
            if consumer not in needed:
                await self._js.kv_delete(self._layout.redeliveries(consumer, "*"), self._stream)
                await self._js.kv_delete(subject, self._stream)
                continue
            found = await self._js.kv_get(subject, self._stream)
            if found is None:
                continue
            await self._prune_below(consumer, found, needed[consumer])
        for subject in await self._js.subjects(self._layout.keys(REDELIVERED)):
            await self._js.kv_delete(subject)  # the former per-subscription records

    async def _prune_below(self, consumer: str, found: Record, floor: int) -> None:
        """Delete a consumer's buckets of redeliveries below its ack floor (`floor`: the first
        stream sequence it may deliver) and move its summary past them."""
        lo, hi = _range(found)
        first, last = _first_bucket(found), min(floor // _BUCKET, hi // _BUCKET + 1)
        if lo >= floor and first >= last:
            return
        below = range(first, last)
        for start in range(0, len(below), _IN_FLIGHT):
            await asyncio.gather(*(
                self._js.kv_delete(self._layout.redeliveries(consumer, bucket), self._stream)
                for bucket in below[start:start + _IN_FLIGHT]))
        await self._js.kv_put(self._layout.redeliveries(consumer),  # (lost race: next time)
                              {"lo": max(lo, floor), "hi": hi, "b": max(first, last)}, found.seq)


class Leases:
    """Exactly-once delivery: which lease of a message is current.

    Each delivery's lease is a record `<ns>.lease.<consumer>.<sseq>` in the resource stream
    ({"d": delivery count, "until": ms} or {"acked": true}), changed only with compare-and-set
    on its subject sequence, so of two processes racing on a message (an ack at the deadline, a
    redelivery elsewhere) exactly one wins.
    """

    def __init__(self, js: JetStream, layout: Layout) -> None:
        self._js = js
        self._layout = layout

    def _key(self, ack: AckId) -> str:
        return self._layout.lease(ack.consumer, ack.sseq)

    async def lease(self, chosen: Sequence[Fetched], until: int) -> list[Fetched]:
        """Record the leases of fresh deliveries; drop those acked meanwhile."""
        records = await asyncio.gather(*(self._js.kv_get(self._key(f.ack)) for f in chosen))
        writes, kept = [], []
        for fetched, record in zip(chosen, records, strict=True):
            if record is not None and record.value.get("acked"):
                await self._js.publish(fetched.msg.reply, ACK)  # acked by the previous lease
                continue
            writes.append((self._key(fetched.ack),
                           json.dumps({"d": fetched.ack.delivered, "until": until}).encode(),
                           {"Nats-Expected-Last-Subject-Sequence":
                            str(record.seq if record else 0)}))
            kept.append(fetched)
        results = await self._js.publish_many(writes)
        # A failed compare-and-set: another process acked or leased it first; JetStream
        # redelivers it later if it still needs to.
        return [item for item, result in zip(kept, results, strict=True) if "error" not in result]

    async def settle(self, parsed: Sequence[AckId], ack_ids: Sequence[str], now_ms: int,
                     value: Callable[[AckId], dict[str, Any]]) -> tuple[list[AckId], list[str]]:
        """Move current leases to `value`: (their acks, the ids of the rest, which are stale)."""
        records = await asyncio.gather(*(self._js.kv_get(self._key(a)) for a in parsed))
        writes, candidates, stale = [], [], []
        for ack_id, ack, record in zip(ack_ids, parsed, records, strict=True):
            if (record is None or record.value.get("acked")
                    or record.value.get("d") != ack.delivered
                    or now_ms >= record.value.get("until", 0)):
                stale.append(ack_id)
                continue
            writes.append((self._key(ack), json.dumps(value(ack)).encode(),
                           {"Nats-Expected-Last-Subject-Sequence": str(record.seq)}))
            candidates.append((ack_id, ack))
        current = []
        for (ack_id, ack), result in zip(candidates, await self._js.publish_many(writes),
                                         strict=True):
            if "error" in result:
                stale.append(ack_id)
            else:
                current.append(ack)
        return current, stale

    async def prune(self, needed: Mapping[str, int]) -> None:
        """Drop the lease records of messages no consumer can deliver again."""
        done = []
        for subject in await _subjects(self._js, self._layout.resource_stream,
                                       self._layout.leases):
            _, _, consumer, sseq = subject.rsplit(".", 3)
            if int(sseq) < needed.get(consumer, 1 << 62):
                done.append(subject)
        for start in range(0, len(done), 256):
            await asyncio.gather(*(self._js.kv_delete(subject)
                                   for subject in done[start:start + 256]))
