"""The API's resource and message types (Google's generated protobuf classes) and time.

Resources are handled as the raw protobuf messages of google-cloud-pubsub's generated types,
so what the core stores and returns is byte-compatible with what Google's clients expect.
"""

from __future__ import annotations

import time
from typing import Any

from google.pubsub_v1 import types as t

Topic = t.Topic.pb()
Subscription = t.Subscription.pb()
Snapshot = t.Snapshot.pb()
PubsubMessage = t.PubsubMessage.pb()
ReceivedMessage = t.ReceivedMessage.pb()


def now_ms() -> int:
    """Wall-clock time in milliseconds: publish times, leases, retention."""
    return time.time_ns() // 1_000_000


def duration_s(duration: Any) -> float:
    """A google.protobuf.Duration in seconds."""
    return duration.seconds + duration.nanos / 1e9


def duration_ms(duration: Any) -> int:
    return int(duration_s(duration) * 1000)
