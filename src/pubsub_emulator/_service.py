"""The Pub/Sub v1 service core: every Publisher and Subscriber RPC, protocol-free.

Adapters (gRPC, REST) hand in request protos and get response protos or an ApiError back. All
calls run on one asyncio event loop, so the core needs no locks. Store calls are awaited: the
embedded store never suspends (each call is atomic), while a store that talks to a server (NATS)
lets the loop serve other calls meanwhile; what the core does across such a wait must hold even
if another call ran in between (as it must anyway with several processes on one store).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf import empty_pb2, field_mask_pb2
from google.protobuf.message import Message
from google.pubsub_v1 import types as t

from . import _limits as limits
from . import _names as names
from ._errors import (
    ApiError,
    Status,
    aborted,
    already_exists,
    exactly_once_failure,
    failed_precondition,
    invalid_argument,
    not_found,
)
from ._filter import FilterError, compile_filter
from ._schemas import SCHEMA_METHODS, SCHEMAS, SchemaRegistry
from ._store import DeliveryPolicy, InvalidAckId, RetentionRules, RetryPolicy, Store

log = logging.getLogger("pubsub_emulator.service")

Topic = t.Topic.pb()
Subscription = t.Subscription.pb()
Snapshot = t.Snapshot.pb()
PubsubMessage = t.PubsubMessage.pb()
ReceivedMessage = t.ReceivedMessage.pb()

TOPICS, SUBSCRIPTIONS, SNAPSHOTS = "topics", "subscriptions", "snapshots"
# When a subscription was last used, kept in the store so that every emulator process sharing
# it (NATS) sees activity on the others before expiring a subscription; written at most once a
# minute per subscription and process.
ACTIVITY = "activity"
ACTIVITY_WRITE_EVERY_MS = 60_000

# Fields UpdateTopic/UpdateSubscription/UpdateSnapshot may change (Google's update_mask paths).
_TOPIC_MUTABLE = {"labels", "message_storage_policy", "kms_key_name", "schema_settings",
                  "message_retention_duration", "ingestion_data_source_settings",
                  "message_transforms"}
_SUBSCRIPTION_MUTABLE = {"labels", "ack_deadline_seconds", "push_config", "bigquery_config",
                         "cloud_storage_config", "retain_acked_messages",
                         "message_retention_duration", "expiration_policy",
                         "dead_letter_policy", "retry_policy", "enable_exactly_once_delivery",
                         "message_transforms"}
_SNAPSHOT_MUTABLE = {"labels", "expire_time"}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(eq=False)  # streams are compared and hashed by identity
class _Stream:
    """One open StreamingPull: its lease window and what it holds."""

    subscription: str
    lease_ms: int
    max_messages: int
    max_bytes: int
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    outstanding: dict[str, tuple[int, int]] = field(default_factory=dict)  # ack_id -> (until, size)
    outstanding_bytes: int = 0
    exactly_once: bool = False
    confirmations: list[Any] = field(default_factory=list)  # responses owed to the client
    # The subscription's delivery policy as of the stream's last look at it (every turn of
    # its loop): acks and modacks on the stream use it rather than reading it again.
    policy: DeliveryPolicy = field(default_factory=DeliveryPolicy)

    def release(self, ack_ids: list[str] | Any) -> None:
        for ack_id in ack_ids:
            held = self.outstanding.pop(ack_id, None)
            if held is not None:
                self.outstanding_bytes -= held[1]
        self.wakeup.set()

    def extend(self, ack_ids: list[str] | Any, until_ms: int) -> None:
        for ack_id in ack_ids:
            held = self.outstanding.get(ack_id)
            if held is not None:
                self.outstanding[ack_id] = (until_ms, held[1])

    def expire(self, now: int) -> None:
        """A lease that ran out is no longer held by this stream: the message is redelivered."""
        gone = [ack_id for ack_id, (until, _) in self.outstanding.items() if until <= now]
        if gone:
            self.release(gone)

    def window(self) -> tuple[int, int]:
        count = limits.MAX_MESSAGES_PER_STREAM_RESPONSE
        if self.max_messages > 0:
            count = min(count, self.max_messages - len(self.outstanding))
        size = self.max_bytes - self.outstanding_bytes if self.max_bytes > 0 else 0
        if self.max_bytes > 0 and size <= 0:
            count = 0
        return count, size


def _duration_s(d: Any) -> float:
    return d.seconds + d.nanos / 1e9


def delivery_policy(sub: Any) -> DeliveryPolicy:
    retry = None
    if sub.HasField("retry_policy"):
        policy = sub.retry_policy
        retry = RetryPolicy(int(_duration_s(policy.minimum_backoff) * 1000),
                            int(_duration_s(policy.maximum_backoff) * 1000))
    return DeliveryPolicy(retry=retry, ordered=sub.enable_message_ordering,
                          retain_acked=sub.retain_acked_messages,
                          exactly_once=sub.enable_exactly_once_delivery, filter=sub.filter)


def _check_labels(labels: Any) -> None:
    if len(labels) > 64:
        raise invalid_argument("A resource may have at most 64 labels.")
    for k, v in labels.items():
        if not k or len(k) > 63 or len(v) > 63:
            raise invalid_argument(f"Invalid label: {k}={v}")


def _check_mask(mask: field_mask_pb2.FieldMask, mutable: set[str], kind: str) -> list[str]:
    if not mask.paths:
        raise invalid_argument("The update_mask in the request must be set and non-empty.")
    for path in mask.paths:
        root = path.split(".")[0]
        if root not in mutable:
            raise invalid_argument(f"Invalid update_mask provided in the Update{kind} request: "
                                   f"the '{path}' field cannot be updated.")
    return list(mask.paths)


def _apply_mask(target: Message, source: Message, paths: list[str]) -> None:
    """Copy the masked top-level fields from source to target (unset in source: cleared)."""
    for path in paths:
        root = path.split(".")[0]
        fd = source.DESCRIPTOR.fields_by_name[root]
        target.ClearField(root)
        if fd.is_repeated:  # repeated fields and maps
            getattr(target, root).MergeFrom(getattr(source, root))
        elif fd.message_type is not None:
            if source.HasField(root):
                getattr(target, root).CopyFrom(getattr(source, root))
        else:
            setattr(target, root, getattr(source, root))


def unhonoured_settings(resource: Message, store: Store | None = None) -> list[str]:
    """Settings of a topic or subscription that are stored but not yet acted on (README lists them).

    Each is named in the log when set, so nobody mistakes "accepted" for "honoured".
    """
    found = []
    if isinstance(resource, Subscription):
        checks = {
            "enable_message_ordering (not on this storage backend)":
                resource.enable_message_ordering and store is not None
                and not store.ordered_delivery,
            "bigquery_config": resource.HasField("bigquery_config"),
            "cloud_storage_config": resource.HasField("cloud_storage_config"),
        }
    else:
        checks = {
            "kms_key_name": bool(resource.kms_key_name),
            "ingestion_data_source_settings": resource.HasField("ingestion_data_source_settings"),
        }
    for name, is_set in checks.items():
        if is_set:
            found.append(name)
    return found


def _note_unhonoured(resource: Message, store: Store | None = None) -> None:
    settings = unhonoured_settings(resource, store)
    if settings:
        log.warning("%s: stored but not yet honoured by this emulator: %s (see README)",
                    resource.name, ", ".join(settings))


class PubSubService:
    """Google's Publisher and Subscriber services over a Store."""

    def __init__(self, store: Store, clock: Callable[[], int] = now_ms) -> None:
        """`clock` gives the time in milliseconds (tests move it to exercise retention)."""
        self.store = store
        self.clock = clock
        store.set_listener(lambda topic: self._wake_all())  # publishes by other processes
        store.set_change_listener(self._changed_elsewhere)
        # When each subscription was last used here (expiration_policy), and last recorded.
        self._last_active: dict[str, int] = {}
        self._activity_written: dict[str, int] = {}
        self._streams: dict[str, set[_Stream]] = {}
        self._waiters: dict[str, set[asyncio.Event]] = {}
        # Called with a subscription's name whenever it is created, changed or deleted (the
        # push dispatcher follows push configs through it).
        self.subscription_listeners: list[Callable[[str], None]] = []
        # topic -> {subscription: filter predicate}, for subscriptions that have a filter
        self._filters: dict[str, dict[str, Callable[[Any], bool]]] = {}
        self.schemas = SchemaRegistry(store, clock)
        self.unary: dict[str, Callable[[Any], Awaitable[Message]]] = {
            name: getattr(self, _snake(name)) for name in _UNARY_METHODS
        }
        self.unary.update({name: getattr(self.schemas, _snake(name))
                           for name in SCHEMA_METHODS})

    # --- helpers ---------------------------------------------------------------------------
    async def _load(self, kind: str, name: str, message_type: Any, resource_id: str) -> Any:
        raw = await self.store.get_resource(kind, name)
        if raw is None:
            raise not_found(resource_id)
        return message_type.FromString(raw)

    async def _topic(self, name: str) -> Any:
        rn = names.topic(name)
        return await self._load(TOPICS, name, Topic, rn.id)

    async def _subscription(self, name: str) -> Any:
        rn = names.subscription(name)
        return await self._load(SUBSCRIPTIONS, name, Subscription, rn.id)

    async def _rewrite(self, kind: str, name: str, message_type: Any, resource_id: str,
                       change: Callable[[Any], Awaitable[None] | None],
                       topic: str | None = None) -> Any:
        """Read a resource, apply `change` (which may refuse with an ApiError), write it back.

        The write is a compare-and-set on the bytes read: if another call or process changed
        the resource meanwhile, it is read again and `change` applied on top, so neither
        change is lost.
        """
        for _ in range(limits.REWRITE_ATTEMPTS):
            raw = await self.store.get_resource(kind, name)
            if raw is None:
                raise not_found(resource_id)
            resource = message_type.FromString(raw)
            pending = change(resource)
            if pending is not None:
                await pending
            if await self.store.update_resource(kind, name, resource.SerializeToString(),
                                                topic=topic, expected=raw):
                return resource
        raise aborted(f"The resource was changed by other requests {limits.REWRITE_ATTEMPTS} "
                      f"times while this one applied; try again (resource={resource_id}).")

    def watch(self, subscription: str) -> asyncio.Event:
        """An event set whenever the subscription may have messages to deliver."""
        event = asyncio.Event()
        self._waiters.setdefault(subscription, set()).add(event)
        return event

    def unwatch(self, subscription: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(subscription)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                self._waiters.pop(subscription, None)

    def _changed(self, subscription: str) -> None:
        self._filters.clear()
        for listener in self.subscription_listeners:
            listener(subscription)

    def _changed_elsewhere(self, kind: str, name: str) -> None:
        """Another process sharing the store changed a resource: drop what is cached of it."""
        if kind == SUBSCRIPTIONS:
            self._changed(name)
            self._wake(name)  # its streams and waiting pulls look at it again
        elif kind == SCHEMAS:
            self.schemas.forget(name)

    def _wake(self, subscription: str) -> None:
        for stream in self._streams.get(subscription, ()):
            stream.wakeup.set()
        for event in self._waiters.get(subscription, ()):
            event.set()

    def _page(self, page_size: int) -> int:
        if page_size < 0:
            raise invalid_argument("page_size must not be negative.")
        return min(page_size or limits.DEFAULT_PAGE_SIZE, limits.MAX_PAGE_SIZE)

    async def _list(self, kind: str, request: Any, message_type: Any) -> tuple[list[Any], str]:
        """One page of a project's topics, subscriptions or snapshots, and the next token."""
        project = names.parse_project(request.project)
        try:
            page = await self.store.list_resources(kind, f"projects/{project}/{kind}/",
                                                   self._page(request.page_size),
                                                   request.page_token)
        except ValueError:
            raise invalid_argument("The page_token is invalid.") from None
        return [message_type.FromString(raw) for _, raw in page.items], page.next_token

    # --- Publisher -------------------------------------------------------------------------
    async def _validate_topic(self, topic: Any) -> None:
        _check_labels(topic.labels)
        await self.schemas.check_topic_settings(topic)
        if topic.HasField("message_retention_duration"):
            s = _duration_s(topic.message_retention_duration)
            if not limits.MIN_RETENTION_S <= s <= limits.MAX_TOPIC_RETENTION_S:
                raise invalid_argument(
                    "The value for message_retention_duration must be between 10 minutes and "
                    "31 days.")

    async def create_topic(self, request: Any) -> Any:
        rn = names.topic(request.name)
        topic = Topic()
        topic.CopyFrom(request)
        await self._validate_topic(topic)
        topic.state = t.Topic.State.ACTIVE
        if not await self.store.create_resource(TOPICS, topic.name, topic.SerializeToString()):
            raise already_exists(rn.id)
        log.info("created topic %s", topic.name)
        _note_unhonoured(topic)
        return topic

    async def update_topic(self, request: Any) -> Any:
        rn = names.topic(request.topic.name)

        async def change(topic: Any) -> None:  # (after the read: NOT_FOUND before a bad mask)
            paths = _check_mask(request.update_mask, _TOPIC_MUTABLE, "Topic")
            await self._validate_topic(request.topic)
            _apply_mask(topic, request.topic, paths)

        current = await self._rewrite(TOPICS, request.topic.name, Topic, rn.id, change)
        _note_unhonoured(current)
        return current

    async def publish(self, request: Any) -> Any:
        topic = await self._topic(request.topic)
        if not request.messages:
            raise invalid_argument("The request contains no messages.")
        if len(request.messages) > limits.MAX_MESSAGES_PER_PUBLISH:
            raise invalid_argument(
                f"The number of messages in the request exceeds the maximum allowed "
                f"({limits.MAX_MESSAGES_PER_PUBLISH}).")
        if request.ByteSize() > limits.MAX_REQUEST_BYTES:
            raise invalid_argument(
                f"The value for request_size is too large. You passed {request.ByteSize()} "
                f"bytes in the request, but the maximum value is {limits.MAX_REQUEST_BYTES}.")
        raws = []
        for message in request.messages:
            if not message.data and not message.attributes:
                raise invalid_argument(
                    "Some messages are empty. A message must contain data or at least one "
                    "attribute.")
            if len(message.attributes) > limits.MAX_ATTRIBUTES:
                raise invalid_argument(
                    f"The message has {len(message.attributes)} attributes, more than the "
                    f"maximum of {limits.MAX_ATTRIBUTES}.")
            for key, value in message.attributes.items():
                if not key or len(key.encode()) > limits.MAX_ATTRIBUTE_KEY_BYTES:
                    raise invalid_argument(
                        f"The attribute key is empty or longer than "
                        f"{limits.MAX_ATTRIBUTE_KEY_BYTES} bytes: {key[:64]!r}.")
                if key.startswith("goog"):
                    raise invalid_argument(
                        f"The attribute key {key!r} is reserved (it starts with 'goog').")
                if len(value.encode()) > limits.MAX_ATTRIBUTE_VALUE_BYTES:
                    raise invalid_argument(
                        f"The value of attribute {key!r} is longer than "
                        f"{limits.MAX_ATTRIBUTE_VALUE_BYTES} bytes.")
            if len(message.ordering_key.encode()) > limits.MAX_ORDERING_KEY_BYTES:
                raise invalid_argument(
                    f"The ordering key is longer than {limits.MAX_ORDERING_KEY_BYTES} bytes.")
            raws.append(message.SerializeToString())
        if topic.HasField("schema_settings"):
            raws = await self.schemas.validate_messages(topic, request.messages) or raws
        skip = None
        filters = await self._topic_filters(request.topic)
        if filters:
            skip = {sub: {i for i, m in enumerate(request.messages) if not accepts(m.attributes)}
                    for sub, accepts in filters.items()}
        keys = [m.ordering_key for m in request.messages]
        ids = await self.store.publish(request.topic, raws, self.clock(), skip,
                                       keys if any(keys) else None,
                                       retain=topic.HasField("message_retention_duration"))
        self._wake_all()
        return t.PublishResponse.pb()(message_ids=ids)

    async def _topic_filters(self, topic: str) -> dict[str, Callable[[Any], bool]]:
        cached = self._filters.get(topic)
        if cached is None:
            cached = {}
            for name, raw in (await self.store.list_by_topic(SUBSCRIPTIONS, topic, 0, "")).items:
                sub = Subscription.FromString(raw)
                if sub.filter:
                    cached[name] = compile_filter(sub.filter)
            self._filters[topic] = cached
        return cached

    async def get_topic(self, request: Any) -> Any:
        return await self._topic(request.topic)

    async def list_topics(self, request: Any) -> Any:
        topics, token = await self._list(TOPICS, request, Topic)
        return t.ListTopicsResponse.pb()(topics=topics, next_page_token=token)

    async def _by_topic(self, kind: str, request: Any) -> Any:
        await self._topic(request.topic)
        try:
            return await self.store.list_by_topic(kind, request.topic,
                                                  self._page(request.page_size),
                                                  request.page_token)
        except ValueError:
            raise invalid_argument("The page_token is invalid.") from None

    async def list_topic_subscriptions(self, request: Any) -> Any:
        page = await self._by_topic(SUBSCRIPTIONS, request)
        return t.ListTopicSubscriptionsResponse.pb()(
            subscriptions=[name for name, _ in page.items], next_page_token=page.next_token)

    async def list_topic_snapshots(self, request: Any) -> Any:
        page = await self._by_topic(SNAPSHOTS, request)
        return t.ListTopicSnapshotsResponse.pb()(
            snapshots=[name for name, _ in page.items], next_page_token=page.next_token)

    async def delete_topic(self, request: Any) -> Any:
        await self._topic(request.topic)
        # Google keeps the topic's subscriptions, pointing at "_deleted-topic_".
        page = await self.store.list_by_topic(SUBSCRIPTIONS, request.topic, 0, "")

        def point_at_deleted_topic(sub: Any) -> None:
            sub.topic = names.DELETED_TOPIC

        for name, _ in page.items:
            try:
                await self._rewrite(SUBSCRIPTIONS, name, Subscription, name,
                                    point_at_deleted_topic, topic=names.DELETED_TOPIC)
            except ApiError as exc:
                if exc.status is not Status.NOT_FOUND:
                    raise
                continue  # deleted meanwhile
            self._changed(name)
        await self.store.delete_resource(TOPICS, request.topic)
        self._filters.clear()
        log.info("deleted topic %s (%d subscriptions detached)", request.topic, len(page.items))
        return empty_pb2.Empty()

    async def detach_subscription(self, request: Any) -> Any:
        rn = names.subscription(request.subscription)

        def detach(sub: Any) -> None:
            sub.detached = True

        sub = await self._rewrite(SUBSCRIPTIONS, request.subscription, Subscription, rn.id,
                                  detach, topic="")
        await self.store.purge(sub.name)
        self._wake(sub.name)
        self._changed(sub.name)
        log.info("detached subscription %s", sub.name)
        return t.DetachSubscriptionResponse.pb()()

    # --- Subscriber: resources -------------------------------------------------------------
    def _validate_subscription(self, sub: Any, creating: bool) -> None:
        if creating and sub.ack_deadline_seconds == 0:
            sub.ack_deadline_seconds = limits.DEFAULT_ACK_DEADLINE_S
        if not limits.MIN_ACK_DEADLINE_S <= sub.ack_deadline_seconds <= limits.MAX_ACK_DEADLINE_S:
            raise invalid_argument(
                f"Invalid ack_deadline_seconds: {sub.ack_deadline_seconds}. It must be between "
                f"{limits.MIN_ACK_DEADLINE_S} and {limits.MAX_ACK_DEADLINE_S} seconds.")
        _check_labels(sub.labels)
        if creating and not sub.HasField("message_retention_duration"):
            sub.message_retention_duration.seconds = limits.DEFAULT_SUBSCRIPTION_RETENTION_S
        retention = _duration_s(sub.message_retention_duration)
        if not limits.MIN_RETENTION_S <= retention <= limits.MAX_SUBSCRIPTION_RETENTION_S:
            raise invalid_argument("The value for message_retention_duration must be between "
                                   "10 minutes and 31 days.")
        if creating and not sub.HasField("expiration_policy"):
            sub.expiration_policy.ttl.seconds = limits.DEFAULT_EXPIRATION_TTL_S
        if sub.expiration_policy.HasField("ttl"):
            ttl = _duration_s(sub.expiration_policy.ttl)
            if ttl < limits.MIN_EXPIRATION_TTL_S:
                raise invalid_argument("The minimum allowed value for expiration_policy.ttl is "
                                       "1 day.")
        if sub.HasField("dead_letter_policy"):
            policy = sub.dead_letter_policy
            if policy.max_delivery_attempts == 0:
                policy.max_delivery_attempts = limits.DEFAULT_DELIVERY_ATTEMPTS
            if not (limits.MIN_DELIVERY_ATTEMPTS <= policy.max_delivery_attempts
                    <= limits.MAX_DELIVERY_ATTEMPTS):
                raise invalid_argument(
                    "max_delivery_attempts must be between 5 and 100.")
            if policy.dead_letter_topic:
                names.topic(policy.dead_letter_topic)
        if sub.HasField("retry_policy"):
            policy = sub.retry_policy
            if not policy.HasField("minimum_backoff"):
                policy.minimum_backoff.seconds = limits.DEFAULT_MIN_RETRY_BACKOFF_S
            if not policy.HasField("maximum_backoff"):
                policy.maximum_backoff.seconds = limits.DEFAULT_MAX_RETRY_BACKOFF_S
            low, high = _duration_s(policy.minimum_backoff), _duration_s(policy.maximum_backoff)
            if not 0 <= low <= high <= limits.MAX_RETRY_BACKOFF_S:
                raise invalid_argument("The retry_policy backoffs must satisfy 0 <= "
                                       "minimum_backoff <= maximum_backoff <= 600s.")
        if sub.filter:
            try:
                compile_filter(sub.filter)
            except FilterError as exc:
                raise invalid_argument(str(exc)) from None
        endpoint = sub.push_config.push_endpoint
        if endpoint and not endpoint.startswith(("http://", "https://")):
            raise invalid_argument(f"Invalid push_endpoint given: {endpoint}")

    async def create_subscription(self, request: Any) -> Any:
        rn = names.subscription(request.name)
        sub = Subscription()
        sub.CopyFrom(request)
        if not sub.topic:
            raise invalid_argument("The topic of the subscription must be set.")
        if sub.topic != names.DELETED_TOPIC:
            topic_rn = names.topic(sub.topic)
            if await self.store.get_resource(TOPICS, sub.topic) is None:
                raise not_found(topic_rn.id)
        self._validate_subscription(sub, creating=True)
        sub.state = t.Subscription.State.ACTIVE
        if not await self.store.create_resource(SUBSCRIPTIONS, sub.name, sub.SerializeToString(),
                                                topic=sub.topic):
            raise already_exists(rn.id)
        self._changed(sub.name)
        log.info("created subscription %s on %s", sub.name, sub.topic)
        _note_unhonoured(sub, self.store)
        return sub

    async def get_subscription(self, request: Any) -> Any:
        return await self._subscription(request.subscription)

    async def update_subscription(self, request: Any) -> Any:
        rn = names.subscription(request.subscription.name)

        def change(sub: Any) -> None:  # (after the read: NOT_FOUND before a bad mask)
            paths = _check_mask(request.update_mask, _SUBSCRIPTION_MUTABLE, "Subscription")
            _apply_mask(sub, request.subscription, paths)
            self._validate_subscription(sub, creating=False)

        updated = await self._rewrite(SUBSCRIPTIONS, request.subscription.name, Subscription,
                                      rn.id, change)
        self._changed(updated.name)
        _note_unhonoured(updated, self.store)
        return updated

    async def list_subscriptions(self, request: Any) -> Any:
        subscriptions, token = await self._list(SUBSCRIPTIONS, request, Subscription)
        return t.ListSubscriptionsResponse.pb()(subscriptions=subscriptions,
                                                next_page_token=token)

    async def delete_subscription(self, request: Any) -> Any:
        rn = names.subscription(request.subscription)
        if not await self.store.delete_resource(SUBSCRIPTIONS, request.subscription):
            raise not_found(rn.id)
        await self.store.delete_resource(ACTIVITY, request.subscription)
        self._last_active.pop(request.subscription, None)
        self._activity_written.pop(request.subscription, None)
        self._wake(request.subscription)
        self._changed(request.subscription)
        log.info("deleted subscription %s", request.subscription)
        return empty_pb2.Empty()

    async def modify_push_config(self, request: Any) -> Any:
        rn = names.subscription(request.subscription)

        def change(sub: Any) -> None:
            sub.push_config.CopyFrom(request.push_config)
            self._validate_subscription(sub, creating=False)

        await self._rewrite(SUBSCRIPTIONS, request.subscription, Subscription, rn.id, change)
        self._changed(request.subscription)
        return empty_pb2.Empty()

    # --- Subscriber: delivery --------------------------------------------------------------
    def _check_ack_ids(self, ack_ids: Any) -> None:
        if not ack_ids:
            raise invalid_argument("No ack_ids were provided.")

    def _leases(self, subscription: str) -> set[_Stream]:
        return self._streams.get(subscription, set())

    async def acknowledge(self, request: Any) -> Any:
        sub = await self._subscription(request.subscription)
        self._check_ack_ids(request.ack_ids)
        await self._acknowledge(sub.name, list(request.ack_ids), policy=delivery_policy(sub))
        return empty_pb2.Empty()

    async def _touch(self, subscription: str) -> None:
        now = self.clock()
        self._last_active[subscription] = now
        if now - self._activity_written.get(subscription, -ACTIVITY_WRITE_EVERY_MS) \
                >= ACTIVITY_WRITE_EVERY_MS:
            self._activity_written[subscription] = now
            stamp = str(now).encode()
            if not await self.store.update_resource(ACTIVITY, subscription, stamp):
                await self.store.create_resource(ACTIVITY, subscription, stamp)

    async def _last_activity(self, subscription: str, now: int) -> int:
        """Last use here or, as recorded in the store, by any process sharing it."""
        recorded = await self.store.get_resource(ACTIVITY, subscription)
        local = self._last_active.setdefault(subscription, now)  # since this process started
        return max(local, int(recorded) if recorded else 0)

    async def _policy(self, subscription: str) -> DeliveryPolicy:
        raw = await self.store.get_resource(SUBSCRIPTIONS, subscription)
        return delivery_policy(Subscription.FromString(raw)) if raw is not None else \
            DeliveryPolicy()

    async def _acknowledge(self, subscription: str, ack_ids: list[str], strict: bool = True,
                           policy: DeliveryPolicy | None = None) -> list[str]:
        """Acknowledge; under exactly-once, returns the ids that failed (raises if `strict`)."""
        await self._touch(subscription)
        try:
            invalid = await self.store.acknowledge(subscription, ack_ids,
                                                   policy or await self._policy(subscription),
                                                   self.clock())
        except InvalidAckId as exc:
            raise invalid_argument(f"Invalid ack ID: {exc}") from None
        for stream in self._leases(subscription):
            stream.release(ack_ids)
        if invalid and strict:
            raise exactly_once_failure(invalid)
        return invalid

    async def modify_ack_deadline(self, request: Any) -> Any:
        sub = await self._subscription(request.subscription)
        self._check_ack_ids(request.ack_ids)
        await self._modify(sub.name, list(request.ack_ids), request.ack_deadline_seconds,
                           policy=delivery_policy(sub))
        return empty_pb2.Empty()

    async def _modify(self, subscription: str, ack_ids: list[str], seconds: int,
                      strict: bool = True, policy: DeliveryPolicy | None = None) -> list[str]:
        if not 0 <= seconds <= limits.MAX_MODIFY_DEADLINE_S:
            raise invalid_argument(
                f"Invalid ack deadline given: {seconds}. It must be between 0 and "
                f"{limits.MAX_MODIFY_DEADLINE_S} seconds.")
        now = self.clock()
        try:
            invalid = await self.store.modify_deadline(subscription, ack_ids, seconds * 1000,
                                                       now,
                                                       policy or await self._policy(subscription))
        except InvalidAckId as exc:
            raise invalid_argument(f"Invalid ack ID: {exc}") from None
        for stream in self._leases(subscription):
            if seconds == 0:
                stream.release(ack_ids)
            else:
                stream.extend(ack_ids, now + seconds * 1000)
        if seconds == 0:
            self._wake(subscription)
        if invalid and strict:
            raise exactly_once_failure(invalid)
        return invalid

    async def _receive(self, sub: Any, max_messages: int, lease_ms: int, max_bytes: int = 0,
                       ) -> tuple[list[Any], list[tuple[str, int]]]:
        await self._touch(sub.name)
        deliveries = await self.store.pull(sub.name, max_messages, lease_ms, self.clock(),
                                           max_bytes, delivery_policy(sub))
        dead_letter = sub.dead_letter_policy if sub.HasField("dead_letter_policy") else None
        received, leased = [], []
        for d in deliveries:
            rm = ReceivedMessage(ack_id=d.ack_id)
            rm.message.MergeFromString(d.message)
            if dead_letter is not None:
                if (d.delivery_attempt > dead_letter.max_delivery_attempts
                        and await self._dead_letter(sub, rm, d.delivery_attempt - 1)):
                    continue
                rm.delivery_attempt = d.delivery_attempt
            received.append(rm)
            leased.append((d.ack_id, d.size))
        return received, leased

    async def _dead_letter(self, sub: Any, received: Any, attempts: int) -> bool:
        """Forward a message that ran out of delivery attempts; ack it on `sub`."""
        topic = sub.dead_letter_policy.dead_letter_topic
        if await self.store.get_resource(TOPICS, topic) is None:
            log.warning("%s: dead-letter topic %s does not exist; delivering again",
                        sub.name, topic)
            return False
        source = received.message
        forwarded = PubsubMessage(data=source.data, attributes=source.attributes,
                                  ordering_key=source.ordering_key)
        sub_name = names.subscription(sub.name)
        forwarded.attributes.update({
            "CloudPubSubDeadLetterSourceDeliveryCount": str(attempts),
            "CloudPubSubDeadLetterSourceSubscription": sub_name.id,
            "CloudPubSubDeadLetterSourceSubscriptionProject": sub_name.project,
            "CloudPubSubDeadLetterSourceTopicPublishTime": source.publish_time.ToJsonString(),
        })
        await self.store.publish(topic, [forwarded.SerializeToString()], self.clock())
        await self.store.acknowledge(sub.name, [received.ack_id], delivery_policy(sub),
                                     self.clock())
        log.info("%s: message %s dead-lettered to %s after %d delivery attempts", sub.name,
                 source.message_id, topic, attempts)
        self._wake_all()
        return True

    def _wake_all(self) -> None:
        for sub in self._streams.keys() | self._waiters.keys():
            self._wake(sub)

    async def _deliverable(self, name: str) -> Any:
        sub = await self._subscription(name)
        if sub.detached:
            raise failed_precondition(f"Subscription {name} is detached.")
        return sub

    async def pull(self, request: Any) -> Any:
        sub = await self._deliverable(request.subscription)
        if request.max_messages <= 0:
            raise invalid_argument("max_messages must be greater than 0.")
        lease_ms = sub.ack_deadline_seconds * 1000
        received, _ = await self._receive(sub, request.max_messages, lease_ms)
        if not received and not request.return_immediately:
            event = self.watch(sub.name)
            deadline = time.monotonic() + limits.PULL_WAIT_S
            try:
                while not received:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    due = await self.store.next_due_ms(sub.name)
                    if due is not None:
                        remaining = min(remaining, max(0.0, (due - self.clock()) / 1000))
                    event.clear()
                    try:
                        await asyncio.wait_for(event.wait(), remaining)
                    except TimeoutError:
                        pass
                    sub = await self._deliverable(request.subscription)
                    received, _ = await self._receive(sub, request.max_messages, lease_ms)
            finally:
                self.unwatch(sub.name, event)
        return t.PullResponse.pb()(received_messages=received)

    async def streaming_pull(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The StreamingPull RPC: the first request opens it; later ones ack and modack."""
        first = await anext(requests, None)
        if first is None:
            return
        if not first.subscription:
            raise invalid_argument("The first StreamingPullRequest must name a subscription.")
        sub = await self._deliverable(first.subscription)
        if not (limits.MIN_ACK_DEADLINE_S <= first.stream_ack_deadline_seconds
                <= limits.MAX_ACK_DEADLINE_S):
            raise invalid_argument(
                f"Invalid stream_ack_deadline_seconds: {first.stream_ack_deadline_seconds}. It "
                f"must be between {limits.MIN_ACK_DEADLINE_S} and {limits.MAX_ACK_DEADLINE_S}.")
        stream = _Stream(sub.name, first.stream_ack_deadline_seconds * 1000,
                         first.max_outstanding_messages, first.max_outstanding_bytes,
                         exactly_once=sub.enable_exactly_once_delivery,
                         policy=delivery_policy(sub))
        self._streams.setdefault(sub.name, set()).add(stream)
        closed = asyncio.Event()
        failure: list[ApiError] = []

        async def read_requests(request: Any) -> None:
            try:
                while request is not None:
                    await self._stream_request(stream, request)
                    request = await anext(requests, None)
            except ApiError as exc:
                failure.append(exc)
            except (asyncio.CancelledError, Exception):  # the client went away
                pass
            finally:
                closed.set()
                stream.wakeup.set()

        reader = asyncio.ensure_future(read_requests(first))
        properties = t.StreamingPullResponse.SubscriptionProperties.pb()(
            exactly_once_delivery_enabled=sub.enable_exactly_once_delivery,
            message_ordering_enabled=sub.enable_message_ordering)
        log.debug("StreamingPull opened on %s", sub.name)
        try:
            while not closed.is_set():
                while stream.confirmations:
                    yield stream.confirmations.pop(0)
                now = self.clock()
                stream.expire(now)
                sub = await self._deliverable(stream.subscription)
                stream.policy = delivery_policy(sub)
                count, size = stream.window()
                received: list[Any] = []
                if count > 0:
                    received, leased = await self._receive(sub, count, stream.lease_ms, size)
                    for ack_id, nbytes in leased:
                        stream.outstanding[ack_id] = (now + stream.lease_ms, nbytes)
                        stream.outstanding_bytes += nbytes
                if received:
                    yield t.StreamingPullResponse.pb()(received_messages=received,
                                                       subscription_properties=properties)
                    continue
                stream.wakeup.clear()
                timeout = 30.0
                due = await self.store.next_due_ms(sub.name)
                if due is not None and count > 0:
                    timeout = min(timeout, max(0.001, (due - self.clock()) / 1000))
                if stream.outstanding:
                    soonest = min(until for until, _ in stream.outstanding.values())
                    timeout = min(timeout, max(0.001, (soonest - self.clock()) / 1000))
                try:
                    await asyncio.wait_for(stream.wakeup.wait(), timeout)
                except TimeoutError:
                    pass
            if failure:
                raise failure[0]
        finally:
            reader.cancel()
            streams = self._streams.get(stream.subscription)
            if streams is not None:
                streams.discard(stream)
                if not streams:
                    self._streams.pop(stream.subscription, None)
            log.debug("StreamingPull closed on %s", stream.subscription)

    async def _stream_request(self, stream: _Stream, request: Any) -> None:
        """Acks and modacks on the stream; with exactly-once, queue their confirmations."""
        confirm = stream.exactly_once
        Confirmation = t.StreamingPullResponse.AcknowledgeConfirmation.pb()
        ModConfirmation = t.StreamingPullResponse.ModifyAckDeadlineConfirmation.pb()
        if request.ack_ids:
            ack_ids = list(request.ack_ids)
            invalid = await self._acknowledge(stream.subscription, ack_ids, strict=False,
                                              policy=stream.policy)
            if confirm:
                bad = set(invalid)
                stream.confirmations.append(t.StreamingPullResponse.pb()(
                    acknowledge_confirmation=Confirmation(
                        ack_ids=[a for a in ack_ids if a not in bad], invalid_ack_ids=invalid)))
        if len(request.modify_deadline_seconds) != len(request.modify_deadline_ack_ids):
            raise invalid_argument("modify_deadline_seconds and modify_deadline_ack_ids must "
                                   "have the same length.")
        by_deadline: dict[int, list[str]] = {}
        for seconds, ack_id in zip(request.modify_deadline_seconds,
                                   request.modify_deadline_ack_ids, strict=True):
            by_deadline.setdefault(seconds, []).append(ack_id)
        for seconds, ack_ids in by_deadline.items():
            invalid = await self._modify(stream.subscription, ack_ids, seconds, strict=False,
                                         policy=stream.policy)
            if confirm:
                bad = set(invalid)
                stream.confirmations.append(t.StreamingPullResponse.pb()(
                    modify_ack_deadline_confirmation=ModConfirmation(
                        ack_ids=[a for a in ack_ids if a not in bad], invalid_ack_ids=invalid)))
        if stream.confirmations:
            stream.wakeup.set()
        if request.stream_ack_deadline_seconds:
            stream.lease_ms = request.stream_ack_deadline_seconds * 1000

    # --- snapshots and seek ----------------------------------------------------------------
    async def _snapshot(self, name: str) -> Any:
        rn = names.snapshot(name)
        return await self._load(SNAPSHOTS, name, Snapshot, rn.id)

    async def get_snapshot(self, request: Any) -> Any:
        return await self._snapshot(request.snapshot)

    async def list_snapshots(self, request: Any) -> Any:
        snapshots, token = await self._list(SNAPSHOTS, request, Snapshot)
        return t.ListSnapshotsResponse.pb()(snapshots=snapshots, next_page_token=token)

    async def create_snapshot(self, request: Any) -> Any:
        sub = await self._subscription(request.subscription)
        if not request.name:  # Google assigns a name in the subscription's project
            project = names.subscription(sub.name).project
            request.name = f"projects/{project}/snapshots/snapshot-{uuid.uuid4().hex[:20]}"
        rn = names.snapshot(request.name)
        if sub.topic == names.DELETED_TOPIC or sub.detached:
            raise failed_precondition("The subscription's topic was deleted or it is detached.")
        _check_labels(request.labels)
        snapshot = Snapshot(name=request.name, topic=sub.topic, labels=request.labels)
        snapshot.expire_time.FromMilliseconds(self.clock() + limits.SNAPSHOT_LIFETIME_S * 1000)
        if not await self.store.create_resource(SNAPSHOTS, snapshot.name,
                                                snapshot.SerializeToString(), topic=sub.topic):
            raise already_exists(rn.id)
        await self.store.save_snapshot(snapshot.name, sub.name)
        return snapshot

    async def update_snapshot(self, request: Any) -> Any:
        rn = names.snapshot(request.snapshot.name)

        def change(snapshot: Any) -> None:  # (after the read: NOT_FOUND before a bad mask)
            paths = _check_mask(request.update_mask, _SNAPSHOT_MUTABLE, "Snapshot")
            _check_labels(request.snapshot.labels)
            _apply_mask(snapshot, request.snapshot, paths)

        return await self._rewrite(SNAPSHOTS, request.snapshot.name, Snapshot, rn.id, change)

    async def delete_snapshot(self, request: Any) -> Any:
        rn = names.snapshot(request.snapshot)
        if not await self.store.delete_resource(SNAPSHOTS, request.snapshot):
            raise not_found(rn.id)
        return empty_pb2.Empty()

    async def seek(self, request: Any) -> Any:
        sub = await self._deliverable(request.subscription)
        target = request.WhichOneof("target")
        if target == "time":
            topic = (await self.store.get_resource(TOPICS, sub.topic)
                     if sub.topic != names.DELETED_TOPIC else None)
            from_topic = topic is not None and Topic.FromString(topic).HasField(
                "message_retention_duration")
            await self.store.seek_to_time(sub.name, request.time.ToMilliseconds(), self.clock(),
                                          delivery_policy(sub), from_topic)
        elif target == "snapshot":
            snapshot = await self._snapshot(request.snapshot)
            if snapshot.topic != sub.topic:
                raise failed_precondition(
                    "The snapshot's topic is not the subscription's topic.")
            await self.store.seek_to_snapshot(sub.name, snapshot.name, self.clock())
        else:
            raise invalid_argument("A seek target (time or snapshot) must be given.")
        for stream in self._leases(sub.name):
            stream.release(list(stream.outstanding))
        self._wake(sub.name)
        return t.SeekResponse.pb()()

    # --- housekeeping ----------------------------------------------------------------------
    async def sweep_forever(self, every_s: float = 5.0) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.sweep()
            except Exception:  # keep sweeping; the next round may succeed
                log.exception("sweep failed")

    async def sweep(self) -> None:
        """Enforce retention and expiration policies; reclaim what nothing needs."""
        now = self.clock()
        sub_retention: dict[str, int] = {}
        expired = []
        for name, raw in (await self.store.list_resources(SUBSCRIPTIONS, "projects/", 0, "")).items:
            sub = Subscription.FromString(raw)
            sub_retention[name] = int(_duration_s(sub.message_retention_duration) * 1000)
            if sub.expiration_policy.HasField("ttl"):
                ttl_ms = int(_duration_s(sub.expiration_policy.ttl) * 1000)
                last = await self._last_activity(name, now)
                if now - last > ttl_ms and name not in self._streams:
                    expired.append(name)
        topic_retention = {}
        for name, raw in (await self.store.list_resources(TOPICS, "projects/", 0, "")).items:
            topic = Topic.FromString(raw)
            if topic.HasField("message_retention_duration"):
                topic_retention[name] = int(_duration_s(topic.message_retention_duration) * 1000)
        for name, raw in (await self.store.list_resources(SNAPSHOTS, "projects/", 0, "")).items:
            if Snapshot.FromString(raw).expire_time.ToMilliseconds() <= now:
                log.info("snapshot %s expired", name)
                await self.store.delete_resource(SNAPSHOTS, name)
        for name in expired:
            log.info("subscription %s expired (inactive beyond its expiration policy)", name)
            await self.delete_subscription(t.DeleteSubscriptionRequest.pb()(subscription=name))
        gone = await self.store.sweep(now, RetentionRules(sub_retention, topic_retention))
        if gone:
            log.debug("swept %d messages nothing needs any more", gone)


def _snake(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


_UNARY_METHODS = (
    "CreateTopic", "UpdateTopic", "Publish", "GetTopic", "ListTopics", "ListTopicSubscriptions",
    "ListTopicSnapshots", "DeleteTopic", "DetachSubscription", "CreateSubscription",
    "GetSubscription", "UpdateSubscription", "ListSubscriptions", "DeleteSubscription",
    "ModifyAckDeadline", "Acknowledge", "Pull", "ModifyPushConfig", "GetSnapshot",
    "ListSnapshots", "CreateSnapshot", "UpdateSnapshot", "DeleteSnapshot", "Seek",
)

__all__ = ["PubSubService", "ApiError", "Status"]
