"""The embedded store: one SQLite database (WAL) in the data directory, or in memory.

A publish commits before its ids are returned. With WAL and synchronous=NORMAL a committed
transaction survives the process being killed (it is in the OS's page cache and the WAL file);
only a power loss can take the last transactions, which is the trade Cloud Pub/Sub's clients
would not notice on a laptop or CI machine and which buys an order of magnitude in publish rate.

`SqliteResources` is the resource table, `SqliteMessages` the message log; they share one
connection and `Fanout`, the in-memory map of which subscriptions each topic feeds.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .base import (
    DEFAULT_POLICY,
    Delivery,
    DeliveryPolicy,
    InvalidAckId,
    Kind,
    MessageLog,
    NotFound,
    Page,
    ResourceTable,
    RetentionRules,
    Store,
    stamp,
)
from .pages import decode_page_token, page_of

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
"""

# `next_at` of an acknowledged message kept for seek (retain_acked_messages): never due.
ACKED = 1 << 62


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

    def sub_id(self, subscription: str) -> int:
        try:
            return self.ids[subscription]
        except KeyError:
            raise NotFound(subscription) from None


class SqliteResources(ResourceTable):
    def __init__(self, db: sqlite3.Connection, fanout: Fanout) -> None:
        self._db = db
        self._fanout = fanout

    async def create(self, kind: Kind, name: str, data: bytes, topic: str = "") -> bool:
        try:
            self._db.execute("INSERT INTO resources (kind, name, topic, proto) VALUES (?,?,?,?)",
                             (kind.value, name, topic, data))
        except sqlite3.IntegrityError:
            return False
        if kind is Kind.SUBSCRIPTION:
            self._fanout.reload()
        return True

    async def update(self, kind: Kind, name: str, data: bytes, topic: str | None = None,
                     expected: bytes | None = None) -> bool:
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
        row = self._db.execute("SELECT proto FROM resources WHERE kind=? AND name=?",
                               (kind.value, name)).fetchone()
        return row[0] if row else None

    async def delete(self, kind: Kind, name: str) -> bool:
        with transaction(self._db) as db:
            row = db.execute("SELECT id FROM resources WHERE kind=? AND name=?",
                             (kind.value, name)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM resources WHERE id=?", (row[0],))
            if kind is Kind.SUBSCRIPTION:
                db.execute("DELETE FROM deliveries WHERE sub_id=?", (row[0],))
            elif kind is Kind.SNAPSHOT:
                db.execute("DELETE FROM snapshot_items WHERE name=?", (name,))
                db.execute("DELETE FROM snapshot_state WHERE name=?", (name,))
        if kind is Kind.SUBSCRIPTION:
            self._fanout.reload()
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
    def __init__(self, db: sqlite3.Connection, fanout: Fanout) -> None:
        self._db = db
        self._fanout = fanout
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name='messages'").fetchone()
        self._last_seq: int = row[0] if row else 0

    async def publish(self, topic: str, messages: Sequence[bytes], now_ms: int,
                      skip: Mapping[str, set[int]] | None = None,
                      ordering_keys: Sequence[str] | None = None,
                      retain: bool = False) -> list[str]:
        first = self._last_seq + 1
        self._last_seq += len(messages)
        seqs = range(first, self._last_seq + 1)
        ids = [str(seq) for seq in seqs]
        subscribers = self._fanout.by_topic.get(topic, [])
        if not subscribers and not retain:
            # Like Cloud Pub/Sub: with no subscription and no retention nothing keeps them.
            return ids
        keys = ordering_keys or [""] * len(messages)
        rows = [(seq, topic, len(raw), now_ms, key, stamp(raw, str(seq), now_ms))
                for seq, raw, key in zip(seqs, messages, keys, strict=True)]
        sub_ids = self._fanout.ids
        skipped = {(sub_ids[name], first + index)
                   for name, indexes in (skip or {}).items() if name in sub_ids
                   for index in indexes}
        with transaction(self._db) as db:
            db.executemany("INSERT INTO messages (seq, topic, size, published_at, okey, message) "
                           "VALUES (?,?,?,?,?,?)", rows)
            db.executemany(
                "INSERT INTO deliveries (sub_id, seq, next_at, okey) VALUES (?,?,?,?)",
                [(sub_id, seq, now_ms, key) for sub_id in subscribers
                 for seq, key in zip(seqs, keys, strict=True) if (sub_id, seq) not in skipped])
        return ids

    async def pull(self, subscription: str, max_messages: int, lease_ms: int, now_ms: int,
                   max_bytes: int = 0, policy: DeliveryPolicy = DEFAULT_POLICY) -> list[Delivery]:
        sub_id = self._fanout.sub_id(subscription)
        if policy.ordered:
            rows = self._ordered_candidates(sub_id, max_messages, now_ms)
        else:
            rows = self._db.execute(
                "SELECT d.seq, d.attempts, m.message, m.size FROM deliveries d "
                "JOIN messages m ON m.seq = d.seq WHERE d.sub_id=? AND d.next_at<=? "
                "ORDER BY d.next_at, d.seq LIMIT ?", (sub_id, now_ms, max_messages)).fetchall()
        if not rows:
            return []
        if max_bytes:
            total, kept = 0, 0
            for _, _, _, size in rows:
                if kept and total + size > max_bytes:
                    break
                total += size
                kept += 1
            rows = rows[:kept]
        deadline = now_ms + lease_ms
        retry = policy.retry
        with transaction(self._db) as db:
            db.executemany(
                "UPDATE deliveries SET next_at=?, attempts=attempts+1 WHERE sub_id=? AND seq=?",
                [(deadline + (retry.delay_ms(attempts + 1) if retry else 0), sub_id, seq)
                 for seq, attempts, _, _ in rows])
        return [Delivery(f"{sub_id}-{seq}-{attempts + 1}", message, attempts + 1, size)
                for seq, attempts, message, size in rows]

    def _ordered_candidates(self, sub_id: int, max_messages: int, now_ms: int) -> list[Any]:
        """Available messages in publish order, minus those an earlier same-key one blocks."""
        db = self._db
        # The earliest message of each key that is leased or backing off blocks its key.
        blocked = dict(db.execute(
            "SELECT okey, MIN(seq) FROM deliveries WHERE sub_id=? AND next_at>? AND next_at<? "
            "AND okey!='' GROUP BY okey", (sub_id, now_ms, ACKED)).fetchall())
        rows = []
        for seq, attempts, key, message, size in db.execute(
                "SELECT d.seq, d.attempts, d.okey, m.message, m.size FROM deliveries d "
                "JOIN messages m ON m.seq = d.seq WHERE d.sub_id=? AND d.next_at<=? "
                "ORDER BY d.seq", (sub_id, now_ms)):
            if key and key in blocked and blocked[key] < seq:
                continue
            rows.append((seq, attempts, message, size))
            if len(rows) >= max_messages:
                break
        return rows

    @staticmethod
    def _parse_ack_id(sub_id: int, ack_id: str) -> tuple[int, int]:
        """(seq, attempt) of an ack id "<sub_id>-<seq>-<attempt>" issued for this subscription."""
        try:
            owner, seq, attempt = (int(part) for part in ack_id.split("-"))
        except ValueError:
            raise InvalidAckId(ack_id) from None
        if owner != sub_id:
            raise InvalidAckId(ack_id)
        return seq, attempt

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
        sub_id = self._fanout.sub_id(subscription)
        parsed, stale = self._targets(sub_id, ack_ids, policy, now_ms)
        # At-least-once: an ack with an older ack id of the message still acknowledges it.
        if policy.retain_acked:
            self._db.executemany("UPDATE deliveries SET next_at=? WHERE sub_id=? AND seq=?",
                                 [(ACKED, sub_id, seq) for seq, _ in parsed])
        else:
            self._db.executemany("DELETE FROM deliveries WHERE sub_id=? AND seq=?",
                                 [(sub_id, seq) for seq, _ in parsed])
        return stale

    async def modify_deadline(self, subscription: str, ack_ids: Sequence[str], deadline_ms: int,
                              now_ms: int, policy: DeliveryPolicy = DEFAULT_POLICY) -> list[str]:
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
                # so they are redelivered after it, in order.
                for seq, _ in parsed:
                    db.execute(
                        "UPDATE deliveries SET next_at=MIN(next_at, ?) WHERE sub_id=? AND seq>? "
                        "AND okey!='' AND okey=(SELECT okey FROM deliveries "
                        "WHERE sub_id=? AND seq=?)", (now_ms, sub_id, seq, sub_id, seq))
        return stale

    async def next_due_ms(self, subscription: str) -> int | None:
        row = self._db.execute("SELECT MIN(next_at) FROM deliveries WHERE sub_id=? AND next_at<?",
                               (self._fanout.sub_id(subscription), ACKED)).fetchone()
        return row[0]

    async def backlog(self, subscription: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM deliveries WHERE sub_id=? AND next_at<?",
                                (self._fanout.sub_id(subscription), ACKED)).fetchone()[0]

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
            db.execute("INSERT OR REPLACE INTO snapshot_state VALUES (?,?,?)",
                       (snapshot, topic, self._last_seq))
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
        db = self._db
        rules = rules or RetentionRules()
        # Subscriptions drop what is older than their retention, acked-and-kept or not.
        for name, retention_ms in rules.subscription_ms.items():
            sub_id = self._fanout.ids.get(name)
            if sub_id is None:
                continue
            db.execute("DELETE FROM deliveries WHERE sub_id=? AND seq IN "
                       "(SELECT seq FROM messages WHERE published_at<?)",
                       (sub_id, now_ms - retention_ms))
        low = self._lowest_needed()
        kept = list(rules.topic_ms)
        marks = ",".join("?" * len(kept))
        gone = db.execute(f"DELETE FROM messages WHERE seq<? AND topic NOT IN ({marks})",
                          (low, *kept)).rowcount
        for topic, retention_ms in rules.topic_ms.items():
            gone += db.execute("DELETE FROM messages WHERE topic=? AND seq<? AND published_at<?",
                               (topic, low, now_ms - retention_ms)).rowcount
        return gone

    def _lowest_needed(self) -> int:
        """Messages below this sequence are unneeded, unless their topic keeps them."""
        db = self._db
        low = self._last_seq + 1
        for sub_id in self._fanout.ids.values():
            row = db.execute("SELECT MIN(seq) FROM deliveries WHERE sub_id=?",
                             (sub_id,)).fetchone()
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
        target = ":memory:" if path is None else str(path)
        self._db = sqlite3.connect(target, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        fanout = Fanout(self._db)
        self.resources = SqliteResources(self._db, fanout)
        self.messages = SqliteMessages(self._db, fanout)

    async def close(self) -> None:
        self._db.close()
