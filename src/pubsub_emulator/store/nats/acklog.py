"""What subscriptions acknowledged above their ack floor, so that seeks and snapshots are exact.

JetStream 2.9 keeps a consumer's acknowledgements above its ack floor to itself (no API reads
them), and a seek recreates the consumer at a stream sequence. So the store keeps them too, in
stream `<NS>_ACKED` (subjects `<ns>.acked.>`), as sets of stream sequences: sorted, as varint
deltas, in records of at most RECORD_BYTES (a set spans as many records as it needs):
- the ack log `<ns>.acked.<consumer>.log`: every ack call appends the stream sequences it acks,
  one message per call (more only past RECORD_BYTES), sent just before the acks themselves and
  awaited with them (one round trip). What the log holds above the consumer's ack floor is
  what the consumer acknowledged there; the sweeper drops what the floor passed (AckLog.trim).
- a skip set: what a recreated consumer must not hand out, because the subscription had
  acknowledged it (a seek's or a snapshot's acked set above the new start). Its records
  `<ns>.acked.<consumer>.sk.<token>.<i>` and its marker `<ns>.acked.<consumer>.sk`
  ({"g": token, "n": records, "lo", "hi"}) are written after the old consumer is deleted and
  before the new one is created, whose description names the token (`skip <token>`); a marker
  of another token is not the consumer's. A pull acks the messages of the skip set silently;
  each process caches the set (SkipSets), dropped when a restart of the consumer is announced
  and after CACHE_S. The sweeper drops a skip set once the consumer's ack floor passes it.
- a snapshot's acked set: records `<ns>.acked.snap.<token>.<i>`, the token and the count in
  the snapshot's state record (retention.py). Sets no state record names are dropped by the
  sweeper (a deleted snapshot's, or one saved again).
Deleting or recreating a consumer purges `<ns>.acked.<consumer>.>` (topics.py).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import logging
import time
import uuid
from array import array
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from .acks import ACK_PREFIX, AckId
from .client import JetStream, NatsError, NoStream, nats_error
from .layout import Layout

log = logging.getLogger("pubsub_emulator.nats")

RECORD_BYTES = 200_000  # a record's payload at most (plus one varint), within any max_payload
CACHE_S = 5.0  # how long a process reuses a skip set it read (a restart's notice drops it)
_FEW = 8  # a subject with at most this many messages is read message by message
_BATCH = 256  # messages per fetch when reading a subject through a consumer
_IN_FLIGHT = 256  # requests sent at once
_CONSOLIDATE_AT = 16  # log messages from which the sweeper rewrites a log as one set
SKIP_PREFIX = "skip "  # in a consumer's description, before its skip set's token

Info = Callable[[], Awaitable[Mapping[str, Any] | None]]  # a consumer's info (None: gone)


# --- sets of stream sequences as records ------------------------------------------------------
def records(seqs: Iterable[int]) -> list[bytes]:
    """Sorted stream sequences as records of varint deltas (each starting from 0)."""
    limit = RECORD_BYTES
    out: list[bytes] = []
    chunk = bytearray()
    previous = 0
    for seq in seqs:
        if len(chunk) >= limit:
            out.append(bytes(chunk))
            chunk, previous = bytearray(), 0
        delta, previous = seq - previous, seq
        while delta >= 0x80:
            chunk.append((delta & 0x7F) | 0x80)
            delta >>= 7
        chunk.append(delta)
    if chunk:
        out.append(bytes(chunk))
    return out


def decode(record: bytes) -> list[int]:
    """The stream sequences of one record."""
    seqs: list[int] = []
    value = shift = previous = 0
    for byte in record:
        value |= (byte & 0x7F) << shift
        if byte & 0x80:
            shift += 7
            continue
        previous += value
        seqs.append(previous)
        value = shift = 0
    return seqs


def ack_floor(info: Mapping[str, Any]) -> int:
    """The stream sequence up to which a consumer (its info) acknowledged everything.

    (JetStream reports an ack floor of 0 until the consumer's first delivery is acked: one
    created at a start sequence has acknowledged everything before it.)
    """
    if info.get("num_ack_pending", 0) == 0:
        floor = int(info["delivered"]["stream_seq"])
    else:
        floor = int(info["ack_floor"]["stream_seq"])
    config = info.get("config", {})
    if config.get("deliver_policy") == "by_start_sequence":
        floor = max(floor, int(config.get("opt_start_seq", 0)) - 1)
    return floor


def skip_description(token: str) -> str:
    """The description of a consumer created with the skip set `token` ("" for none)."""
    return f"pubsub subscription; {SKIP_PREFIX}{token}" if token else "pubsub subscription"


def token_of(info: Mapping[str, Any]) -> str:
    """The skip set token a consumer was created with ("" if none)."""
    return str(info.get("config", {}).get("description", "")).partition(SKIP_PREFIX)[2]


class Skip:
    """A skip set: sorted stream sequences."""

    __slots__ = ("seqs",)

    def __init__(self, seqs: Iterable[int] = ()) -> None:
        self.seqs = array("q", seqs)

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int) or not self.seqs:
            return False
        at = bisect.bisect_left(self.seqs, seq)
        return at < len(self.seqs) and self.seqs[at] == seq

    def __bool__(self) -> bool:
        return bool(self.seqs)

    def above(self, seq: int) -> list[int]:
        """The sequences above `seq`."""
        return list(self.seqs[bisect.bisect_right(self.seqs, seq):])

    def count_above(self, seq: int) -> int:
        return len(self.seqs) - bisect.bisect_right(self.seqs, seq)


NO_SKIP = Skip()


class Sets:
    """Reading and writing the acked stream: records, markers, every message of a subject."""

    def __init__(self, js: JetStream, layout: Layout) -> None:
        self.js = js
        self._layout = layout
        self.stream = layout.acked_stream

    async def ensure(self) -> None:
        await self.js.ensure_stream(self.stream, self._layout.acked_subjects)

    async def publish(self, items: Sequence[tuple[str, bytes, dict[str, str] | None]]
                      ) -> list[int]:
        """Publish to the acked stream (created again if it went away); the sequences."""
        try:
            acks = await self.js.publish_many(items, checked=True)
        except NoStream:
            await self.ensure()
            acks = await self.js.publish_many(items, checked=True)
        for ack in acks:
            if "error" in ack:
                raise nats_error(ack["error"])
        return [int(ack["seq"]) for ack in acks]

    async def write(self, subject: Callable[[int], str], seqs: Sequence[int]) -> int:
        """Write a set as records `subject(0..n-1)`; returns n."""
        items = records(seqs)
        for start in range(0, len(items), _IN_FLIGHT):
            await self.publish([(subject(at), item, None) for at, item in
                                enumerate(items[start:start + _IN_FLIGHT], start)])
        return len(items)

    async def read(self, subject: Callable[[int], str], count: int) -> list[int]:
        """A set written by `write` (what is left of it, if records went missing)."""
        found: list[tuple[int, bytes] | None] = []
        for start in range(0, count, _IN_FLIGHT):
            found += await asyncio.gather(*(self.last(subject(at)) for at in
                                            range(start, min(count, start + _IN_FLIGHT))))
        if any(item is None for item in found):
            log.warning("%s: %d of %d records are missing", subject(0),
                        sum(item is None for item in found), count)
        return [seq for item in found if item is not None for seq in decode(item[1])]

    async def last(self, subject: str) -> tuple[int, bytes] | None:
        """The last message of a subject (its sequence and payload), None if it has none."""
        message = await self.js.msg_get(self.stream, {"last_by_subj": subject})
        if message is None:
            return None
        return int(message["seq"]), base64.b64decode(message.get("data") or b"")

    async def delete(self, seq: int) -> None:
        """Delete one message."""
        await self.js.api(f"STREAM.MSG.DELETE.{self.stream}", {"seq": seq})

    async def purge(self, subject: str, below: int = 0) -> None:
        """Purge a subject's messages (only those below sequence `below`, if given)."""
        await self.js.api(f"STREAM.PURGE.{self.stream}",
                           {"filter": subject, **({"seq": below} if below else {})})

    async def subjects(self, pattern: str) -> dict[str, int]:
        """The subjects matching a pattern, with their message counts (every page)."""
        found: dict[str, int] = {}
        while True:
            resp = await self.js.api(f"STREAM.INFO.{self.stream}",
                                      {"subjects_filter": pattern, "offset": len(found)})
            page = resp.get("state", {}).get("subjects") or {}
            found.update(page)
            if not page or len(found) >= int(resp.get("total", 0)):
                return found

    async def messages(self, subject: str, count: int | None = None
                       ) -> list[tuple[int, bytes]]:
        """Every message of a subject, in order: (sequence, payload); the first `count` of
        them when the caller knows how many it holds (from `subjects`)."""
        if count is None:
            count = (await self.subjects(subject)).get(subject, 0)
        if count <= _FEW:
            found: list[tuple[int, bytes]] = []
            while len(found) < count:
                message = await self.js.msg_get(self.stream, {
                    "seq": found[-1][0] + 1 if found else 1, "next_by_subj": subject})
                if message is None:
                    break
                found.append((int(message["seq"]),
                              base64.b64decode(message.get("data") or b"")))
            return found
        return await self._through_consumer(subject, count)

    async def _through_consumer(self, subject: str, count: int) -> list[tuple[int, bytes]]:
        """Up to `count` messages of a subject, read through an ephemeral consumer."""
        resp = await self.js.api(f"CONSUMER.CREATE.{self.stream}", {
            "stream_name": self.stream,
            "config": {"deliver_policy": "all", "ack_policy": "none", "filter_subject": subject,
                       "inactive_threshold": 60 * 10**9, "mem_storage": True,
                       "replay_policy": "instant"}})
        name = resp["name"]
        found: list[tuple[int, bytes]] = []
        try:
            while len(found) < count:
                got = await self.js.fetch(self.stream, name, min(_BATCH, count - len(found)))
                if not got:
                    break
                found += [(AckId(msg.reply[len(ACK_PREFIX):]).sseq, msg.data) for msg in got]
        finally:
            try:
                await self.js.api(f"CONSUMER.DELETE.{self.stream}.{name}")
            except NatsError:
                pass  # (it goes by itself once inactive)
        return found


