#!/usr/bin/env python3
"""The gRPC floor: the least a Python grpc.aio server can do for cpu_bench.py's workloads.

Run:  .venv/bin/python bench/grpc_floor.py --port P [--host 127.0.0.1]

This is a floor to measure against, not an emulator: no persistence, no validation, no
metrics, no logging, no ack deadlines (an unacked message is never redelivered), no publish
time, no ordering keys, no push. What is left is what any Pub/Sub server in Python pays per
call, whatever it does besides: grpc.aio's own cost of a unary call or a stream message, the
protobuf parsing the workloads cannot do without, and the asyncio wake-ups of delivery.

The server: grpc.aio with generic handlers, bytes in and bytes out (no (de)serializers: each
handler parses only what it needs with the protos' upb classes and writes its answer as
bytes), and the channel options of ours (pubsub_emulator.api.grpc_server.CHANNEL_OPTIONS).
  CreateTopic, CreateSubscription  the request itself is the answer; topic -> subscriptions
                     kept in a dict.
  Publish            message ids counting up from 1; each message encoded once as a
                     ReceivedMessage (ack id = message id) and appended to the deque of each
                     subscription of its topic; the open streams of those wake up.
  StreamingPull      the first request names the subscription; messages go out in
                     StreamingPullResponse batches while the stream's flow control
                     (max_outstanding_messages, counting its unacked ones) has room, at most
                     1,000 per response (as ours); otherwise it waits on an asyncio.Event.
                     ack_ids on the stream settle messages.
  Acknowledge        settles the ack ids (they free room on the stream they went to).
  ModifyAckDeadline, ModifyPushConfig  answer Empty and do nothing.
Anything else: UNIMPLEMENTED (gRPC's answer for a method nobody registered).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from google.pubsub_v1 import types

from pubsub_emulator.api.grpc_server import CHANNEL_OPTIONS

Topic = types.Topic.pb()
Subscription = types.Subscription.pb()
PublishRequest = types.PublishRequest.pb()
StreamingPullRequest = types.StreamingPullRequest.pb()
AcknowledgeRequest = types.AcknowledgeRequest.pb()
EMPTY = b""  # google.protobuf.Empty on the wire
MAX_PER_RESPONSE = 1000  # ours' limits.MAX_MESSAGES_PER_STREAM_RESPONSE


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(tag: int, value: bytes) -> bytes:
    """One length-delimited field (tag = field number << 3 | 2) on the wire."""
    return bytes((tag,)) + varint(len(value)) + value


def repeated_field_1(values: Iterable[bytes]) -> bytes:
    """A message whose only field is repeated field 1 (PublishResponse.message_ids,
    StreamingPullResponse.received_messages): framed by hand, no message object built."""
    return b"".join(field(0x0A, v) for v in values)


class Stream:
    """One open StreamingPull: how many of its deliveries are unacked, and its wake-up."""

    __slots__ = ("limit", "unacked", "wake")

    def __init__(self, limit: int) -> None:
        self.limit = limit or sys.maxsize  # 0: no flow control
        self.unacked = 0
        self.wake = asyncio.Event()

    def room(self) -> int:
        return min(self.limit - self.unacked, MAX_PER_RESPONSE)


class Sub:
    """A subscription: its backlog (ack id, encoded ReceivedMessage), its open streams, and
    which stream each delivered, unacked message went to."""

    __slots__ = ("backlog", "streams", "outstanding")

    def __init__(self) -> None:
        self.backlog: deque[tuple[str, bytes]] = deque()
        self.streams: list[Stream] = []
        self.outstanding: dict[str, Stream] = {}

    def take(self, stream: Stream) -> bytes | None:
        """The next StreamingPullResponse for `stream`, or None when it has nothing or no room."""
        count = min(stream.room(), len(self.backlog))
        if count <= 0:
            return None
        backlog, outstanding = self.backlog, self.outstanding
        batch = [backlog.popleft() for _ in range(count)]
        for ack_id, _ in batch:
            outstanding[ack_id] = stream
        stream.unacked += count
        return repeated_field_1(received for _, received in batch)

    def ack(self, ack_ids: Iterable[str]) -> None:
        for ack_id in ack_ids:
            stream = self.outstanding.pop(ack_id, None)
            if stream is not None:
                stream.unacked -= 1
                if self.backlog:
                    stream.wake.set()


class Floor:
    """The state (topics, subscriptions, the last message id) and the handlers."""

    def __init__(self) -> None:
        self.topics: dict[str, list[Sub]] = {}
        self.subs: dict[str, Sub] = {}
        self.last_id = 0

    async def create_topic(self, request: bytes, context: Any) -> bytes:
        self.topics.setdefault(Topic.FromString(request).name, [])
        return request

    async def create_subscription(self, request: bytes, context: Any) -> bytes:
        parsed = Subscription.FromString(request)
        sub = self.subs.setdefault(parsed.name, Sub())
        self.topics.setdefault(parsed.topic, []).append(sub)
        return request

    async def publish(self, request: bytes, context: Any) -> bytes:
        parsed = PublishRequest.FromString(request)
        subs = self.topics.get(parsed.topic, ())
        ids = []
        for message in parsed.messages:
            self.last_id += 1
            ids.append(message_id := str(self.last_id))
            message.message_id = message_id
            encoded_id = message_id.encode()
            # ReceivedMessage: ack_id (1) = the message id, message (2)
            received = field(0x0A, encoded_id) + field(0x12, message.SerializeToString())
            for sub in subs:
                sub.backlog.append((message_id, received))
        for sub in subs:
            for stream in sub.streams:
                stream.wake.set()
        return repeated_field_1(i.encode() for i in ids)

    async def acknowledge(self, request: bytes, context: Any) -> bytes:
        parsed = AcknowledgeRequest.FromString(request)
        if (sub := self.subs.get(parsed.subscription)) is not None:
            sub.ack(parsed.ack_ids)
        return EMPTY

    async def empty(self, request: bytes, context: Any) -> bytes:
        return EMPTY

    async def streaming_pull(self, requests: AsyncIterator[bytes],
                             context: Any) -> AsyncIterator[bytes]:
        first = StreamingPullRequest.FromString(await requests.__anext__())
        sub = self.subs.setdefault(first.subscription, Sub())
        stream = Stream(first.max_outstanding_messages)
        sub.streams.append(stream)
        sub.ack(first.ack_ids)
        reader = asyncio.ensure_future(self._read_acks(sub, requests))
        try:
            while True:
                response = sub.take(stream)
                if response is None:
                    stream.wake.clear()  # (no await since take(): no wake-up can be lost)
                    await stream.wake.wait()
                    continue
                yield response
        finally:
            reader.cancel()
            sub.streams.remove(stream)

    @staticmethod
    async def _read_acks(sub: Sub, requests: AsyncIterator[bytes]) -> None:
        async for request in requests:
            sub.ack(StreamingPullRequest.FromString(request).ack_ids)

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        unary = grpc.unary_unary_rpc_method_handler  # no (de)serializers: bytes in and out
        publisher = {"CreateTopic": unary(self.create_topic), "Publish": unary(self.publish)}
        subscriber = {
            "CreateSubscription": unary(self.create_subscription),
            "Acknowledge": unary(self.acknowledge),
            "ModifyAckDeadline": unary(self.empty),
            "ModifyPushConfig": unary(self.empty),
            "StreamingPull": grpc.stream_stream_rpc_method_handler(self.streaming_pull),
        }
        return [grpc.method_handlers_generic_handler("google.pubsub.v1.Publisher", publisher),
                grpc.method_handlers_generic_handler("google.pubsub.v1.Subscriber", subscriber)]


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(options=CHANNEL_OPTIONS)
    server.add_generic_rpc_handlers(Floor().handlers())
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot bind {host}:{port}")
    await server.start()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    await server.stop(0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
