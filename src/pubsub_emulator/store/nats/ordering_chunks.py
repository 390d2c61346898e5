"""Key records of any size: the entries of a large one in immutable chunks (copy-on-write).

A key record (ordering.py) is one message of the ordering stream, its *head*, at its subject,
changed only by compare-and-set. While its entries fit within an inline budget (64 KiB of
JSON) they are in the head, as they always were. Past it, runs of entries move to *chunks*:
immutable messages under fresh subjects `<record subject>.<chunk id>` (under the consumer's
prefix: purging the consumer's records removes them too), each a JSON list of entries of
consecutive stream sequences (128 KiB at most), which the head names in order:
"x": [[chunk id, first sseq, last sseq, bytes], ...]; the head's own "e" comes after them.

- A chunk owns the stream sequences from its first to the next chunk's first (the last one, to
  its last). Entries are only added above the record's "hi" (at the end: the head's "e", which
  moves to new chunks once it outgrows the budget), so a chunk only ever loses entries or has
  them changed.
- A write compares each chunk's entries with what the chunk holds: a chunk left unchanged is
  named again, not written; changed ones (with the small ones next to them) are written anew;
  emptied ones are dropped. So a write costs what it changed, not the record.
- Copy-on-write: a write stores its new chunks first (each under a subject that has no message
  yet), then the head by compare-and-set. The winner deletes the chunks of the version it
  replaced that it no longer names; a loser deletes the chunks it wrote (no head names them).
- A reader reads the head, then the chunks it names that it does not have (chunks never change:
  a process keeps those it read or wrote, up to a number of entries). A chunk that is gone means
  the head changed meanwhile (its writer dropped it): the reader reads the head again.

A process that dies between storing its chunks and its compare-and-set leaves them behind, named
by no head, until the subscription's records are purged (its deletion, a seek, a purge).
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import secrets
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ..base import StoreError
from .client import WRONG_LAST_SEQ, JetStream, NatsError, Record

INLINE_BYTES = 64 * 1024  # a head's entries at most (JSON), before they move to chunks
CHUNK_BYTES = 128 * 1024  # a chunk at most (JSON)
_KEPT_CHUNK_ENTRIES = 300_000  # entries in the chunks a process keeps (the latest used)
_IN_FLIGHT = 256  # requests sent at once

Snapshot = list[list[Any]]  # a chunk's entries as stored (a copy no one changes)
Ref = list[Any]  # [chunk id, first sseq, last sseq, bytes]
Write = tuple[str, dict[str, Any], Record | None]  # (subject, value, the version it replaces)


class ChunkWrite(NamedTuple):
    """A new chunk of a record."""

    subject: str
    payload: bytes
    entries: Snapshot


class Placement(NamedTuple):
    """How a record's entries are stored: what its head holds, what a write adds and drops."""

    head: dict[str, Any]  # the head's value: "c", "hi", "e" (inline entries), "x" (refs)
    new: list[ChunkWrite]
    dropped: list[str]  # subjects of the replaced version's chunks no longer named


def _encoded(entry: list[Any]) -> bytes:
    return json.dumps(entry, separators=(",", ":")).encode()


def _over(entries: list[list[Any]], budget: int) -> bool:
    """Whether entries take more than `budget` bytes of JSON."""
    size = 2
    for entry in entries:
        size += len(_encoded(entry)) + 1
        if size > budget:
            return True
    return False


def chunk_subject(record: str, chunk_id: str) -> str:
    return f"{record}.{chunk_id}"


