"""Per-key ordering on JetStream (not native on 2.9): a record per ordering key.

An ordered subscription's records are in the ordering stream, each changed only by
compare-and-set on its own subject (so every process sees one history of each):
- `<ns>.okey.<consumer>.k.<hash of the key>`, the record of one ordering key:
  {"c": the consumer's creation time (a record of an older consumer is void),
   "hi": every message of the key up to this stream sequence that is not acked has an entry,
   "e": [[sseq, reply subject, holds, state, delivered, due], ...] by sseq,
   "x": the chunks holding the entries before those of "e", if any}.
  A record has no ceiling: past an inline budget (64 KiB of entries) its entries move to
  immutable chunks `<record subject>.<chunk id>`, written before the compare-and-set of the
  head that names them, and named again unchanged by later writes that do not change them
  (copy-on-write, ordering_chunks.py), so a write stores what it changes, not the record.
  The record is read and changed whole (its head and chunks).
  An entry is a fetched (or seen) message of the key that is not acked; state is L leased,
  W waiting for its redelivery (due then, ms: nacked, released, over a byte budget), P parked
  (held back behind an earlier leased message of its key, sent back with a long delay), G seen
  by another process's pull that has not recorded it yet. A record left without entries is
  deleted once the ack floor passes its "hi" and it was not changed since (a purge bounded by
  its sequence), by the process that emptied it, on its next pull of the subscription (it
  names no chunk: a write deletes the chunks it no longer names).
- `<ns>.okey.<consumer>.hi`, the consumer's high mark {"c", "hi"}: every keyed message up to
  "hi" is recorded in its key's record (or acked). A pull raises it, after writing its key
  records and before handing anything out; it may lag behind (the next pull reads more).
- `<ns>.okey.<consumer>.rel`, written (no matter with what) before held-back messages of the
  consumer are sent back: a pull that parked messages reads their records again only if it
  changed meanwhile (see _unpark_released).

A pull reads the keys of the stream sequences between the high mark (or the ack floor) and its
own messages, which other pulls fetched: such a message gets a G entry only if it is above its
key record's "hi" and above the high mark read after that record (so a message recorded, acked
and deleted meanwhile never comes back as a ghost). A keyed message is delivered only when
every earlier entry of its key is delivered in the same pull, else it is held back: parked,
or, if the earlier ones only wait for their redelivery, sent back to come just after them (W;
JetStream redelivers in its own order, not the keys'). An ack of a key's message sends the
parked ones at the front of the key back at once, a nack sends the key's later leased and
parked messages back with it, in order. A park is not a delivery
attempt: `holds` counts them and the attempt reported is delivered - holds. Entries at or
below the consumer's ack floor are acked: a pull rewriting a record drops them.

An ack or nack finds its message's key by the ack id: in the keys of the deliveries this
process handed out, else from the message's headers in its stream. A process keeps the key
records it last read or wrote and writes from them without reading first (a stale one loses
its compare-and-set, and is read again). A call goes over a key's entries once at most
(bisection finds one), however many of its messages it places, acks or nacks. See
docs/nats.md.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from ..base import Accepts
from .acklog import ack_floor
from .acks import ACK, NAK, AckId, DeliveredKeys, Fetched, nak
from .client import JetStream, NatsError, Record, parse_headers
from .layout import H_KEY, H_SIZE, H_SKIP, Layout
from .ordering_chunks import ChunkedRecords

_PARK_MS = 30_000  # how long a message held back behind its ordering key waits at most
_BEHIND_MS = 200  # how much later than the waiting messages before it a held message comes
PARK = nak(_PARK_MS)
_IN_FLIGHT = 512  # requests sent at once
_KEPT_ENTRIES = 200_000  # entries in the key records a process keeps (the latest it read, wrote)
_EMPTIED = 20_000  # emptied key records a process remembers per consumer, to delete them
_EMPTY_FOR_S = 2.0  # how long a record stays empty before it may be deleted

T = TypeVar("T")
A = TypeVar("A")
Send = tuple[str, bytes]  # (reply subject, ack or nack body)
Entry = list[Any]  # [sseq, reply subject, holds, state, delivered, due (ms, if waiting)]
Nack = Callable[[AckId, int], bytes]  # the nack body of an ack id at a delivery attempt
Sends = list[tuple[int, Send]]  # sends with the stream sequence they are about


class _Pending(NamedTuple):
    """A keyed message of the pull being ordered."""

    fetched: Fetched
    over: bool  # over the pull's byte budget: goes back, waiting


class _Pull(NamedTuple):
    """What an ordered pull knows of its consumer."""

    consumer: str
    created: str  # the consumer's creation time
    floor: int  # its ack floor: everything up to it is acked
    low: int  # every keyed message up to it is recorded in its key's record (or acked)
    top: int  # the pull's highest stream sequence


class _Plan(NamedTuple):
    """A key's record as a pull rewrites it, and what the pull does with the key's messages."""

    value: dict[str, Any]
    deliver: list[Fetched]
    attempts: dict[int, int]
    sends: Sends
    released: bool  # held-back messages (not the pull's) go back


def entry_of(entries: list[Entry], seq: int, create: bool = True) -> Entry | None:
    """The ordering entry of `seq` in a key's entries (sorted by sseq), added if `create`."""
    if not entries or entries[-1][0] < seq:  # (most often: a message fetched the first time)
        if not create:
            return None
        entries.append([seq, "", 0, "G", 0])
        return entries[-1]
    at = bisect.bisect_left(entries, seq, key=_seq)
    if at < len(entries) and entries[at][0] == seq:
        return entries[at]
    if not create:
        return None
    entry = [seq, "", 0, "G", 0]
    entries.insert(at, entry)
    return entry


