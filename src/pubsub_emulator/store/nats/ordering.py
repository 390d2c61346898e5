"""Per-key ordering on JetStream (not native on 2.9): one record per ordered subscription.

The record is `<ns>.okey.<consumer>` in the ordering stream, changed only by compare-and-set
(so every process sees one history):
  {"c": the consumer's creation time (a record of an older consumer is void),
   "hi": every keyed message up to this stream sequence that is not acked has an entry,
   "k": {ordering key: [[sseq, reply subject, holds, state, delivered], ...] by sseq}}
An entry is a fetched (or seen) message of the key that is not acked; state is
L leased, W waiting for its redelivery (nacked, over a byte budget), P parked (held back
behind an earlier message of its key, sent back with a long delay), G seen by another
process's pull that has not recorded it yet. A keyed message is delivered only when every
earlier entry of its key is delivered in the same pull, else it is parked; an ack of a
key's message sends the parked ones at the front of the key back at once, a nack sends the
key's later leased and parked messages back with it, in order. A park is not a delivery
attempt: `holds` counts them and the attempt reported is delivered - holds.
See docs/nats.md for the limits of this scheme.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ..base import Accepts
from .acks import ACK, NAK, AckId, Fetched, nak
from .client import JetStream, NatsError, parse_headers
from .layout import H_KEY, H_SIZE, H_SKIP, Layout

_PARK_MS = 30_000  # how long a message held back behind its ordering key waits at most
PARK = nak(_PARK_MS)

Send = tuple[str, bytes]  # (reply subject, ack or nack body)
Entry = list[Any]  # [sseq, reply subject, holds, state, delivered]
Nack = Callable[[AckId, int], bytes]  # the nack body of an ack id at a delivery attempt


class _Pending(NamedTuple):
    """A message of the pull being ordered."""

    fetched: Fetched
    key: str  # its ordering key, "" for none
    over: bool  # over the pull's byte budget: goes back, waiting


def entry_of(entries: list[Entry], seq: int, create: bool = True) -> Entry | None:
    """The ordering entry of `seq` in a key's entries (sorted by sseq), added if `create`."""
    at = 0
    for at, entry in enumerate(entries):  # noqa: B007 - `at` is used after the loop
        if entry[0] == seq:
            return entry
        if entry[0] > seq:
            break
    else:
        at = len(entries)
    if not create:
        return None
    entry = [seq, "", 0, "G", 0]
    entries.insert(at, entry)
    return entry


class KeyOrdering:
    """The ordering records of ordered subscriptions."""

    def __init__(self, js: JetStream, layout: Layout) -> None:
        self._js = js
        self._layout = layout

    async def order(self, stream: str, consumer: str, chosen: Sequence[Fetched],
                    over: Sequence[Fetched], attempts: dict[int, int],
                    accepts: Accepts | None) -> list[Fetched]:
        """Of a pull's messages, those per-key ordering lets out now (the rest go back).

        `over` are those past the pull's byte budget, to be sent back once recorded;
        `attempts` gets the delivery attempt of each message let out (holds left out).
        """
        subject = self._layout.order_key(consumer)
        batch = {f.ack.sseq: _Pending(f, f.headers.get(H_KEY, ""), False) for f in chosen}
        batch.update({f.ack.sseq: _Pending(f, f.headers.get(H_KEY, ""), True) for f in over})
        top = max(batch)
        looked: dict[int, str] = {}
        while True:
            record, last = await self._read(subject, stream, consumer)
            hi = record["hi"]
            keys: dict[str, list[Entry]] = record["k"]
            # Messages between what the record covers and this pull's went to other pulls
            # (maybe not recorded yet): their keys are read from the stream.
            gap = [seq for seq in range(hi + 1, top) if seq not in batch and seq not in looked]
            await self._look_up(stream, consumer, gap, looked, accepts)
            for seq in range(hi + 1, top):
                if seq not in batch and looked.get(seq):
                    entry_of(keys.setdefault(looked[seq], []), seq)
            deliver, sends = _place(keys, hi, batch, attempts)
            record["hi"] = max(hi, top)
            record["k"] = {k: v for k, v in keys.items() if v}
            if await self._js.kv_put(subject, record, last):
                await self._js.send(sends)
                parked = {reply for reply, body in sends if body == PARK}
                if parked:
                    await self._unpark_released(subject, parked)
                return deliver
            attempts.clear()

    async def _read(self, subject: str, stream: str, consumer: str
                    ) -> tuple[dict[str, Any], int]:
        """The consumer's record and its sequence (a fresh one if void)."""
        found, info = await asyncio.gather(
            self._js.kv_get(subject, self._layout.order_stream),
            self._js.consumer_info(stream, consumer))
        created = str(info.get("created", ""))
        if found is None or found.value.get("c") != created:
            return ({"c": created, "k": {}, "hi": int(info["ack_floor"]["stream_seq"])},
                    found.seq if found else 0)
        return found.value, found.seq

    async def _look_up(self, stream: str, consumer: str, seqs: list[int],
                       looked: dict[int, str], accepts: Accepts | None) -> None:
        """Note the ordering keys of stored messages in `looked`."""
        for start in range(0, len(seqs), 256):
            chunk = seqs[start:start + 256]
            found_keys = await asyncio.gather(*(self._key_of(stream, consumer, seq, accepts)
                                                for seq in chunk))
            looked.update(zip(chunk, found_keys, strict=True))

    async def _key_of(self, stream: str, consumer: str, seq: int,
                      accepts: Accepts | None) -> str:
        """The ordering key of a stored message ("" if none, gone, or not for the consumer)."""
        try:
            resp = await self._js.api(f"STREAM.MSG.GET.{stream}", {"seq": seq})
        except NatsError:
            return ""
        headers = parse_headers(base64.b64decode(resp["message"].get("hdrs") or b""))
        key = headers.get(H_KEY, "")
        if not key or consumer in headers.get(H_SKIP, "").split(","):
            return ""
        if accepts is not None:
            data = base64.b64decode(resp["message"].get("data") or b"")
            if not accepts(data[:int(headers.get(H_SIZE, len(data)))]):
                return ""
        return key

    async def _unpark_released(self, subject: str, replies: set[str]) -> None:
        """Send back at once what was released while this process was parking it.

        A release (after the earlier message's ack) may reach the server before the park it
        undoes; the park was processed before this read, so what the read shows released (state
        W, not fetched again since) is sent back once more, after the park.
        """
        found = await self._js.kv_get(subject, self._layout.order_stream)
        if found is None:
            return
        again = [(e[1], NAK) for entries in found.value["k"].values() for e in entries
                 if e[3] == "W" and e[1] in replies]
        await self._js.send(again)

    async def settle(self, parsed: Sequence[AckId], nack: Nack | None
                     ) -> dict[int, list[Send]]:
        """Record acks (nack None) or nacks of ordered messages; returns the sends by sseq.

        An ack drops the message's entry and sends back the parked messages at the front of its
        key; a nack (`nack(ack, attempt)` gives its body) marks it waiting and sends the key's
        later leased or parked messages back with the same body, to come again after it.
        """
        by_consumer: dict[str, list[AckId]] = {}
        for ack in parsed:
            by_consumer.setdefault(ack.consumer, []).append(ack)
        result: dict[int, list[Send]] = {}
        for consumer, acks in by_consumer.items():
            for seq, items in (await self._settle(consumer, acks, nack)).items():
                result.setdefault(seq, []).extend(items)
        return result

    async def _settle(self, consumer: str, acks: list[AckId], nack: Nack | None
                      ) -> dict[int, list[Send]]:
        subject = self._layout.order_key(consumer)
        while True:
            found = await self._js.kv_get(subject, self._layout.order_stream)
            keys: dict[str, list[Entry]] = found.value["k"] if found else {}
            sends: dict[int, list[Send]] = {}
            changed = _settle_entries(keys, acks, nack, sends)
            if not changed:
                return sends
            assert found is not None  # (entries changed: there is a record)
            if await self._js.kv_put(
                    subject, {**found.value, "k": {k: v for k, v in keys.items() if v}},
                    found.seq):
                return sends


