"""Peek: a subscription's unacknowledged messages, without changing their delivery.

Not a Pub/Sub RPC: the emulator's own, for browsing a backlog (the web console). It leases
nothing, counts no delivery and leaves ordering state alone, so a Pull afterwards gets exactly
what it would have got (store.MessageLog.peek). The subscription is checked as the RPCs check
it: INVALID_ARGUMENT for a malformed name, NOT_FOUND for one that does not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..store import Store
from .catalog import Catalog
from .errors import invalid_argument
from .model import PubsubMessage

DEFAULT_PEEK_MESSAGES = 10
MAX_PEEK_MESSAGES = 1000  # as many as one Pull returns at most


@dataclass(frozen=True)
class PeekedMessage:
    """An unacknowledged message of a subscription, as peek sees it."""

    # The raw protobuf google.pubsub.v1.PubsubMessage (core/model.py's PubsubMessage, the
    # class the core hands out in Pull responses), with message_id and publish_time set.
    message: Any
    delivery_attempt: int  # deliveries so far (0: never delivered)
    # A puller holds it until then (ms since the epoch); None: not leased now. On NATS only
    # known under exactly-once delivery (docs/nats.md, Peek).
    leased_until_ms: int | None


class Peeking:
    """PubSubService.peek (store errors are answered there, as for the RPCs)."""

    def __init__(self, store: Store, catalog: Catalog, clock: Callable[[], int]) -> None:
        self._store = store
        self._catalog = catalog
        self._clock = clock

    async def peek(self, subscription: str, max_messages: int = DEFAULT_PEEK_MESSAGES
                   ) -> list[PeekedMessage]:
        """Up to `max_messages` (1..1000) unacknowledged messages, oldest first."""
        await self._catalog.subscription(subscription)  # (the name's checks, NOT_FOUND)
        if not 1 <= max_messages <= MAX_PEEK_MESSAGES:
            raise invalid_argument(f"max_messages must be between 1 and {MAX_PEEK_MESSAGES} "
                                   f"(got {max_messages}).")
        pending = await self._store.messages.peek(subscription, max_messages, self._clock())
        return [PeekedMessage(PubsubMessage.FromString(item.message), item.delivery_attempt,
                              item.leased_until_ms) for item in pending]
