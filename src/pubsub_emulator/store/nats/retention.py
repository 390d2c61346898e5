"""Seeks, snapshots and the sweeper.

A seek recreates the subscription's consumer at the stream sequence of a time (or of a
snapshot's ack floor); a snapshot records the subscription's ack floor. The sweeper applies
retention and purges from each topic stream what no consumer and no snapshot needs.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from typing import Any

from ..base import Kind, NotFound, RetentionRules
from .client import JetStream, NatsError, parse_headers
from .layout import DETACHED, H_TIME, SNAPSHOT_STATE, SUB_START, Layout
from .leases import Leases, Redeliveries
from .topics import Topics

log = logging.getLogger("pubsub_emulator.nats")

_NEVER = 1 << 62  # a stream sequence beyond any


def needed_from(info: Mapping[str, Any]) -> int:
    """The first stream sequence a consumer may still deliver (everything below is acked)."""
    if info.get("num_ack_pending", 0) == 0:
        return int(info["delivered"]["stream_seq"]) + 1
    return int(info["ack_floor"]["stream_seq"]) + 1


class Retention:
    """Seeks, snapshots and retention over the topic streams."""

    def __init__(self, js: JetStream, layout: Layout, topics: Topics, leases: Leases,
                 redeliveries: Redeliveries) -> None:
        self._js = js
        self._layout = layout
        self._topics = topics
        self._leases = leases
        self._redeliveries = redeliveries

    async def seq_at(self, stream: str, time_ms: int) -> int:
        """The first stream sequence published at or after time_ms (last + 1 if none)."""
        state = (await self._js.api(f"STREAM.INFO.{stream}"))["state"]
        low, high = state["first_seq"], state["last_seq"] + 1
        while low < high:
            mid = (low + high) // 2
            try:
                resp = await self._js.api(f"STREAM.MSG.GET.{stream}", {"seq": mid})
                message = resp["message"]
                seq = message["seq"]
                published = int(parse_headers(base64.b64decode(message.get("hdrs") or b""))
                                .get(H_TIME, 0))
            except NatsError:  # deleted: treat as early
                seq, published = mid, -1
            if published >= time_ms:
                high = seq
            else:
                low = seq + 1
        return low

    # --- seeks and snapshots --------------------------------------------------------------
    async def seek_to_time(self, subscription: str, time_ms: int, retain_acked: bool,
                           from_topic: bool) -> None:
        topic = await self._topics.topic_of(subscription, fresh=True)
        if not topic:
            return
        stream = await self._topics.stream(topic)
        start = await self.seq_at(stream, time_ms)
        if not from_topic:
            start = max(start, await self._origin_seq(subscription))
        if not (from_topic or retain_acked):
            # Without kept acks, what the subscription acknowledged below its ack floor stays
            # acknowledged (acks above the floor are not known: those come again).
            try:
                info = await self._js.consumer_info(stream, self._layout.consumer(subscription))
                start = max(start, needed_from(info))
            except NatsError:
                pass
        await self._topics.restart(subscription, {"deliver_policy": "by_start_sequence",
                                                  "opt_start_seq": start})

    async def _origin_seq(self, subscription: str) -> int:
        found = await self._js.kv_get(self._layout.key(SUB_START, subscription))
        return int(found.value["seq"]) if found else 0

    async def save_snapshot(self, snapshot: str, subscription: str) -> None:
        topic = await self._topics.topic_of(subscription, fresh=True)
        floor = 0
        if topic:
            stream = await self._topics.stream(topic)
            info = await self._js.consumer_info(stream, self._layout.consumer(subscription))
            floor = needed_from(info) - 1
        await self._js.kv_put(self._layout.key(SNAPSHOT_STATE, snapshot),
                              {"t": topic, "floor": floor, "p": ""}, None)

    async def seek_to_snapshot(self, subscription: str, snapshot: str) -> None:
        found = await self._js.kv_get(self._layout.key(SNAPSHOT_STATE, snapshot))
        if found is None:
            raise NotFound(snapshot)
        await self._topics.restart(subscription, {"deliver_policy": "by_start_sequence",
                                                  "opt_start_seq": found.value["floor"] + 1})

    # --- the sweeper ----------------------------------------------------------------------
    async def sweep(self, now_ms: int, rules: RetentionRules) -> int:
        floors = await self._snapshot_floors()  # topic stream -> first sequence to keep
        gone = await self._subscription_retention(now_ms, rules, floors)
        retained = {self._layout.topic_stream(t): ms for t, ms in rules.topic_ms.items()}
        needed: dict[str, int] = {}  # consumer -> first stream sequence it may deliver
        offset = 0
        while True:
            resp = await self._js.api("STREAM.NAMES", {"offset": offset,
                                                       "subject": self._layout.message_subjects})
            names = resp.get("streams") or []
            for stream in names:
                gone += await self._sweep_stream(stream, floors.get(stream, _NEVER),
                                                 retained.get(stream), now_ms, needed)
            offset += len(names)
            if not names or offset >= resp.get("total", 0):
                break
        await self._redeliveries.prune(needed)
        await self._leases.prune(needed)
        return gone

    async def _snapshot_floors(self) -> dict[str, int]:
        """Per topic stream, the first sequence some snapshot still needs."""
        floors: dict[str, int] = {}
        for subject in await self._js.subjects(self._layout.keys(SNAPSHOT_STATE)):
            found = await self._js.kv_get(subject)
            if found and found.value.get("t"):
                stream = self._layout.topic_stream(found.value["t"])
                floors[stream] = min(floors.get(stream, _NEVER), found.value["floor"] + 1)
        return floors

    async def _subscription_retention(self, now_ms: int, rules: RetentionRules,
                                      floors: dict[str, int]) -> int:
        """Drop unacked messages past their subscription's retention; note in `floors` what
        subscriptions that keep acked messages (retain_acked_messages) still need."""
        gone = 0
        for name, retention_ms in rules.subscription_ms.items():
            found = await self._js.kv_get(self._layout.key(Kind.SUBSCRIPTION.value, name))
            if not found or found.value.get("t", "") in DETACHED:
                continue
            topic = found.value["t"]
            if name not in rules.retain_acked:
                gone += await self._expire_backlog(name, topic, now_ms - retention_ms)
                continue
            # retain_acked_messages: acked messages stay for the subscription's retention.
            stream = self._layout.topic_stream(topic)
            try:
                keep = max(await self.seq_at(stream, now_ms - retention_ms),
                           await self._origin_seq(name))
            except NatsError:
                continue
            floors[stream] = min(floors.get(stream, _NEVER), keep)
        return gone

    async def _expire_backlog(self, subscription: str, topic: str, cutoff_ms: int) -> int:
        """Drop the subscription's unacked messages published before the cutoff."""
        stream, consumer = self._layout.topic_stream(topic), self._layout.consumer(subscription)
        try:
            info = await self._js.consumer_info(stream, consumer)
            if info.get("num_pending", 0) + info.get("num_ack_pending", 0) == 0:
                return 0
            oldest = needed_from(info)
            resp = await self._js.api(f"STREAM.MSG.GET.{stream}",
                                      {"seq": oldest,
                                       "next_by_subj": self._layout.topic_subject(topic)})
            hdrs = parse_headers(base64.b64decode(resp["message"].get("hdrs") or b""))
            if int(hdrs.get(H_TIME, cutoff_ms)) >= cutoff_ms:
                return 0
            start = max(oldest, await self.seq_at(stream, cutoff_ms))
        except NatsError:
            return 0
        # Restart the consumer past them (acks above its ack floor are forgotten: those
        # messages come once more, as at-least-once allows).
        log.info("%s: dropping unacked messages older than its retention", subscription)
        await self._topics.restart(subscription, {"deliver_policy": "by_start_sequence",
                                                  "opt_start_seq": start})
        return 0

    async def _sweep_stream(self, stream: str, low: int, retention_ms: int | None,
                            now_ms: int, needed: dict[str, int]) -> int:
        """Purge what the stream's consumers, snapshots (`low`) and retention do not need;
        note each consumer's first needed sequence in `needed`."""
        info = await self._js.api(f"STREAM.INFO.{stream}")
        state = info["state"]
        low = min(low, state["last_seq"] + 1)
        offset = 0
        while True:
            resp = await self._js.api(f"CONSUMER.LIST.{stream}", {"offset": offset})
            consumers = resp.get("consumers") or []
            for consumer in consumers:
                needed[consumer["name"]] = needed_from(consumer)
                low = min(low, needed_from(consumer))
            offset += len(consumers)
            if not consumers or offset >= resp.get("total", 0):
                break
        if state.get("messages", 0) == 0:
            return 0
        if retention_ms is not None:  # the topic keeps what is younger than its retention
            low = min(low, await self.seq_at(stream, now_ms - retention_ms))
        if low <= state["first_seq"]:
            return 0
        resp = await self._js.api(f"STREAM.PURGE.{stream}", {"seq": low})
        return int(resp.get("purged", 0))