def _place(keys: dict[str, list[Entry]], hi: int, batch: dict[int, _Pending],
           attempts: dict[int, int]) -> tuple[list[Fetched], list[Send]]:
    """Decide, in the record, what of a pull goes out: (deliveries, sends back)."""
    deliver: list[Fetched] = []
    sends: list[Send] = []
    delivering: set[int] = set()
    for seq in sorted(batch):
        fetched, key, is_over = batch[seq]
        reply = fetched.msg.reply
        if not key:
            if is_over:
                sends.append((reply, NAK))
            else:
                deliver.append(fetched)
            continue
        entries = keys.setdefault(key, [])
        entry = entry_of(entries, seq, create=seq > hi)
        if entry is None:  # covered by the record and without entry: acked
            sends.append((reply, ACK))
            continue
        previous = entry[3]
        entry[1], entry[4] = reply, fetched.ack.delivered
        if is_over or any(e[0] not in delivering for e in entries if e[0] < seq):
            entry[2] += 1  # fetched, not delivered: not an attempt
            entry[3] = "W" if is_over else "P"
            sends.append((reply, NAK if is_over else PARK))
            continue
        entry[3] = "L"
        delivering.add(seq)
        attempts[seq] = max(1, fetched.ack.delivered - entry[2])
        deliver.append(fetched)
        if previous == "L":
            # Its lease ran out: the key's later leased messages come again after it.
            for later in entries:
                if later[0] > seq and later[3] == "L" and later[0] not in batch:
                    later[3] = "P"
                    sends.append((later[1], PARK))
    return deliver, sends


def _settle_entries(keys: dict[str, list[Entry]], acks: Sequence[AckId], nack: Nack | None,
                    sends: dict[int, list[Send]]) -> bool:
    """Apply acks or nacks to a record's entries, noting the sends; True if any changed."""
    where = {e[0]: (k, e) for k, entries in keys.items() for e in entries}
    changed = False
    for ack in acks:
        key, entry = where.get(ack.sseq, ("", None))
        if nack is None:
            sends.setdefault(ack.sseq, []).append((ack.subject, ACK))
            if entry is None:
                continue
            entries = keys[key]
            entries.remove(entry)
            changed = True
            for later in entries:
                if later[3] != "P":
                    break
                later[3] = "W"
                sends.setdefault(later[0], [(later[1], NAK)])
            continue
        body = nack(ack, ack.delivered - (entry[2] if entry else 0))
        sends[ack.sseq] = [(ack.subject, body)]
        if entry is None:
            continue
        entry[3] = "W"
        changed = True
        for later in keys[key]:
            if later[0] > ack.sseq and later[3] in ("L", "P"):
                later[3] = "W"
                sends.setdefault(later[0], [(later[1], body)])
    return changed
