"""The storage interface: a compare-and-set resource table and a message log.

Every backend passes the same contract tests (tests/test_store_contract.py). A store keeps
resources (topics, subscriptions, snapshots, schemas...) as opaque bytes: the core owns their
meaning. Messages and their per-subscription delivery state are the store's: it assigns message
ids, fans a published message out to the topic's subscriptions, leases messages to pullers and
forgets them once acknowledged. A store never parses a resource or a message and never compiles
a filter: what it must know of them (a subscription's policy, a filter's verdict on a message,
retention) the core passes in as plain data or functions.

Errors a store raises across this seam are the ones declared here (StoreError and its kinds).
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from .. import protowire


class Kind(enum.Enum):
    """What a resource in the table is; the value is its stored spelling."""

    TOPIC = "topics"
    SUBSCRIPTION = "subscriptions"
    SNAPSHOT = "snapshots"
    SCHEMA = "schemas"
    # When a subscription was last used (its expiration policy), shared by every process.
    ACTIVITY = "activity"
    # The emulator's OIDC signing key (push tokens).
    SIGNING_KEY = "keys"
    # Service account keys' public halves (auth/keys.py): who may call the API.
    SERVICE_ACCOUNT_KEY = "serviceAccountKeys"
    # IAM policies (iam/policies.py), named by the resource they guard (a topic, subscription,
    # snapshot, schema, or `projects/P` for project-level grants).
    IAM_POLICY = "iamPolicies"
    # Which process pushes a push subscription, and the push state it hands over
    # (push/ownership.py), named as the subscription. Not announced: nothing caches it.
    PUSH_OWNER = "pushOwners"


# Kinds whose changes every process sharing a store must hear of (they cache them).
ANNOUNCED_KINDS = frozenset({Kind.TOPIC, Kind.SUBSCRIPTION, Kind.SNAPSHOT, Kind.SCHEMA,
                             Kind.SERVICE_ACCOUNT_KEY, Kind.IAM_POLICY})


# --- errors ------------------------------------------------------------------------------------
class StoreError(Exception):
    """Base of every error a store raises on purpose."""


class NotFound(StoreError, KeyError):
    """The subscription or snapshot a message-log call names does not exist (any more)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class InvalidAckId(StoreError, ValueError):
    """An ack id that this store never issued (malformed, or for another subscription)."""


class InvalidPageToken(StoreError, ValueError):
    """A page token this store did not issue."""


class StoreUnavailable(StoreError):
    """The backend cannot be reached now (a NATS server down); the caller may retry."""


class PayloadTooLarge(StoreError):
    """A message is larger than the backend accepts (a NATS server's max_payload)."""


# --- records -----------------------------------------------------------------------------------
class Resource(NamedTuple):
    name: str
    data: bytes  # the stored bytes, as the core wrote them


@dataclass(frozen=True)
class Page:
    items: list[Resource]
    next_token: str  # "" when this is the last page


class Delivery(NamedTuple):
    """One message leased to a puller (a tuple: thousands are made per pull)."""

    ack_id: str
    message: bytes  # a serialized google.pubsub.v1.PubsubMessage, message_id and publish_time set
    delivery_attempt: int  # 1 on first delivery
    size: int  # bytes of the message as published, for flow control
    # The message's publish time in ms, as stamped in `message` (the delivery latency metric
    # reads it on first deliveries without decoding the message).
    published_ms: int


@dataclass(frozen=True)
class Pending:
    """An unacknowledged message of a subscription, as peek sees it."""

    # serialized PubsubMessage, message_id and publish_time set (as Delivery.message)
    message: bytes
    delivery_attempt: int  # deliveries so far (0: never delivered)
    leased_until_ms: int | None  # a puller holds it until then; None: not leased now


@dataclass(frozen=True)
class RetryPolicy:
    """A subscription's retry policy: redelivery waits grow from minimum to maximum."""

    minimum_ms: int
    maximum_ms: int

    def delay_ms(self, attempt: int) -> int:
        """Delay before redelivering a message whose `attempt`-th delivery failed (attempt >= 1)."""
        if attempt < 1:
            return 0
        return min(self.maximum_ms, self.minimum_ms << min(attempt - 1, 32))


# A filter's verdict on a message: given the serialized PubsubMessage as published.
Accepts = Callable[[bytes], bool]


@dataclass(frozen=True)
class DeliveryPolicy:
    """How a subscription hands out messages, as far as the store must know."""

    retry: RetryPolicy | None = None
    # Per ordering key, in publish order: a key's message is not handed out while an earlier
    # one of the same key is leased or waiting out a backoff, and a nack makes the key's later
    # messages available again with it, so redelivery keeps the order.
    ordered: bool = False
    # Acknowledged messages stay (within retention) so a seek to an earlier time replays them.
    retain_acked: bool = False
    # Exactly-once delivery: an ack id is good only while its lease is current; acks and
    # modacks report the ids that were not.
    exactly_once: bool = False
    # The subscription's filter, None when it has none. The core leaves out what it rejects
    # when publishing (`skip`); a store shared by several processes also applies it when
    # delivering, since a process may publish before it learns of a subscription another
    # process just created.
    accepts: Accepts | None = None


