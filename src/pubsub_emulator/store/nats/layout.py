"""Where everything lives in JetStream: stream, subject and consumer names under a namespace.

These names are the stored layout (described in the package docstring): changing one makes
existing data unreadable.
"""

from __future__ import annotations

import base64
import hashlib
import re

TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")

# The store's own records, kept in the resource stream beside the resources under kinds of
# their own (not in `Kind`: only this store reads them).
SNAPSHOT_STATE = "_snapshot-state"  # a snapshot's recorded position
SUB_START = "_subscription-start"  # a subscription's first stream sequence
REDELIVERED = "_redelivered"  # a consumer's redelivered messages (see leases.Redeliveries)

# Topic links of a subscription that has no consumer: detached, or its topic deleted.
DETACHED = ("", "_deleted-topic_")

# Headers of a published message: the consumers that must not get it (their filter rejects it),
# its ordering key, publish time (ms) and size as published.
H_SKIP, H_KEY, H_TIME, H_SIZE = "Ps-Skip", "Ps-Key", "Ps-Time", "Ps-Size"


def b64(text: str) -> str:
    """A name as one subject token."""
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def unb64(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def name_hash(text: str) -> str:
    """A short token for a topic or subscription name in stream and consumer names."""
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class Layout:
    """The names of one namespace's streams, subjects and consumers."""

    def __init__(self, namespace: str) -> None:
        if not TOKEN.match(namespace):
            raise ValueError(f"invalid NATS namespace {namespace!r}")
        self.ns = namespace
        self._streams = namespace.upper().replace("-", "_")  # stream names' prefix
        self.resource_stream = f"{self._streams}_RES"
        self.order_stream = f"{self._streams}_OKEY"
        self.resource_subjects = [f"{namespace}.res.>", f"{namespace}.link.>",
                                  f"{namespace}.lease.>"]
        self.order_subjects = [f"{namespace}.okey.>"]
        self.message_subjects = f"{namespace}.msg.*"  # every topic stream's subject
        self.leases = f"{namespace}.lease.>"
        self.wakes = f"{namespace}.wake.*"
        self.changes = f"{namespace}.changed"

    # --- the resource stream: one message per subject -------------------------------------
    def key(self, kind: str, name: str) -> str:
        """The subject of a resource (or of one of the store's own records)."""
        kind_token = kind if TOKEN.match(kind) else "_" + b64(kind)
        return f"{self.ns}.res.{kind_token}.{b64(name)}"

    def keys(self, kind: str) -> str:
        """The subject pattern of every resource of a kind."""
        return self.key(kind, "x").rpartition(".")[0] + ".*"

    def link(self, kind: str, topic: str, name: str = "") -> str:
        """The index subject linking a resource to its topic; without name, their prefix."""
        base = f"{self.ns}.link.{b64(kind)}.{b64(topic)}"
        return f"{base}.{b64(name)}" if name else base

    def lease(self, consumer: str, sseq: int) -> str:
        """The exactly-once lease record of a consumer's message."""
        return f"{self.ns}.lease.{consumer}.{sseq}"

    # --- topics and subscriptions ---------------------------------------------------------
    def topic_stream(self, topic: str) -> str:
        return f"{self._streams}_T_{name_hash(topic)}"

    def topic_subject(self, topic: str) -> str:
        return f"{self.ns}.msg.{name_hash(topic)}"

    def consumer(self, subscription: str) -> str:
        return f"C_{name_hash(subscription)}"

    def order_key(self, consumer: str) -> str:
        """The ordering record of a consumer (in the ordering stream)."""
        return f"{self.ns}.okey.{consumer}"

    def wake(self, topic: str) -> str:
        """The core-NATS subject telling other processes of a publish to the topic."""
        return f"{self.ns}.wake.{name_hash(topic)}"
