"""WAL checkpoints off the event loop: a thread of their own, on a connection of their own.

SQLite in WAL mode appends every commit to the -wal file; a checkpoint copies those pages into
the database file (and, with synchronous=NORMAL, syncs both). By default the connection that
commits runs it, inside the commit that takes the WAL past 1,000 pages: on the store's one
connection that is the event loop, which then stalls for the copy and the fsyncs (5-10 ms
every ~150 one-message Publishes on the 2-core test machine, the regular spikes of `make
bench`'s latency run).

`WalCheckpointer` runs PASSIVE checkpoints from a thread (sqlite3 releases the GIL while SQLite
works, and a PASSIVE checkpoint never blocks the writer), as soon as something was committed
(PRAGMA data_version) and at most every `CHECK_EVERY_S`. It backs off to `IDLE_CHECK_EVERY_S`
while nothing is written, so an idle store costs a few wake-ups a second.

The WAL starts over from its beginning at the first write after a complete checkpoint,
whoever ran it. The store's connection keeps its own automatic checkpoint as a backstop, at
`BACKSTOP_PAGES`, for when the thread falls behind (a burst of writes, a busy core): it then
copies what is left, on the event loop; when the thread kept up it finds nothing to copy.
"""

from __future__ import annotations

import logging
import sqlite3
import threading

log = logging.getLogger("pubsub_emulator.store")

CHECK_EVERY_S = 0.05  # while commits arrive: ~50 ms of writes per checkpoint
IDLE_CHECK_EVERY_S = 1.0  # the longest wait between two looks, once nothing was written
# The committing connection's own wal_autocheckpoint (SQLite's default). It keeps the WAL
# file under ~4 MiB, below the store's journal_size_limit (8 MiB): a WAL past that limit is cut
# back each time it starts over, an ftruncate of 7-13 ms on the event loop.
BACKSTOP_PAGES = 1000
# A checkpoint copies what was committed when it began; commits made meanwhile are copied by
# the next one, at once, until the WAL is fully copied (each round is shorter) or this many.
CATCH_UP_ROUNDS = 4


class WalCheckpointer:
    """Checkpoints the WAL of the database at `path` from a daemon thread until `close()`."""

    def __init__(self, path: str, check_every_s: float = CHECK_EVERY_S,
                 idle_check_every_s: float = IDLE_CHECK_EVERY_S) -> None:
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._check_every_s = check_every_s
        self._idle_check_every_s = idle_check_every_s
        self._stop = threading.Event()
        self.looks = 0  # times it looked whether anything was committed
        self.checkpoints = 0  # checkpoints run so far
        self._thread = threading.Thread(target=self._run, name="sqlite-wal-checkpoint",
                                        daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen, wait = None, self._check_every_s
        while not self._stop.wait(wait):
            try:
                version = self._db.execute("PRAGMA data_version").fetchone()[0]
                self.looks += 1
                if version == seen:  # nothing committed since the last look: look less often
                    wait = min(wait * 2, self._idle_check_every_s)
                    continue
                seen, wait = version, self._check_every_s
                self._catch_up()
            except sqlite3.Error:  # the backstop checkpoints meanwhile; try again later
                log.exception("WAL checkpoint failed")
                wait = self._idle_check_every_s

    def _catch_up(self) -> None:
        for _ in range(CATCH_UP_ROUNDS):
            busy, frames, copied = self._db.execute(
                "PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            self.checkpoints += 1
            if busy or frames == copied:  # another checkpoint runs, or all is copied
                return

    def close(self) -> None:
        """Stop the thread (after the checkpoint it may be running) and close its connection."""
        self._stop.set()
        self._thread.join()
        self._db.close()
