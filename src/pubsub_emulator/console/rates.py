"""Rates (per second) of the emulator's own counters, as the console shows them.

The counters are metrics.py's per-process ones (messages published per topic, delivered and
acknowledged per subscription): with several processes sharing a NATS store each console shows
what its own process did. A rate needs two readings: each time the console reads the counters
it records them, and a rate is the change since the reading about `WINDOW_S` ago (or the oldest
one kept), so it settles within a window and needs nothing on the hot path.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Mapping

WINDOW_S = 10.0
FORGET_S = 300.0  # a resource not read for this long is dropped (deleted, or no one looks)


class RateMeter:
    """Readings of monotonic counters by key, and the rate of each over the last window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._readings: dict[str, deque[tuple[float, float]]] = {}

    def record(self, counts: Mapping[str, float]) -> dict[str, float | None]:
        """Record the current `counts`; the rate of each key (None: one reading so far)."""
        now = self._clock()
        rates: dict[str, float | None] = {}
        for key, count in counts.items():
            readings = self._readings.setdefault(key, deque())
            if readings and count < readings[-1][1]:  # a counter that restarted
                readings.clear()
            readings.append((now, count))
            # Keep one reading at or before the window's start: the baseline of the rate.
            while len(readings) > 2 and readings[1][0] <= now - WINDOW_S:
                readings.popleft()
            first_time, first_count = readings[0]
            elapsed = now - first_time
            rates[key] = (count - first_count) / elapsed if elapsed > 0 else None
        self._forget(now)
        return rates

    def _forget(self, now: float) -> None:
        stale = [key for key, readings in self._readings.items()
                 if readings[-1][0] < now - FORGET_S]
        for key in stale:
            del self._readings[key]
