"""The storage interface; every backend passes the same contract tests (test_store_contract).

Resources (topics, subscriptions, snapshots) are stored as serialized protos; the service core owns
their meaning. Messages and their per-subscription delivery state are the store's: it assigns
message ids, fans a published message out to the topic's subscriptions, leases messages to pullers
and forgets them once acknowledged.
"""

from __future__ import annotations

import abc
import base64
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class DeliveryPolicy:
    """How a subscription hands out messages: its retry policy and whether it keeps order."""

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
    # The subscription's filter. The service leaves out what it rejects when publishing
    # (`skip`); a store shared by several processes also applies it when delivering, since a
    # process may publish before it learns of a subscription another process just created.
    filter: str = ""


DEFAULT_POLICY = DeliveryPolicy()


@dataclass(frozen=True)
class RetentionRules:
    """What the sweeper enforces: retention per subscription and per topic (milliseconds)."""

    subscription_ms: Mapping[str, int] = field(default_factory=dict)
    topic_ms: Mapping[str, int] = field(default_factory=dict)  # only topics with retention


def encode_page_token(name: str) -> str:
    """The opaque page token of list calls: the last name of the page, encoded."""
    return base64.urlsafe_b64encode(name.encode()).decode()


def decode_page_token(token: str) -> str:
    """The name a page token stands for; ValueError for a token we did not issue."""
    try:
        return base64.b64decode(token.encode(), altchars=b"-_", validate=True).decode()
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError("invalid page token") from exc


class InvalidAckId(ValueError):
    """An ack id that this store never issued (malformed, or for another subscription)."""


@dataclass(frozen=True)
class Delivery:
    """One message leased to a puller."""

    ack_id: str
    message: bytes  # a serialized google.pubsub.v1.PubsubMessage, message_id and publish_time set
    delivery_attempt: int  # 1 on first delivery
    size: int  # bytes of data + attributes, for flow control


@dataclass(frozen=True)
class Page:
    items: list[tuple[str, bytes]]  # (name, serialized proto)
    next_token: str  # "" when this is the last page


class Store(abc.ABC):
    """Durable state behind the Pub/Sub API, used from one asyncio event loop.

    Methods are coroutines so that a store that talks to a server (NATS) lets the loop serve
    other calls while it waits; the embedded store never suspends, so each of its calls is
    atomic with respect to the others.
    """

    # Whether DeliveryPolicy.ordered is honoured (per-key ordering); the service logs it as a
    # setting stored but not honoured where it is not.
    ordered_delivery: bool = True

    # --- resources -------------------------------------------------------------------------
    @abc.abstractmethod
    async def create_resource(self, kind: str, name: str, proto: bytes, topic: str = "") -> bool:
        """Store a new topic/subscription/snapshot. False if the name exists.

        `topic` links a subscription or snapshot to its topic.
        """

    @abc.abstractmethod
    async def update_resource(self, kind: str, name: str, proto: bytes,
                              topic: str | None = None, expected: bytes | None = None) -> bool:
        """Replace a stored resource (and its topic link when given). False if absent.

        With `expected`, a compare-and-set: replaced only if the stored bytes are still those
        (False otherwise), so a read-modify-write does not overwrite a change made meanwhile.
        """

    @abc.abstractmethod
    async def get_resource(self, kind: str, name: str) -> bytes | None: ...

    @abc.abstractmethod
    async def delete_resource(self, kind: str, name: str) -> bool:
        """Delete a resource; for a subscription, its backlog too. False if absent."""

    @abc.abstractmethod
    async def list_resources(self, kind: str, prefix: str, page_size: int, page_token: str) -> Page:
        """Resources whose names start with `prefix`, in name order."""

    @abc.abstractmethod
    async def list_by_topic(self, kind: str, topic: str, page_size: int, page_token: str) -> Page:
        """Subscriptions or snapshots linked to `topic`, in name order."""

    # --- messages --------------------------------------------------------------------------
    @abc.abstractmethod
    async def publish(self, topic: str, messages: Sequence[bytes], now_ms: int,
                      skip: Mapping[str, set[int]] | None = None,
                      ordering_keys: Sequence[str] | None = None,
                      retain: bool = False) -> list[str]:
        """Append serialized PubsubMessages (without id and time) to a topic.

        Assigns each a message id and `now_ms` as publish time, and makes it available to every
        subscription of the topic that is not detached, except that `skip[subscription]` lists
        indexes of messages that subscription never receives (its filter rejects them).
        `ordering_keys` gives each message's ordering key ("" for none). `retain` keeps the
        messages even when no subscription takes them (the topic has message retention).
        Durable when it returns.
        """

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

        `policy` is the subscription's, as for pull (so is modify_deadline's).

        Raises InvalidAckId for ids it never issued. Under exactly_once, returns the ids whose
        lease is no longer current (expired, superseded, already acked), which change nothing.
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
        """Apply retention and reclaim messages nothing needs. Returns how many went."""

    def set_listener(self, callback: Callable[[str], None]) -> None:  # noqa: B027
        """Call `callback(topic)` (on the store's event loop) when another process publishes.

        Stores shared by several processes (NATS) implement it; a store only this process
        writes to has nothing to report.
        """

    def set_change_listener(self, callback: Callable[[str, str], None]) -> None:  # noqa: B027
        """Call `callback(kind, name)` when another process creates, updates or deletes a
        topic, subscription, snapshot or schema (stores shared by several processes)."""

    @abc.abstractmethod
    async def close(self) -> None: ...
