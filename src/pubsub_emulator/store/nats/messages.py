"""The message log: publish to topic streams, pull from consumers, ack and nack deliveries.

A published message is stored with its publish time appended and headers for what the store
must know without parsing it (see layout); its id is the stream's id prefix * 10^12 + its
stream sequence. One larger than a NATS message takes is stored as pieces and a reference
(pieces.py). Every publish also sends a core-NATS notification `<ns>.wake.<hash>` that other
processes turn into wake-ups of their waiting pulls. JetStream's redelivery timers run on the
server's clock: the `now_ms` arguments are used for publish times and exactly-once checks
only.

Every ack call logs the stream sequences it acknowledges (acklog.py), and a pull acks the
messages of its consumer's skip set (acknowledged before the seek that made the consumer)
without handing them out, so seeks and snapshots are exact.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..base import (
    DEFAULT_POLICY,
    Delivery,
    DeliveryPolicy,
    InvalidAckId,
    MessageLog,
    Pending,
    RetentionRules,
    RetryPolicy,
    stamp,
)
from .acklog import NO_SKIP, Skip
from .acks import ACK, ACK_PREFIX, NAK, TERM, AckId, Fetched, nak, parse_ack_ids
from .client import JetStream, NoStream, header_bytes, nats_error
from .layout import H_KEY, H_PIECES, H_SIZE, H_SKIP, H_TIME, Layout
from .leases import Leases, Redeliveries
from .ordering import KeyOrdering, Send
from .peek import Peek
from .pieces import STAMP_BYTES, Pieces
from .retention import Retention
from .topics import ACK_WAIT_MS, Topics

_ID_SCALE = 10**12
_SKIP_ROUNDS = 16  # fetches a pull makes at most while all it fetched was in the skip set


def _in_order(sends: Mapping[int, list[Send]]) -> list[Send]:
    """Sends by stream sequence, in stream order."""
    return [item for seq in sorted(sends) for item in sends[seq]]


def _split(msgs: list[Any], skip: Skip) -> tuple[list[Any], list[Fetched]]:
    """Fetched messages: those to deliver, and those of the skip set (acked before a seek)."""
    if not skip:
        return msgs, []
    kept: list[Any] = []
    skipped: list[Fetched] = []
    for msg in msgs:
        ack = AckId(msg.reply[len(ACK_PREFIX):])
        if ack.sseq in skip:
            size = int((msg.headers or {}).get(H_SIZE, len(msg.data)))
            skipped.append(Fetched(msg, ack, size))
        else:
            kept.append(msg)
    return kept, skipped


class NatsMessageLog(MessageLog):
    """Messages in topic streams, delivery state in the subscriptions' consumers."""

    def __init__(self, js: JetStream, layout: Layout, topics: Topics, origin: str,
                 pieces: Pieces) -> None:
        self._js = js
        self._layout = layout
        self._topics = topics
        self._origin = origin  # this process, in its wake-up notifications
        self._pieces = pieces
        self._ordering = KeyOrdering(js, layout)
        self._leases = Leases(js, layout)
        self._redeliveries = Redeliveries(js, layout)
        self._retention = Retention(js, layout, topics, self._leases, self._redeliveries,
                                    pieces, origin)
        self._peek = Peek(js, layout, topics, pieces, self._redeliveries, _ID_SCALE)

    async def start(self) -> None:
        """Make sure the stream of what subscriptions acknowledged exists (acklog.py)."""
        await self._topics.sets.ensure()

    # --- publish ----------------------------------------------------------------------------
    async def publish(self, topic: str, messages: Sequence[bytes], now_ms: int,
                      skip: Mapping[str, set[int]] | None = None,
                      ordering_keys: Sequence[str] | None = None,
                      retain: bool = False) -> list[str]:
        try:
            return await self._publish(topic, messages, now_ms, skip or {}, ordering_keys)
        except NoStream:  # the stream went away (deleted by hand): create it again
            self._topics.forget_stream(topic)
            return await self._publish(topic, messages, now_ms, skip or {}, ordering_keys)

    async def _publish(self, topic: str, messages: Sequence[bytes], now_ms: int,
                       skip: Mapping[str, set[int]], ordering_keys: Sequence[str] | None
                       ) -> list[str]:
        stream = await self._topics.stream(topic)
        subject = self._layout.topic_subject(topic)
        skipped: dict[int, list[str]] = {}
        for name, indexes in skip.items():
            for index in indexes:
                skipped.setdefault(index, []).append(self._layout.consumer(name))
        items = []
        large: dict[int, bytes] = {}  # more than one NATS message takes: stored as pieces
        limit = self._js.max_payload - STAMP_BYTES
        for index, raw in enumerate(messages):
            headers = {H_TIME: str(now_ms), H_SIZE: str(len(raw))}
            if ordering_keys and ordering_keys[index]:
                headers[H_KEY] = ordering_keys[index]
            if index in skipped:
                headers[H_SKIP] = ",".join(skipped[index])
            if len(raw) + header_bytes(headers) > limit:
                large[index] = raw
                items.append((subject, b"", headers))
                continue
            # (the id is known only once stored: it is added when delivered)
            items.append((subject, stamp(raw, "", now_ms), headers))
        if large:
            await self._pieces.store(self._layout.stream_hash(stream), items, large)
        acks = await self._js.publish_many(items, checked=True)
        if any("error" in a for a in acks):
            raise nats_error(next(a["error"] for a in acks if "error" in a))
        prefix = await self._topics.id_prefix(stream)
        await self._js.publish(self._layout.wake(topic), f"{self._origin}\n{topic}".encode())
        return [str(prefix * _ID_SCALE + a["seq"]) for a in acks]

    # --- pull -------------------------------------------------------------------------------
    async def pull(self, subscription: str, max_messages: int, lease_ms: int, now_ms: int,
                   max_bytes: int = 0, policy: DeliveryPolicy = DEFAULT_POLICY) -> list[Delivery]:
        async def pull(stream: str, consumer: str) -> list[Delivery]:
            return await self._pull(stream, consumer, max_messages, lease_ms, now_ms,
                                    max_bytes, policy)

        return await self._topics.call(subscription, pull, [])

    async def _pull(self, stream: str, consumer: str, max_messages: int, lease_ms: int,
                    now_ms: int, max_bytes: int, policy: DeliveryPolicy) -> list[Delivery]:
        for _ in range(_SKIP_ROUNDS):
            msgs = await self._js.fetch(stream, consumer, max_messages)
            # (read after the fetch: a restart of the consumer is heard of before its messages)
            skip = await self._topics.skips.of(stream, consumer) if msgs else NO_SKIP
            kept, skipped = _split(msgs, skip)
            got = await self._deliver(stream, consumer, kept, skipped, lease_ms, now_ms,
                                      max_bytes, policy)
            if got or not skipped or len(msgs) < max_messages:
                return got
        return []

    async def _deliver(self, stream: str, consumer: str, msgs: list[Any],
                       skipped: list[Fetched], lease_ms: int, now_ms: int, max_bytes: int,
                       policy: DeliveryPolicy) -> list[Delivery]:
        """Hand out fetched messages; ack those of the skip set (`skipped`) silently."""
        prefix = await self._topics.id_prefix(stream)
        chosen, over = await self._choose(consumer, msgs, max_bytes, policy)
        if any(f.ack.delivered > 1 for f in chosen):
            chosen, acked = await self._acked_before(consumer, chosen)
            skipped = skipped + acked
        whole: dict[int, bytes] = {}  # stream sequence -> a message read from its pieces
        if any(H_PIECES in f.headers for f in chosen):
            chosen, whole = await self._pieces.load(stream, chosen)
        attempts: dict[int, int] = {}  # stream sequence -> delivery attempt, when not `delivered`
        if policy.ordered and (chosen or over or skipped):
            # (skipped messages go through their keys' records, acked as soon as let out)
            chosen = await self._ordering.order(stream, consumer, chosen + skipped, over,
                                                attempts, policy.accepts)
            gone = {f.ack.sseq for f in skipped}
            if gone:
                await self._js.send(_in_order(await self._ordering.settle(
                    [f.ack for f in chosen if f.ack.sseq in gone], None)))
                chosen = [f for f in chosen if f.ack.sseq not in gone]
        else:
            await self._js.send([(f.msg.reply, ACK) for f in skipped])
        if policy.exactly_once and chosen:
            chosen = await self._leases.lease(chosen, now_ms + lease_ms)
        elif any(f.ack.delivered > 1 for f in chosen):
            await self._redeliveries.note(consumer, [f.ack for f in chosen
                                                     if f.ack.delivered > 1])
        return [await self._hand_out(f, prefix, attempts.get(f.ack.sseq, f.ack.delivered),
                                     lease_ms, policy.retry, whole.get(f.ack.sseq))
                for f in chosen]

    async def _acked_before(self, consumer: str, chosen: list[Fetched]
                            ) -> tuple[list[Fetched], list[Fetched]]:
        """Of redelivered messages, those the ack log says were acknowledged: JetStream can
        lose an ack whose call was answered (the consumer's leader changed as it was applied,
        on a cluster), and a client told its ack succeeded must not get the message again.
        The ack log (written before every ack call answers) is read only when something comes
        again. Returns (still to hand out, acked already: to be acked again silently)."""
        logged = set((await self._topics.acklog.read(consumer))[0])
        if not logged:
            return chosen, []
        return ([f for f in chosen if f.ack.sseq not in logged],
                [f for f in chosen if f.ack.sseq in logged])

    async def _choose(self, consumer: str, msgs: list[Any], max_bytes: int,
                      policy: DeliveryPolicy) -> tuple[list[Fetched], list[Fetched]]:
        """Of fetched messages, those for the puller, and (if ordered) those past the byte
        budget; the rest are sent back."""
        chosen: list[Fetched] = []
        over: list[Fetched] = []
        total = 0
        for msg in msgs:
            headers = msg.headers or {}
            ack = AckId(msg.reply[len(ACK_PREFIX):])
            size = int(headers.get(H_SIZE, len(msg.data)))
            if (consumer in headers.get(H_SKIP, "").split(",")
                    or (policy.accepts is not None and not policy.accepts(msg.data[:size]))):
                await self._js.publish(msg.reply, TERM)  # its filter rejects it
                continue
            if max_bytes and chosen and total + size > max_bytes:
                if policy.ordered:
                    over.append(Fetched(msg, ack, size))  # (sent back once recorded)
                else:
                    await self._js.publish(msg.reply, NAK)  # over the byte budget: back now
                continue
            total += size
            chosen.append(Fetched(msg, ack, size))
        return chosen, over

    async def _hand_out(self, fetched: Fetched, prefix: int, attempt: int, lease_ms: int,
                        retry: RetryPolicy | None, whole: bytes | None) -> Delivery:
        """Set the delivery's lease and stamp the message (`whole`, if it was stored as
        pieces) with its id and publish time."""
        delay = lease_ms + (retry.delay_ms(attempt) if retry else 0)
        if delay != ACK_WAIT_MS:
            await self._js.publish(fetched.msg.reply, nak(delay))
        message_id = str(prefix * _ID_SCALE + fetched.ack.sseq)
        published = int(fetched.headers.get(H_TIME, 0))
        message = stamp(fetched.msg.data[:fetched.size] if whole is None else whole,
                        message_id, published)
        return Delivery(fetched.msg.reply[len(ACK_PREFIX):], message, attempt, fetched.size,
                        published)

    # --- ack and modack ---------------------------------------------------------------------
    def _targets(self, subscription: str, ack_ids: Sequence[str], policy: DeliveryPolicy
                 ) -> tuple[list[AckId], list[str], list[str]]:
        """(parsed, their ids, refused ids): exactly-once refuses malformed ids, else raises."""
        consumer = self._layout.consumer(subscription)
        if not policy.exactly_once:
            return parse_ack_ids(consumer, ack_ids), list(ack_ids), []
        parsed, ids, bad = [], [], []
        for ack_id in ack_ids:
            try:
                parsed += parse_ack_ids(consumer, [ack_id])
                ids.append(ack_id)
            except InvalidAckId:
                bad.append(ack_id)
        return parsed, ids, bad

    async def acknowledge(self, subscription: str, ack_ids: Sequence[str],
                          policy: DeliveryPolicy = DEFAULT_POLICY, now_ms: int = 0) -> list[str]:
        parsed, ids, bad = self._targets(subscription, ack_ids, policy)
        stale: list[str] = []
        if policy.exactly_once:
            parsed, stale = await self._leases.settle(parsed, ids, now_ms,
                                                      lambda a: {"acked": True})

        async def send() -> None:
            if policy.ordered:
                await self._js.send(_in_order(await self._ordering.settle(parsed, None)))
            else:
                await self._js.send([(ack.subject, ACK) for ack in parsed])

        # The log is written first (sent first, awaited with the acks: one round trip).
        await asyncio.gather(self._topics.acklog.append(self._layout.consumer(subscription),
                                                        [ack.sseq for ack in parsed]), send())
        return bad + stale

    async def modify_deadline(self, subscription: str, ack_ids: Sequence[str], deadline_ms: int,
                              now_ms: int, policy: DeliveryPolicy = DEFAULT_POLICY) -> list[str]:
        parsed, ids, bad = self._targets(subscription, ack_ids, policy)
        stale: list[str] = []
        if policy.exactly_once:
            # a nack ends the lease (until = now); an extension moves it
            parsed, stale = await self._leases.settle(
                parsed, ids, now_ms, lambda a: {"d": a.delivered, "until": now_ms + deadline_ms})
        else:
            parsed = await self._redeliveries.current(parsed)
        retry = policy.retry
        if deadline_ms == 0:
            await self._nack(parsed, policy)
        else:
            await self._js.send([
                (ack.subject, nak(deadline_ms + (retry.delay_ms(ack.delivered) if retry else 0)))
                for ack in parsed])
        return bad + stale

    async def _nack(self, parsed: list[AckId], policy: DeliveryPolicy) -> None:
        """Nacks: through the ordering record (if any), as acks are."""
        retry = policy.retry

        def body(ack: AckId, attempt: int) -> bytes:
            return nak(retry.delay_ms(attempt) if retry else 0)

        if policy.ordered:
            await self._js.send(_in_order(await self._ordering.settle(parsed, body)))
        else:
            await self._js.send([(ack.subject, body(ack, ack.delivered)) for ack in parsed])

    # --- the backlog ------------------------------------------------------------------------
    async def _info(self, subscription: str) -> tuple[dict[str, Any] | None, int]:
        """The consumer's info and how many of its pending messages are in its skip set."""
        async def info(stream: str, consumer: str) -> tuple[dict[str, Any] | None, int]:
            found = await self._js.consumer_info(stream, consumer)
            if not found.get("num_pending"):
                # Nothing to skip among nothing: no read of the skip set (every idle look of
                # every open stream asks this).
                return found, 0
            skip = await self._topics.skips.of(stream, consumer)
            return found, skip.count_above(int(found["delivered"]["stream_seq"])) if skip else 0

        return await self._topics.call(subscription, info, (None, 0))

    async def next_due_ms(self, subscription: str) -> int | None:
        info, skipped = await self._info(subscription)
        if not info:
            return None
        now = int(time.time() * 1000)
        if info.get("num_pending", 0) > skipped:
            return now
        if info.get("num_ack_pending", 0) > 0:
            return now + 1000  # leased or backing off: JetStream does not say until when
        return None  # nothing stored: a publish (from any process) wakes the waiters

    async def backlog(self, subscription: str) -> int:
        info, skipped = await self._info(subscription)
        if not info:
            return 0
        return max(0, info.get("num_pending", 0) - skipped) + info.get("num_ack_pending", 0)

    async def peek(self, subscription: str, max_messages: int, now_ms: int) -> list[Pending]:
        return await self._peek.peek(subscription, max_messages, now_ms)  # (peek.py)

    async def purge(self, subscription: str) -> None:
        topic = await self._topics.topic_of(subscription, fresh=True)
        if not topic:
            return
        # (from a start sequence, not "deliver new": so the consumer's ack floor is known)
        stream = await self._topics.stream(topic)
        last = (await self._js.api(f"STREAM.INFO.{stream}"))["state"]["last_seq"]
        await self._topics.restart(subscription, {"deliver_policy": "by_start_sequence",
                                                  "opt_start_seq": last + 1},
                                   origin=self._origin)

    # --- seeks, snapshots, retention ----------------------------------------------------------
    async def seek_to_time(self, subscription: str, time_ms: int, now_ms: int,
                           policy: DeliveryPolicy = DEFAULT_POLICY,
                           from_topic: bool = False) -> None:
        await self._retention.seek_to_time(subscription, time_ms, policy.retain_acked,
                                           from_topic)

    async def save_snapshot(self, snapshot: str, subscription: str) -> None:
        await self._retention.save_snapshot(snapshot, subscription)

    async def seek_to_snapshot(self, subscription: str, snapshot: str, now_ms: int) -> None:
        await self._retention.seek_to_snapshot(subscription, snapshot)

    async def sweep(self, now_ms: int, rules: RetentionRules | None = None) -> int:
        return await self._retention.sweep(now_ms, rules or RetentionRules())

    # --- figures for metrics (stats.py) -------------------------------------------------------
    async def stats(self, subscriptions: Sequence[str], now_ms: int) -> dict[str, Any]:
        """Each existing subscription's SubscriptionStats, from its consumer (stats.py)."""
        from .stats import subscription_stats  # (metrics only: loaded at the first scrape)

        return await subscription_stats(self._js, self._topics, subscriptions)
