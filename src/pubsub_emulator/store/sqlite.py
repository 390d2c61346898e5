"""The embedded store: one SQLite database (WAL) in the data directory, or in memory.

A publish commits before its ids are returned. With WAL and synchronous=NORMAL a committed
transaction survives the process being killed (it is in the OS's page cache and the WAL file);
only a power loss can take the last transactions, which is the trade Cloud Pub/Sub's clients
would not notice on a laptop or CI machine and which buys an order of magnitude in publish rate.

Message ids are the `seq` of the messages table, one sequence for every topic, and never
repeat: `IdCounter` records a mark above the ids handed out before it hands them out, including
ids of a publish that stores nothing (a topic with no subscription).

`SqliteResources` is the resource table, `SqliteMessages` the message log; they share one
connection, `Fanout`, the in-memory map of which subscriptions each topic feeds, and the
`Reclaimer`. Deleting a subscription or snapshot is one atomic step (it is gone at once); the
rows it leaves behind, and the space they took, are reclaimed afterwards in bounded chunks by a
background task that lets the event loop serve other calls between chunks. The retention sweep
works in chunks too.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .. import protowire
from .base import (
    DEFAULT_POLICY,
    Delivery,
    DeliveryPolicy,
    InvalidAckId,
    Kind,
    MessageLog,
    NotFound,
    Page,
    Pending,
    ResourceTable,
    RetentionRules,
    Store,
    SubscriptionStats,
)
from .checkpoints import BACKSTOP_PAGES, WalCheckpointer
from .pages import decode_page_token, page_of

log = logging.getLogger("pubsub_emulator.store")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    topic TEXT NOT NULL DEFAULT '',
    proto BLOB NOT NULL,
    UNIQUE (kind, name)
);
CREATE INDEX IF NOT EXISTS resources_by_topic ON resources (kind, topic, name);
CREATE TABLE IF NOT EXISTS messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    size INTEGER NOT NULL,
    published_at INTEGER NOT NULL,
    okey TEXT NOT NULL DEFAULT '',
    message BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_topic_time ON messages (topic, published_at);
CREATE TABLE IF NOT EXISTS deliveries (
    sub_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    next_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    okey TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (sub_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (sub_id, next_at);
-- A key's messages of a subscription, in order (an ordered nack takes the later ones back).
CREATE INDEX IF NOT EXISTS deliveries_by_key ON deliveries (sub_id, okey, seq)
    WHERE okey!='';
CREATE TABLE IF NOT EXISTS snapshot_state (
    name TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    high_water INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS snapshot_items (
    name TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (name, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# `next_at` of an acknowledged message kept for seek (retain_acked_messages): never due.
ACKED = 1 << 62

# Rows a background or sweep step deletes before it yields to the event loop: about 1 ms of
# work each on a small machine (500 delivery rows, 100 1 KiB messages), so a call waits at most
# that long behind a large reclaim. (Steps of 500 messages, 5 ms, were the p99 of one-message
# Publishes at 1,000 a second while a sweep ran.)
CHUNK = 500
MESSAGE_CHUNK = 100
# Background work (reclaiming, sweeping) rests between its steps: after a step of t seconds,
# REST_RATIO * t while the store is otherwise quiet (at most a quarter of the event loop), up
# to BUSY_REST_RATIO * t while calls keep coming (a twenty-first), doubling per busy step. A
# sweep dropping 200,000 acked 1 KiB messages and giving their space back is ~2 s of steps:
# back to back they held one-message Publishes up for 400 ms; at a quarter of the loop they
# still overloaded a server serving 1,000 of them a second (p50 450 ms). Under load the work
# takes longer, and is never starved: once it has gone on for LONG_RUN_S without a break it
# rests REST_RATIO again, busy or not, so that under a sustained flow (tens of thousands of
# messages acked a second) the sweep keeps up with what is acked and the file does not grow.
REST_RATIO = 3.0
BUSY_REST_RATIO = 20.0
LONG_RUN_S = 30.0
RUN_BREAK_S = 1.0  # a pause this long between two steps ends a run


def next_rest_ratio(ratio: float, busy: bool, long_run: bool = False) -> float:
    """The rest ratio after a step, from the last one, whether calls came meanwhile and
    whether the background work has gone on for LONG_RUN_S."""
    if long_run or not busy:
        return REST_RATIO
    return min(2 * ratio, BUSY_REST_RATIO)


class Pacer:
    """When background steps go on: `served()` counts the store's calls, `rest_after` waits."""

    def __init__(self) -> None:
        self.calls = 0
        self._seen = 0
        self.ratio = REST_RATIO  # the rest after the last step, in steps' lengths
        self._run_started = self._last_rest_ended = -RUN_BREAK_S

    def served(self) -> None:
        self.calls += 1

    async def rest_after(self, step_started: float) -> None:
        """Yield to the event loop after a step begun at `step_started` (perf_counter())."""
        now = time.perf_counter()
        if step_started - self._last_rest_ended >= RUN_BREAK_S:
            self._run_started = step_started  # a new run of steps
        busy, self._seen = self.calls != self._seen, self.calls
        self.ratio = next_rest_ratio(self.ratio, busy, now - self._run_started >= LONG_RUN_S)
        await asyncio.sleep(self.ratio * (now - step_started))
        self._last_rest_ended = time.perf_counter()