def _seq(entry: Entry) -> int:
    return int(entry[0])


def _mark(found: Record | None, created: str) -> int:
    """A high mark record's stream sequence (0 if there is none, or it is void)."""
    if found is None or found.value.get("c") != created:
        return 0
    return int(found.value.get("hi", 0))


def _void(found: Record | None, pull: _Pull) -> bool:
    """Whether a key record is missing or of an older consumer."""
    return found is None or found.value.get("c") != pull.created


def _covered(found: Record | None, pull: _Pull) -> int:
    """Up to which stream sequence a key record accounts for every message of its key."""
    if found is None or _void(found, pull):
        return pull.low
    return max(int(found.value["hi"]), pull.floor)


async def _chunked(call: Callable[[A], Awaitable[T]], items: Sequence[A]) -> list[T]:
    """`call` on every item, a bounded number at once; the results in order."""
    results: list[T] = []
    for start in range(0, len(items), _IN_FLIGHT):
        results += await asyncio.gather(*(call(i) for i in items[start:start + _IN_FLIGHT]))
    return results


class _Records:
    """The key records this process read or wrote last, by subject (None: there is none), up
    to a number of entries in all (the oldest records are forgotten first)."""

    def __init__(self, limit: int = _KEPT_ENTRIES) -> None:
        self._limit = limit
        self._records: OrderedDict[str, Record | None] = OrderedDict()
        self._entries = 0  # (each record counts one more than its entries)

    @staticmethod
    def _size(record: Record | None) -> int:
        return 1 + (len(record.value.get("e", ())) if record else 0)

    def known(self, subject: str) -> bool:
        return subject in self._records

    def take(self, subject: str) -> Record | None:
        """A record, no longer kept (its user changes it in place; kept again once written)."""
        record = self._records.get(subject)
        self.forget(subject)
        return record

    def put(self, subject: str, record: Record | None) -> None:
        self.forget(subject)
        self._records[subject] = record
        self._entries += self._size(record)
        while self._entries > self._limit and len(self._records) > 1:
            _, oldest = self._records.popitem(last=False)
            self._entries -= self._size(oldest)

    def forget(self, subject: str) -> None:
        if subject in self._records:
            self._entries -= self._size(self._records.pop(subject))


