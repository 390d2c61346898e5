"""The delivery engine: leases messages to whoever delivers them, settles acks and modacks.

Pull, StreamingPull and native push all deliver through this one public API:
- `receive(sub, ...)` leases available messages as ReceivedMessages (dead-lettering those past
  their policy's attempts and setting `delivery_attempt` where Google does);
- `ack(...)` and `modify(...)` settle them (a modify to 0 s is a nack), answering exactly-once
  failures as Google does;
- `next_due_ms(...)` says when to look again;
- open StreamingPulls register as lease holders, so an ack, nack or seek made through any path
  frees their flow-control window.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .. import protowire
from ..store import Delivery, DeliveryPolicy, InvalidAckId, Kind, Store
from . import limits, names
from .activity import Activity
from .catalog import Catalog
from .errors import exactly_once_failure, invalid_argument
from .events import Events
from .model import PubsubMessage, ReceivedMessage, Subscription
from .observe import NO_OBSERVER, Observer
from .policy import delivery_policy

log = logging.getLogger("pubsub_emulator.service")

Leased = list[tuple[str, int]]  # (ack id, size) of each message leased



class LeaseHolder(Protocol):
    """Something that counts the leases it holds (an open StreamingPull's flow control)."""

    def release(self, ack_ids: Sequence[str]) -> None: ...

    def extend(self, ack_ids: Sequence[str], until_ms: int) -> None: ...

    def release_all(self) -> None: ...


class Receiver(LeaseHolder, Protocol):
    """An open StreamingPull that takes messages handed to it as they are published."""

    subscription: str
    topic: str
    lease_ms: int

    def can_take(self, count: int, size: int) -> bool:
        """Whether it takes `count` messages of `size` bytes in all now (its window has room,
        nothing handed is waiting to go out, the subscription's policy allows it)."""
        ...

    def take(self, deliveries: list[Delivery], until_ms: int) -> None:
        """Hold these leases and send the messages."""
        ...

    def refresh(self) -> None:
        """The subscription changed: take nothing until it has been read again."""
        ...


class DeliveryEngine:
    def __init__(self, store: Store, catalog: Catalog, events: Events, activity: Activity,
                 clock: Callable[[], int], observer: Observer = NO_OBSERVER) -> None:
        self._log = store.messages
        # A pull that came back short left nothing available (store/base.py MessageLog).
        self.short_pull_drains: bool = store.messages.short_pull_drains
        self.observer = observer  # metrics: what was delivered, acked, nacked... (observe.py)
        self._table = store.resources
        self._catalog = catalog
        self._events = events
        self._activity = activity
        self._clock = clock
        self._holders: dict[str, set[LeaseHolder]] = {}
        # Open StreamingPulls by topic and subscription, for publishes to hand messages to.
        self._receivers: dict[str, dict[str, list[Receiver]]] = {}
        self._receiving: dict[LeaseHolder, str] = {}  # each receiver's topic, as registered
        events.on_change(self._changed)
        # Pulls that leased something, acks and modacks so far: the sweeper's sign that
        # messages moved (an idle stream's periodic look that finds nothing does not count).
        self.work = 0

    # --- lease holders -------------------------------------------------------------------------
    def hold(self, subscription: str, holder: LeaseHolder) -> None:
        self._holders.setdefault(subscription, set()).add(holder)

    def let_go(self, subscription: str, holder: LeaseHolder) -> None:
        holders = self._holders.get(subscription)
        if holders is not None:
            holders.discard(holder)
            if not holders:
                self._holders.pop(subscription, None)
        topic = self._receiving.pop(holder, None)
        if topic is not None:
            by_subscription = self._receivers[topic]
            calls = by_subscription[subscription]
            calls.remove(holder)  # type: ignore[arg-type]
            if not calls:
                del by_subscription[subscription]
                if not by_subscription:
                    del self._receivers[topic]

    # --- handing published messages to open streams ----------------------------------------
    def receive_handed(self, receiver: Receiver) -> None:
        """`receiver` (held already) takes messages published to its topic from now on."""
        self._receiving[receiver] = receiver.topic
        self._receivers.setdefault(receiver.topic, {}).setdefault(
            receiver.subscription, []).append(receiver)

    def _changed(self, kind: Kind, name: str) -> None:
        """A subscription changed (a policy that rules handing out may be new): its streams
        take nothing more until they have looked at it again."""
        if kind is Kind.SUBSCRIPTION:
            for by_subscription in self._receivers.values():
                for call in by_subscription.get(name, ()):
                    call.refresh()

    def claim(self, topic: str, count: int, size: int) -> dict[str, Receiver]:
        """For each subscription of `topic` with an open stream that takes `count` messages of
        `size` bytes now: one such stream."""
        claims: dict[str, Receiver] = {}
        for subscription, calls in self._receivers.get(topic, {}).items():
            for call in calls:
                if call.can_take(count, size):
                    claims[subscription] = call
                    break
        return claims

    async def hand(self, claims: Mapping[str, Receiver], handed: Mapping[str, list[Delivery]],
                   now_ms: int) -> None:
        """Give what the store leased at publish (store.publish_leased) to the streams that
        claimed it: as a pull turn of theirs would have, had it read the messages back."""
        for subscription, deliveries in handed.items():
            call = claims[subscription]
            if call not in self._receiving:
                # The stream closed while the store wrote (a store that suspends there):
                # the messages are available again at once.
                await self.modify(subscription, [d.ack_id for d in deliveries], 0,
                                  strict=False)
                continue
            call.take(deliveries, now_ms + call.lease_ms)
            self.work += 1
            self.observer.delivered(subscription, len(deliveries), [0] * len(deliveries))
        for subscription in handed:
            await self._activity.touch(subscription)

    def has_holders(self, subscription: str) -> bool:
        """Whether a StreamingPull is open on the subscription here."""
        return subscription in self._holders

    def release_everything(self, subscription: str) -> None:
        """Every lease held on the subscription is void (a seek): holders let go of all."""
        for holder in self._holders.get(subscription, set()):
            holder.release_all()

    # --- delivering ----------------------------------------------------------------------------
    async def deliverable(self, name: str) -> Any:
        """The subscription, if it exists and is not detached (else NOT_FOUND or
        FAILED_PRECONDITION)."""
        return await self._catalog.deliverable(name)

    async def receive(self, sub: Any, max_messages: int, lease_ms: int, max_bytes: int = 0,
                      ) -> tuple[list[Any], Leased]:
        """Lease up to `max_messages` (within `max_bytes`) of `sub`'s available messages, as
        ReceivedMessage protos."""
        handed, leased = await self._lease(sub, max_messages, lease_ms, max_bytes)
        received = []
        for d, attempt in handed:
            rm = ReceivedMessage(ack_id=d.ack_id, delivery_attempt=attempt)
            rm.message.MergeFromString(d.message)
            received.append(rm)
        return received, leased

    async def receive_encoded(self, sub: Any, max_messages: int, lease_ms: int,
                              max_bytes: int = 0) -> tuple[list[bytes], Leased]:
        """As `receive`, each ReceivedMessage already encoded (protowire.py): StreamingPull
        sends them as they are, without building and serializing a proto per message."""
        handed, leased = await self._lease(sub, max_messages, lease_ms, max_bytes)
        return [protowire.received_message(d.ack_id, d.message, attempt)
                for d, attempt in handed], leased

    async def _lease(self, sub: Any, max_messages: int, lease_ms: int, max_bytes: int
                     ) -> tuple[list[tuple[Delivery, int]], Leased]:
        """The deliveries to hand out, each with the delivery_attempt to show (0: not shown,
        the subscription has no dead-letter policy), and what they lease; those past their
        dead-letter policy's attempts are forwarded instead."""
        await self._activity.touch(sub.name)
        deliveries = await self._log.pull(sub.name, max_messages, lease_ms, self._clock(),
                                          max_bytes, delivery_policy(sub))
        dead_letter = sub.dead_letter_policy if sub.HasField("dead_letter_policy") else None
        handed, leased, first = [], [], []
        now = self._clock()
        for d in deliveries:
            attempt = 0
            if dead_letter is not None:
                if (d.delivery_attempt > dead_letter.max_delivery_attempts
                        and await self._dead_letter(sub, d, d.delivery_attempt - 1)):
                    continue
                attempt = d.delivery_attempt
            if d.delivery_attempt == 1:
                first.append(now - d.published_ms)
            handed.append((d, attempt))
            leased.append((d.ack_id, d.size))
        if len(handed) < len(deliveries):
            self.observer.dead_lettered(sub.name, len(deliveries) - len(handed))
        if handed:
            self.work += 1
            self.observer.delivered(sub.name, len(handed), first)
        return handed, leased

    async def next_due_ms(self, subscription: str) -> int | None:
        """When the subscription's next message becomes available (None: none stored)."""
        return await self._log.next_due_ms(subscription)

    async def _dead_letter(self, sub: Any, delivery: Delivery, attempts: int) -> bool:
        """Forward a message that ran out of delivery attempts; ack it on `sub`."""
        topic = sub.dead_letter_policy.dead_letter_topic
        if await self._table.get(Kind.TOPIC, topic) is None:
            log.warning("%s: dead-letter topic %s does not exist; delivering again",
                        sub.name, topic)
            return False
        source = PubsubMessage.FromString(delivery.message)
        forwarded = PubsubMessage(data=source.data, attributes=source.attributes,
                                  ordering_key=source.ordering_key)
        sub_name = names.subscription(sub.name)
        forwarded.attributes.update({
            "CloudPubSubDeadLetterSourceDeliveryCount": str(attempts),
            "CloudPubSubDeadLetterSourceSubscription": sub_name.id,
            "CloudPubSubDeadLetterSourceSubscriptionProject": sub_name.project,
            "CloudPubSubDeadLetterSourceTopicPublishTime": source.publish_time.ToJsonString(),
        })
        await self._log.publish(topic, [forwarded.SerializeToString()], self._clock())
        await self._log.acknowledge(sub.name, [delivery.ack_id], delivery_policy(sub),
                                    self._clock())
        log.info("%s: message %s dead-lettered to %s after %d delivery attempts", sub.name,
                 source.message_id, topic, attempts)
        self._events.wake_topic(topic)
        return True

    # --- settling ------------------------------------------------------------------------------
    async def policy(self, subscription: str) -> DeliveryPolicy:
        raw = await self._table.get(Kind.SUBSCRIPTION, subscription)
        return delivery_policy(Subscription.FromString(raw)) if raw is not None else \
            DeliveryPolicy()

    async def ack(self, subscription: str, ack_ids: list[str], strict: bool = True,
                  policy: DeliveryPolicy | None = None) -> list[str]:
        """Acknowledge; under exactly-once, returns the ids that failed (raises if `strict`)."""
        await self._activity.touch(subscription)
        self.work += 1
        try:
            invalid = await self._log.acknowledge(subscription, ack_ids,
                                                  policy or await self.policy(subscription),
                                                  self._clock())
        except InvalidAckId as exc:
            raise invalid_argument(f"Invalid ack ID: {exc}") from None
        for holder in self._holders.get(subscription, ()):
            holder.release(ack_ids)
        self.observer.acked(subscription, len(ack_ids) - len(invalid))
        if invalid and strict:
            raise exactly_once_failure(invalid)
        return invalid

    async def modify(self, subscription: str, ack_ids: list[str], seconds: int,
                     strict: bool = True, policy: DeliveryPolicy | None = None) -> list[str]:
        """Extend the leases by `seconds` from now, or nack them (0); returns/raises as ack."""
        if not 0 <= seconds <= limits.MAX_MODIFY_DEADLINE_S:
            raise invalid_argument(
                f"Invalid ack deadline given: {seconds}. It must be between 0 and "
                f"{limits.MAX_MODIFY_DEADLINE_S} seconds.")
        now = self._clock()
        self.work += 1
        try:
            invalid = await self._log.modify_deadline(subscription, ack_ids, seconds * 1000, now,
                                                      policy or await self.policy(subscription))
        except InvalidAckId as exc:
            raise invalid_argument(f"Invalid ack ID: {exc}") from None
        for holder in self._holders.get(subscription, ()):
            if seconds == 0:
                holder.release(ack_ids)
            else:
                holder.extend(ack_ids, now + seconds * 1000)
        if seconds == 0:
            self._events.wake(subscription)
            self.observer.nacked(subscription, len(ack_ids) - len(invalid))
        if invalid and strict:
            raise exactly_once_failure(invalid)
        return invalid
