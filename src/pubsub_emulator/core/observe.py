"""What the core reports as it works, for metrics: an `Observer` it calls at each event.

The core calls these on its event loop, once per call with counts (never once per message of a
batch), so an implementation must be cheap and must not block; the default does nothing. The
emulator's Prometheus metrics (metrics.py) are one. Names are full resource names
(`projects/P/topics/T`, `projects/P/subscriptions/S`).
"""

from __future__ import annotations

from collections.abc import Sequence

from .errors import Status


class Observer:
    """Events of the core, each a no-op here (metrics.Metrics overrides them)."""

    def publish_answered(self, topic: str, status: Status | None) -> None:
        """A Publish request was answered: OK (None) or with this error."""

    def published(self, topic: str, messages: int, size: int) -> None:
        """`messages` messages of `size` bytes in all were stored for the topic."""

    def delivered(self, subscription: str, messages: int, first_latencies_ms: Sequence[int]
                  ) -> None:
        """`messages` messages were leased to a subscriber; for those delivered for the first
        time, how long after their publish time (milliseconds)."""

    def acked(self, subscription: str, messages: int) -> None:
        """Messages acknowledged (ack ids that counted: not the refused ones)."""

    def nacked(self, subscription: str, messages: int) -> None:
        """Messages nacked (a ModifyAckDeadline to 0 s, from any delivery path)."""

    def expired(self, subscription: str, messages: int) -> None:
        """Leases held by an open StreamingPull ran out without an ack or a modack."""

    def dead_lettered(self, subscription: str, messages: int) -> None:
        """Messages forwarded to the subscription's dead-letter topic."""

    def pushed(self, subscription: str, response_class: str, response_code: str,
               seconds: float) -> None:
        """A push POST ended: its response class (2xx, 4xx, 5xx... or `error`: no HTTP
        answer), code (the HTTP status, or what went wrong) and how long it took."""


NO_OBSERVER = Observer()