# Ids recorded ahead of those handed out: the mark is written once per this many ids, not on
# every publish (ids after a restart continue above the mark, so they skip at most this many).
ID_BLOCK = 1000
# Free pages worth giving back to the file system: at least this many (8 MiB), and a quarter of
# the file (fewer are reused by the next inserts anyway), so the file stays within ~4/3 of live
# data. A steady flow frees some thousand pages per sweep and takes them again: below 8 MiB it
# is not worth a vacuum and a TRUNCATE checkpoint on the event loop after every sweep.
COMPACT_MIN_PAGES = 2048
# Pages one incremental_vacuum step returns before it yields to the event loop (~2 ms).
VACUUM_PAGES = 128
# The WAL file is cut back to this size whenever it is reset (bytes); without it a WAL grown
# by a large transaction keeps its size for good.
JOURNAL_SIZE_LIMIT = 8 << 20
# The compaction's TRUNCATE checkpoint, when the checkpointer thread holds the checkpoint lock.
TRUNCATE_TRIES, TRUNCATE_RETRY_S = 100, 0.01


def open_database(target: str) -> sqlite3.Connection:
    """A connection with the store's settings and schema; an older file is converted once."""
    db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
    # Incremental auto-vacuum lets freed pages be given back (incremental_vacuum). It can be
    # set only before the first table is created: a database made without it is rebuilt once
    # by VACUUM, which takes a while for a large file but happens a single time.
    has_tables = db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] > 0
    if db.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        if has_tables:
            log.info("converting %s to incremental auto-vacuum (one-time VACUUM)", target)
            db.execute("VACUUM")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
    db.executescript(_SCHEMA)
    return db


# The values of a JSON array bound as one parameter (json_array): a list in one statement.
JSON_VALUES = "(SELECT value FROM json_each(?))"


def json_array(values: Iterable[int]) -> str:
    return f"[{','.join(map(str, values))}]"


@contextmanager
def transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """BEGIN ... COMMIT, or ROLLBACK on any exception (the connection is in autocommit mode)."""
    db.execute("BEGIN")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


