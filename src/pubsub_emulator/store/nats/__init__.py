"""A store on NATS JetStream (nats-server >= 2.9): several emulator processes share one state.

Layout (everything under a namespace, "pubsub" unless told otherwise; names in layout.py):
- resources: one stream `<NS>_RES` used as a key-value store (one message per subject, subject
  `<ns>.res.<kind>.<b64url(name)>`, JSON value {"t": topic link, "p": b64 bytes}); creation
  uses `Nats-Expected-Last-Subject-Sequence: 0`, so it is atomic across processes. Topic links
  have an index subject `<ns>.link.<kind>.<b64(topic)>.<b64(name)>` for list_by_topic
  (resources.py).
- a topic is a stream `<NS>_T_<hash>` (limits retention, bounded by max age; the sweeper purges
  what no consumer and no snapshot needs), subject `<ns>.msg.<hash>`; its description carries a
  random id prefix, so message ids (prefix * 10^12 + stream sequence) are unique across topics,
  processes and restarts (topics.py, messages.py, retention.py).
- a message larger than one NATS message (the server's max_payload, headers included) is stored
  as pieces in stream `<NS>_BLOB` (subjects `<ns>.blob.<hash>.m` and `.p`) and, in its topic
  stream, a reference: the message without its data, headers as usual plus `Ps-Pieces`
  (pieces.py; the sweeper reclaims pieces no message refers to).
- a subscription is a durable pull consumer `C_<hash>` (deliver new, explicit ack, max_deliver -1);
  the lease of a delivery is set with `-NAK {"delay": ...}` (see docs/nats.md).
- an ack id is the delivery's reply subject (without `$JS.ACK.`): any process can ack it
  (acks.py); records per message tell which delivery of a message is current (leases.py:
  exactly-once leases `<ns>.lease.<consumer>.<sseq>` in the resource stream, redeliveries
  `<ns>.okey.<consumer>.rd[.<bucket>]` in the ordering stream).
- per-key ordering (not native on 2.9): stream `<NS>_OKEY` holds a record per ordering key of
  an ordered subscription (`<ns>.okey.<consumer>.k.<hash>`) and its high mark
  (`<ns>.okey.<consumer>.hi`), each changed by compare-and-set (ordering.py; docs/nats.md).
  Deleting or recreating a consumer purges `<ns>.okey.<consumer>.>`.
- what subscriptions acknowledged above their ack floor, so seeks and snapshots are exact:
  stream `<NS>_ACKED` holds each consumer's ack log `<ns>.acked.<consumer>.log` (every ack call
  appends the sequences it acks), the skip set a seek gave a consumer
  (`<ns>.acked.<consumer>.sk[.<token>.<i>]`, acked silently when fetched) and snapshots' acked
  sets `<ns>.acked.snap.<token>.<i>` (acklog.py, retention.py).
- every publish also sends a core-NATS notification `<ns>.wake.<hash>` that other processes turn
  into wake-ups of their waiting pulls, and every change of a resource of an announced kind one
  on `<ns>.changed` (the listener hears both: set_listener).

JetStream's redelivery timers run on the server's clock: the `now_ms` arguments are used for
publish times and exactly-once checks only.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

from ..base import Store, StoreListener
from .client import JetStream
from .layout import Layout
from .messages import NatsMessageLog
from .pieces import Pieces
from .resources import NatsResourceTable
from .topics import Topics


class NatsStore(Store):
    """All state in NATS JetStream, shared by every emulator process using the same servers."""

    resources: NatsResourceTable
    messages: NatsMessageLog

    def __init__(self, servers: Sequence[str], replicas: int = 1, namespace: str = "pubsub"
                 ) -> None:
        """Use `await NatsStore.open(...)`: the store lives on the event loop that opened it."""
        self._layout = Layout(namespace)
        self._js = JetStream(servers, replicas, self._layout.resource_stream)
        self._origin = uuid.uuid4().hex  # this process, in notifications
        topics = Topics(self._js, self._layout)
        self._pieces = Pieces(self._js, self._layout)
        self.resources = NatsResourceTable(self._js, self._layout, topics, self._origin)
        self.messages = NatsMessageLog(self._js, self._layout, topics, self._origin,
                                       self._pieces)
        self._js.reconnected.append(self.resources.forget_all)
        self._js.reconnected.append(self._missed)
        self._listener: StoreListener | None = None

    @classmethod
    async def open(cls, servers: Sequence[str], replicas: int = 1, namespace: str = "pubsub",
                   connect_timeout: float = 10.0) -> NatsStore:
        """Connect to the servers and make sure the shared streams exist."""
        store = cls(servers, replicas, namespace)
        try:
            await asyncio.wait_for(store._start(connect_timeout), connect_timeout)
        except TimeoutError:
            await store.close()
            raise ConnectionError(
                f"no NATS server with JetStream answered within {connect_timeout:g} s (last "
                f"error: {store._js.last_error or 'none'})") from None
        except BaseException:
            await store.close()
            raise
        return store

    async def _start(self, timeout: float) -> None:
        await self._js.connect(timeout)
        await self._pieces.start()  # (refuses a server whose max_payload is too small)
        await self._js.subscribe(self._layout.wakes, self._on_wake)
        await self._js.subscribe(self._layout.changes, self._on_change)
        await self._js.ensure_stream(self._layout.resource_stream, self._layout.resource_subjects,
                                     max_msgs_per_subject=1)
        await self._js.ensure_stream(self._layout.order_stream, self._layout.order_subjects,
                                     max_msgs_per_subject=1)
        await self.messages.start()  # (the stream of what subscriptions acknowledged)

    # --- what other processes do --------------------------------------------------------------
    def set_listener(self, listener: StoreListener) -> None:
        self._listener = listener

    async def _on_change(self, msg: Any) -> None:
        heard = self.resources.heard(msg.data)  # (drops what is cached of it)
        if heard is not None and self._listener is not None:
            self._listener.changed(*heard)

    def _missed(self) -> None:
        # Wake-ups and change notices are core NATS: those sent while the connection was down
        # were lost, and open streams no longer look on their own for long (IDLE_LOOK_S).
        if self._listener is not None:
            self._listener.missed()

    async def _on_wake(self, msg: Any) -> None:
        origin, _, topic = msg.data.decode().partition("\n")
        if origin != self._origin and self._listener is not None:
            self._listener.published(topic)

    async def close(self) -> None:
        await self._js.close()


__all__ = ["NatsStore"]
