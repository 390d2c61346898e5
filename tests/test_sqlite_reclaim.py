"""The embedded store reclaims large deletes in bounded chunks and gives the space back.

Everything runs on one event loop, as in the emulator: a "client" coroutine keeps calling the
store while a subscription and topic with a large backlog are deleted and reclaimed, and the
test counts the calls it got served between the reclaimer's steps. Nothing is timed: the
assertions are on interleaving (how much work was done between two served calls) and on the
data directory's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from pubsub_emulator.store import Kind, NotFound, RetentionRules
from pubsub_emulator.store.sqlite import CHUNK, ID_BLOCK, MESSAGE_CHUNK, SqliteStore
from store_helpers import msg, now

T = "projects/p/topics/big"
S = "projects/p/subscriptions/big"
# The live data that stays: a topic that retains its messages (~2.5 MB). (Not a subscription's
# backlog: the store reclaims messages below the lowest one any subscription still needs, so
# an older unacked backlog would keep the big topic's messages too.)
LIVE_T = "projects/p/topics/live"
LIVE = 2_000
KEEP = RetentionRules(topic_ms={LIVE_T: 24 * 3600_000})
LONELY_T = "projects/p/topics/lonely"  # no subscription
BACKLOG = 40_000  # 1 KiB each: ~50 MB of messages and deliveries, a few seconds to publish
BATCH = 1_000


def dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def payload(i: int) -> bytes:
    return msg(b"%08d" % i + b"x" * 1016)


async def publish_many(store: SqliteStore, topic: str, count: int,
                       retain: bool = False) -> list[str]:
    ids: list[str] = []
    for start in range(0, count, BATCH):
        ids += await store.messages.publish(
            topic, [payload(i) for i in range(start, min(count, start + BATCH))], now(),
            retain=retain)
    return ids


class Probe:
    """Counts the rows of the big subscription and topic left, through a connection of its own."""

    def __init__(self, path: Path, sub_id: int) -> None:
        self._db = sqlite3.connect(path, isolation_level=None)
        self._sub_id = sub_id

    def rows_left(self) -> int:
        deliveries = self._db.execute("SELECT COUNT(*) FROM deliveries WHERE sub_id=?",
                                      (self._sub_id,)).fetchall()[0][0]
        return deliveries + self.messages(T)

    def messages(self, topic: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM messages WHERE topic=?",
                                (topic,)).fetchall()[0][0]

    def close(self) -> None:
        self._db.close()


async def client(store: SqliteStore, probe: Probe, served: list[int],
                 stop: asyncio.Event) -> None:
    """Another client's requests, each noting how many rows were left when it was served."""
    while not stop.is_set():
        assert await store.resources.get(Kind.TOPIC, LIVE_T) == b"topic"
        assert len((await store.resources.list_prefixed(Kind.TOPIC, "projects/p/", 0,
                                                        "")).items) >= 2
        await store.messages.publish(LONELY_T, [msg(b"ping")], now())
        served.append(probe.rows_left())
        await asyncio.sleep(0)  # as a request's network round trip would


def sub_id_of(path: Path, name: str) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT id FROM resources WHERE name=?", (name,)).fetchone()[0]