class KeyOrdering:
    """The ordering records of ordered subscriptions."""

    def __init__(self, js: JetStream, layout: Layout) -> None:
        self._js = js
        self._layout = layout
        self._stream = layout.order_stream
        self._keys = DeliveredKeys()
        self._records = _Records()
        self._stored = ChunkedRecords(js, self._stream)  # (records inline or in chunks)
        # Per consumer, the key records this process left empty: subject -> (seq, hi, when).
        self._emptied: dict[str, OrderedDict[str, tuple[int, int, float]]] = {}

    async def order(self, stream: str, consumer: str, chosen: Sequence[Fetched],
                    over: Sequence[Fetched], attempts: dict[int, int],
                    accepts: Accepts | None) -> list[Fetched]:
        """Of a pull's messages, those per-key ordering lets out now (the rest go back).

        `over` are those past the pull's byte budget, to be sent back once recorded;
        `attempts` gets the delivery attempt of each message let out (holds left out).
        """
        batch = {f.ack.sseq: _Pending(f, False) for f in chosen}
        batch.update({f.ack.sseq: _Pending(f, True) for f in over})
        mark_subject = self._layout.order_mark(consumer)
        releases = self._layout.order_releases(consumer)
        mark, info, released = await asyncio.gather(
            self._js.kv_get(mark_subject, self._stream), self._js.consumer_info(stream, consumer),
            self._js.kv_get(releases, self._stream))
        # (acklog.ack_floor: a consumer recreated at a start sequence, by a seek or for a new
        # subscription, reports 0 until its first ack; the raw floor would make ghosts.)
        created, floor = str(info.get("created", "")), ack_floor(info)
        pull = _Pull(consumer, created, floor, max(floor, _mark(mark, created)), max(batch))
        # Messages between the high mark and this pull's went to other pulls (maybe not
        # recorded yet): their keys are read from the stream.
        gap = [seq for seq in range(pull.low + 1, pull.top) if seq not in batch]
        looked = await self._look_up(stream, consumer, gap, accepts)
        deliver: list[Fetched] = []
        sends: Sends = []
        keyed: dict[str, list[_Pending]] = {}
        for seq in sorted(batch):
            pending = batch[seq]
            key = pending.fetched.headers.get(H_KEY, "")
            if key:
                keyed.setdefault(key, []).append(pending)
            elif pending.over:
                sends.append((seq, (pending.fetched.msg.reply, NAK)))
            else:
                deliver.append(pending.fetched)
        gaps: dict[str, list[int]] = {}
        for seq in gap:
            if looked.get(seq):
                gaps.setdefault(looked[seq], []).append(seq)
        plans = await self._plan_keys(pull, keyed, gaps)
        for plan in plans.values():
            deliver += plan.deliver
            attempts.update(plan.attempts)
            sends += plan.sends
        sends.sort(key=lambda item: item[0])  # (stable: in the order made, per message)
        if any(plan.released for plan in plans.values()):
            await self._js.kv_put(releases, {}, None)
        # (the high mark is raised before anything is handed out)
        await asyncio.gather(self._js.send([send for _, send in sends]),
                             self._raise_mark(mark_subject, mark, pull),
                             self._compact(consumer, floor))
        await self._unpark_released(consumer, plans, released.seq if released else 0)
        deliver.sort(key=lambda f: f.ack.sseq)
        for fetched in deliver:
            self._keys.note(fetched.ack, fetched.headers.get(H_KEY, ""))
        return deliver

    async def _plan_keys(self, pull: _Pull, keyed: dict[str, list[_Pending]],
                         gaps: dict[str, list[int]]) -> dict[str, _Plan]:
        """Rewrite the records of the pull's keys (and of the keys seen in its gap), each by
        compare-and-set, again for those that lost; the plans written, by key."""
        plans: dict[str, _Plan] = {}
        pending = sorted(set(keyed) | set(gaps))
        while pending:
            subjects = [self._layout.order_record(pull.consumer, key) for key in pending]
            found = await self._read(subjects)
            latest = pull.low
            if any(seq > _covered(record, pull)
                   for key, record in zip(pending, found, strict=True)
                   for seq in gaps.get(key, ())):
                # A gap message may get a G entry: the high mark read after its key's record
                # tells whether it was recorded (maybe acked) meanwhile.
                latest = max(latest, _mark(await self._js.kv_get(
                    self._layout.order_mark(pull.consumer), self._stream), pull.created))
            tried = [_plan(record, pull, latest, keyed.get(key, []), gaps.get(key, []))
                     for key, record in zip(pending, found, strict=True)]
            written = await self._put_many([
                (subject, plan.value, record)
                for subject, plan, record in zip(subjects, tried, found, strict=True)])
            emptied = self._emptied.setdefault(pull.consumer, OrderedDict())
            for key, subject, plan, seq in zip(pending, subjects, tried, written, strict=True):
                if seq:
                    plans[key] = plan
                    emptied.pop(subject, None)
                    if not plan.value["e"]:
                        emptied[subject] = (seq, plan.value["hi"], time.monotonic())
            pending = [key for key, seq in zip(pending, written, strict=True) if not seq]
        return plans

    async def _read(self, subjects: Sequence[str]) -> list[Record | None]:
        """Key records to change: as this process last knew them, else read."""
        unknown = [at for at, subject in enumerate(subjects) if not self._records.known(subject)]
        found = [self._records.take(subject) for subject in subjects]
        read = await _chunked(lambda at: self._stored.read(subjects[at]), unknown)
        for at, record in zip(unknown, read, strict=True):
            found[at] = record
        return found

    async def _put_many(self, writes: Sequence[tuple[str, dict[str, Any], Record | None]]
                        ) -> list[int]:
        """Compare-and-set writes (value if the subject's record is still the one given);
        the new sequence of each, 0 for those that lost (read again when next needed)."""
        written: list[int] = []
        for start in range(0, len(writes), _IN_FLIGHT):
            chunk = writes[start:start + _IN_FLIGHT]
            for (subject, _, _), record in zip(chunk, await self._stored.write_many(chunk),
                                               strict=True):
                written.append(record.seq if record else 0)
                if record:
                    self._records.put(subject, record)
                else:
                    self._records.forget(subject)
        return written

    async def _raise_mark(self, subject: str, found: Record | None, pull: _Pull) -> None:
        """Raise the consumer's high mark to the pull's top (never lower it)."""
        while _mark(found, pull.created) < pull.top:
            if await self._js.kv_put(subject, {"c": pull.created, "hi": pull.top},
                                     found.seq if found else 0):
                return
            found = await self._js.kv_get(subject, self._stream)

    async def _compact(self, consumer: str, floor: int) -> None:
        """Delete the key records this process left empty a while ago, once the ack floor
        passed them, unless they changed since."""
        emptied = self._emptied.get(consumer)
        if not emptied:
            return
        now = time.monotonic()
        done = [(subject, seq) for subject, (seq, hi, when) in emptied.items()
                if hi <= floor and now - when >= _EMPTY_FOR_S]
        for subject, _ in done:
            del emptied[subject]
        while len(emptied) > _EMPTIED:  # (the oldest are left as they are)
            emptied.popitem(last=False)
        await _chunked(lambda item: self._delete_if_unchanged(*item), done)

    async def _delete_if_unchanged(self, subject: str, seq: int) -> bool:
        """Delete a record if its subject's latest message is still `seq`."""
        resp = await self._js.api(f"STREAM.PURGE.{self._stream}",
                                  {"filter": subject, "seq": seq + 1})
        deleted = int(resp.get("purged", 0)) > 0
        if deleted:
            self._records.put(subject, None)
        else:
            self._records.forget(subject)
        return deleted

    async def _look_up(self, stream: str, consumer: str, seqs: list[int],
                       accepts: Accepts | None) -> dict[int, str]:
        """The ordering keys of stored messages, by stream sequence."""
        keys = await _chunked(lambda seq: self._key_of(stream, consumer, seq, accepts), seqs)
        return dict(zip(seqs, keys, strict=True))

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

    async def _unpark_released(self, consumer: str, plans: dict[str, _Plan], released: int
                               ) -> None:
        """Send back at once what was released while this process was parking it.

        A release (after the earlier message's ack) may reach the server before the park it
        undoes; the park was processed before this read, so what the read shows released (state
        W, not fetched again since) is sent back once more, after the park. A process writes
        the consumer's releases record before it sends held-back messages back: if it is still
        the one read before the pull (`released`), nothing was released meanwhile.
        """
        parked = {key: {reply for _, (reply, body) in plan.sends if body == PARK}
                  for key, plan in plans.items()}
        keys = [key for key, replies in parked.items() if replies]
        if not keys:
            return
        now = await self._js.kv_get(self._layout.order_releases(consumer), self._stream)
        if (now.seq if now else 0) == released:
            return
        subjects = [self._layout.order_record(consumer, key) for key in keys]
        found = await _chunked(self._stored.read, subjects)
        for subject, record in zip(subjects, found, strict=True):
            self._records.put(subject, record)
        again = [(e[1], NAK) for key, record in zip(keys, found, strict=True) if record
                 for e in record.value["e"] if e[3] == "W" and e[1] in parked[key]]
        await self._js.send(again)

    async def settle(self, parsed: Sequence[AckId], nack: Nack | None
                     ) -> dict[int, list[Send]]:
        """Record acks (nack None) or nacks of ordered messages; returns the sends by sseq.

        An ack drops the message's entry and sends back the parked messages at the front of its
        key; a nack (`nack(ack, attempt)` gives its body) marks it waiting and sends the key's
        later leased or parked messages back with the same body, to come again after it.
        """
        keys = await self._keys_of(parsed)
        sends: dict[int, list[Send]] = {}
        groups: dict[tuple[str, str], list[AckId]] = {}
        for ack, key in zip(parsed, keys, strict=True):
            if key:
                groups.setdefault((ack.consumer, key), []).append(ack)
            elif nack is None:
                sends.setdefault(ack.sseq, []).append((ack.subject, ACK))
            else:
                sends[ack.sseq] = [(ack.subject, nack(ack, ack.delivered))]
        pending = sorted(groups)
        while pending:  # (again for the keys whose record changed meanwhile)
            pending = await self._settle_keys(pending, groups, nack, sends)
        return sends

    async def _keys_of(self, parsed: Sequence[AckId]) -> list[str]:
        """The ordering keys of acked messages ("" for none): noted when handed out here,
        else read from the message."""
        keys = [self._keys.get(ack) for ack in parsed]
        unknown = [at for at, key in enumerate(keys) if key is None]
        found = await _chunked(lambda at: self._key_of(parsed[at].stream, parsed[at].consumer,
                                                       parsed[at].sseq, None), unknown)
        for at, key in zip(unknown, found, strict=True):
            keys[at] = key
        return [key or "" for key in keys]

    async def _settle_keys(self, keys: list[tuple[str, str]],
                           acks: dict[tuple[str, str], list[AckId]], nack: Nack | None,
                           sends: dict[int, list[Send]]) -> list[tuple[str, str]]:
        """Settle acks in the records of their keys ((consumer, key)), noting the sends;
        returns the keys to settle again (their record changed meanwhile)."""
        subjects = [self._layout.order_record(*key) for key in keys]
        kept = [self._records.known(subject) for subject in subjects]
        found = await self._read(subjects)
        again, writes, settled = [], [], []
        for key, subject, was_kept, record in zip(keys, subjects, kept, found, strict=True):
            entries: list[Entry] = list(record.value["e"]) if record else []
            key_sends: dict[int, list[Send]] = {}
            if _settle_entries(entries, acks[key], nack, key_sends):
                assert record is not None  # (entries changed: there is a record)
                writes.append((subject, {**record.value, "e": entries}, record))
                settled.append((key, key_sends))
            elif was_kept:  # (nothing to change in what this process knew: read it to be sure)
                again.append(key)
            else:
                self._records.put(subject, record)
                _merge(sends, key_sends)
        released: set[str] = set()  # consumers whose held-back messages go back
        for (key, key_sends), (subject, value, _), seq in zip(
                settled, writes, await self._put_many(writes), strict=True):
            if not seq:
                again.append(key)
                continue
            _merge(sends, key_sends)
            if set(key_sends) - {ack.sseq for ack in acks[key]}:
                released.add(key[0])
            emptied = self._emptied.setdefault(key[0], OrderedDict())
            emptied.pop(subject, None)
            if not value["e"]:
                emptied[subject] = (seq, int(value["hi"]), time.monotonic())
        await asyncio.gather(*(self._js.kv_put(self._layout.order_releases(consumer), {}, None)
                               for consumer in released))  # (before the sends)
        return again


