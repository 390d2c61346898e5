"""Seeks, snapshots and the sweeper.

A snapshot records the subscription's ack floor and what it acknowledged above it (its ack
log and skip set, acklog.py): a set of stream sequences in records of the acked stream, named
by a token in the snapshot's state record. A seek recreates the subscription's consumer at the
stream sequence of a time (or after a snapshot's ack floor) with a skip set: what was
acknowledged from there on (a snapshot's set; for a time, unless acked messages are retained,
what the subscription acknowledged), so exactly the unacknowledged messages come back. The
sweeper applies retention and purges from each topic stream what no consumer and no snapshot
needs, then the pieces of large messages no message it holds refers to (pieces.py), trims ack
logs and skip sets below their consumer's ack floor and drops the sets of deleted snapshots.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Mapping
from typing import Any

from ..base import NotFound, RetentionRules
from .acklog import ack_floor
from .client import CONSUMER_NOT_FOUND, STREAM_NOT_FOUND, JetStream, NatsError, parse_headers
from .layout import H_TIME, SNAPSHOT_STATE, SUB_START, Layout
from .leases import Leases, Redeliveries
from .pieces import Pieces
from .topics import Topics

log = logging.getLogger("pubsub_emulator.nats")

_NEVER = 1 << 62  # a stream sequence beyond any
_GONE_S = 60.0  # how long a set stays unclaimed (its consumer or snapshot gone) before it goes
# A consumer as the sweeper listed it: its stream, creation time and info.
Listed = tuple[str, str, Mapping[str, Any]]


def needed_from(info: Mapping[str, Any]) -> int:
    """The first stream sequence a consumer may still deliver (everything below is acked)."""
    return ack_floor(info) + 1


class Retention:
    """Seeks, snapshots and retention over the topic streams."""

    def __init__(self, js: JetStream, layout: Layout, topics: Topics, leases: Leases,
                 redeliveries: Redeliveries, pieces: Pieces, origin: str) -> None:
        self._js = js
        self._pieces = pieces
        self._layout = layout
        self._topics = topics
        self._leases = leases
        self._redeliveries = redeliveries
        self._origin = origin  # this process, in its notices of restarted consumers
        self._unclaimed: dict[str, float] = {}  # set -> when the sweeper first found it so

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
    async def acked_above(self, stream: str, subscription: str) -> tuple[int, list[int]]:
        """A subscription's ack floor, and (sorted) what it acknowledged above it."""
        consumer = self._layout.consumer(subscription)
        info = await self._js.consumer_info(stream, consumer)
        floor = ack_floor(info)
        if info.get("config", {}).get("deliver_policy") == "new":
            # (made "deliver new" by an earlier version, where its subscription began)
            floor = max(floor, await self._origin_seq(subscription) - 1)
        logged, _ = await self._topics.acklog.read(consumer)
        skip = await self._topics.skips.of(stream, consumer, fresh=True)
        return floor, sorted({seq for seq in logged if seq > floor}.union(skip.above(floor)))

    async def seek_to_time(self, subscription: str, time_ms: int, retain_acked: bool,
                           from_topic: bool) -> None:
        topic = await self._topics.topic_of(subscription, fresh=True)
        if not topic:
            return
        stream = await self._topics.stream(topic)
        start = await self.seq_at(stream, time_ms)
        if not from_topic:
            start = max(start, await self._origin_seq(subscription))
        skip: list[int] = []
        if not (from_topic or retain_acked):
            # Without kept acks, what the subscription acknowledged stays acknowledged: below
            # its ack floor (the consumer starts after it) and above (the skip set).
            try:
                floor, acked = await self.acked_above(stream, subscription)
                start = max(start, floor + 1)
                skip = [seq for seq in acked if seq >= start]
            except NatsError:
                pass
        await self._topics.restart(subscription, {"deliver_policy": "by_start_sequence",
                                                  "opt_start_seq": start}, skip, self._origin)

    async def _origin_seq(self, subscription: str) -> int:
        found = await self._js.kv_get(self._layout.key(SUB_START, subscription))
        return int(found.value["seq"]) if found else 0

    async def save_snapshot(self, snapshot: str, subscription: str) -> None:
        topic = await self._topics.topic_of(subscription, fresh=True)
        floor, acked = 0, []
        if topic:
            stream = await self._topics.stream(topic)
            floor, acked = await self.acked_above(stream, subscription)
        token = uuid.uuid4().hex[:16]
        count = await self._topics.sets.write(
            lambda at: self._layout.snapshot_record(token, at), acked)
        await self._js.kv_put(self._layout.key(SNAPSHOT_STATE, snapshot),
                              {"t": topic, "floor": floor, "p": "", "g": token, "n": count}, None)

    async def seek_to_snapshot(self, subscription: str, snapshot: str) -> None:
        found = await self._js.kv_get(self._layout.key(SNAPSHOT_STATE, snapshot))
        if found is None:
            raise NotFound(snapshot)
        state = found.value
        acked = await self._topics.sets.read(
            lambda at: self._layout.snapshot_record(state["g"], at),
            int(state.get("n", 0))) if state.get("g") else []
        await self._topics.restart(subscription, {"deliver_policy": "by_start_sequence",
                                                  "opt_start_seq": state["floor"] + 1},
                                   acked, self._origin)

    # --- the sweeper ----------------------------------------------------------------------
    async def sweep(self, now_ms: int, rules: RetentionRules) -> int:
        tokens: set[str] = set()  # of the snapshots' acked sets
        floors = await self._snapshot_floors(tokens)  # topic stream -> first sequence to keep
        await self._retained_acked(now_ms, rules, floors)
        # Subscriptions whose unacked messages expire, by consumer: their backlogs are looked
        # at from the listing of their stream's consumers (no request per subscription).
        expiring = {self._layout.consumer(name): (name, now_ms - ms)
                    for name, ms in rules.subscription_ms.items()
                    if name not in rules.retain_acked}
        retained = {self._layout.topic_stream(t): ms for t, ms in rules.topic_ms.items()}
        needed: dict[str, int] = {}  # consumer -> first stream sequence it may deliver
        listed: dict[str, Listed] = {}  # consumer -> its stream, creation time and info
        blob = await self._pieces.state()  # (before any topic stream's: see pieces.py)
        gone, offset = 0, 0
        while True:
            # Every topic stream's info, a page at a time (not a request per stream).
            resp = await self._js.api("STREAM.LIST", {"offset": offset,
                                                      "subject": self._layout.message_subjects})
            infos = resp.get("streams") or []
            for info in infos:
                stream = info["config"]["name"]
                gone += await self._sweep_stream(stream, info, floors.get(stream, _NEVER),
                                                 retained.get(stream), now_ms, expiring,
                                                 needed, listed)
                if self._layout.stream_hash(stream) in blob.topics:
                    await self._pieces.reclaim(stream, blob)  # large messages' pieces
            offset += len(infos)
            if not infos or offset >= resp.get("total", 0):
                break
        await self._redeliveries.prune(needed)
        await self._leases.prune(needed)
        await self._trim_acked(listed)
        await self._drop_unclaimed_snapshot_sets(tokens)
        return gone

    def _unclaimed_long(self, key: str, claimed: bool) -> bool:
        """Whether a set was found unclaimed (by sweeps of this process) for _GONE_S: not
        in the middle of a seek or of a snapshot's save."""
        if claimed:
            self._unclaimed.pop(key, None)
            return False
        first = self._unclaimed.setdefault(key, time.monotonic())
        if time.monotonic() - first < _GONE_S:
            return False
        del self._unclaimed[key]
        return True

    async def _trim_acked(self, listed: Mapping[str, Listed]) -> None:
        """Trim the ack logs and skip sets below their consumers' ack floors; drop those of
        consumers gone."""
        sets = self._topics.sets
        logs = await sets.subjects(self._layout.ack_log("*"))
        marks = await sets.subjects(self._layout.skip_mark("*"))
        for consumer in sorted({subject.split(".")[-2] for subject in (*logs, *marks)}):
            if consumer not in listed:
                if self._unclaimed_long(consumer, False):
                    await sets.purge(self._layout.acked_all(consumer))
                continue
            self._unclaimed_long(consumer, True)
            stream, created, info = listed[consumer]

            async def info_of(stream: str = stream, consumer: str = consumer
                              ) -> dict[str, Any] | None:
                try:
                    return await self._js.consumer_info(stream, consumer)
                except NatsError as exc:
                    if exc.err_code in (STREAM_NOT_FOUND, CONSUMER_NOT_FOUND):
                        return None
                    raise

            if self._layout.ack_log(consumer) in logs:
                await self._topics.acklog.trim(consumer, created, info_of, info,
                                               logs[self._layout.ack_log(consumer)])
            if self._layout.skip_mark(consumer) in marks:
                await self._topics.skips.prune(consumer, info_of)

    async def _drop_unclaimed_snapshot_sets(self, tokens: set[str]) -> None:
        """Drop the acked sets no snapshot's state names (deleted, or saved again)."""
        sets = self._topics.sets
        found = {subject.split(".")[-2]
                 for subject in await sets.subjects(self._layout.snapshot_record("*", "*"))}
        for token in sorted(found):
            if self._unclaimed_long("snapshot " + token, token in tokens):
                await sets.purge(self._layout.snapshot_record(token, "*"))

    async def _snapshot_floors(self, tokens: set[str]) -> dict[str, int]:
        """Per topic stream, the first sequence some snapshot still needs; the tokens of the
        snapshots' acked sets go into `tokens`."""
        floors: dict[str, int] = {}
        for subject in await self._js.subjects(self._layout.keys(SNAPSHOT_STATE)):
            found = await self._js.kv_get(subject)
            if found and found.value.get("g"):
                tokens.add(found.value["g"])
            if found and found.value.get("t"):
                stream = self._layout.topic_stream(found.value["t"])
                floors[stream] = min(floors.get(stream, _NEVER), found.value["floor"] + 1)
        return floors

    async def _retained_acked(self, now_ms: int, rules: RetentionRules,
                              floors: dict[str, int]) -> None:
        """Note in `floors` what subscriptions that keep acked messages
        (retain_acked_messages) still need: acked messages stay for their retention."""
        for name, retention_ms in rules.subscription_ms.items():
            if name not in rules.retain_acked:
                continue
            try:
                topic = await self._topics.topic_of(name)
            except NotFound:
                continue
            if not topic:
                continue
            stream = self._layout.topic_stream(topic)
            try:
                keep = max(await self.seq_at(stream, now_ms - retention_ms),
                           await self._origin_seq(name))
            except NatsError:
                continue
            floors[stream] = min(floors.get(stream, _NEVER), keep)

    async def _expire_backlog(self, subscription: str, stream: str, subject: str,
                              info: Mapping[str, Any], cutoff_ms: int) -> None:
        """Drop the subscription's unacked messages published before the cutoff (`info`: its
        consumer as listed; `subject`: its topic stream's)."""
        if info.get("num_pending", 0) + info.get("num_ack_pending", 0) == 0:
            return
        try:
            oldest = needed_from(info)
            resp = await self._js.api(f"STREAM.MSG.GET.{stream}",
                                      {"seq": oldest, "next_by_subj": subject})
            hdrs = parse_headers(base64.b64decode(resp["message"].get("hdrs") or b""))
            if int(hdrs.get(H_TIME, cutoff_ms)) >= cutoff_ms:
                return
            floor, acked = await self.acked_above(stream, subscription)
            # (past the ack floor read now: the listing's may be older)
            start = max(oldest, floor + 1, await self.seq_at(stream, cutoff_ms))
        except NatsError:
            return
        # Restart the consumer past them (what it acknowledged later stays acknowledged).
        log.info("%s: dropping unacked messages older than its retention", subscription)
        await self._topics.restart(subscription, {"deliver_policy": "by_start_sequence",
                                                  "opt_start_seq": start},
                                   [seq for seq in acked if seq >= start], self._origin)

    async def _sweep_stream(self, stream: str, info: Mapping[str, Any], low: int,
                            retention_ms: int | None, now_ms: int,
                            expiring: Mapping[str, tuple[str, int]], needed: dict[str, int],
                            listed: dict[str, Listed]) -> int:
        """Expire the backlogs of the stream's consumers (`expiring`: consumer ->
        subscription and cutoff) and purge what its consumers, snapshots (`low`) and
        retention do not need; note each consumer's first needed sequence in `needed`, its
        stream, creation time and info in `listed`."""
        state = info["state"]
        low = min(low, state["last_seq"] + 1)
        offset = 0
        listing: list[Mapping[str, Any]] = []
        while True:
            resp = await self._js.api(f"CONSUMER.LIST.{stream}", {"offset": offset})
            consumers = resp.get("consumers") or []
            for consumer in consumers:
                name = consumer["name"]
                needed[name] = needed_from(consumer)
                listed[name] = (stream, str(consumer.get("created", "")), consumer)
                low = min(low, needed_from(consumer))
            listing += consumers
            offset += len(consumers)
            if not consumers or offset >= resp.get("total", 0):
                break
        # Once listed (a consumer restarted while the pages are read could move between
        # them): a restarted consumer starts later, so it needs no less than it did as listed.
        for consumer in listing:
            if consumer["name"] in expiring:
                subscription, cutoff_ms = expiring[consumer["name"]]
                await self._expire_backlog(subscription, stream, info["config"]["subjects"][0],
                                           consumer, cutoff_ms)
        if state.get("messages", 0) == 0:
            return 0
        if retention_ms is not None:  # the topic keeps what is younger than its retention
            low = min(low, await self.seq_at(stream, now_ms - retention_ms))
        if low <= state["first_seq"]:
            return 0
        resp = await self._js.api(f"STREAM.PURGE.{stream}", {"seq": low})
        return int(resp.get("purged", 0))