DEFAULT_POLICY = DeliveryPolicy()


@dataclass(frozen=True)
class SubscriptionStats:
    """A subscription's backlog as metrics show it (MessageLog.stats)."""

    unacked: int  # messages not acknowledged: the backlog, outstanding ones included
    outstanding: int  # of those, delivered and not acked: leased, or waiting out a backoff
    oldest_unacked_ms: int | None  # publish time of the oldest unacked message (None: none)


@dataclass(frozen=True)
class RetentionRules:
    """What the sweeper enforces: retention per subscription and per topic (milliseconds)."""

    subscription_ms: Mapping[str, int] = field(default_factory=dict)
    topic_ms: Mapping[str, int] = field(default_factory=dict)  # only topics with retention
    # Subscriptions that keep acknowledged messages (retain_acked_messages) for their retention.
    retain_acked: frozenset[str] = frozenset()


def stamp(message: bytes, message_id: str, publish_ms: int) -> bytes:
    """The published message with the id and publish time the store assigned it.

    Protobuf encodings concatenate as a merge, so this appends the two fields to the bytes as
    published without decoding them (protowire.py).
    """
    return protowire.stamped(message, message_id, protowire.publish_stamp(publish_ms))


# --- the interface -----------------------------------------------------------------------------
class ResourceTable(abc.ABC):
    """Named resources as bytes, with a topic link for subscriptions and snapshots."""

    @abc.abstractmethod
    async def create(self, kind: Kind, name: str, data: bytes, topic: str = "") -> bool:
        """Store a new resource; False if the name exists. `topic` links it to its topic."""

    @abc.abstractmethod
    async def update(self, kind: Kind, name: str, data: bytes, topic: str | None = None,
                     expected: bytes | None = None) -> bool:
        """Replace a stored resource (and its topic link when given). False if absent.

        With `expected`, a compare-and-set: replaced only if the stored bytes are still those
        (False otherwise), so a read-modify-write does not overwrite a change made meanwhile.
        """

    @abc.abstractmethod
    async def get(self, kind: Kind, name: str) -> bytes | None: ...

    @abc.abstractmethod
    async def delete(self, kind: Kind, name: str) -> bool:
        """Delete a resource; a subscription's backlog and a snapshot's state go with it.

        False if absent. The deletion is visible at once and entirely (no call sees part of the
        backlog afterwards); a store may reclaim the storage it took later, in the background.
        """

    @abc.abstractmethod
    async def list_prefixed(self, kind: Kind, prefix: str, page_size: int,
                            page_token: str) -> Page:
        """Resources whose names start with `prefix`, in name order (page_size 0: all).

        InvalidPageToken for a token this store did not issue.
        """

    @abc.abstractmethod
    async def list_by_topic(self, kind: Kind, topic: str, page_size: int,
                            page_token: str) -> Page:
        """Subscriptions or snapshots linked to `topic`, in name order."""