class IdCounter:
    """Message ids: increasing, and never handed out twice, across restarts and crashes.

    Before handing out an id above the recorded mark, it records a new mark ID_BLOCK ahead
    (a commit of its own, durable like a publish's), so a publish that stores no rows has its
    ids covered too, and the cost is one small write per ID_BLOCK ids rather than per publish.
    A restart continues above the mark.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        # A database written before the counter existed: the best it knows is the highest id
        # it stored (sqlite_sequence) or that a snapshot recorded.
        marks = [row[0] for row in (
            db.execute("SELECT value FROM counters WHERE name='message_ids'").fetchone(),
            db.execute("SELECT seq FROM sqlite_sequence WHERE name='messages'").fetchone(),
            db.execute("SELECT MAX(high_water) FROM snapshot_state").fetchone(),
        ) if row and row[0] is not None]
        self.last: int = max(marks, default=0)
        self._recorded = self.last

    def take(self, count: int) -> range:
        """The next `count` ids, recorded as used before they are returned."""
        first, last = self.last + 1, self.last + count
        if last > self._recorded:
            mark = last + ID_BLOCK
            self._db.execute("INSERT INTO counters (name, value) VALUES ('message_ids', ?) "
                             "ON CONFLICT (name) DO UPDATE SET value=excluded.value", (mark,))
            self._recorded = mark
        self.last = last
        return range(first, last + 1)


class Reclaimer:
    """Reclaims rows nothing can see any more, and their space, in the background.

    A deleted subscription's delivery rows and a deleted snapshot's items are deleted CHUNK
    rows at a time, yielding to the event loop in between; then, if many pages are free, they
    are given back to the file system (incremental_vacuum, a step at a time) and the WAL is
    checkpointed and truncated. Subscription ids are never reused (AUTOINCREMENT), so rows of
    a deleted subscription cannot be mistaken for a later one's.
    """

    def __init__(self, db: sqlite3.Connection, pacer: Pacer) -> None:
        self._db = db
        self._pacer = pacer
        self._subscriptions: set[int] = set()
        self._snapshots: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self.reclaimed = 0  # rows deleted so far (tests and the log)
        self._find_leftovers()

    def _find_leftovers(self) -> None:
        """Rows a stop or crash left before they were reclaimed: an index seek per owner."""
        db = self._db
        live = {row[0] for row in db.execute("SELECT id FROM resources WHERE kind=?",
                                             (Kind.SUBSCRIPTION.value,))}
        row = db.execute("SELECT MIN(sub_id) FROM deliveries").fetchone()
        while row and row[0] is not None:
            if row[0] not in live:
                self._subscriptions.add(row[0])
            row = db.execute("SELECT MIN(sub_id) FROM deliveries WHERE sub_id>?",
                             (row[0],)).fetchone()
        row = db.execute("SELECT MIN(name) FROM snapshot_items").fetchone()
        while row and row[0] is not None:
            if not db.execute("SELECT 1 FROM snapshot_state WHERE name=?", row).fetchone():
                self._snapshots.add(row[0])
            row = db.execute("SELECT MIN(name) FROM snapshot_items WHERE name>?",
                             row).fetchone()

    def subscription_deleted(self, sub_id: int) -> None:
        self._subscriptions.add(sub_id)
        self.start()

    def snapshot_deleted(self, name: str) -> None:
        self._snapshots.add(name)
        self.start()

    def start(self) -> None:
        """Run the background task if there is work (called from a coroutine)."""
        if (self._task is None or self._task.done()) and (
                self._subscriptions or self._snapshots or self._compaction_due()):
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def idle(self) -> None:
        """Wait until everything queued so far is reclaimed and compacted."""
        while self._task is not None and not self._task.done():
            await asyncio.wait({self._task})

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None or task.done():
            return
        task.cancel()  # it stops at a yield: between chunks, never inside one
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            return
        if task.get_loop() is running:
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        try:
            while self._subscriptions or self._snapshots:
                started = time.perf_counter()
                if self._subscriptions:
                    self._reclaim_subscription(next(iter(self._subscriptions)))
                else:
                    self._reclaim_snapshot(next(iter(self._snapshots)))
                await self._pacer.rest_after(started)
            if self._compaction_due():
                await self._compact()
        except sqlite3.Error:  # the next delete or sweep starts it again
            log.exception("reclaiming storage failed")

    def _reclaim_subscription(self, sub_id: int) -> None:
        gone = self._db.execute(
            "DELETE FROM deliveries WHERE sub_id=? AND seq IN "
            "(SELECT seq FROM deliveries WHERE sub_id=? ORDER BY seq LIMIT ?)",
            (sub_id, sub_id, CHUNK)).rowcount
        self.reclaimed += gone
        if gone < CHUNK:
            self._subscriptions.discard(sub_id)

    def _reclaim_snapshot(self, name: str) -> None:
        # A snapshot saved again under the name meanwhile owns the items now: leave them.
        gone = self._db.execute(
            "DELETE FROM snapshot_items WHERE name=? AND seq IN "
            "(SELECT seq FROM snapshot_items WHERE name=? ORDER BY seq LIMIT ?) "
            "AND NOT EXISTS (SELECT 1 FROM snapshot_state WHERE name=?)",
            (name, name, CHUNK, name)).rowcount
        self.reclaimed += gone
        if gone < CHUNK:
            self._snapshots.discard(name)

    def _compaction_due(self) -> bool:
        free = self._db.execute("PRAGMA freelist_count").fetchone()[0]
        pages = self._db.execute("PRAGMA page_count").fetchone()[0]
        return free >= max(COMPACT_MIN_PAGES, pages // 4)

    async def _compact(self) -> None:
        """Give free pages back to the file system, then empty and truncate the WAL."""
        db = self._db
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        while free > 0:
            started = time.perf_counter()
            # The pragma frees one page per step of its statement, and execute() steps a
            # statement without result columns once: executescript() runs it to completion.
            db.executescript(f"PRAGMA incremental_vacuum({VACUUM_PAGES});")
            left = db.execute("PRAGMA freelist_count").fetchone()[0]
            if left >= free:  # not in incremental mode (an in-memory database): nothing to do
                break
            free = left
            await self._pacer.rest_after(started)
        # The file shrinks when the checkpoint copies the vacuumed pages into it; TRUNCATE
        # also cuts the WAL to zero bytes. It is busy while the checkpointer thread runs one
        # (a few ms): ask again, a while.
        for _ in range(TRUNCATE_TRIES):
            busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            if not busy:
                return
            await asyncio.sleep(TRUNCATE_RETRY_S)


class Fanout:
    """Subscription ids by name and by topic, read from the resources table.

    Publish and pull consult it on every call; it is reloaded whenever a subscription is
    created, deleted or moved to another topic.
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db
        self.ids: dict[str, int] = {}
        self.by_topic: dict[str, list[int]] = {}
        self.reload()

    def reload(self) -> None:
        self.ids.clear()
        self.by_topic.clear()
        for sub_id, name, topic in self._db.execute(
                "SELECT id, name, topic FROM resources WHERE kind=?",
                (Kind.SUBSCRIPTION.value,)):
            self.ids[name] = sub_id
            if topic:
                self.by_topic.setdefault(topic, []).append(sub_id)

    def add(self, sub_id: int, name: str, topic: str) -> None:
        """A subscription just created (a reload per creation made creating N of them cost
        N^2)."""
        self.ids[name] = sub_id
        if topic:
            self.by_topic.setdefault(topic, []).append(sub_id)

    def sub_id(self, subscription: str) -> int:
        try:
            return self.ids[subscription]
        except KeyError:
            raise NotFound(subscription) from None


# Kinds whose bytes the table keeps in memory once read: every Publish reads its topic and
# every delivery turn its subscription (a query each was ~5% of a message's CPU at one message
# per Publish). One process owns the database file (as it owns the fan-out map), and every
# write goes through this table, which forgets what it writes.
CACHED_KINDS = frozenset({Kind.TOPIC, Kind.SUBSCRIPTION})