class _Planner:
    """Lays out one record's entries: chunks of the version it replaces are reused where
    their entries did not change (`known`: a chunk's entries, None if not kept)."""

    def __init__(self, subject: str, known: Callable[[str], Snapshot | None],
                 chunk_bytes: int, inline_bytes: int) -> None:
        self._subject = subject
        self._known = known
        self._chunk_bytes = chunk_bytes
        self._inline_bytes = inline_bytes
        self.refs: list[Ref] = []
        self.new: list[ChunkWrite] = []
        self._pending: list[list[Any]] = []  # changed entries, not yet in a chunk

    def lay_out(self, value: dict[str, Any], old_refs: Sequence[Ref]) -> Placement:
        entries: list[list[Any]] = value["e"]
        seqs = [entry[0] for entry in entries]
        start = 0
        for at, ref in enumerate(old_refs):
            end = (bisect.bisect_left(seqs, old_refs[at + 1][1]) if at + 1 < len(old_refs)
                   else bisect.bisect_right(seqs, ref[2]))
            owned = entries[start:end]
            start = end
            snapshot = self._known(chunk_subject(self._subject, ref[0]))
            unchanged = snapshot is not None and owned == snapshot
            if unchanged and not (self._pending and ref[3] < self._chunk_bytes // 4):
                self._flush()
                self.refs.append(ref)
            else:
                self._pending += owned
        inline = entries[start:]
        if _over(inline, self._inline_bytes):
            self._pending += inline
            inline = []
        self._flush()
        kept = {ref[0] for ref in self.refs}
        head = {k: v for k, v in value.items() if k not in ("e", "x")}
        head["e"] = inline
        if self.refs:
            head["x"] = self.refs
        return Placement(head, self.new, [chunk_subject(self._subject, ref[0])
                                       for ref in old_refs if ref[0] not in kept])

    def _flush(self) -> None:
        """Store the pending entries in new chunks of the budget."""
        parts: list[bytes] = []
        first = 0
        size = 2
        for at, entry in enumerate(self._pending):
            part = _encoded(entry)
            if parts and size + len(part) + 1 > self._chunk_bytes:
                self._add(self._pending[first:at], parts, size)
                parts, first, size = [], at, 2
            parts.append(part)
            size += len(part) + 1
        if parts:
            self._add(self._pending[first:], parts, size)
        self._pending = []

    def _add(self, entries: list[list[Any]], parts: list[bytes], size: int) -> None:
        chunk_id = secrets.token_hex(8)
        self.refs.append([chunk_id, entries[0][0], entries[-1][0], size])
        self.new.append(ChunkWrite(chunk_subject(self._subject, chunk_id),
                                   b"[" + b",".join(parts) + b"]", [list(e) for e in entries]))


class ChunkedRecords:
    """Reads and writes key records whole, their entries inline or in chunks.

    A record as read (and as returned written) has every entry in "e" and the head's chunk
    references in "x"; a value to write has its entries in "e" (its "x" is ignored)."""

    def __init__(self, js: JetStream, stream: str) -> None:
        self._js = js
        self._stream = stream
        self._chunks: OrderedDict[str, Snapshot] = OrderedDict()  # by subject, oldest first
        self._kept = 0

    # --- the chunks a process keeps ----------------------------------------------------------
    def _known(self, subject: str) -> Snapshot | None:
        snapshot = self._chunks.get(subject)
        if snapshot is not None:
            self._chunks.move_to_end(subject)
        return snapshot

    def _keep(self, subject: str, snapshot: Snapshot) -> None:
        self._forget(subject)
        self._chunks[subject] = snapshot
        self._kept += len(snapshot)
        while self._kept > _KEPT_CHUNK_ENTRIES and len(self._chunks) > 1:
            _, oldest = self._chunks.popitem(last=False)
            self._kept -= len(oldest)

    def _forget(self, subject: str) -> None:
        if subject in self._chunks:
            self._kept -= len(self._chunks.pop(subject))

    # --- reading ----------------------------------------------------------------------------
    async def read(self, subject: str) -> Record | None:
        """A record with all its entries (None if there is none)."""
        missing_at = 0  # the head sequence that named a chunk found missing
        while True:
            head = await self._js.kv_get(subject, self._stream)
            refs: list[Ref] = (head.value.get("x") or []) if head else []
            if head is None or not refs:
                return head
            chunks = {chunk_subject(subject, ref[0]): self._known(chunk_subject(subject, ref[0]))
                      for ref in refs}
            unknown = [chunk for chunk, snapshot in chunks.items() if snapshot is None]
            chunks.update(zip(unknown, await _bounded(self._get_chunk, unknown), strict=True))
            if all(snapshot is not None for snapshot in chunks.values()):
                entries = [list(entry) for snapshot in chunks.values() if snapshot
                           for entry in snapshot]
                for chunk in unknown:
                    self._keep(chunk, chunks[chunk] or [])
                return Record({**head.value, "e": entries + head.value["e"]}, head.seq)
            if head.seq == missing_at:
                raise StoreError(f"the ordering record {subject} names a chunk that is gone")
            missing_at = head.seq  # (its writer dropped it: the head changed meanwhile)

    async def _get_chunk(self, subject: str) -> Snapshot | None:
        message = await self._js.msg_get(self._stream, {"last_by_subj": subject})
        if message is None:
            return None
        entries: Snapshot = json.loads(base64.b64decode(message.get("data") or b""))
        return entries

    # --- writing ----------------------------------------------------------------------------
    async def write_many(self, writes: Sequence[Write]) -> list[Record | None]:
        """Compare-and-set writes of records (each if its head is still the version given);
        the records written, None for those that lost (read them again)."""
        limit = self._js.max_payload
        chunk_bytes, inline_bytes = min(CHUNK_BYTES, limit // 4), min(INLINE_BYTES, limit // 8)
        placements = [_Planner(subject, self._known, chunk_bytes, inline_bytes).lay_out(
                          value, (old.value.get("x") or []) if old else [])
                      for subject, value, old in writes]
        await self._store_chunks([chunk for placement in placements for chunk in placement.new])
        acks = await self._put_heads(writes, placements)
        written: list[Record | None] = []
        unnamed: list[str] = []  # chunks no head names any more (or ever)
        for (_, value, _), placement, ack in zip(writes, placements, acks, strict=True):
            if "error" in ack and ack["error"].get("err_code") != WRONG_LAST_SEQ:
                raise NatsError(ack["error"])
            lost = "error" in ack
            unnamed += [chunk.subject for chunk in placement.new] if lost else placement.dropped
            for chunk in placement.new if not lost else ():
                self._keep(chunk.subject, chunk.entries)
            written.append(None if lost else Record(
                {**placement.head, "e": value["e"], "x": placement.head.get("x", [])},
                int(ack["seq"])))
        for subject in unnamed:
            self._forget(subject)
        await _bounded(self._delete, unnamed)
        return written

    async def _store_chunks(self, chunks: Sequence[ChunkWrite]) -> None:
        """Store new chunks, each under a subject that has none yet."""
        for start in range(0, len(chunks), _IN_FLIGHT):
            for ack in await self._js.publish_many([
                    (chunk.subject, chunk.payload, {"Nats-Expected-Last-Subject-Sequence": "0"})
                    for chunk in chunks[start:start + _IN_FLIGHT]], checked=True):
                if "error" in ack:
                    raise NatsError(ack["error"])

    async def _put_heads(self, writes: Sequence[Write], placements: Sequence[Placement]
                         ) -> list[dict[str, Any]]:
        """Publish the heads by compare-and-set: their PubAcks."""
        acks: list[dict[str, Any]] = []
        for start in range(0, len(writes), _IN_FLIGHT):
            acks += await self._js.publish_many([
                (subject, json.dumps(placement.head).encode(),
                 {"Nats-Expected-Last-Subject-Sequence": str(old.seq if old else 0)})
                for (subject, _, old), placement in zip(writes[start:start + _IN_FLIGHT],
                                                        placements[start:start + _IN_FLIGHT],
                                                        strict=True)])
        return acks

    async def _delete(self, subject: str) -> None:
        await self._js.api(f"STREAM.PURGE.{self._stream}", {"filter": subject})


async def _bounded(call: Callable[[str], Any], items: Sequence[str]) -> list[Any]:
    """`call` on every item, a bounded number at once; the results in order."""
    results: list[Any] = []
    for start in range(0, len(items), _IN_FLIGHT):
        results += await asyncio.gather(*(call(i) for i in items[start:start + _IN_FLIGHT]))
    return results