class AckLog:
    """Every consumer's ack log (see the module docstring)."""

    def __init__(self, sets: Sets, layout: Layout) -> None:
        self._sets = sets
        self._layout = layout

    async def append(self, consumer: str, seqs: Iterable[int]) -> None:
        """Log the stream sequences an ack call acknowledges."""
        items = records(sorted(set(seqs)))
        if items:
            subject = self._layout.ack_log(consumer)
            await self._sets.publish([(subject, item, None) for item in items])

    async def read(self, consumer: str) -> tuple[list[int], int]:
        """The sequences a consumer's log holds, and the log's last sequence (0: none)."""
        found = await self._sets.messages(self._layout.ack_log(consumer))
        return [seq for _, item in found for seq in decode(item)], (found[-1][0] if found else 0)

    async def trim(self, consumer: str, created: str, info_of: Info,
                   listed: Mapping[str, Any], count: int) -> None:
        """Drop what a consumer's log holds at or below its ack floor.

        `created` is the consumer's creation time and `listed` its info when it was listed,
        `count` how many messages its log held then; `info_of()` reads its info again (None if
        it is gone). Entries above the floor, if some messages go or they are spread over
        many, are written again as one set (after the others: acks logged meanwhile stay);
        that is undone if the consumer was recreated meanwhile (a seek purged the log, and
        what was read is not the new consumer's). (The listed floor is no higher than the
        floor now: what it passed is acknowledged.)
        """
        subject = self._layout.ack_log(consumer)
        found = [(seq, decode(item)) for seq, item in await self._sets.messages(subject, count)]
        if not found:
            return
        floor, last = ack_floor(listed), found[-1][0]
        above = sum(1 for _, seqs in found if seqs and seqs[-1] > floor)  # (sorted records)
        if above == len(found) and above < _CONSOLIDATE_AT:
            return  # nothing to drop, not worth rewriting
        kept = sorted({seq for _, seqs in found for seq in seqs if seq > floor})
        written = await self._sets.publish([(subject, item, None) for item in records(kept)])
        info = await info_of()
        if info is None or info.get("created") != created:
            for seq in written:
                await self._sets.delete(seq)
            return
        await self._sets.purge(subject, last + 1)