def _merge(sends: dict[int, list[Send]], more: dict[int, list[Send]]) -> None:
    for seq, items in more.items():
        sends.setdefault(seq, []).extend(items)


def _plan(found: Record | None, pull: _Pull, latest: int, items: list[_Pending],
          gap: list[int]) -> _Plan:
    """Decide, in a key's record, what of the pull's messages of the key goes out."""
    covered = _covered(found, pull)
    old: list[Entry] = [] if found is None or _void(found, pull) else found.value["e"]
    entries = [e for e in old if e[0] > pull.floor]  # (the others are acked)
    sends: Sends = []
    in_batch = {pending.fetched.ack.sseq for pending in items}
    released = len(entries) < len(old) and _release_front(entries, in_batch, sends)
    for seq in gap:
        if seq > max(covered, latest):
            entry_of(entries, seq)
    deliver, attempts = _place(entries, covered, items, in_batch, sends)
    return _Plan({"c": pull.created, "hi": max(covered, pull.top), "e": entries},
                 deliver, attempts, sends, released)


def _due(entry: Entry) -> int:
    """When a waiting entry's message comes again (ms; 0 if not noted)."""
    return int(entry[5]) if len(entry) > 5 else 0


def _wait(entry: Entry, wait_ms: int, now_ms: int) -> None:
    """Mark an entry waiting for its redelivery, due after `wait_ms`."""
    entry[3] = "W"
    entry[5:] = [now_ms + wait_ms]