class SqliteResources(ResourceTable):
    def __init__(self, db: sqlite3.Connection, fanout: Fanout, reclaimer: Reclaimer) -> None:
        self._db = db
        self._fanout = fanout
        self._reclaimer = reclaimer
        self._cached: dict[tuple[Kind, str], bytes] = {}

    async def create(self, kind: Kind, name: str, data: bytes, topic: str = "") -> bool:
        self._cached.pop((kind, name), None)
        try:
            row = self._db.execute(
                "INSERT INTO resources (kind, name, topic, proto) VALUES (?,?,?,?)",
                (kind.value, name, topic, data)).lastrowid
        except sqlite3.IntegrityError:
            return False
        if kind is Kind.SUBSCRIPTION and row is not None:
            self._fanout.add(row, name, topic)
        return True

    async def update(self, kind: Kind, name: str, data: bytes, topic: str | None = None,
                     expected: bytes | None = None) -> bool:
        self._cached.pop((kind, name), None)
        sets, values = ["proto=?"], [data]
        if topic is not None:
            sets.append("topic=?")
            values.append(topic)
        where, keys = "kind=? AND name=?", [kind.value, name]
        if expected is not None:
            where += " AND proto=?"
            keys.append(expected)
        cur = self._db.execute(f"UPDATE resources SET {', '.join(sets)} WHERE {where}",
                               (*values, *keys))
        if kind is Kind.SUBSCRIPTION and topic is not None:
            self._fanout.reload()
        return cur.rowcount > 0

    async def get(self, kind: Kind, name: str) -> bytes | None:
        cached = self._cached.get((kind, name))
        if cached is not None:
            return cached
        row = self._db.execute("SELECT proto FROM resources WHERE kind=? AND name=?",
                               (kind.value, name)).fetchone()
        if row is None:
            return None
        if kind in CACHED_KINDS:
            self._cached[(kind, name)] = row[0]
        return row[0]

    async def delete(self, kind: Kind, name: str) -> bool:
        self._cached.pop((kind, name), None)
        # One atomic step: the resource is gone at once, with its delivery state as far as any
        # call can see (a deleted subscription is out of the fan-out map, a deleted snapshot
        # has no state). The rows left behind go in the background, a chunk at a time.
        with transaction(self._db) as db:
            row = db.execute("SELECT id FROM resources WHERE kind=? AND name=?",
                             (kind.value, name)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM resources WHERE id=?", (row[0],))
            if kind is Kind.SNAPSHOT:
                db.execute("DELETE FROM snapshot_state WHERE name=?", (name,))
        if kind is Kind.SUBSCRIPTION:
            self._fanout.reload()
            self._reclaimer.subscription_deleted(row[0])
        elif kind is Kind.SNAPSHOT:
            self._reclaimer.snapshot_deleted(name)
        return True

    async def list_prefixed(self, kind: Kind, prefix: str, page_size: int,
                            page_token: str) -> Page:
        after = decode_page_token(page_token)
        limit = page_size + 1 if page_size else -1
        rows = self._db.execute(
            "SELECT name, proto FROM resources WHERE kind=? AND name>=? AND name<? AND name>? "
            "ORDER BY name LIMIT ?", (kind.value, prefix, prefix + "\uffff", after, limit))
        return page_of(rows, page_size)

    async def list_by_topic(self, kind: Kind, topic: str, page_size: int,
                            page_token: str) -> Page:
        after = decode_page_token(page_token)
        limit = page_size + 1 if page_size else -1
        rows = self._db.execute(
            "SELECT name, proto FROM resources WHERE kind=? AND topic=? AND name>? "
            "ORDER BY name LIMIT ?", (kind.value, topic, after, limit))
        return page_of(rows, page_size)


class SqliteMessages(MessageLog):
    short_pull_drains = True  # (a pull reads every available row up to its limits)

    def __init__(self, db: sqlite3.Connection, fanout: Fanout, reclaimer: Reclaimer,
                 pacer: Pacer) -> None:
        self._db = db
        self._fanout = fanout
        self._ids = IdCounter(db)
        self._sweep = RetentionSweep(db, fanout, self._ids, reclaimer, pacer)
        self._served = pacer.served  # every call counts: background steps rest longer

    async def publish(self, topic: str, messages: Sequence[bytes], now_ms: int,
                      skip: Mapping[str, set[int]] | None = None,
                      ordering_keys: Sequence[str] | None = None,
                      retain: bool = False) -> list[str]:
        ids, _ = self._append(topic, messages, now_ms, skip, ordering_keys, retain, {})
        return ids

    async def publish_leased(self, topic: str, messages: Sequence[bytes], now_ms: int,
                             leases: Mapping[str, int], retain: bool = False
                             ) -> tuple[list[str], dict[str, list[Delivery]]]:
        sub_ids = self._fanout.ids
        names = {sub_ids[name]: name for name in leases if name in sub_ids}
        leased = {sub_id: leases[name] for sub_id, name in names.items()}
        ids, rows = self._append(topic, messages, now_ms, None, None, retain, leased)
        written = set(self._fanout.by_topic.get(topic, ())) if rows else set()
        # (each what a pull would have made of the row: attempt 1)
        return ids, {name: [Delivery(f"{sub_id}-{seq}-1", message, 1, size, now_ms)
                            for seq, _, size, _, _, message in rows]
                     for sub_id, name in names.items() if sub_id in written}

    def _append(self, topic: str, messages: Sequence[bytes], now_ms: int,
                skip: Mapping[str, set[int]] | None, ordering_keys: Sequence[str] | None,
                retain: bool, leased: Mapping[int, int]) -> tuple[list[str], list[tuple]]:
        """Store the messages and a delivery row for each subscription of the topic (leased
        until leased[sub_id] for those named there); the ids and the message rows stored."""
        self._served()
        seqs = self._ids.take(len(messages))
        first = seqs.start
        ids = [str(seq) for seq in seqs]
        subscribers = self._fanout.by_topic.get(topic, [])
        if not subscribers and not retain:
            # Like Cloud Pub/Sub: with no subscription and no retention nothing keeps them.
            return ids, []
        keys = ordering_keys or [""] * len(messages)
        time_field = protowire.publish_stamp(now_ms)  # (the same for every message here)
        rows = [(seq, topic, len(raw), now_ms, key, protowire.stamped(raw, id_, time_field))
                for seq, id_, raw, key in zip(seqs, ids, messages, keys, strict=True)]
        sub_ids = self._fanout.ids
        skipped = {(sub_ids[name], first + index)
                   for name, indexes in (skip or {}).items() if name in sub_ids
                   for index in indexes}
        with transaction(self._db) as db:
            db.executemany("INSERT INTO messages (seq, topic, size, published_at, okey, message) "
                           "VALUES (?,?,?,?,?,?)", rows)
            db.executemany(
                "INSERT INTO deliveries (sub_id, seq, next_at, okey, attempts) "
                "VALUES (?,?,?,?,?)",
                [(sub_id, seq, leased[sub_id], key, 1) if sub_id in leased
                 else (sub_id, seq, now_ms, key, 0) for sub_id in subscribers
                 for seq, key in zip(seqs, keys, strict=True) if (sub_id, seq) not in skipped])
        return ids, rows

    async def pull(self, subscription: str, max_messages: int, lease_ms: int, now_ms: int,
                   max_bytes: int = 0, policy: DeliveryPolicy = DEFAULT_POLICY) -> list[Delivery]:
        self._served()
        sub_id = self._fanout.sub_id(subscription)
        if policy.ordered:
            rows = self._ordered_candidates(sub_id, max_messages, now_ms)
        else:
            rows = self._db.execute(
                "SELECT d.seq, d.attempts, m.message, m.size, m.published_at FROM deliveries d "
                "JOIN messages m ON m.seq = d.seq WHERE d.sub_id=? AND d.next_at<=? "
                "ORDER BY d.next_at, d.seq LIMIT ?", (sub_id, now_ms, max_messages)).fetchall()
        if not rows:
            return []
        if max_bytes:
            total, kept = 0, 0
            for _, _, _, size, _ in rows:
                if kept and total + size > max_bytes:
                    break
                total += size
                kept += 1
            rows = rows[:kept]
        deadline = now_ms + lease_ms
        retry = policy.retry
        if retry is None:  # one deadline for all: one statement
            self._db.execute(f"UPDATE deliveries SET next_at=?, attempts=attempts+1 "
                             f"WHERE sub_id=? AND seq IN {JSON_VALUES}",
                             (deadline, sub_id, json_array(row[0] for row in rows)))
        else:
            with transaction(self._db) as db:
                db.executemany(
                    "UPDATE deliveries SET next_at=?, attempts=attempts+1 "
                    "WHERE sub_id=? AND seq=?",
                    [(deadline + retry.delay_ms(attempts + 1), sub_id, seq)
                     for seq, attempts, _, _, _ in rows])
        return [Delivery(f"{sub_id}-{seq}-{attempts + 1}", message, attempts + 1, size, published)
                for seq, attempts, message, size, published in rows]

    def _ordered_candidates(self, sub_id: int, max_messages: int, now_ms: int) -> list[Any]:
        """Available messages in publish order, minus those an earlier same-key one blocks."""
        db = self._db
        # The earliest message of each key that is leased or backing off blocks its key.
        blocked = dict(db.execute(
            "SELECT okey, MIN(seq) FROM deliveries WHERE sub_id=? AND next_at>? AND next_at<? "
            "AND okey!='' GROUP BY okey", (sub_id, now_ms, ACKED)).fetchall())
        rows = []
        for seq, attempts, key, message, size, published in db.execute(
                "SELECT d.seq, d.attempts, d.okey, m.message, m.size, m.published_at "
                "FROM deliveries d JOIN messages m ON m.seq = d.seq "
                "WHERE d.sub_id=? AND d.next_at<=? ORDER BY d.seq", (sub_id, now_ms)):
            if key and key in blocked and blocked[key] < seq:
                continue
            rows.append((seq, attempts, message, size, published))
            if len(rows) >= max_messages:
                break
        return rows

    @staticmethod
    def _parse_ack_id(sub_id: int, ack_id: str) -> tuple[int, int]:
        """(seq, attempt) of an ack id "<sub_id>-<seq>-<attempt>" issued for this subscription."""
        try:
            owner, seq, attempt = ack_id.split("-")
            if int(owner) == sub_id:
                return int(seq), int(attempt)
        except ValueError:
            pass
        raise InvalidAckId(ack_id)

    def _current_leases(self, sub_id: int, ack_ids: Sequence[str], now_ms: int
                        ) -> tuple[list[tuple[int, int]], list[str]]:
        """Split ack ids into current leases (seq, attempt) and stale or malformed ids."""
        current, stale = [], []
        for ack_id in ack_ids:
            try:
                seq, attempt = self._parse_ack_id(sub_id, ack_id)
            except InvalidAckId:
                stale.append(ack_id)
                continue
            row = self._db.execute("SELECT attempts, next_at FROM deliveries "
                                   "WHERE sub_id=? AND seq=?", (sub_id, seq)).fetchone()
            if row and row[0] == attempt and now_ms < row[1] < ACKED:
                current.append((seq, attempt))
            else:
                stale.append(ack_id)
        return current, stale

    def _targets(self, sub_id: int, ack_ids: Sequence[str], policy: DeliveryPolicy,
                 now_ms: int) -> tuple[list[tuple[int, int]], list[str]]:
        """The (seq, attempt) pairs an ack or modack acts on, and the ids it refuses."""
        if policy.exactly_once:
            return self._current_leases(sub_id, ack_ids, now_ms)
        return [self._parse_ack_id(sub_id, ack_id) for ack_id in ack_ids], []

    async def acknowledge(self, subscription: str, ack_ids: Sequence[str],
                          policy: DeliveryPolicy = DEFAULT_POLICY, now_ms: int = 0) -> list[str]:
        self._served()
        sub_id = self._fanout.sub_id(subscription)
        parsed, stale = self._targets(sub_id, ack_ids, policy, now_ms)
        # At-least-once: an ack with an older ack id of the message still acknowledges it.
        # One statement for the call, its seqs as a JSON array: a commit per row (autocommit)
        # was half the server's time under receive + ack, and a statement per row (executemany)
        # cost twice this.
        seqs = json_array(seq for seq, _ in parsed)
        if policy.retain_acked:
            self._db.execute(f"UPDATE deliveries SET next_at=? WHERE sub_id=? AND seq IN "
                             f"{JSON_VALUES}", (ACKED, sub_id, seqs))
        else:
            self._db.execute(f"DELETE FROM deliveries WHERE sub_id=? AND seq IN {JSON_VALUES}",
                             (sub_id, seqs))
        return stale

    async def modify_deadline(self, subscription: str, ack_ids: Sequence[str], deadline_ms: int,
                              now_ms: int, policy: DeliveryPolicy = DEFAULT_POLICY) -> list[str]:
        self._served()
        sub_id = self._fanout.sub_id(subscription)
        parsed, stale = self._targets(sub_id, ack_ids, policy, now_ms)
        retry = policy.retry
        with transaction(self._db) as db:
            # Only the current lease moves: a stale ack id must not extend someone else's lease.
            db.executemany(
                "UPDATE deliveries SET next_at=? WHERE sub_id=? AND seq=? AND attempts=? "
                "AND next_at<?",
                [(now_ms + deadline_ms + (retry.delay_ms(attempt) if retry else 0), sub_id, seq,
                  attempt, ACKED) for seq, attempt in parsed])
            if policy.ordered and deadline_ms == 0:
                # A nacked keyed message takes its key's later leased messages back with it,
                # so they are redelivered after it, in order: one update per key, from its
                # first nacked message (one per message rewrote a key's later rows each time).
                first_nacked: dict[str, int] = {}
                for seq, _ in parsed:
                    row = db.execute("SELECT okey FROM deliveries WHERE sub_id=? AND seq=?",
                                     (sub_id, seq)).fetchone()
                    if row is not None and row[0]:
                        first_nacked[row[0]] = min(seq, first_nacked.get(row[0], seq))
                db.executemany(
                    "UPDATE deliveries SET next_at=MIN(next_at, ?) WHERE sub_id=? AND okey!='' "
                    "AND okey=? AND seq>?",
                    [(now_ms, sub_id, key, seq) for key, seq in first_nacked.items()])
        return stale

    async def next_due_ms(self, subscription: str) -> int | None:
        row = self._db.execute("SELECT MIN(next_at) FROM deliveries WHERE sub_id=? AND next_at<?",
                               (self._fanout.sub_id(subscription), ACKED)).fetchone()
        return row[0]

    async def backlog(self, subscription: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM deliveries WHERE sub_id=? AND next_at<?",
                                (self._fanout.sub_id(subscription), ACKED)).fetchone()[0]

    async def stats(self, subscriptions: Sequence[str], now_ms: int
                    ) -> dict[str, SubscriptionStats]:
        """One pass over the deliveries index for every subscription (its rows hold sub_id,
        next_at and seq), then the publish times of each one's oldest unacked message."""
        wanted = {self._fanout.ids[name]: name for name in subscriptions
                  if name in self._fanout.ids}
        found = {name: SubscriptionStats(0, 0, None) for name in wanted.values()}
        oldest: dict[int, list[str]] = {}  # a message's seq -> whose oldest unacked it is
        for sub_id, unacked, outstanding, low in self._db.execute(
                "SELECT sub_id, COUNT(*), SUM(attempts>0 AND next_at>?), MIN(seq) "
                "FROM deliveries WHERE next_at<? GROUP BY sub_id", (now_ms, ACKED)):
            if sub_id in wanted:
                found[wanted[sub_id]] = SubscriptionStats(unacked, outstanding, None)
                oldest.setdefault(low, []).append(wanted[sub_id])
        seqs = list(oldest)
        for start in range(0, len(seqs), CHUNK):
            chunk = seqs[start:start + CHUNK]
            for seq, published in self._db.execute(
                    f"SELECT seq, published_at FROM messages WHERE seq IN "
                    f"({','.join('?' * len(chunk))})", chunk):
                for name in oldest[seq]:
                    found[name] = SubscriptionStats(found[name].unacked,
                                                    found[name].outstanding, published)
        return found

    async def peek(self, subscription: str, max_messages: int, now_ms: int) -> list[Pending]:
        # The deliveries' primary key is (sub_id, seq): the first rows in publish order, read
        # without a write. A delivered message not yet due again is leased (or, under a retry
        # policy, leased and then backing off: next_at holds both, and the store keeps no
        # policy to tell them apart).
        rows = self._db.execute(
            "SELECT d.attempts, d.next_at, m.message FROM deliveries d "
            "JOIN messages m ON m.seq = d.seq WHERE d.sub_id=? AND d.next_at<? "
            "ORDER BY d.seq LIMIT ?", (self._fanout.sub_id(subscription), ACKED, max_messages))
        return [Pending(message, attempts, next_at if attempts and next_at > now_ms else None)
                for attempts, next_at, message in rows]

    async def purge(self, subscription: str) -> None:
        self._db.execute("DELETE FROM deliveries WHERE sub_id=?",
                         (self._fanout.sub_id(subscription),))

    def _topic_of(self, sub_id: int) -> str:
        return self._db.execute("SELECT topic FROM resources WHERE id=?", (sub_id,)).fetchone()[0]

    async def seek_to_time(self, subscription: str, time_ms: int, now_ms: int,
                           policy: DeliveryPolicy = DEFAULT_POLICY,
                           from_topic: bool = False) -> None:
        sub_id = self._fanout.sub_id(subscription)
        with transaction(self._db) as db:
            if not policy.retain_acked:
                db.execute("DELETE FROM deliveries WHERE sub_id=? AND seq IN "
                           "(SELECT seq FROM messages WHERE published_at<?)", (sub_id, time_ms))
            # Everything at or after the time is unacknowledged again, acked-and-kept included.
            db.execute("UPDATE deliveries SET next_at=? WHERE sub_id=?", (now_ms, sub_id))
            if policy.retain_acked:
                db.execute("UPDATE deliveries SET next_at=? WHERE sub_id=? AND seq IN "
                           "(SELECT seq FROM messages WHERE published_at<?)",
                           (ACKED, sub_id, time_ms))
            if from_topic:  # the topic keeps messages: replay what it has since the time
                db.execute("INSERT OR IGNORE INTO deliveries (sub_id, seq, next_at, okey) "
                           "SELECT ?, seq, ?, okey FROM messages WHERE topic=? AND published_at>=?",
                           (sub_id, now_ms, self._topic_of(sub_id), time_ms))

    async def save_snapshot(self, snapshot: str, subscription: str) -> None:
        sub_id = self._fanout.sub_id(subscription)
        topic = self._topic_of(sub_id)
        with transaction(self._db) as db:
            # Items a deleted snapshot of the same name left for the reclaimer are not ours.
            db.execute("DELETE FROM snapshot_items WHERE name=?", (snapshot,))
            db.execute("INSERT OR REPLACE INTO snapshot_state VALUES (?,?,?)",
                       (snapshot, topic, self._ids.last))
            db.execute("INSERT INTO snapshot_items SELECT ?, seq FROM deliveries "
                       "WHERE sub_id=? AND next_at<?", (snapshot, sub_id, ACKED))

    async def seek_to_snapshot(self, subscription: str, snapshot: str, now_ms: int) -> None:
        sub_id = self._fanout.sub_id(subscription)
        state = self._db.execute("SELECT topic, high_water FROM snapshot_state WHERE name=?",
                                 (snapshot,)).fetchone()
        if state is None:
            raise NotFound(snapshot)
        topic, high_water = state
        with transaction(self._db) as db:
            db.execute("DELETE FROM deliveries WHERE sub_id=?", (sub_id,))
            db.execute("INSERT OR IGNORE INTO deliveries (sub_id, seq, next_at, okey) "
                       "SELECT ?, i.seq, ?, m.okey FROM snapshot_items i "
                       "JOIN messages m ON m.seq=i.seq WHERE i.name=?", (sub_id, now_ms, snapshot))
            db.execute("INSERT OR IGNORE INTO deliveries (sub_id, seq, next_at, okey) "
                       "SELECT ?, seq, ?, okey FROM messages WHERE topic=? AND seq>?",
                       (sub_id, now_ms, topic, high_water))

    async def sweep(self, now_ms: int, rules: RetentionRules | None = None) -> int:
        return await self._sweep.run(now_ms, rules or RetentionRules())


class RetentionSweep:
    """The retention sweep, CHUNK deliveries or MESSAGE_CHUNK messages per step, resting
    between steps (Pacer).

    Each step is atomic and decides afresh what is still needed, so a call served between two
    steps (a seek, a snapshot, a new subscription) never loses a message it needs. Retention
    was never exact to the millisecond (a sweep runs every few seconds), so an expired message
    being deliverable for a few more steps changes nothing a client can rely on.
    """

    def __init__(self, db: sqlite3.Connection, fanout: Fanout, ids: IdCounter,
                 reclaimer: Reclaimer, pacer: Pacer) -> None:
        self._db = db
        self._fanout = fanout
        self._ids = ids
        self._reclaimer = reclaimer
        self._pacer = pacer

    async def run(self, now_ms: int, rules: RetentionRules) -> int:
        # Subscriptions drop what is older than their retention, acked-and-kept or not.
        for name, retention_ms in rules.subscription_ms.items():
            await self._expire_deliveries(name, now_ms - retention_ms)
        gone = await self._drop_unneeded(list(rules.topic_ms))
        for topic, retention_ms in rules.topic_ms.items():
            gone += await self._drop_expired(topic, now_ms - retention_ms)
        self._reclaimer.start()  # gives the space back if much was freed
        return gone

    async def _expire_deliveries(self, subscription: str, cutoff_ms: int) -> None:
        """Drop the subscription's deliveries of messages published before the cutoff.

        Publish times grow with seq (this process publishes, one call after another), so the
        scan stops at the first message within retention: a sweep of a subscription with
        nothing expired reads a single row, not its whole backlog (that was every backlog, in
        full, every 5 s). A clock set back only delays the expiry of what follows."""
        after = 0
        while (sub_id := self._fanout.ids.get(subscription)) is not None:
            started = time.perf_counter()
            rows = self._db.execute(
                "SELECT d.seq, m.published_at FROM deliveries d LEFT JOIN messages m "
                "ON m.seq=d.seq WHERE d.sub_id=? AND d.seq>? ORDER BY d.seq LIMIT ?",
                (sub_id, after, CHUNK)).fetchall()
            old, within = [], False
            for seq, published in rows:
                if published is None:
                    continue
                if published >= cutoff_ms:
                    within = True
                    break
                old.append((sub_id, seq))
            if old:
                with transaction(self._db) as db:
                    db.executemany("DELETE FROM deliveries WHERE sub_id=? AND seq=?", old)
            if within or len(rows) < CHUNK:
                return
            after = rows[-1][0]
            await self._pacer.rest_after(started)

    async def _drop_unneeded(self, kept: list[str]) -> int:
        """Delete messages below the lowest needed one, except those of topics that keep them."""
        marks = ",".join("?" * len(kept))
        gone, after = 0, 0
        while True:
            started = time.perf_counter()
            low = self._lowest_needed()
            rows = self._db.execute(
                f"SELECT seq FROM messages WHERE seq>? AND seq<? AND topic NOT IN ({marks}) "
                "ORDER BY seq LIMIT ?", (after, low, *kept, MESSAGE_CHUNK)).fetchall()
            if not rows:
                return gone
            gone += self._db.execute(
                f"DELETE FROM messages WHERE seq>? AND seq<=? AND topic NOT IN ({marks})",
                (after, rows[-1][0], *kept)).rowcount
            after = rows[-1][0]
            if len(rows) < MESSAGE_CHUNK:
                return gone
            await self._pacer.rest_after(started)

    async def _drop_expired(self, topic: str, cutoff_ms: int) -> int:
        """Delete a retaining topic's messages past its retention that nothing else needs."""
        gone = 0
        while True:
            started = time.perf_counter()
            dropped = self._db.execute(
                "DELETE FROM messages WHERE seq IN (SELECT seq FROM messages WHERE topic=? "
                "AND published_at<? AND seq<? LIMIT ?)",
                (topic, cutoff_ms, self._lowest_needed(), MESSAGE_CHUNK)).rowcount
            gone += dropped
            if dropped < MESSAGE_CHUNK:
                return gone
            await self._pacer.rest_after(started)

    def _lowest_needed(self) -> int:
        """Messages below this sequence are unneeded, unless their topic keeps them."""
        db = self._db
        low = self._ids.last + 1
        # An index seek per live subscription, in one statement (a statement each cost 2,000
        # round trips through Python per step with 2,000 subscriptions). Rows of deleted
        # subscriptions the reclaimer has not reached yet do not count.
        row = db.execute(
            "SELECT MIN((SELECT MIN(seq) FROM deliveries WHERE sub_id=r.id)) FROM resources r "
            "WHERE kind=?", (Kind.SUBSCRIPTION.value,)).fetchone()
        if row[0] is not None:
            low = min(low, row[0])
        row = db.execute("SELECT MIN(seq) FROM snapshot_items").fetchone()
        if row[0] is not None:
            low = min(low, row[0])
        # A snapshot also restores what its topic got after it: keep those messages too.
        row = db.execute("SELECT MIN(high_water) FROM snapshot_state").fetchone()
        if row[0] is not None:
            low = min(low, row[0] + 1)
        return low


class SqliteStore(Store):
    def __init__(self, path: str | Path | None) -> None:
        """`path` is the database file; None keeps everything in memory."""
        self._db = open_database(":memory:" if path is None else str(path))
        self.checkpointer: WalCheckpointer | None = None
        if path is not None:  # checkpoints leave the event loop (see checkpoints.py)
            self._db.execute(f"PRAGMA wal_autocheckpoint={BACKSTOP_PAGES}")
            self.checkpointer = WalCheckpointer(str(path))
        fanout = Fanout(self._db)
        # The store's calls and its background work (reclaiming, the retention sweep) share
        # one pacer: the calls it serves make the background steps rest longer.
        pacer = Pacer()
        # Reclaims what a delete left behind, in the background; its `idle()` waits for it.
        self.reclaimer = Reclaimer(self._db, pacer)
        self.resources = SqliteResources(self._db, fanout, self.reclaimer)
        self.messages = SqliteMessages(self._db, fanout, self.reclaimer, pacer)

    async def close(self) -> None:
        await self.reclaimer.stop()
        if self.checkpointer is not None:
            self.checkpointer.close()
        self._db.close()
