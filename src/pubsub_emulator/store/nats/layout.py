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
REDELIVERED = "_redelivered"  # a former record of redeliveries (no longer written)

# Topic links of a subscription that has no consumer: detached, or its topic deleted.
DETACHED = ("", "_deleted-topic_")

# Headers of a published message: the consumers that must not get it (their filter rejects it),
# its ordering key, publish time (ms) and size as published; and, on a message stored as pieces
# (pieces.py), "<sha-256 of the message> <blob stream sequences of its pieces>".
H_SKIP, H_KEY, H_TIME, H_SIZE = "Ps-Skip", "Ps-Key", "Ps-Time", "Ps-Size"
H_PIECES = "Ps-Pieces"


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
        self.blob_stream = f"{self._streams}_BLOB"  # pieces of large messages (pieces.py)
        self.blob_subjects = [f"{namespace}.blob.>"]
        self.message_subjects = f"{namespace}.msg.*"  # every topic stream's subject
        self.leases = f"{namespace}.lease.>"
        self.wakes = f"{namespace}.wake.*"
        self.changes = f"{namespace}.changed"
        # what subscriptions acknowledged above their ack floor (acklog.py)
        self.acked_stream = f"{self._streams}_ACKED"
        self.acked_subjects = [f"{namespace}.acked.>"]

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

    def stream_hash(self, stream: str) -> str:
        """The topic hash of a topic stream's name (what topic_stream put after `_T_`)."""
        return stream[len(self._streams) + 3:]

    # --- the blob stream: large messages' pieces, by topic hash ----------------------------
    def blob_mark(self, topic_hash: str) -> str:
        """The subject of the empty mark written before each large message's pieces ("*": of
        every topic)."""
        return f"{self.ns}.blob.{topic_hash}.m"

    def blob_piece(self, topic_hash: str) -> str:
        """The subject of the pieces of the topic's large messages."""
        return f"{self.ns}.blob.{topic_hash}.p"

    def blob_all(self, topic_hash: str) -> str:
        return f"{self.ns}.blob.{topic_hash}.>"

    def consumer(self, subscription: str) -> str:
        return f"C_{name_hash(subscription)}"

    def order_key(self, consumer: str) -> str:
        """Every delivery record of a consumer in the ordering stream (a subject pattern: its
        ordering and redelivery records; purging it forgets them)."""
        return f"{self.ns}.okey.{consumer}.>"

    def order_mark(self, consumer: str) -> str:
        """The high mark of a consumer's ordering records (ordering.py)."""
        return f"{self.ns}.okey.{consumer}.hi"

    def order_record(self, consumer: str, key: str) -> str:
        """The ordering record of one ordering key of a consumer (ordering.py)."""
        return f"{self.ns}.okey.{consumer}.k.{name_hash(key)}"

    def order_releases(self, consumer: str) -> str:
        """Written whenever held-back messages of a consumer are sent back (ordering.py)."""
        return f"{self.ns}.okey.{consumer}.rel"

    def redeliveries(self, consumer: str, bucket: int | str | None = None) -> str:
        """A consumer's record of redeliveries: its summary, or one bucket of it (leases.py;
        consumer "*": every consumer's summary, bucket "*": every bucket)."""
        summary = f"{self.ns}.okey.{consumer}.rd"
        return summary if bucket is None else f"{summary}.{bucket}"

    def wake(self, topic: str) -> str:
        """The core-NATS subject telling other processes of a publish to the topic."""
        return f"{self.ns}.wake.{name_hash(topic)}"

    # --- the acked stream: acks above the ack floor, skip sets, snapshots' sets (acklog.py) --
    def ack_log(self, consumer: str) -> str:
        """A consumer's ack log (consumer "*": every consumer's)."""
        return f"{self.ns}.acked.{consumer}.log"

    def acked_all(self, consumer: str) -> str:
        """Everything of a consumer in the acked stream (its ack log and skip set)."""
        return f"{self.ns}.acked.{consumer}.>"

    def skip_mark(self, consumer: str) -> str:
        """The marker of a consumer's skip set (consumer "*": every consumer's)."""
        return f"{self.ns}.acked.{consumer}.sk"

    def skip_record(self, consumer: str, token: str, index: int | str) -> str:
        """A record of a consumer's skip set (index "*": all of them)."""
        return f"{self.ns}.acked.{consumer}.sk.{token}.{index}"

    def snapshot_record(self, token: str, index: int | str) -> str:
        """A record of a snapshot's acked set (token and index "*": every one)."""
        return f"{self.ns}.acked.snap.{token}.{index}"

    def leases_of(self, consumer: str) -> str:
        """Every exactly-once lease record of a consumer (a subject pattern)."""
        return f"{self.ns}.lease.{consumer}.*"
