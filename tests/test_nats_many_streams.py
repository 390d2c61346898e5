"""Thousands of open StreamingPulls on the NATS store, and what the sweeper costs per round.

Needs `nats-server` (apt-get install nats-server); without it these tests fail, saying so.

Opening thousands of StreamingPulls at once used to end hundreds of them CANCELLED before any
handler saw them: gRPC's server cancels calls waiting to be taken by the application past
1,000 of them (`grpc.server.max_pending_requests`), and the asyncio server takes one per turn
of its event loop, which the NATS store keeps busier than the embedded one.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from pubsub_emulator.store import Kind, RetentionRules
from pubsub_emulator.store.nats.layout import Layout
from store_helpers import SyncStore, msg
from support import EmulatorProcess, NatsServer

T = "projects/p/topics/t"
S = "projects/p/subscriptions/s"

SUBSCRIPTIONS = 40
STREAMS_PER_SUBSCRIPTION = 100  # each on a connection of its own per subscription
OPEN_TIMEOUT_S = 60.0


# --- thousands of streams opened at once ---------------------------------------------------------
class _Streams:
    """Raw gRPC (grpc.aio, as bench/fanout_bench.py): one connection per subscription, its
    streams on it."""

    def __init__(self, host: str) -> None:
        import grpc
        from google.pubsub_v1 import types

        self.t = types
        # grpc.use_local_subchannel_pool: each channel its own connection.
        self.channels = [grpc.aio.insecure_channel(host, options=[
            ("grpc.use_local_subchannel_pool", 1)]) for _ in range(SUBSCRIPTIONS)]
        run = uuid.uuid4().hex[:8]
        self.topic = f"projects/p/topics/many-{run}"
        self.subs = [f"projects/p/subscriptions/many-{run}-{i}" for i in range(SUBSCRIPTIONS)]
        self.calls: list[Any] = []

    def unary(self, channel: Any, method: str, request_type: Any, response_type: Any) -> Any:
        return channel.unary_unary(method, request_serializer=request_type.serialize,
                                   response_deserializer=response_type.deserialize)

    async def create(self) -> None:
        t, channel = self.t, self.channels[0]
        await self.unary(channel, "/google.pubsub.v1.Publisher/CreateTopic", t.Topic, t.Topic)(
            t.Topic(name=self.topic), timeout=30)
        create = self.unary(channel, "/google.pubsub.v1.Subscriber/CreateSubscription",
                            t.Subscription, t.Subscription)
        await asyncio.gather(*(create(t.Subscription(name=s, topic=self.topic,
                                                     ack_deadline_seconds=60), timeout=30)
                               for s in self.subs))

    async def open(self) -> None:
        """Every stream, as fast as the client can: one outstanding message each at most, so
        that a subscription's messages go one to each of its streams."""
        t = self.t
        for sub, channel in zip(self.subs, self.channels, strict=True):
            for _ in range(STREAMS_PER_SUBSCRIPTION):
                call = channel.stream_stream(
                    "/google.pubsub.v1.Subscriber/StreamingPull",
                    request_serializer=t.StreamingPullRequest.serialize,
                    response_deserializer=t.StreamingPullResponse.deserialize)()
                await call.write(t.StreamingPullRequest(subscription=sub,
                                                        stream_ack_deadline_seconds=60,
                                                        max_outstanding_messages=1))
                self.calls.append(call)

    async def publish(self, count: int) -> None:
        t = self.t
        publish = self.unary(self.channels[0], "/google.pubsub.v1.Publisher/Publish",
                             t.PublishRequest, t.PublishResponse)
        await publish(t.PublishRequest(topic=self.topic, messages=[
            t.PubsubMessage(data=b"%d" % i) for i in range(count)]), timeout=30)

    async def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for channel in self.channels:
            await channel.close()


async def _first_message(call: Any) -> None:
    """The stream's first message; AssertionError naming its status if it ended first."""
    import grpc

    try:
        while True:
            response = await call.read()
            if response is grpc.aio.EOF:
                raise AssertionError(f"a stream ended: {await call.code()} "
                                     f"{await call.details()!r}")
            if response.received_messages:
                return
    except grpc.aio.AioRpcError as exc:
        raise AssertionError(f"a stream ended: {exc.code()} {exc.details()!r}") from None


async def _every_stream_gets_a_message(host: str) -> None:
    streams = _Streams(host)
    try:
        await streams.create()
        await streams.open()
        await streams.publish(STREAMS_PER_SUBSCRIPTION)  # to each subscription: one per stream
        await asyncio.wait_for(asyncio.gather(*(_first_message(c) for c in streams.calls)),
                               OPEN_TIMEOUT_S)
    finally:
        await streams.close()


