"""Follows every subscription's push config and runs a SubscriptionPusher for each push one.

`GET /debug/push` on the emulator port returns per-subscription counters as JSON (delivered,
nacked, attempts, in_backoff, backoff_ms, window, in_flight, last_status, ..., `owner`: whether
this process pushes it now, `owner_id`: the process that does, as last seen), this process's
`owner_id`, `max_outstanding` and the allowed destinations; endpoints appear with their query
values hidden (`?token=…`).

Every process sharing a store follows every push subscription, but only the owner of one
pushes it (ownership.py), so `max_outstanding` (`--push-max-outstanding`, the largest window)
bounds the POSTs outstanding per subscription across all of them.

`allow` is `--push-allow`'s entries (None: not given) and `auth_required` whether `--auth` is
on; together they decide where push may go (destinations.py). Under --auth tokens are signed
only as accounts with a registered key (oidc.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Coroutine
from typing import Any

from aiohttp import web

from ..core.model import Subscription
from ..core.push_config import redact_url
from ..core.service import PubSubService
from ..store import Kind
from .destinations import Destinations
from .oidc import TokenIssuer
from .ownership import Ownership
from .pusher import MAX_WINDOW, SubscriptionPusher

log = logging.getLogger("pubsub_emulator.push")

DEBUG_PATH = "/debug/push"


class PushDispatcher:
    """Follows every subscription's push config and runs a SubscriptionPusher for each push
    one."""

    def __init__(self, service: PubSubService, issuer: TokenIssuer,
                 allow: list[str] | None = None, auth_required: bool = False,
                 max_outstanding: int = MAX_WINDOW) -> None:
        """ValueError if an `allow` entry is neither a CIDR, an address nor a host name, or
        `max_outstanding` (POSTs outstanding per subscription at most) is below 1."""
        if max_outstanding < 1:
            raise ValueError("max_outstanding must be at least 1")
        self.destinations = Destinations.from_flags(allow, auth_required)
        self.auth_required = auth_required
        self.max_outstanding = max_outstanding
        # This process among those sharing the store, in push ownership records.
        self.owner_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._engine = service.engine
        self._events = service.events
        self._catalog = service.catalog
        self._table = service.store.resources
        self.issuer = issuer
        self._pushers: dict[str, SubscriptionPusher] = {}
        self._started = False
        self._lock = asyncio.Lock()
        self._reactions: set[asyncio.Future[None]] = set()

    async def start(self) -> None:
        """Begin pushing for every push subscription in the store; follow changes from now on."""
        if self._started:
            return
        self._started = True
        log.info("push destinations: %s", self.destinations.description)
        self._events.on_change(self._resource_changed)
        for item in (await self._catalog.all(Kind.SUBSCRIPTION)).items:
            sub = Subscription.FromString(item.data)
            if sub.push_config.push_endpoint and not sub.detached:
                self.subscription_changed(item.name)

    def _resource_changed(self, kind: Kind, name: str) -> None:
        if kind is Kind.SUBSCRIPTION:
            self.subscription_changed(name)

    def subscription_changed(self, name: str) -> None:
        """The subscription was created, changed or deleted: follow its push config."""
        if self._started:
            self._later(self._follow(name))

    def forget_if_gone(self, pusher: SubscriptionPusher) -> None:
        """Drop an idle pusher whose subscription was deleted (its counters go with it)."""
        self._later(self._forget_if_gone(pusher))

    def _later(self, step: Coroutine[Any, Any, None]) -> None:
        # Listeners are called synchronously while the store is asynchronous: each reaction
        # runs as a task, under one lock, so reactions read the store in the order of changes.
        task = asyncio.ensure_future(self._in_order(step))
        self._reactions.add(task)
        task.add_done_callback(self._reactions.discard)

    async def _in_order(self, step: Coroutine[Any, Any, None]) -> None:
        try:
            async with self._lock:
                await step
        except Exception:  # the store closed meanwhile, ...: the next change retries
            log.debug("following a subscription change failed", exc_info=True)
        finally:
            step.close()  # (never started if cancelled while waiting for the lock)

    async def _follow(self, name: str) -> None:
        if not self._started:
            return
        pusher = self._pushers.get(name)
        raw = await self._table.get(Kind.SUBSCRIPTION, name)
        sub = Subscription.FromString(raw) if raw is not None else None
        wants_push = sub is not None and bool(sub.push_config.push_endpoint) and not sub.detached
        if wants_push:
            if pusher is None:
                pusher = self._pushers[name] = SubscriptionPusher(
                    name, self._engine, self._events, self.issuer, self.forget_if_gone,
                    self.subscription_changed, self.destinations, self.auth_required,
                    ownership=Ownership(self._table, name, self.owner_id),
                    max_window=self.max_outstanding)
            if not pusher.running:
                log.info("%s: pushing to %s (while this process owns it)", name,
                         redact_url(sub.push_config.push_endpoint))
            pusher.start()
        if pusher is not None:
            pusher.changed()  # a running loop rereads the config (and stops if no longer push)
            if not pusher.running and not pusher.in_flight:
                await self._forget_if_gone(pusher)

    async def _forget_if_gone(self, pusher: SubscriptionPusher) -> None:
        if (self._pushers.get(pusher.name) is pusher
                and await self._table.get(Kind.SUBSCRIPTION, pusher.name) is None
                and self._pushers.get(pusher.name) is pusher and not pusher.running):
            del self._pushers[pusher.name]

    async def stop(self) -> None:
        """Stop pushing; POSTs in flight are abandoned and their messages nacked."""
        self._events.remove_listener(self._resource_changed)
        self._started = False
        for task in list(self._reactions):
            task.cancel()
        await asyncio.gather(*(p.cancel() for p in self._pushers.values()),
                             return_exceptions=True)
        self._pushers.clear()

    def stats(self) -> dict[str, Any]:
        return {"destinations": self.destinations.description, "owner_id": self.owner_id,
                "max_outstanding": self.max_outstanding,
                "subscriptions": {name: p.stats() for name, p in sorted(self._pushers.items())}}

    def routes(self) -> list[web.RouteDef]:
        async def debug(_: web.Request) -> web.Response:
            return web.json_response(self.stats())

        return [web.get(DEBUG_PATH, debug)]
