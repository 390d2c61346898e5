"""The StreamingPull RPC over the delivery engine.

The first request opens the call on a subscription; the call then sends messages while its
flow-control window (max_outstanding_messages/bytes) has room, and later requests ack and
modack. Under exactly-once delivery each ack and modack is confirmed on the stream.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from google.pubsub_v1 import types as t

from .. import protowire
from ..store import Delivery, DeliveryPolicy
from . import limits
from .delivery import DeliveryEngine
from .errors import ApiError, Status, invalid_argument
from .events import Events
from .policy import delivery_policy

log = logging.getLogger("pubsub_emulator.service")

StreamingPullResponse = t.StreamingPullResponse.pb()
AckConfirmation = t.StreamingPullResponse.AcknowledgeConfirmation.pb()
ModAckConfirmation = t.StreamingPullResponse.ModifyAckDeadlineConfirmation.pb()
# An idle call looks at its subscription again at least this often, a backstop only: what
# makes messages due is told by a wake-up (a publish, nack, seek or change, here or, through
# the store, in another process; a lost connection to NATS wakes everything) or is already
# known as the next due time (a lease running out, here or elsewhere: on NATS a subscription
# with leases out is looked at every second). Each look is a store read, on NATS a JetStream
# request: 2,000 idle streams looking every 60 s cost ~5% of a core.
IDLE_LOOK_S = 300.0
# Google's clients send the first request as the call opens; a call still silent after this
# long holds a stream for nothing. server.py sets it from `--first-request-timeout`.
FIRST_REQUEST_TIMEOUT_S = 60.0


class Wakeup(asyncio.Event):
    """A call's wake-up. `set()` (a publish not handed to it, an ack that opens its window, a
    nack, a seek, a change) asks for a look at the store; `handed()` says only that messages
    were handed to the call, to send as they are (no look needed)."""

    def __init__(self) -> None:
        super().__init__()
        self.look = True

    def set(self) -> None:
        self.look = True
        super().set()

    def handed(self) -> None:
        super().set()


def takes_handed(sub: Any) -> bool:
    """Whether messages published to the subscription's topic may be handed to its streams
    (Publishing, DeliveryEngine.claim): plain subscriptions. Filters, ordering, exactly-once,
    dead-lettering and retry policies have their messages read back from the store."""
    return not (sub.filter or sub.detached or sub.enable_message_ordering
                or sub.enable_exactly_once_delivery or sub.HasField("dead_letter_policy")
                or sub.HasField("retry_policy"))


class OpenPull:
    """One open StreamingPull call: its lease window and the leases it holds."""

    def __init__(self, sub: Any, lease_ms: int, max_messages: int, max_bytes: int,
                 wakeup: Wakeup) -> None:
        self.subscription: str = sub.name
        self.topic: str = sub.topic
        self.lease_ms = lease_ms
        # Messages handed to the call at publish, until sent; whether the subscription
        # allows handing, as of the call's last look at it.
        self.inbox: list[Delivery] = []
        self.takes_handed = takes_handed(sub)
        # When the subscription's next message is due, as of the call's last look at the store.
        self.due_ms: int | None = None
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.wakeup = wakeup
        self.outstanding: dict[str, tuple[int, int]] = {}  # ack_id -> (until, size)
        self.outstanding_bytes = 0
        # No held lease runs out before this (a lower bound, None: none held). Every turn of
        # the call's loop asks; scanning thousands of leases each time cost more than the rest.
        self._next_expiry: int | None = None
        self.confirmations: list[Any] = []  # responses owed to the client
        # The subscription's delivery policy as of the call's last look at it (every turn of
        # its loop): acks and modacks on the call use it rather than reading it again.
        self.policy: DeliveryPolicy = delivery_policy(sub)
        # What the subscription was when the call opened: the client reads these once.
        self.exactly_once: bool = sub.enable_exactly_once_delivery
        self.properties: bytes = StreamingPullResponse.SubscriptionProperties(
            exactly_once_delivery_enabled=sub.enable_exactly_once_delivery,
            message_ordering_enabled=sub.enable_message_ordering).SerializeToString()

    # LeaseHolder
    def release(self, ack_ids: Sequence[str]) -> None:
        was_full = self.window_full()
        for ack_id in ack_ids:
            held = self.outstanding.pop(ack_id, None)
            if held is not None:
                self.outstanding_bytes -= held[1]
        if not self.outstanding:
            self._next_expiry = None
        # Only a full window kept the call from delivering: otherwise an ack opens nothing
        # new, and waking the call for it cost a turn that found nothing (per ack: per
        # message, when messages come one at a time). Seeks and nacks wake it themselves.
        if was_full:
            self.wakeup.set()

    def window_full(self) -> bool:
        """Whether flow control holds the call back (no more messages, or no more bytes)."""
        return ((0 < self.max_messages <= len(self.outstanding))
                or (0 < self.max_bytes <= self.outstanding_bytes))

    def release_all(self) -> None:
        self.inbox = []  # (a seek made them available again)
        self.release(list(self.outstanding))

    # Receiver (DeliveryEngine.claim)
    def can_take(self, count: int, size: int) -> bool:
        if not self.takes_handed or self.inbox:
            return False
        room, room_bytes = self.window()
        return count <= room and size <= room_bytes

    def take(self, deliveries: list[Delivery], until_ms: int) -> None:
        self.inbox = deliveries
        self.hold([(d.ack_id, d.size) for d in deliveries], until_ms)
        self.wakeup.handed()

    def refresh(self) -> None:
        """The subscription changed: nothing more is handed to the call until it looks."""
        self.takes_handed = False
        self.wakeup.set()

    def sent(self) -> bytes:
        """The response of what was handed, now on its way (the inbox empties)."""
        response = protowire.streaming_pull_response(
            [protowire.received_message(d.ack_id, d.message, 0) for d in self.inbox],
            self.properties)
        self.inbox = []
        return response

    def extend(self, ack_ids: Sequence[str], until_ms: int) -> None:
        for ack_id in ack_ids:
            held = self.outstanding.get(ack_id)
            if held is not None:
                self.outstanding[ack_id] = (until_ms, held[1])
                self._lower_next_expiry(until_ms)

    def hold(self, leased: list[tuple[str, int]], until_ms: int) -> None:
        for ack_id, size in leased:
            self.outstanding[ack_id] = (until_ms, size)
            self.outstanding_bytes += size
        if leased:
            self._lower_next_expiry(until_ms)

    def _lower_next_expiry(self, until_ms: int) -> None:
        if self._next_expiry is None or until_ms < self._next_expiry:
            self._next_expiry = until_ms

    def expire(self, now: int) -> int:
        """A lease that ran out is no longer held by this call: the message is redelivered.
        How many ran out."""
        if self._next_expiry is None or now < self._next_expiry:
            return 0
        gone = [ack_id for ack_id, (until, _) in self.outstanding.items() if until <= now]
        if gone:
            self.release(gone)
        self._next_expiry = min((until for until, _ in self.outstanding.values()), default=None)
        return len(gone)

    def window(self) -> tuple[int, int]:
        """How many messages, and bytes, the call may receive now (at least one message when
        `count` > 0, even past the bytes)."""
        count = limits.MAX_MESSAGES_PER_STREAM_RESPONSE
        if self.max_messages > 0:
            count = min(count, self.max_messages - len(self.outstanding))
        size = limits.MAX_BYTES_PER_STREAM_RESPONSE
        if self.max_bytes > 0:
            size = min(size, self.max_bytes - self.outstanding_bytes)
            if size <= 0:
                count = 0
        return count, size

    def soonest_expiry(self) -> int | None:
        """When the call should look at its leases next (at or before the first to run out;
        a look that finds none run out moves it to the true first)."""
        return self._next_expiry


class StreamingPull:
    def __init__(self, engine: DeliveryEngine, events: Events, clock: Callable[[], int]) -> None:
        self._engine = engine
        self._events = events
        self._clock = clock
        self.first_request_timeout = FIRST_REQUEST_TIMEOUT_S  # seconds; 0: wait forever
        self._nacks: set[asyncio.Future[Any]] = set()  # of what closing calls never sent

    async def __call__(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        first = await self._first(requests)
        if first is None:
            return
        call = await self._open(first)
        closed = asyncio.Event()
        failure: list[ApiError] = []
        reader = asyncio.ensure_future(self._read(call, first, requests, closed, failure))
        log.debug("StreamingPull opened on %s", call.subscription)
        try:
            async for response in self._deliver(call, closed):
                yield response
            if failure:
                raise failure[0]
        finally:
            reader.cancel()
            self._engine.let_go(call.subscription, call)
            self._events.unwatch(call.subscription, call.wakeup)
            if call.inbox:  # handed but never sent: available again at once
                nack = asyncio.ensure_future(self._engine.modify(
                    call.subscription, [d.ack_id for d in call.inbox], 0, strict=False))
                self._nacks.add(nack)  # (a task nothing refers to may be collected unfinished)
                nack.add_done_callback(self._nacks.discard)
            log.debug("StreamingPull closed on %s", call.subscription)

    async def _first(self, requests: AsyncIterator[Any]) -> Any:
        """The opening request. DEADLINE_EXCEEDED when it does not come in time: the wait for
        the client ran out (nothing it sent was wrong, so not INVALID_ARGUMENT), and Google's
        clients treat it as retryable and reopen the stream, where INVALID_ARGUMENT would stop
        the subscriber for good."""
        try:
            return await asyncio.wait_for(anext(requests, None),
                                          self.first_request_timeout or None)
        except TimeoutError:
            raise ApiError(Status.DEADLINE_EXCEEDED,
                           f"No StreamingPullRequest received within "
                           f"{self.first_request_timeout:g} seconds of opening the stream."
                           ) from None

    async def _open(self, first: Any) -> OpenPull:
        if not first.subscription:
            raise invalid_argument("The first StreamingPullRequest must name a subscription.")
        sub = await self._engine.deliverable(first.subscription)
        if not (limits.MIN_ACK_DEADLINE_S <= first.stream_ack_deadline_seconds
                <= limits.MAX_ACK_DEADLINE_S):
            raise invalid_argument(
                f"Invalid stream_ack_deadline_seconds: {first.stream_ack_deadline_seconds}. It "
                f"must be between {limits.MIN_ACK_DEADLINE_S} and {limits.MAX_ACK_DEADLINE_S}.")
        wakeup = Wakeup()
        self._events.watch(sub.name, sub.topic, wakeup)
        call = OpenPull(sub, first.stream_ack_deadline_seconds * 1000,
                        first.max_outstanding_messages, first.max_outstanding_bytes, wakeup)
        self._engine.hold(sub.name, call)
        self._engine.receive_handed(call)
        return call

    async def _read(self, call: OpenPull, request: Any, requests: AsyncIterator[Any],
                    closed: asyncio.Event, failure: list[ApiError]) -> None:
        try:
            while request is not None:
                await self._settle(call, request)
                request = await anext(requests, None)
        except ApiError as exc:
            failure.append(exc)
        except (asyncio.CancelledError, Exception):  # the client went away
            pass
        finally:
            closed.set()
            call.wakeup.set()

    async def _deliver(self, call: OpenPull, closed: asyncio.Event) -> AsyncIterator[Any]:
        while not closed.is_set():
            while call.confirmations:
                yield call.confirmations.pop(0)
            if call.inbox:
                yield call.sent()
                if not call.wakeup.look:
                    # Only handed messages woke the call: there is nothing to look for. (A
                    # wake-up that asks for a look, or more handed, may come while the
                    # response goes out: then the event is set and `look` or the inbox says.)
                    call.wakeup.clear()
                    if not call.inbox and not call.confirmations:
                        await self._sleep(call, call.window()[0] > 0, due_known=True)
                    continue
            # Cleared before looking, so a wake-up that comes while the store is read (a NATS
            # store suspends there; a publish lands meanwhile) is kept for the sleep below.
            call.wakeup.look = False
            call.wakeup.clear()
            now = self._clock()
            expired = call.expire(now)
            if expired:
                self._engine.observer.expired(call.subscription, expired)
            sub = await self._engine.deliverable(call.subscription)
            call.policy = delivery_policy(sub)
            call.takes_handed = takes_handed(sub)
            count, size = call.window()
            if count > 0:
                received, leased = await self._engine.receive_encoded(sub, count, call.lease_ms,
                                                                      size)
                call.hold(leased, now + call.lease_ms)
                if received:
                    yield protowire.streaming_pull_response(received, call.properties)
                    if len(received) == count or not self._engine.short_pull_drains:
                        continue  # there may be more: look again at once
                    # Fewer than asked: none was left at `now`, so a turn that would find
                    # nothing is skipped (a publish meanwhile has set the wake-up; one message
                    # per publish cost two turns). Messages that only the byte limit left
                    # behind are due now: the sleep ends at once.
            await self._sleep(call, count > 0)

    async def _sleep(self, call: OpenPull, has_room: bool, due_known: bool = False) -> None:
        """Until woken, the next message is due, or a held lease runs out. With none of
        these, the call looks at its subscription every IDLE_LOOK_S (a backstop for what no
        wake-up tells, such as a lease another puller let run out): a look that finds nothing
        due sleeps again without a turn of the call's loop (thousands of idle streams cost
        one store read each per IDLE_LOOK_S)."""
        while True:
            timeout, idle = IDLE_LOOK_S, True
            # (after handed messages only, the due time of the last look still holds: what
            # was handed is leased, and anything else that makes messages due wakes the call)
            if not due_known:
                call.due_ms = await self._engine.next_due_ms(call.subscription)
            due_known = False
            due = call.due_ms
            if due is not None and has_room:
                timeout, idle = min(timeout, max(0.001, (due - self._clock()) / 1000)), False
            soonest = call.soonest_expiry()
            if soonest is not None:
                timeout, idle = min(timeout, max(0.001, (soonest - self._clock()) / 1000)), False
            try:
                # (asyncio.timeout rather than wait_for, which makes a task per wait: ~20 us
                # of a message's delivery at one message per publish)
                async with asyncio.timeout(timeout):
                    await call.wakeup.wait()
                return
            except TimeoutError:
                if not idle:
                    return

    async def _settle(self, call: OpenPull, request: Any) -> None:
        """Acks and modacks on the call; with exactly-once, queue their confirmations."""
        confirm = call.exactly_once
        if request.ack_ids:
            ack_ids = list(request.ack_ids)
            invalid = await self._engine.ack(call.subscription, ack_ids, strict=False,
                                             policy=call.policy)
            if confirm:
                bad = set(invalid)
                call.confirmations.append(StreamingPullResponse(
                    acknowledge_confirmation=AckConfirmation(
                        ack_ids=[a for a in ack_ids if a not in bad], invalid_ack_ids=invalid)))
        if len(request.modify_deadline_seconds) != len(request.modify_deadline_ack_ids):
            raise invalid_argument("modify_deadline_seconds and modify_deadline_ack_ids must "
                                   "have the same length.")
        by_deadline: dict[int, list[str]] = {}
        for seconds, ack_id in zip(request.modify_deadline_seconds,
                                   request.modify_deadline_ack_ids, strict=True):
            by_deadline.setdefault(seconds, []).append(ack_id)
        for seconds, ack_ids in by_deadline.items():
            invalid = await self._engine.modify(call.subscription, ack_ids, seconds,
                                                strict=False, policy=call.policy)
            if confirm:
                bad = set(invalid)
                call.confirmations.append(StreamingPullResponse(
                    modify_ack_deadline_confirmation=ModAckConfirmation(
                        ack_ids=[a for a in ack_ids if a not in bad], invalid_ack_ids=invalid)))
        if call.confirmations:
            call.wakeup.set()
        if request.stream_ack_deadline_seconds:
            call.lease_ms = request.stream_ack_deadline_seconds * 1000
