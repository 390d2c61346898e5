"""The outcomes of a subscription's POSTs (ack or nack), written to the store in batches.

One store call per POST (an ack: a statement, and a read of the subscription for its delivery
policy) was about a fifth of native push's CPU at a few thousand POSTs a second. Here the first
outcome queued starts a writer for the next turn of the event loop, so the outcomes of every
answer read in one turn go in one call (`ack`, or `modify` to 0 s for nacks); those queued
while a call is under way go in the next writer's. Once a batch is written (or failed: logged at
debug, as the one-by-one settling did) its outcomes are handed to `on_settled`, together: the
pusher counts them and their POSTs leave the window then, as before, without a wake-up of each
POST's task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

from ..core.delivery import DeliveryEngine

log = logging.getLogger("pubsub_emulator.push")


class Outcome(NamedTuple):
    """How one POST ended."""

    received: Any  # the ReceivedMessage POSTed
    epoch: int  # the pusher's backoff epoch when it was sent
    started: float  # time.monotonic() when the attempt began
    status: int | None  # the HTTP status, None if no answer came
    error: str  # why no answer came ("" if one came, or if the POST was abandoned)
    acked: bool


class Settlements:
    """One subscription's queued outcomes, and the writers of their batches."""

    def __init__(self, engine: DeliveryEngine, subscription: str,
                 on_settled: Callable[[list[Outcome]], None]) -> None:
        self._engine = engine
        self._name = subscription
        self._on_settled = on_settled
        self._queued: dict[bool, list[Outcome]] = {True: [], False: []}  # by acked
        self._writers: set[asyncio.Task[None]] = set()

    def settle(self, outcome: Outcome) -> None:
        """Queue an ack (or a nack): written, then handed to `on_settled`, soon."""
        queued = self._queued[outcome.acked]
        queued.append(outcome)
        if len(queued) == 1:  # the first since a writer took the queue: a writer for it
            writer = asyncio.ensure_future(self._write(outcome.acked))
            self._writers.add(writer)
            writer.add_done_callback(self._writers.discard)

    async def drain(self) -> None:
        """Until every outcome queued so far is written and handed over."""
        while self._writers:
            await asyncio.gather(*self._writers, return_exceptions=True)

    async def _write(self, acked: bool) -> None:
        # The queue as it is now is this writer's batch; outcomes queued while it is written
        # get a writer of their own (on a store in another process the two overlap).
        batch, self._queued[acked] = self._queued[acked], []
        try:
            await self._write_batch(acked, [o.received.ack_id for o in batch])
        finally:
            self._hand_over(batch)  # (cancelled mid-write: counted as settled all the same)

    async def _write_batch(self, acked: bool, ack_ids: list[str]) -> None:
        try:
            if acked:
                stale = await self._engine.ack(self._name, ack_ids, strict=False)
            else:
                stale = await self._engine.modify(self._name, ack_ids, 0, strict=False)
        except Exception as exc:  # the subscription went away meanwhile, or the store closed
            log.debug("%s: could not settle %d push deliveries: %s", self._name, len(ack_ids),
                      exc)
            return
        if stale:  # exactly-once: leases that ran out or were settled elsewhere meanwhile
            log.debug("%s: could not settle %d push deliveries: no longer leased", self._name,
                      len(stale))

    def _hand_over(self, outcomes: list[Outcome]) -> None:
        try:
            self._on_settled(outcomes)
        except Exception:
            log.exception("%s: counting settled push deliveries failed", self._name)