def test_four_thousand_streaming_pulls_opened_at_once_all_stay_open(tmp_path: Path) -> None:
    """4,000 StreamingPulls (40 subscriptions, 100 streams each) opened as fast as the client
    can: none is cancelled, and each gets one of its subscription's 100 messages."""
    nats = NatsServer(tmp_path / "js", name=None).start()
    try:
        with EmulatorProcess(extra_args=["--store", nats.url, "--log-level", "warning"]) as emu:
            asyncio.run(_every_stream_gets_a_message(emu.host))
    finally:
        nats.stop()


# --- the sweeper's round -------------------------------------------------------------------------
@pytest.fixture
def namespace() -> str:
    return "n" + uuid.uuid4().hex[:12]


@pytest.fixture
def store(nats_server, namespace):
    from pubsub_emulator.store.nats import NatsStore

    s = SyncStore(lambda: NatsStore.open([nats_server.url], namespace=namespace))
    s.resources.create(Kind.TOPIC, T, b"topic")
    s.resources.create(Kind.SUBSCRIPTION, S, b"sub", topic=T)
    yield s
    s.close()


async def _log_messages(url: str, layout: Layout, subscription: str) -> int:
    """How many messages the subscription's ack log holds (acklog.py)."""
    import nats

    nc = await nats.connect(url)
    try:
        subject = layout.ack_log(layout.consumer(subscription))
        answer = await nc.request(f"$JS.API.STREAM.INFO.{layout.acked_stream}",
                                  json.dumps({"subjects_filter": subject}).encode(), timeout=5)
        return int((json.loads(answer.data)["state"].get("subjects") or {}).get(subject, 0))
    finally:
        await nc.close()


def test_the_sweep_trims_an_ack_log_to_the_ack_floor(store, nats_server, namespace):
    """Acks above a stuck floor stay logged through a sweep; once the floor passes them, the
    sweep drops them (from the consumer as it listed it)."""
    layout = Layout(namespace)
    store.messages.publish(T, [msg(b"a"), msg(b"b"), msg(b"c")], 0)
    # (in stream order: an ack id is `<stream>.<consumer>.<delivered>.<stream sequence>...`)
    first, *rest = sorted(store.messages.pull(S, 10, 60_000, 0),
                          key=lambda d: int(d.ack_id.split(".")[3]))
    store.messages.acknowledge(S, [d.ack_id for d in rest])  # the floor stays below `first`
    logged = asyncio.run(_log_messages(nats_server.url, layout, S))
    assert logged == 1
    store.messages.sweep(1_000, RetentionRules(subscription_ms={S: 7 * 86_400_000}))
    assert asyncio.run(_log_messages(nats_server.url, layout, S)) == 1
    assert store.messages.backlog(S) == 1
    store.messages.acknowledge(S, [first.ack_id])  # the floor passes every logged ack
    store.messages.sweep(2_000, RetentionRules(subscription_ms={S: 7 * 86_400_000}))
    assert asyncio.run(_log_messages(nats_server.url, layout, S)) == 0
    assert store.messages.backlog(S) == 0
    assert store.messages.pull(S, 10, 60_000, 0) == []


def test_listing_every_resource_reads_what_the_pages_read(store):
    """A listing of every resource of a kind (the sweeper's, in one read) holds exactly what
    the pages hold: the latest data of each, none deleted, in name order."""
    names = [f"projects/p/topics/x{i:03d}" for i in range(150)]
    for name in names:
        store.resources.create(Kind.TOPIC, name, name.encode())
    store.resources.update(Kind.TOPIC, names[7], b"changed")
    store.resources.delete(Kind.TOPIC, names[8])
    everything = store.resources.list_prefixed(Kind.TOPIC, "projects/", 0, "")
    paged, token = [], ""
    while True:
        page = store.resources.list_prefixed(Kind.TOPIC, "projects/", 40, token)
        paged += page.items
        token = page.next_token
        if not token:
            break
    assert everything.next_token == ""
    assert everything.items == paged
    assert [r.name for r in everything.items] == sorted([T, *names[:8], *names[9:]])
    assert dict(everything.items)[names[7]] == b"changed"
    assert store.resources.list_prefixed(Kind.TOPIC, "projects/p/topics/x1", 0, "").items == \
        [r for r in paged if r.name.startswith("projects/p/topics/x1")]
