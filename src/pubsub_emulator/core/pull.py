"""The unary delivery RPCs: Pull, Acknowledge, ModifyAckDeadline, over the delivery engine."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from google.protobuf import empty_pb2
from google.pubsub_v1 import types as t

from . import limits
from .catalog import Catalog
from .delivery import DeliveryEngine
from .errors import invalid_argument
from .events import Events
from .policy import delivery_policy


def _check_ack_ids(ack_ids: Any) -> None:
    if not ack_ids:
        raise invalid_argument("No ack_ids were provided.")


class PullRpcs:
    def __init__(self, engine: DeliveryEngine, catalog: Catalog, events: Events,
                 clock: Callable[[], int]) -> None:
        self._clock = clock
        self._engine = engine
        self._catalog = catalog
        self._events = events

    async def pull(self, request: Any) -> Any:
        sub = await self._engine.deliverable(request.subscription)
        if request.max_messages <= 0:
            raise invalid_argument("max_messages must be greater than 0.")
        lease_ms = sub.ack_deadline_seconds * 1000
        received, _ = await self._engine.receive(sub, request.max_messages, lease_ms)
        if not received and not request.return_immediately:
            received = await self._wait_and_receive(request, sub, lease_ms)
        return t.PullResponse.pb()(received_messages=received)

    async def _wait_and_receive(self, request: Any, sub: Any, lease_ms: int) -> list[Any]:
        """Wait up to PULL_WAIT_S for messages, as Google holds a Pull open for a while."""
        event = self._events.watch(sub.name, sub.topic)
        deadline = time.monotonic() + limits.PULL_WAIT_S
        received: list[Any] = []
        try:
            while not received:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                due = await self._engine.next_due_ms(sub.name)
                if due is not None:
                    remaining = min(remaining, max(0.0, (due - self._clock()) / 1000))
                event.clear()
                try:
                    # (not wait_for: on 3.11 it can swallow a cancellation that comes as the
                    # event is set, and a stopping server then waits on this call for good)
                    async with asyncio.timeout(remaining):
                        await event.wait()
                except TimeoutError:
                    pass
                sub = await self._engine.deliverable(request.subscription)
                received, _ = await self._engine.receive(sub, request.max_messages, lease_ms)
        finally:
            self._events.unwatch(sub.name, event)
        return received

    async def acknowledge(self, request: Any) -> Any:
        sub = await self._catalog.subscription(request.subscription)
        _check_ack_ids(request.ack_ids)
        await self._engine.ack(sub.name, list(request.ack_ids), policy=delivery_policy(sub))
        return empty_pb2.Empty()

    async def modify_ack_deadline(self, request: Any) -> Any:
        sub = await self._catalog.subscription(request.subscription)
        _check_ack_ids(request.ack_ids)
        await self._engine.modify(sub.name, list(request.ack_ids), request.ack_deadline_seconds,
                                  policy=delivery_policy(sub))
        return empty_pb2.Empty()