class MessageLog(abc.ABC):
    """Published messages and each subscription's delivery state.

    Calls naming a subscription or snapshot that does not exist raise NotFound.
    """

    # True when a pull that returns fewer messages than asked (within the byte limit) left
    # none available at its `now_ms`: a StreamingPull then sleeps instead of pulling again at
    # once. A store whose pulls may come back short with more available leaves it False.
    short_pull_drains = False

    @abc.abstractmethod
    async def publish(self, topic: str, messages: Sequence[bytes], now_ms: int,
                      skip: Mapping[str, set[int]] | None = None,
                      ordering_keys: Sequence[str] | None = None,
                      retain: bool = False) -> list[str]:
        """Append serialized PubsubMessages (without id and time) to a topic.

        Assigns each a message id, unique within the topic forever, and `now_ms` as publish
        time, and makes it available to every subscription of the topic that is not
        detached, except that `skip[subscription]` lists indexes of messages that subscription
        never receives (its filter rejects them). `ordering_keys` gives each message's
        ordering key ("" for none). `retain` keeps the messages even when no subscription
        takes them (the topic has message retention). Durable when it returns.
        """

    async def publish_leased(self, topic: str, messages: Sequence[bytes], now_ms: int,
                             leases: Mapping[str, int], retain: bool = False
                             ) -> tuple[list[str], dict[str, list[Delivery]]]:
        """As `publish` (no skips, no ordering keys), and the copies of the subscriptions in
        `leases` are leased at once, first attempt, until `leases[subscription]` (ms): a
        StreamingPull open here sends them without reading them back (one commit per message
        instead of two). Returns the ids and the deliveries leased, by subscription. A store
        may lease fewer or none: what it does not return is available as after `publish`.
        This default leases none."""
        return await self.publish(topic, messages, now_ms, retain=retain), {}

    @abc.abstractmethod
    async def pull(self, subscription: str, max_messages: int, lease_ms: int, now_ms: int,
                   max_bytes: int = 0, policy: DeliveryPolicy = DEFAULT_POLICY) -> list[Delivery]:
        """Lease up to `max_messages` available messages (at least one even past `max_bytes`).

        With a retry policy, a lease that runs out makes the message available only after the
        policy's delay for that attempt.
        """

    @abc.abstractmethod
    async def acknowledge(self, subscription: str, ack_ids: Sequence[str],
                          policy: DeliveryPolicy = DEFAULT_POLICY, now_ms: int = 0) -> list[str]:
        """Forget acknowledged messages (or keep them, acked, under retain_acked).

        `policy` is the subscription's, as for pull (so is modify_deadline's). Raises
        InvalidAckId for ids it never issued. Under exactly_once, returns the ids whose lease
        is no longer current (expired, superseded, already acked), which change nothing.
        """

    @abc.abstractmethod
    async def modify_deadline(self, subscription: str, ack_ids: Sequence[str], deadline_ms: int,
                              now_ms: int, policy: DeliveryPolicy = DEFAULT_POLICY) -> list[str]:
        """Set the lease of still-current ack ids to end at now + deadline (0: a nack).

        A nack makes the message available now, or after the retry policy's delay. Under
        exactly_once, returns the ids whose lease is no longer current.
        """

    @abc.abstractmethod
    async def next_due_ms(self, subscription: str) -> int | None:
        """When the next message of the subscription becomes available (now or later)."""

    @abc.abstractmethod
    async def backlog(self, subscription: str) -> int:
        """Unacknowledged messages of the subscription."""

    async def stats(self, subscriptions: Sequence[str], now_ms: int
                    ) -> dict[str, SubscriptionStats]:
        """The backlog figures of the named subscriptions (those that do not exist are left
        out), for metrics: read at each scrape, so a store answers for all of them together
        as cheaply as it can. This default knows only the backlog; stores override it."""
        found = {}
        for name in subscriptions:
            try:
                found[name] = SubscriptionStats(await self.backlog(name), 0, None)
            except NotFound:
                continue
        return found

    @abc.abstractmethod
    async def peek(self, subscription: str, max_messages: int, now_ms: int) -> list[Pending]:
        """Up to `max_messages` unacknowledged messages of the subscription, oldest first, without
        changing anything: no lease, no delivery count, no ordering state. Raises NotFound."""

    @abc.abstractmethod
    async def purge(self, subscription: str) -> None:
        """Drop the subscription's backlog (detach)."""

    @abc.abstractmethod
    async def seek_to_time(self, subscription: str, time_ms: int, now_ms: int,
                           policy: DeliveryPolicy = DEFAULT_POLICY,
                           from_topic: bool = False) -> None:
        """Messages published before the time count as acked; the rest become available now.

        With retain_acked, acked messages kept since the time come back; `from_topic` replays
        every message the topic still retains from the time on.
        """

    @abc.abstractmethod
    async def save_snapshot(self, snapshot: str, subscription: str) -> None:
        """Record the subscription's unacked set under a snapshot name."""

    @abc.abstractmethod
    async def seek_to_snapshot(self, subscription: str, snapshot: str, now_ms: int) -> None:
        """Make the snapshot's unacked set, plus later messages still stored, the backlog."""

    @abc.abstractmethod
    async def sweep(self, now_ms: int, rules: RetentionRules | None = None) -> int:
        """Apply retention and reclaim messages nothing needs. Returns how many went.

        A store may do it in steps and serve other calls between them; every step leaves
        what any call needs (a backlog, a snapshot, a topic's retained messages) in place.
        """


class StoreListener(Protocol):
    """What a store shared by several processes reports of the others (on its event loop)."""

    def published(self, topic: str) -> None:
        """Another process published to `topic`."""

    def changed(self, kind: Kind, name: str) -> None:
        """Another process created, updated or deleted a resource of an announced kind."""

    def missed(self) -> None:
        """Reports may have been lost (the store's connection dropped and came back): whatever
        waits for one should look again."""


class Store(abc.ABC):
    """Durable state behind the Pub/Sub API, used from one asyncio event loop.

    Methods are coroutines so that a store that talks to a server (NATS) lets the loop serve
    other calls while it waits. The embedded store suspends only between the steps of a sweep
    and of its background reclaiming, so each of its calls' visible effect is atomic with
    respect to the others.
    """

    resources: ResourceTable
    messages: MessageLog

    def set_listener(self, listener: StoreListener) -> None:  # noqa: B027 - optional
        """Report what other processes do. A store only this process writes to has nothing
        to report, so the default ignores the listener."""

    @abc.abstractmethod
    async def close(self) -> None: ...
