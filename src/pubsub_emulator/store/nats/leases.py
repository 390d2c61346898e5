"""Which delivery of a message is current: exactly-once lease records and redelivery records.

Both are records in the resource stream changed only by compare-and-set, so every process
sees one history of them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .acks import ACK, AckId, Fetched
from .client import JetStream
from .layout import REDELIVERED, Layout, unb64


class Redeliveries:
    """Stale ack ids of subscriptions without exactly-once delivery.

    JetStream applies a NAK (our modack) to a message's current delivery whatever delivery its
    reply subject names, so a modack with the ack id of an earlier delivery would move the
    current lease. Each consumer keeps a record of its redelivered messages ({"d": {sseq:
    delivery count}}, written before a redelivery is handed out, by compare-and-set, pruned
    below the ack floor by the sweeper); a modack whose delivery count is below the recorded
    one changes nothing, as on the embedded store. First deliveries write nothing: a message
    delivered once has no stale ack id.
    """

    def __init__(self, js: JetStream, layout: Layout) -> None:
        self._js = js
        self._layout = layout

    async def note(self, consumer: str, acks: Sequence[AckId]) -> None:
        """Record redeliveries about to be handed out."""
        key = self._layout.key(REDELIVERED, consumer)
        while True:
            found = await self._js.kv_get(key)
            counts: dict[str, int] = found.value["d"] if found else {}
            for ack in acks:
                counts[str(ack.sseq)] = max(counts.get(str(ack.sseq), 0), ack.delivered)
            if await self._js.kv_put(key, {"d": counts}, found.seq if found else 0):
                return

    async def current(self, parsed: Sequence[AckId]) -> list[AckId]:
        """The ack ids that name their message's latest delivery."""
        consumers = sorted({ack.consumer for ack in parsed})
        records = await asyncio.gather(*(self._js.kv_get(self._layout.key(REDELIVERED, c))
                                         for c in consumers))
        latest = {c: (r.value["d"] if r else {}) for c, r in zip(consumers, records, strict=True)}
        return [ack for ack in parsed
                if ack.delivered >= latest[ack.consumer].get(str(ack.sseq), 0)]

    async def prune(self, needed: Mapping[str, int]) -> None:
        """Forget redeliveries below each consumer's ack floor (and of consumers gone)."""
        for subject in await self._js.subjects(self._layout.keys(REDELIVERED)):
            consumer = unb64(subject.rpartition(".")[2])
            found = await self._js.kv_get(subject)
            if found is None:
                continue
            if consumer not in needed:
                await self._js.kv_delete(subject)
                continue
            counts = {seq: n for seq, n in found.value["d"].items()
                      if int(seq) >= needed[consumer]}
            if len(counts) < len(found.value["d"]):
                await self._js.kv_put(subject, {"d": counts}, found.seq)  # (lost race: next time)


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
        for subject in await self._js.subjects(self._layout.leases):
            _, _, consumer, sseq = subject.rsplit(".", 3)
            if int(sseq) < needed.get(consumer, 1 << 62):
                done.append(subject)
        for start in range(0, len(done), 256):
            await asyncio.gather(*(self._js.kv_delete(subject)
                                   for subject in done[start:start + 256]))
