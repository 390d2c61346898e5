"""Client errors in the log: one line per kind of error per interval, never a traceback.

A client in a loop that sends the same bad request must not fill the disk, and whoever reads
the log still learns what went wrong and how often. Errors that are the server's fault (bugs)
are not client errors: they keep their traceback, at error level.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

# One line per kind per interval; the next line says how many were left out in between.
INTERVAL_S = 60.0
MAX_DETAIL_CHARS = 200
# Kinds come from a closed set (protocol, status, method), but a bound keeps the table small
# whatever a caller passes.
_MAX_KINDS = 1024


def one_line(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """`text` as one printable line: clients choose these bytes (paths, bodies, headers)."""
    flat = " ".join(text[:limit].split())  # newlines and runs of spaces: one space
    flat = "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)
    return flat + ("..." if len(text) > limit else "")


class ClientErrorLog:
    """Logs client errors at `level`: the first of each kind, then one per `interval_s`."""

    def __init__(self, logger: logging.Logger, level: int = logging.INFO,
                 interval_s: float = INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._level = level
        self._interval_s = interval_s
        self._clock = clock
        self._last: dict[str, float] = {}  # kind -> when its last line was written
        self._suppressed: dict[str, int] = {}  # kind -> errors left out since that line

    def record(self, kind: str, detail: str) -> None:
        if not self._log.isEnabledFor(self._level):
            return
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval_s:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return
        if len(self._last) >= _MAX_KINDS:
            self._last.clear()
            self._suppressed.clear()
        left_out = self._suppressed.pop(kind, 0)
        self._last[kind] = now
        more = (f" (and {left_out} more in the last {now - last:.0f} s)"
                if left_out and last is not None else "")
        self._log.log(self._level, "client error: %s: %s%s", kind, one_line(detail), more)


class HttpServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger aiohttp's HTTP server writes to (the app's `handler_args`).

    aiohttp logs every request it cannot parse (bad request line, header too long, bad
    framing) with a full traceback: those are the client's errors and go to `clients`
    instead. Anything else it logs (a handler that failed) is a bug and keeps its traceback.
    """

    def __init__(self, logger: logging.Logger, clients: ClientErrorLog) -> None:
        super().__init__(logger, {})
        self.clients = clients

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, HttpProcessingError):
            self.clients.record(f"HTTP {exc.code or 400}", exc.message or type(exc).__name__)
            return
        super().log(level, msg, *args, **kwargs)
