"""The sweeper: retention, expiration and reclaiming, in the background every few seconds.

- subscriptions idle beyond their expiration policy are deleted (not while a StreamingPull is
  open on them here);
- snapshots past their expire time are deleted;
- the store drops what subscription and topic retention no longer keep, and every message that
  no subscription, snapshot or topic retention needs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from google.pubsub_v1 import types as t

from ..store import Kind, RetentionRules, Store
from .activity import Activity
from .catalog import Catalog
from .delivery import DeliveryEngine
from .events import Events
from .model import Snapshot, Subscription, Topic, duration_ms
from .subscriptions import Subscriptions

log = logging.getLogger("pubsub_emulator.service")

SWEEP_EVERY_S = 5.0
# While nothing happens (no publish, pull, ack, nack or change here, no notice from another
# process), a round is skipped unless the last sweep is this old: what only time can change
# (retention of at least 10 minutes, expiration after at least a day, snapshots' 7 days) does
# not need checking every few seconds, and an idle emulator with thousands of subscriptions on
# NATS spent a core sweeping them (a few JetStream requests each, every round). Every 5 min:
# a retained message outlives its retention (10 min at least) by 5 min at most while nothing
# happens; a round every minute was most of the idle CPU left with 2,000 streams on NATS.
IDLE_SWEEP_EVERY_S = 300.0


class Sweeper:
    def __init__(self, store: Store, catalog: Catalog, activity: Activity,
                 engine: DeliveryEngine, subscriptions: Subscriptions,
                 clock: Callable[[], int], events: Events) -> None:
        self._store = store
        self._events = events
        self.rounds = 0  # rounds of run_forever so far, swept or skipped
        self._catalog = catalog
        self._activity = activity
        self._engine = engine
        self._subscriptions = subscriptions
        self._clock = clock

    async def run_forever(self, every_s: float = SWEEP_EVERY_S,
                          idle_every_s: float = IDLE_SWEEP_EVERY_S) -> None:
        swept_at, swept_mark = -math.inf, -1
        while True:
            await asyncio.sleep(every_s)
            self.rounds += 1
            mark = self._engine.work + self._events.stirred
            if mark == swept_mark and time.monotonic() - swept_at < idle_every_s:
                continue  # nothing happened since the last sweep
            swept_at, swept_mark = time.monotonic(), mark
            try:
                await self.sweep()
            except Exception:  # keep sweeping; the next round may succeed
                log.exception("sweep failed")

    async def sweep(self) -> None:
        """Enforce retention and expiration policies; reclaim what nothing needs."""
        now = self._clock()
        rules, expired = await self._subscription_rules(now)
        topic_retention = {}
        for item in (await self._catalog.all(Kind.TOPIC)).items:
            topic = Topic.FromString(item.data)
            if topic.HasField("message_retention_duration"):
                topic_retention[item.name] = duration_ms(topic.message_retention_duration)
        for item in (await self._catalog.all(Kind.SNAPSHOT)).items:
            if Snapshot.FromString(item.data).expire_time.ToMilliseconds() <= now:
                log.info("snapshot %s expired", item.name)
                await self._store.resources.delete(Kind.SNAPSHOT, item.name)
                await self._catalog.drop_attached(Kind.SNAPSHOT, item.name)
        for name in expired:
            log.info("subscription %s expired (inactive beyond its expiration policy)", name)
            await self._subscriptions.delete_subscription(
                t.DeleteSubscriptionRequest.pb()(subscription=name))
        gone = await self._store.messages.sweep(
            now, RetentionRules(rules.subscription_ms, topic_retention, rules.retain_acked))
        if gone:
            log.debug("swept %d messages nothing needs any more", gone)

    async def _subscription_rules(self, now: int) -> tuple[RetentionRules, list[str]]:
        """Each subscription's retention, and the subscriptions that expired."""
        retention: dict[str, int] = {}
        retain_acked = set()
        expired = []
        for item in (await self._catalog.all(Kind.SUBSCRIPTION)).items:
            sub = Subscription.FromString(item.data)
            retention[item.name] = duration_ms(sub.message_retention_duration)
            if sub.retain_acked_messages:
                retain_acked.add(item.name)
            if sub.expiration_policy.HasField("ttl"):
                ttl_ms = duration_ms(sub.expiration_policy.ttl)
                if (await self._activity.idle_beyond(item.name, ttl_ms, now)
                        and not self._engine.has_holders(item.name)):
                    expired.append(item.name)
        return RetentionRules(retention, {}, frozenset(retain_acked)), expired
