"""One owner at a time for each push subscription, among every process sharing the store.

Every process follows every push subscription, but only the one that holds the subscription's
ownership record POSTs its messages, so the subscription's concurrency (`--push-max-outstanding`)
and its backoff are those of one pusher however many processes there are.

The record is a resource of its own kind (`Kind.PUSH_OWNER`, named as the subscription, not
announced: no other process caches it), JSON: the owner's id ("" when released), the lease's
expiry (wall-clock ms) and the delivery state to hand over (window, backoff failures and the
wall-clock ms the backoff pause ends).

- Acquire: by compare-and-set, when the record is absent, released, or its lease ran out.
- Renew: every RENEW_MS while held, by compare-and-set on the bytes last written; the renewal
  also records the current window and backoff. Nothing is written per message.
- Lose: a renewal that finds the record changed (another process took over: this one had not
  renewed within the lease) ends ownership at once; so does no successful renewal for
  LEASE_MS - SAFETY_MS (the store unreachable). The pusher stops leasing messages; POSTs in
  flight finish.
- Release: on a clean stop and when the subscription stops being push (once the POSTs in flight
  are done), the record keeps the state under no owner.
- Wait: a process that does not own the subscription tries again every RETRY_MS (±25 % jitter)
  and at once when it hears the subscription changed.

So a released subscription is taken over within RETRY_MS·1.25 (2.5 s), and one whose owner
died within LEASE_MS + RETRY_MS·1.25 (8.5 s), by the next owner with the state of the last
renewal. Expiry is wall-clock time: processes on several machines need clocks that agree to
within SAFETY_MS. The embedded store (one process) runs the same code and always owns it; its
only cost is one small write per push subscription every RENEW_MS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..store import Kind, ResourceTable

log = logging.getLogger("pubsub_emulator.push")

LEASE_MS = 6_000  # an owner's hold without renewal: the longest a dead owner keeps it
RENEW_MS = LEASE_MS // 3  # how often the owner renews
SAFETY_MS = 1_000  # the owner stops this long before others may take over (clock skew)
RETRY_MS = 2_000  # how often a process that does not own it tries again (±JITTER)
JITTER = 0.25
KIND = Kind.PUSH_OWNER


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Handover:
    """The delivery state that passes from one owner to the next."""

    window: int = 0  # POSTs outstanding at most (0: none recorded, the initial window)
    failures: int = 0  # consecutive nacks, as in push_contract's BackoffState
    not_before_ms: int = 0  # wall-clock ms before which no message goes out (backoff pause)


@dataclass(frozen=True)
class Record:
    owner: str  # "" when released
    expires_ms: int
    state: Handover

    def encode(self) -> bytes:
        return json.dumps({"owner": self.owner, "expires_ms": self.expires_ms,
                           "window": self.state.window, "failures": self.state.failures,
                           "not_before_ms": self.state.not_before_ms},
                          sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> Record:
        """The stored record; an unreadable one counts as released, with no state."""
        try:
            value = json.loads(raw)
            return cls(str(value["owner"]), int(value["expires_ms"]),
                       Handover(int(value["window"]), int(value["failures"]),
                                int(value["not_before_ms"])))
        except (ValueError, KeyError, TypeError):
            return cls("", 0, Handover())

    def free_for(self, owner: str, now_ms: int) -> bool:
        return not self.owner or self.owner == owner or self.expires_ms <= now_ms


class Ownership:
    """This process's hold on one push subscription's ownership record."""

    def __init__(self, table: ResourceTable, name: str, owner_id: str) -> None:
        self._table = table
        self.name = name
        self.owner_id = owner_id
        self.holder = ""  # the owner last seen ("" none known); owner_id while held
        self.renewals = 0
        self._written: bytes | None = None  # the record as last written here, while held
        self._valid_until = 0.0  # time.monotonic()
        self._renew_at = 0.0
        self._next_try = 0.0
        self._lock = asyncio.Lock()

    @property
    def owned(self) -> bool:
        return self._written is not None and time.monotonic() < self._valid_until

    def due_in(self) -> float:
        """Seconds until keep() has something to do (renew, or try again)."""
        at = self._renew_at if self._written is not None else self._next_try
        return max(0.001, at - time.monotonic())

    def retry_now(self) -> None:
        """The subscription changed: a process waiting for it tries at its next keep()."""
        self._next_try = 0.0

    async def keep(self, state: Callable[[], Handover]) -> Handover | None:
        """Acquire or renew if due (no store call otherwise). When this call acquired it, the
        state handed over (the pusher continues from it); None otherwise."""
        async with self._lock:
            now = time.monotonic()
            if self._written is not None:
                if now >= self._renew_at:
                    await self._renew(state(), now)
                return None
            if now < self._next_try:
                return None
            return await self._acquire(state(), now)

    async def release(self, state: Handover, unless: Callable[[], bool] = lambda: False) -> None:
        """Give it up, keeping `state` for the next owner (not if `unless()` by then)."""
        async with self._lock:
            if self._written is None or unless():
                return
            written, self._written = self._written, None
            self.holder = ""
            released = Record("", 0, state).encode()
            try:
                await self._table.update(KIND, self.name, released, expected=written)
            except Exception as exc:  # the store closed or is unreachable: the lease runs out
                log.debug("%s: could not release push ownership: %s", self.name, exc)

    async def _renew(self, state: Handover, now: float) -> None:
        data = Record(self.owner_id, wall_ms() + LEASE_MS, state).encode()
        try:
            renewed = await self._table.update(KIND, self.name, data, expected=self._written)
        except Exception as exc:  # unreachable: try again soon; the hold lapses on its own
            log.debug("%s: could not renew push ownership: %s", self.name, exc)
            self._renew_at = now + RENEW_MS / 4000
            return
        if renewed:
            self.renewals += 1
            self._held(data, now)
            return
        log.info("%s: push ownership lost (another process took over)", self.name)
        self._written = None
        self.holder = ""
        self._wait(now)

    async def _acquire(self, state: Handover, now: float) -> Handover | None:
        try:
            raw = await self._table.get(KIND, self.name)
            if raw is None:
                data = Record(self.owner_id, wall_ms() + LEASE_MS, state).encode()
                won = await self._table.create(KIND, self.name, data)
            else:
                found = Record.decode(raw)
                self.holder = found.owner
                if not found.free_for(self.owner_id, wall_ms()):
                    self._wait(now)
                    return None
                state = found.state
                data = Record(self.owner_id, wall_ms() + LEASE_MS, state).encode()
                won = await self._table.update(KIND, self.name, data, expected=raw)
        except Exception as exc:  # unreachable: the next try
            log.debug("%s: could not acquire push ownership: %s", self.name, exc)
            won = False
        if not won:
            self._wait(now)
            return None
        self._held(data, now)
        log.info("%s: this process now pushes it (owner %s)", self.name, self.owner_id)
        return state

    def _held(self, data: bytes, now: float) -> None:
        self._written = data
        self.holder = self.owner_id
        self._valid_until = now + (LEASE_MS - SAFETY_MS) / 1000
        self._renew_at = now + RENEW_MS / 1000

    def _wait(self, now: float) -> None:
        self._next_try = now + RETRY_MS / 1000 * random.uniform(1 - JITTER, 1 + JITTER)