class SkipSets:
    """Consumers' skip sets, cached by each process (see the module docstring)."""

    def __init__(self, sets: Sets, layout: Layout) -> None:
        self._sets = sets
        self._js = sets.js
        self._layout = layout
        self._cache: dict[str, tuple[float, Skip]] = {}  # consumer -> (until, skip set)
        self._generation = 0  # counts drops: a read that overlapped one is not kept

    def forget(self, consumer: str) -> None:
        self._generation += 1
        self._cache.pop(consumer, None)

    def forget_all(self) -> None:
        self._generation += 1
        self._cache.clear()

    async def write(self, consumer: str, seqs: Sequence[int]) -> str:
        """Write the skip set of a consumer about to be created; its token ("" if empty)."""
        if not seqs:
            return ""
        token = uuid.uuid4().hex[:16]
        count = await self._sets.write(
            lambda at: self._layout.skip_record(consumer, token, at), seqs)
        marker = {"g": token, "n": count, "lo": seqs[0], "hi": seqs[-1]}
        await self._sets.publish([(self._layout.skip_mark(consumer),
                                   json.dumps(marker).encode(), None)])
        return token

    async def of(self, stream: str, consumer: str, fresh: bool = False) -> Skip:
        """The consumer's skip set (read at most CACHE_S ago unless `fresh`)."""
        cached = self._cache.get(consumer)
        if cached is not None and cached[0] > time.monotonic() and not fresh:
            return cached[1]
        generation = self._generation
        skip = await self._read(stream, consumer)
        if skip is None:
            return NO_SKIP  # (a restart in progress: read again next time)
        if generation == self._generation:
            self._cache[consumer] = (time.monotonic() + CACHE_S, skip)
        return skip

    async def _read(self, stream: str, consumer: str) -> Skip | None:
        found = await self._sets.last(self._layout.skip_mark(consumer))
        if found is None:
            return NO_SKIP
        marker = json.loads(found[1])
        if token_of(await self._js.consumer_info(stream, consumer)) != marker["g"]:
            return None
        return Skip(await self._sets.read(
            lambda at: self._layout.skip_record(consumer, marker["g"], at), int(marker["n"])))

    async def prune(self, consumer: str, info_of: Info) -> None:
        """Drop a consumer's skip set once its ack floor passed it (`info_of()`: the
        consumer's info, None if it is gone)."""
        mark = self._layout.skip_mark(consumer)
        found = await self._sets.last(mark)
        info = await info_of() if found is not None else None
        if found is None or info is None:
            return
        marker = json.loads(found[1])
        if token_of(info) == marker["g"] and ack_floor(info) >= int(marker["hi"]):
            await self._sets.purge(self._layout.skip_record(consumer, marker["g"], "*"))
            await self._sets.purge(mark, found[0] + 1)  # (unless written again meanwhile)