def _delay_ms(body: bytes) -> int:
    """The delay of a nack body (ms)."""
    _, _, arg = body.partition(b" ")
    return int(json.loads(arg)["delay"]) // 10**6 if arg else 0


def _release_front(entries: list[Entry], in_batch: set[int], sends: Sends) -> bool:
    """Send back at once the parked messages at the front of a key (it moved); True if any."""
    now_ms = int(time.time() * 1000)
    released = False
    for entry in entries:
        if entry[3] != "P" or entry[0] in in_batch:
            break
        _wait(entry, 0, now_ms)
        sends.append((entry[0], (entry[1], NAK)))
        released = True
    return released


class _Behind:
    """The entries of a key before the message being placed that the pull does not deliver."""

    def __init__(self, entries: list[Entry], in_batch: set[int]) -> None:
        self._others = [e for e in entries if e[0] not in in_batch]  # (by sseq)
        self._at = 0
        self.any = False
        self.waiting = True  # all of them wait for their redelivery (state W)
        self.due = 0  # the latest of their redeliveries (ms)

    def add(self, entry: Entry) -> None:
        self.any = True
        self.waiting = self.waiting and entry[3] == "W"
        self.due = max(self.due, _due(entry))

    def upto(self, seq: int) -> None:
        """Count the entries not in the pull that come before `seq`."""
        if self.any and not self.waiting:
            return  # (nothing more to learn: the next messages are parked)
        while self._at < len(self._others) and self._others[self._at][0] < seq:
            self.add(self._others[self._at])
            self._at += 1
            if not self.waiting:
                return


