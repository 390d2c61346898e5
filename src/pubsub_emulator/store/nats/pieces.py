"""Messages larger than one NATS message, stored as pieces in the blob stream.

nats-server takes a message (headers included) up to its `max_payload`, 1 MB by default;
Cloud Pub/Sub takes messages and publish requests up to 10 MB. A message whose stored form
(with its headers) does not fit is stored as
- in stream `<NS>_BLOB` (file storage, the store's replicas, direct gets allowed, max age 32
  days): an empty *mark* `<ns>.blob.<topic hash>.m`, then the message as published cut into
  pieces of `max_payload` - 4 KiB, subject `<ns>.blob.<topic hash>.p` (every large message of
  one publish call in one round trip);
- then, once JetStream has stored every piece, the usual message in the topic stream, as a
  *reference*: the message without its data field (its attributes and ordering key, read at the
  wire level: so filters and the ordering look-ups read it as they read a small message) with
  the usual headers (Ps-Key, Ps-Time, Ps-Size with the whole message's size, so byte limits
  count the real size) and `Ps-Pieces: <sha-256 of the message> <sequences of its pieces>`.
Small messages are stored as before, byte for byte. The delivering process reads the pieces
(direct gets, concurrently; a replica that lacks one is asked again through the stream leader),
checks size and digest, and hands out the whole message. A reference whose pieces are gone or
do not match (possible only for a publish that failed, see below) is terminated, with an error
in the log.

Reclaiming, by the sweeper, after it purged a topic stream: the topic's marks and pieces stored
more than RECLAIM_MARGIN (10 min) before the first message the topic stream still holds (when
it holds none: before now) are purged. A publish writes no reference more than MAX_WRITE_S
(60 s) after it began writing its pieces (it fails UNAVAILABLE instead), and a topic stream
only gets messages after those it holds, so the pieces of every message that is or will be
referred to stay (the servers' and processes' clocks agreeing within the margin less
MAX_WRITE_S). Pieces no reference points to (a publish that failed or crashed between its
pieces and its reference) are harmless and go the same way; the blob stream's max age (the
topic streams' 31 days plus one) takes whatever is left (topic streams deleted by hand). A
deleted topic's stream is emptied by the sweeper as any other: its pieces follow.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import logging
import re
import time
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ..base import PayloadTooLarge, StoreUnavailable
from .acks import TERM, Fetched
from .client import (
    STREAM_NOT_FOUND,
    JetStream,
    NatsError,
    NoStream,
    header_bytes,
    nats_error,
)
from .layout import H_PIECES, Layout

log = logging.getLogger("pubsub_emulator.nats")

# The smallest max_payload the store runs with: a reference carries a message's attributes
# (up to some 135 KB under Pub/Sub's limits) and headers in one NATS message.
MIN_MAX_PAYLOAD = 256 * 1024
PIECE_HEADROOM = 4096  # a piece is max_payload less this (room for headers)
STAMP_BYTES = 32  # at least what base.stamp adds to a message (its publish time)
MAX_WRITE_S = 60.0  # longest time from writing pieces to writing their reference
RECLAIM_MARGIN_NS = 10 * 60 * 10**9
_BLOB_MAX_AGE_S = 32 * 24 * 3600
_READS = 16  # pieces one pull reads at once

Item = tuple[str, bytes, dict[str, str] | None]  # (subject, payload, headers), as published


class BlobState(NamedTuple):
    """What the sweeper reads of the blob stream before it reads any topic stream."""

    topics: set[str]  # topic hashes with marks
    last_seq: int
    last_ns: int  # server time of its last message


def without_data(raw: bytes) -> bytes:
    """A serialized PubsubMessage without its data field (field 1): its attributes, ordering key
    and any other field, found at the wire level (nothing is decoded)."""
    out = bytearray()
    pos, end = 0, len(raw)
    while pos < end:
        start = pos
        key, pos = _varint(raw, pos)
        wire = key & 7
        if wire == 0:
            pos = _varint(raw, pos)[1]
        elif wire == 2:
            length, pos = _varint(raw, pos)
            pos += length
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        else:
            raise ValueError("not a serialized message")
        if key >> 3 != 1:
            out += raw[start:pos]
    if pos != end:
        raise ValueError("a truncated serialized message")
    return bytes(out)


def _varint(raw: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = raw[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def ranges(seqs: Sequence[int]) -> str:
    """Stream sequences as `a-b,c`: pieces written in one round trip are mostly consecutive."""
    spans: list[list[int]] = []
    for seq in seqs:
        if spans and seq == spans[-1][1] + 1:
            spans[-1][1] = seq
        else:
            spans.append([seq, seq])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in spans)


def unranges(text: str) -> list[int]:
    seqs: list[int] = []
    for span in text.split(","):
        first, _, last = span.partition("-")
        seqs.extend(range(int(first), int(last or first) + 1))
    return seqs


_TIME = re.compile(r"^(\d+-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def time_ns(stamp: str) -> int:
    """A JetStream time (RFC 3339, to the nanosecond) in nanoseconds since the epoch."""
    found = _TIME.match(stamp)
    if not found:
        raise ValueError(f"not a JetStream time: {stamp!r}")
    zone = found.group(3)
    when = datetime.datetime.fromisoformat(found.group(1) + ("+00:00" if zone == "Z" else zone))
    return int(when.timestamp()) * 10**9 + int((found.group(2) or "0").ljust(9, "0")[:9])


class Pieces:
    """The blob stream: writing, reading and reclaiming large messages' pieces."""

    def __init__(self, js: JetStream, layout: Layout) -> None:
        self._js = js
        self._layout = layout
        self._stream = layout.blob_stream

    async def start(self) -> None:
        """Check the server's max_payload, make sure the blob stream exists."""
        limit = self._js.max_payload
        if limit < MIN_MAX_PAYLOAD:
            raise ValueError(
                f"the NATS server's max_payload is {limit} bytes; the emulator needs at least "
                f"{MIN_MAX_PAYLOAD // 1024} KiB (a message's attributes travel in one NATS "
                f"message): set max_payload to 1MB (nats-server's default) or more in the "
                f"server's configuration")
        await self._ensure()

    async def _ensure(self) -> None:
        await self._js.ensure_stream(self._stream, self._layout.blob_subjects,
                                     max_age=_BLOB_MAX_AGE_S * 10**9, allow_direct=True)

    # --- publishing -------------------------------------------------------------------------
    async def store(self, topic_hash: str, items: list[Item], large: Mapping[int, bytes]
                    ) -> None:
        """Write the pieces of the messages `large` names (index in `items` -> message as
        published), then make their items references, in place. PayloadTooLarge, with nothing
        written, if a reference would not fit either."""
        limit = self._js.max_payload
        size = limit - PIECE_HEADROOM
        mark, piece = self._layout.blob_mark(topic_hash), self._layout.blob_piece(topic_hash)
        batch: list[Item] = []
        refs: dict[int, tuple[int, int, str, bytes]] = {}  # index -> pieces, digest, head
        for index, raw in large.items():
            subject, _, headers = items[index]
            count = -(-len(raw) // size)
            head = without_data(raw)
            # (sequences' text at its longest: every piece apart)
            reference = {**(headers or {}), H_PIECES: "x" * (65 + 21 * count)}
            if len(head) + header_bytes(reference) > limit:
                raise PayloadTooLarge(
                    f"a message's attributes and headers ({len(head)} + "
                    f"{header_bytes(reference)} bytes) do not fit in the NATS server's "
                    f"max_payload ({limit} bytes)")
            batch.append((mark, b"", None))
            refs[index] = (len(batch), count, hashlib.sha256(raw).hexdigest(), head)
            batch.extend((piece, raw[at:at + size], None) for at in range(0, len(raw), size))
        started = time.monotonic()
        acks = await self._write(batch)
        if time.monotonic() - started > MAX_WRITE_S:
            raise StoreUnavailable("writing a large message's pieces took too long")
        for index, (first, count, digest, head) in refs.items():
            subject, _, headers = items[index]
            seqs = ranges([ack["seq"] for ack in acks[first:first + count]])
            items[index] = (subject, head, {**(headers or {}), H_PIECES: f"{digest} {seqs}"})

    async def _write(self, batch: list[Item]) -> list[dict]:
        try:
            acks = await self._js.publish_many(batch)
        except NoStream:  # the blob stream went away (deleted by hand): create it again
            await self._ensure()
            acks = await self._js.publish_many(batch)
        for ack in acks:
            if "error" in ack:
                raise nats_error(ack["error"])
        return acks

    # --- delivering -------------------------------------------------------------------------
    async def load(self, stream: str, chosen: Sequence[Fetched]
                   ) -> tuple[list[Fetched], dict[int, bytes]]:
        """The whole messages of the references among `chosen`, by stream sequence; and
        `chosen` without those that cannot be read whole (terminated, with an error logged)."""
        refs = [f for f in chosen if H_PIECES in f.headers]
        whole = await self.whole(stream, refs)
        for fetched in refs:
            if fetched.ack.sseq not in whole:
                await self._js.publish(fetched.msg.reply, TERM)
        return [f for f in chosen if H_PIECES not in f.headers or f.ack.sseq in whole], whole

    async def whole(self, stream: str, refs: Sequence[Fetched]) -> dict[int, bytes]:
        """The whole messages of references, by stream sequence, read without changing
        anything (one whose pieces are gone or do not match is left out, with an error
        logged)."""
        topic_hash = self._layout.stream_hash(stream)
        gate = asyncio.Semaphore(_READS)
        read = await asyncio.gather(*(self._read(topic_hash, f, gate) for f in refs))
        return {f.ack.sseq: raw for f, raw in zip(refs, read, strict=True) if raw is not None}

    async def _read(self, topic_hash: str, fetched: Fetched, gate: asyncio.Semaphore
                    ) -> bytes | None:
        digest, _, seqs = fetched.headers[H_PIECES].partition(" ")
        parts = await asyncio.gather(*(self._piece(seq, gate) for seq in unranges(seqs)))
        expected = self._layout.blob_piece(topic_hash)
        if all(p is not None and p[0] == expected for p in parts):
            raw = b"".join(p[1] for p in parts if p is not None)
            if len(raw) == fetched.size and hashlib.sha256(raw).hexdigest() == digest:
                return raw
        log.error("message %d of %s: its pieces (blob stream %s, sequences %s) are gone or "
                  "do not match; it is dropped", fetched.ack.sseq, fetched.ack.stream,
                  self._stream, seqs)
        return None

    async def _piece(self, seq: int, gate: asyncio.Semaphore) -> tuple[str, bytes] | None:
        """(subject, payload) of a stored piece, None if there is none."""
        async with gate:
            found = await self._js.direct_get(self._stream, seq)
            if found is not None:
                return found[0].get("Nats-Subject", ""), found[1]
            # a replica that has not stored it yet answered: ask the stream's leader
            message = await self._js.msg_get(self._stream, {"seq": seq})
            if message is None:
                return None
            return message["subject"], base64.b64decode(message.get("data") or b"")

    # --- reclaiming (the sweeper) -----------------------------------------------------------
    async def state(self) -> BlobState:
        """Which topics have pieces, and where the blob stream ends: read before any topic
        stream, so reclaim() keeps the pieces of messages stored meanwhile."""
        try:
            info = await self._js.api(f"STREAM.INFO.{self._stream}",
                                      {"subjects_filter": self._layout.blob_mark("*")})
        except NatsError as exc:
            if exc.err_code == STREAM_NOT_FOUND:
                return BlobState(set(), 0, 0)
            raise
        state = info["state"]
        return BlobState({s.split(".")[2] for s in state.get("subjects") or {}},
                         int(state["last_seq"]), time_ns(state["last_ts"]))

    async def reclaim(self, stream: str, blob: BlobState) -> int:
        """Purge the marks and pieces of the topic stream's messages that no message it holds
        or will hold refers to (the module's rule); returns how many went."""
        state = (await self._js.api(f"STREAM.INFO.{stream}"))["state"]
        if state.get("messages", 0):
            kept_from = time_ns(state["first_ts"])
        else:  # every message it will hold is stored from now on
            kept_from = max(time_ns(state["last_ts"]), blob.last_ns, time.time_ns())
        cutoff = kept_from - RECLAIM_MARGIN_NS
        topic_hash = self._layout.stream_hash(stream)
        first = await self._next_mark(topic_hash, 1)
        if first is None or first[1] >= cutoff:
            return 0
        # Every mark below `low` is older than the cutoff, the first at or after `high` is not.
        low, high = first[0] + 1, max(first[0] + 1, blob.last_seq + 1)
        while low < high:
            mid = (low + high) // 2
            found = await self._next_mark(topic_hash, mid)
            if found is None or found[1] >= cutoff:
                high = mid
            else:
                low = found[0] + 1
        # Purge up to the first mark kept (a message's pieces follow its mark).
        found = await self._next_mark(topic_hash, low)
        resp = await self._js.api(f"STREAM.PURGE.{self._stream}",
                                  {"filter": self._layout.blob_all(topic_hash),
                                   "seq": found[0] if found else blob.last_seq + 1})
        return int(resp.get("purged", 0))

    async def _next_mark(self, topic_hash: str, seq: int) -> tuple[int, int] | None:
        """(sequence, server time) of the topic's first mark at or after `seq`."""
        message = await self._js.msg_get(self._stream, {
            "seq": seq, "next_by_subj": self._layout.blob_mark(topic_hash)})
        if message is None:
            return None
        return int(message["seq"]), time_ns(message["time"])
