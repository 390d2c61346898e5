"""The embedded store keeps WAL checkpoints and long sweeps off the event loop.

- Checkpoints run in the checkpointer's thread: the committing connection's own automatic
  checkpoint is only a backstop, and with the thread keeping up the WAL starts over long
  before it would (so it stays small) and the committing thread never copies pages.
- Background steps rest REST_RATIO times their length, more while calls keep coming.
- A retention sweep of a subscription whose messages are all within retention reads one chunk,
  not the whole backlog.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace

from pubsub_emulator.store import Kind, RetentionRules
from pubsub_emulator.store import sqlite as sqlite_store
from pubsub_emulator.store.checkpoints import BACKSTOP_PAGES
from pubsub_emulator.store.sqlite import (
    BUSY_REST_RATIO,
    CHUNK,
    LONG_RUN_S,
    REST_RATIO,
    RUN_BREAK_S,
    Pacer,
    SqliteStore,
    next_rest_ratio,
)
from store_helpers import msg, now
from support import until

T = "projects/p/topics/t"
S = "projects/p/subscriptions/s"
PAGE = 4096


def checkpointer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "sqlite-wal-checkpoint"]


def wal_frames(path: Path) -> int:
    """The WAL file's size in frames: the most it ever held (it starts over in place; only
    past journal_size_limit is it cut back)."""
    wal = Path(f"{path}-wal")
    return (wal.stat().st_size - 32) // (PAGE + 24) if wal.exists() else 0


def test_checkpoints_run_in_their_thread_and_the_wal_starts_over(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    before = len(checkpointer_threads())

    async def scenario() -> None:
        store = SqliteStore(path)
        checkpointer = store.checkpointer
        assert checkpointer is not None
        assert len(checkpointer_threads()) == before + 1
        # No backstop: only the thread checkpoints. (The store's connection keeps one.)
        store._db.execute("PRAGMA wal_autocheckpoint=0")  # noqa: SLF001
        await store.resources.create(Kind.TOPIC, T, b"topic")
        await store.resources.create(Kind.SUBSCRIPTION, S, b"sub", topic=T)
        # One message per commit, as one-message Publishes, a few pages each: some 15,000
        # pages go through the WAL, which starts over after each checkpoint the thread ran.
        largest = 0
        for i in range(3000):
            await store.messages.publish(T, [msg(b"%06d" % i + b"x" * 1018)], now())
            largest = max(largest, wal_frames(path))
            if i % 100 == 99:
                ran = checkpointer.checkpoints
                await until(lambda ran=ran: checkpointer.checkpoints > ran, "a checkpoint")
        assert largest < BACKSTOP_PAGES, largest
        await store.close()
        assert len(checkpointer_threads()) == before  # close() stopped it

    asyncio.run(scenario())
    with closing(sqlite3.connect(path)) as db:  # every commit is in the file
        assert db.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 3000


def test_an_in_memory_store_has_no_checkpointer() -> None:
    async def scenario() -> None:
        store = SqliteStore(None)
        assert store.checkpointer is None
        await store.close()

    asyncio.run(scenario())


def test_a_sweep_reads_one_chunk_of_a_backlog_within_retention(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"
    backlog = 10 * CHUNK
    statements: list[str] = []

    async def scenario() -> None:
        store = SqliteStore(path)
        await store.resources.create(Kind.TOPIC, T, b"topic")
        await store.resources.create(Kind.SUBSCRIPTION, S, b"sub", topic=T)
        old = now() - 3_600_000
        await store.messages.publish(T, [msg(b"old")] * 10, old)  # an hour ago
        await store.messages.publish(T, [msg(b"new")] * backlog, now())
        db = sqlite3.connect(path)
        try:
            store._db.set_trace_callback(statements.append)  # noqa: SLF001 - the store's reads
            # Ten minutes of retention: the ten old messages go, the backlog stays.
            await store.messages.sweep(now(), RetentionRules({S: 600_000}))
            store._db.set_trace_callback(None)  # noqa: SLF001
            left = db.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
        finally:
            db.close()
        assert left == backlog
        scans = [s for s in statements if "FROM deliveries d LEFT JOIN messages" in s]
        assert len(scans) == 1, len(scans)  # not backlog / CHUNK of them
        await store.close()

    asyncio.run(scenario())


def test_an_idle_store_runs_no_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "store.sqlite3"

    async def scenario() -> None:
        store = SqliteStore(path)
        checkpointer = store.checkpointer
        assert checkpointer is not None
        await store.resources.create(Kind.TOPIC, T, b"topic")
        await until(lambda: checkpointer.checkpoints > 0, "the first checkpoint")
        ran, looked = checkpointer.checkpoints, checkpointer.looks
        # Nothing written meanwhile: the thread looks again (and again), and checkpoints not.
        await until(lambda: checkpointer.looks >= looked + 2, "two more looks")
        assert checkpointer.checkpoints == ran
        await store.close()

    asyncio.run(scenario())


def test_background_steps_rest_longer_while_calls_keep_coming() -> None:
    assert next_rest_ratio(REST_RATIO, busy=False) == REST_RATIO
    ratio, seen = REST_RATIO, []
    for _ in range(8):
        ratio = next_rest_ratio(ratio, busy=True)
        seen.append(ratio)
    assert seen[0] == 2 * REST_RATIO
    assert seen == sorted(seen) and seen[-1] == BUSY_REST_RATIO
    assert next_rest_ratio(BUSY_REST_RATIO, busy=False) == REST_RATIO  # quiet again: back
    # Work that has gone on for LONG_RUN_S keeps a quarter of the loop, busy or not: under a
    # sustained flow the sweep keeps up with what is acked.
    assert next_rest_ratio(BUSY_REST_RATIO, busy=True, long_run=True) == REST_RATIO


def test_a_long_run_of_busy_steps_rests_a_quarter_again_and_a_break_starts_over(monkeypatch):
    clock = [1000.0]  # the pacer's perf_counter; a step takes 1 ms of it, a rest 0.5 s
    monkeypatch.setattr(sqlite_store, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    pacer = Pacer()

    async def steps(count: int) -> list[float]:
        ratios = []
        for _ in range(count):
            started = clock[0]
            clock[0] += 0.001
            pacer.served()  # a call came during the step
            await pacer.rest_after(started)  # (sleeps ratio x 1 ms for real)
            ratios.append(pacer.ratio)
            clock[0] += 0.5
        return ratios

    async def scenario() -> None:
        steps_in_long_run = int(LONG_RUN_S / 0.501) + 1
        ratios = await steps(steps_in_long_run + 5)
        assert ratios[0] == 2 * REST_RATIO and BUSY_REST_RATIO in ratios
        assert ratios[-5:] == [REST_RATIO] * 5  # the run went on for LONG_RUN_S
        clock[0] += RUN_BREAK_S  # a break: the next steps are a new run
        assert (await steps(3))[-1] == BUSY_REST_RATIO

    asyncio.run(scenario())