def _hold(entry: Entry, behind: _Behind, now_ms: int) -> bytes:
    """Hold a fetched message back behind earlier ones of its key: its nack body.

    Behind messages that are only waiting for their redelivery, it comes back just after them
    (a little later each time it is held); behind a leased (or parked, or unrecorded) one, it
    is parked until that one's ack releases it.
    """
    entry[2] += 1  # fetched, not delivered: not an attempt
    if not behind.waiting:
        entry[3] = "P"
        return PARK
    wait = min(_PARK_MS, max(0, behind.due - now_ms) + (_BEHIND_MS << min(entry[2] - 1, 8)))
    _wait(entry, wait, now_ms)
    return nak(wait)


def _place(entries: list[Entry], covered: int, items: list[_Pending], in_batch: set[int],
           sends: Sends) -> tuple[list[Fetched], dict[int, int]]:
    """Place a pull's messages of one key (by sseq) in its entries: (deliveries, attempts)."""
    deliver: list[Fetched] = []
    attempts: dict[int, int] = {}
    now_ms = int(time.time() * 1000)
    behind = _Behind(entries, in_batch)  # what holds the next message back
    recalled = 1 << 62  # the key's later leased messages (not the pull's) were called back
    for fetched, is_over in items:
        seq, reply = fetched.ack.sseq, fetched.msg.reply
        behind.upto(seq)
        entry = entry_of(entries, seq, create=seq > covered)
        if entry is None:  # covered by the record and without entry: acked
            sends.append((seq, (reply, ACK)))
            continue
        previous = entry[3]
        entry[1], entry[4] = reply, fetched.ack.delivered
        if is_over or behind.any:
            if is_over:
                entry[2] += 1  # (not an attempt either)
                _wait(entry, 0, now_ms)
            sends.append((seq, (reply, NAK if is_over else _hold(entry, behind, now_ms))))
            behind.add(entry)
            continue
        entry[3] = "L"
        attempts[seq] = max(1, fetched.ack.delivered - entry[2])
        deliver.append(fetched)
        if previous == "L" and seq < recalled:
            # Its lease ran out: the key's later leased messages come again after it (those
            # after an earlier one of the pull already were).
            for later in entries[bisect.bisect_right(entries, seq, key=_seq):
                                 bisect.bisect_left(entries, recalled, key=_seq)]:
                if later[3] == "L" and later[0] not in in_batch:
                    later[3] = "P"
                    sends.append((later[0], (later[1], PARK)))
            recalled = seq
    return deliver, attempts


