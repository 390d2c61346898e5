"""When each subscription was last used, for its expiration policy.

Kept in the store so that every emulator process sharing it (NATS) sees activity on the others
before expiring a subscription; written at most once a minute per subscription and process.
"""

from __future__ import annotations

from collections.abc import Callable

from ..store import Kind, ResourceTable

WRITE_EVERY_MS = 60_000


class Activity:
    def __init__(self, table: ResourceTable, clock: Callable[[], int]) -> None:
        self._table = table
        self._clock = clock
        self._last_used: dict[str, int] = {}  # here, in this process
        self._written: dict[str, int] = {}  # when last recorded in the store

    async def touch(self, subscription: str) -> None:
        """The subscription is being used now."""
        now = self._clock()
        self._last_used[subscription] = now
        if now - self._written.get(subscription, -WRITE_EVERY_MS) >= WRITE_EVERY_MS:
            self._written[subscription] = now
            stamp = str(now).encode()
            if not await self._table.update(Kind.ACTIVITY, subscription, stamp):
                await self._table.create(Kind.ACTIVITY, subscription, stamp)

    async def idle_beyond(self, subscription: str, ttl_ms: int, now: int) -> bool:
        """Whether nobody used the subscription for more than `ttl_ms`: neither here nor, as
        recorded in the store, any process sharing it.

        The store is read only when this process's own record says so: a use here within the
        TTL settles it (and the TTL is a day at least), so a sweep of thousands of subscriptions
        costs no store reads (on NATS it was a JetStream request each, every round)."""
        local = self._last_used.setdefault(subscription, now)  # since this process started
        if now - local <= ttl_ms:
            return False
        recorded = await self._table.get(Kind.ACTIVITY, subscription)
        return now - max(local, int(recorded) if recorded else 0) > ttl_ms

    async def forget(self, subscription: str) -> None:
        """The subscription is gone."""
        await self._table.delete(Kind.ACTIVITY, subscription)
        self._last_used.pop(subscription, None)
        self._written.pop(subscription, None)