def test_large_delete_is_reclaimed_in_chunks_and_gives_the_space_back(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"

    async def scenario() -> None:
        store = SqliteStore(path)
        for topic in (T, LIVE_T, LONELY_T):
            await store.resources.create(Kind.TOPIC, topic, b"topic")
        await store.resources.create(Kind.SUBSCRIPTION, S, b"sub", topic=T)
        await publish_many(store, LIVE_T, LIVE, retain=True)
        before = dir_size(tmp_path)
        await publish_many(store, T, BACKLOG)
        full = dir_size(tmp_path)
        probe = Probe(path, sub_id_of(path, S))
        served: list[int] = []
        stop = asyncio.Event()
        other = asyncio.create_task(client(store, probe, served, stop))
        await asyncio.sleep(0)
        # Deleting is one step: the subscription is gone at once, its backlog with it...
        assert await store.resources.delete(Kind.SUBSCRIPTION, S)
        assert await store.resources.delete(Kind.TOPIC, T)
        with pytest.raises(NotFound):
            await store.messages.pull(S, 10, 10_000, now())
        # ...and a subscription made again under the name starts empty.
        await store.resources.create(Kind.SUBSCRIPTION, S, b"sub", topic=LONELY_T)
        assert await store.messages.backlog(S) == 0
        assert await store.resources.delete(Kind.SUBSCRIPTION, S)
        assert probe.rows_left() == 2 * BACKLOG  # nothing reclaimed inside the delete calls
        await store.reclaimer.idle()  # the deliveries, in the background
        # The messages, as the sweeper does it.
        assert await store.messages.sweep(now(), KEEP) == BACKLOG
        await store.reclaimer.idle()  # and the space
        stop.set()
        await other
        assert probe.messages(LIVE_T) == LIVE
        probe.close()
        after = dir_size(tmp_path)
        await store.close()
        check(served, before, full, after)

    asyncio.run(scenario())


def check(served: list[int], before: int, full: int, after: int) -> None:
    # The other client was served between the steps: about one request per chunk deleted
    # (2 * BACKLOG / CHUNK chunks), and no step between two of its requests did more than a
    # chunk of the deliveries and one of the messages.
    assert len(served) >= 2 * BACKLOG // CHUNK
    steps = [a - b for a, b in zip(served, served[1:], strict=False)]
    assert max(steps) <= CHUNK + MESSAGE_CHUNK, max(steps)
    assert served[-1] == 0
    # The space came back: the backlog made the directory many times larger; afterwards it
    # holds the live data again, within 2x of its size before the backlog. (Once due, a
    # compaction gives back every free page; the slack is the few pages the other client's
    # publishes and the counters took.)
    assert full > 5 * before, (before, full)
    assert after <= 2 * before, (before, full, after)


def test_rows_left_by_a_stop_mid_reclaim_are_reclaimed_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"

    async def first() -> None:
        store = SqliteStore(path)
        await store.resources.create(Kind.TOPIC, T, b"topic")
        await store.resources.create(Kind.SUBSCRIPTION, S, b"sub", topic=T)
        await store.resources.create(Kind.SNAPSHOT, "projects/p/snapshots/snap", b"snap", T)
        await publish_many(store, T, 3 * CHUNK)
        await store.messages.save_snapshot("projects/p/snapshots/snap", S)
        assert await store.resources.delete(Kind.SUBSCRIPTION, S)
        assert await store.resources.delete(Kind.SNAPSHOT, "projects/p/snapshots/snap")
        await store.close()  # before the reclaimer ran: its rows are left in the file

    async def second() -> None:
        store = SqliteStore(path)
        await store.messages.sweep(now())  # the sweeper's first round starts the reclaimer
        await store.reclaimer.idle()
        await store.messages.sweep(now())
        await store.close()

    asyncio.run(first())
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0] == 3 * CHUNK
        assert db.execute("SELECT COUNT(*) FROM snapshot_items").fetchone()[0] == 3 * CHUNK
    asyncio.run(second())
    with contextlib.closing(sqlite3.connect(path)) as db:
        for table in ("deliveries", "snapshot_items", "messages"):
            assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0, table


def test_a_database_from_before_is_converted_and_keeps_its_ids(tmp_path: Path) -> None:
    """A file written by the store before incremental auto-vacuum and the id counter."""
    path = tmp_path / "store.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE messages (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT "
                   "NOT NULL, size INTEGER NOT NULL, published_at INTEGER NOT NULL, okey TEXT "
                   "NOT NULL DEFAULT '', message BLOB NOT NULL)")
        db.execute("INSERT INTO messages VALUES (41, 't', 1, 0, '', x'00')")
        db.commit()
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 0

    async def reopen() -> list[str]:
        store = SqliteStore(path)
        ids = await store.messages.publish(LONELY_T, [msg(b"x")], now())
        await store.close()
        return ids

    [first] = asyncio.run(reopen())
    assert int(first) == 42
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    [second] = asyncio.run(reopen())  # a publish storing nothing still recorded its id
    assert 42 < int(second) <= 42 + ID_BLOCK + 1