def _settle_entries(entries: list[Entry], acks: Sequence[AckId], nack: Nack | None,
                    sends: dict[int, list[Send]]) -> bool:
    """Apply acks or nacks to a key's entries, noting the sends; True if any changed."""
    if nack is None:
        return _ack_entries(entries, acks, sends)
    return _nack_entries(entries, acks, nack, sends)


def _ack_entries(entries: list[Entry], acks: Sequence[AckId], sends: dict[int, list[Send]]
                 ) -> bool:
    """Drop the acked entries: each ack sends back the parked messages then at the front of
    the key. True if any entry was dropped."""
    now_ms = int(time.time() * 1000)
    acked: set[int] = set()  # (dropped at the end: one pass, however many acks)
    front = 0  # every entry before it is acked
    for ack in acks:
        sends.setdefault(ack.sseq, []).append((ack.subject, ACK))
        if ack.sseq in acked or entry_of(entries, ack.sseq, create=False) is None:
            continue
        acked.add(ack.sseq)
        while front < len(entries) and entries[front][0] in acked:
            front += 1
        at = front
        while at < len(entries):  # (the key's parked messages now at its front go back)
            later = entries[at]
            at += 1
            if later[0] in acked:
                continue
            if later[3] != "P":
                break
            _wait(later, 0, now_ms)
            sends.setdefault(later[0], [(later[1], NAK)])
    if acked:
        entries[:] = [entry for entry in entries if entry[0] not in acked]
    return bool(acked)


def _nack_entries(entries: list[Entry], acks: Sequence[AckId], nack: Nack,
                  sends: dict[int, list[Send]]) -> bool:
    """Mark nacked entries waiting, each with the key's later leased and parked messages (to
    come again after it, with the same nack body). True if any entry changed."""
    changed = False
    now_ms = int(time.time() * 1000)
    seqs = [entry[0] for entry in entries]
    swept = len(entries)  # no entry from here on is leased or parked any more
    for ack in acks:
        at = bisect.bisect_left(seqs, ack.sseq)
        entry = entries[at] if at < len(seqs) and seqs[at] == ack.sseq else None
        body = nack(ack, ack.delivered - (entry[2] if entry else 0))
        sends[ack.sseq] = [(ack.subject, body)]
        if entry is None:
            continue
        delay = _delay_ms(body)
        _wait(entry, delay, now_ms)
        changed = True
        for later in entries[at + 1:swept]:
            if later[3] in ("L", "P"):
                _wait(later, delay, now_ms)
                sends.setdefault(later[0], [(later[1], body)])
        swept = min(swept, at + 1)
    return changed
