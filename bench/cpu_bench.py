#!/usr/bin/env python3
"""CPU per message (issue 17's harness): every server pinned to one core, a lean raw-gRPC load
generator pinned to the other, server CPU per message read from /proc, ours beside Google's.

Run:  .venv/bin/python bench/cpu_bench.py [--messages N] [--quick] [--skip-reference]
          [--skip-nats] [--skip-in-memory] [--skip-floor] [--timeout S] [--profile-dir DIR]
          [--acks unary|stream] [--receipt-modacks] [--skip-profile]

Pinning (a 2-core machine: one core each, so that server and load never fight):
  Each server is started fresh (free loopback port, temporary directory) under
  `taskset -c 0`: the affinity is inherited by every thread and child it makes (the JVM of
  Google's emulator sizes its pools for the one core it sees, as it would on a 1-core machine).
  For ours on NATS its own nats-server runs on core 0 too; its CPU is reported apart
  ("+N nats-server"). The load generator is a subprocess of this script under `taskset -c 1`
  (`cpu_bench.py _load SPEC`, one per workload, a fresh process each time); this
  orchestrating process keeps to core 1 too (sched_setaffinity), and so does py-spy. After
  each start the affinity of every thread of the server's process tree is read back from /proc
  and printed.

Servers: ours on the durable store (`pubsub-emulator start`), ours `--in-memory`, ours on NATS
  JetStream (`--store nats://...`, a nats-server -js of its own), Google's emulator (gcloud's
  cloud-pubsub-emulator, when installed), and "bare grpc.aio (floor)": bench/grpc_floor.py,
  the least a Python grpc.aio server can do for these workloads (bytes in and out, messages
  in deques, no persistence, validation or metrics; ours' channel options), so that what
  gRPC-Python costs by itself per call (an echo server here: some 260-380 µs of CPU per unary
  call) is seen beside what ours adds to it; it does not push (its push cells are "–").
  Started by bench.py's / tests/processes.py's helpers (the floor by FloorServer here).

The load generator: grpc.aio with the protos' upb classes (google.pubsub_v1.types X.pb()),
  every request serialized by this script (the channel sends bytes as they are), 4 channels,
  each its own connection (grpc.use_local_subchannel_pool).
  publish      N x 1 KiB (--messages, default 200,000) in Publish requests of 100 messages
               (the official client's default batch; 100 KiB < its 1 MB; it sends a batch
               every 10 ms or when full, so under load it sends full ones), one request built
               once and sent N/100 times, 32 calls in flight. Every response's message ids
               are counted: the figure is of messages the server acknowledged.
  receive+ack  N messages published first (as above, not timed) to a subscription, then 4
               StreamingPulls (one per channel; flow control 1,000 messages / 100 MiB, the
               official client's defaults; ack deadline 60 s). Acks batched as the official
               client's dispatcher does (100 ack ids or 10 ms, whichever first; under load that
               is one request per received batch), each batch a unary Acknowledge, as that
               client sends them (--acks stream: ack_ids on the stream instead). That client
               also sends a ModifyAckDeadline for each received batch ("receipt modack");
               --receipt-modacks adds it. Timed from the first stream opened to the N-th
               distinct message acked (its Acknowledge answered).
  latency      one StreamingPull open; one message per Publish at 1,000 msgs/s for 10 s
               (--latency-rate, --latency-seconds), the send time (perf_counter_ns, same
               process) in attribute `s`; receive - send, p50 and p99, timed from the first
               Publish to the last message acked (or 10 s after the last Publish: then marked
               `*`, with the Publishes and acks that failed counted). Publishes are sent on
               schedule whatever the answers (an open loop): a server that falls behind shows
               it as queueing. Server CPU per message here is the cost of one message per call,
               wake-ups included.
  batched      the same 1,000 msgs/s published as the official client publishes them
               (the issue's measure): a message joins the open batch when it is published, on
               schedule; the batch goes out 10 ms after its first message or at 100 messages,
               so about 10 messages per Publish every 10 ms. Each message carries its publish
               time and its batch's send time: receive - send (p50, p99) is what the server
               and delivery add; receive - publish adds the client's own batching wait (up to
               10 ms: no server can answer under it), shown beside.
  push         N messages published first to a pull subscription, then ModifyPushConfig turns
               it into a push subscription to an endpoint in the generator's process (core 1),
               answering 204 to every POST. The endpoint is a bare asyncio HTTP/1.1 protocol
               rather than aiohttp/http.server: it costs a few microseconds per request, so the
               endpoint is not the limit near the issue's 10,000 msgs/s. Timed from
               ModifyPushConfig to the N-th distinct message id received. At most
               --push-seconds (default 60) of pushing: a slower server gets the rate of what
               arrived, marked with `*` (Google's emulator pushes slowly).

Figures, per workload and server, over the timed window:
  msgs/s; server CPU per message (µs: user + system CPU of the server's process tree, from
  /proc, divided by the messages); server cores busy (CPU / wall time: near 1.00 means the
  server's core was saturated, which is what a throughput figure should mean here); client
  cores busy (the generator's own CPU / wall time: near 1.00 with the server well below means
  the generator was the limit, and the script says so under the table); "others" in the server
  cores cell: CPU that other processes took on core 0 meanwhile (/proc/stat's busy time of the
  core less the servers'), shown from 0.05 up: on a shared machine taskset keeps the server on
  its core, not everything else off it. The official Python client's figures, what users
  see, are bench.py's (the first step of `make bench`): not repeated here.

Profile: with the durable server, publish, receive+ack and latency are run once more with
  `py-spy record -p PID -f raw --nonblocking -r 200 -s` attached over the timed window (py-spy
  on core 1, reading the server's memory without stopping it); the top 15 frames by self time
  (the sampled leaf; a call into C shows as the Python line that made it) and by inclusive
  time within pubsub_emulator are printed, as % of samples. The raw profiles stay in
  --profile-dir (default: a new temporary directory, printed at the end); `py-spy` raw files
  are folded stacks (flamegraph.pl reads them).

Output: one Markdown table (workload x metric rows; server columns; ours durable / Google's;
the issue's goals), notes, then the profile tops. --quick: 10,000 messages, 3 s of latency,
20 s of push at most (a smoke run of about a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import bench_nats_server, our_emulator  # noqa: E402
from fanout_bench import tree_cpu_seconds  # noqa: E402

from processes import (  # noqa: E402
    VENV_BIN,
    ReferenceEmulator,
    ServerProcess,
    free_port,
    nats_server_path,
    reference_emulator_path,
    tcp_open,
    wait_for,
)

PROJECT = "cpu-bench"
SERVER_CORE = "0"
LOAD_CORE = "1"
SIZE = 1024
BATCH = 100  # the official client's default batch: 100 messages (1 MB, 10 ms)
BATCH_LATENCY_S = 0.010
CHANNELS = 4
PUBLISH_IN_FLIGHT = 32
STREAMS = 4
FLOW_MESSAGES = 1000  # the official client's default FlowControl
FLOW_BYTES = 100 * 1024 * 1024
ACK_BATCH = 100  # the official client's dispatcher: 100 items or 10 ms, whichever comes first
ACK_LATENCY_S = 0.010
ACK_DEADLINE_S = 60
RPC_TIMEOUT_S = 60.0
PROFILE_RATE = 200
WORKLOADS = ("publish", "receive", "latency", "batched", "push")
PROFILED = ("publish", "receive", "latency")
TOP_FRAMES = 15


# --------------------------------------------------------------------------------------------
# the load generator (runs in `cpu_bench.py _load SPEC`, pinned to LOAD_CORE)
# --------------------------------------------------------------------------------------------


def protos():
    """The upb message classes of the Pub/Sub protos (no proto-plus wrapper on the hot path)."""
    from google.pubsub_v1 import types

    return types


class Wire:
    """Raw gRPC to one server over CHANNELS channels, each its own connection; requests go as
    the bytes this script serialized, responses come back as bytes."""

    def __init__(self, host: str) -> None:
        import grpc

        options = [("grpc.use_local_subchannel_pool", 1),
                   ("grpc.max_receive_message_length", -1),
                   ("grpc.max_send_message_length", -1)]
        self.channels = [grpc.aio.insecure_channel(host, options=options)
                         for _ in range(CHANNELS)]
        self._methods: dict[tuple[str, int], object] = {}

    def method(self, name: str, i: int = 0):
        """The unary method `Service/Method` on channel i (cached: built once per channel)."""
        key = (name, i % CHANNELS)
        if key not in self._methods:
            self._methods[key] = self.channels[key[1]].unary_unary(f"/google.pubsub.v1.{name}")
        return self._methods[key]

    async def call(self, name: str, request, i: int = 0) -> bytes:
        return await self.method(name, i)(request.SerializeToString(), timeout=RPC_TIMEOUT_S)

    def streaming_pull(self, i: int):
        return self.channels[i % CHANNELS].stream_stream(
            "/google.pubsub.v1.Subscriber/StreamingPull")()

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close()


async def create_topic(wire: Wire, kind: str, subscribe: bool = True) -> tuple[str, str]:
    """A fresh topic (and subscription, ack deadline 60 s, when `subscribe`): their names."""
    t = protos()
    tag = f"{kind}-{uuid.uuid4().hex[:8]}"
    topic = f"projects/{PROJECT}/topics/{tag}"
    subscription = f"projects/{PROJECT}/subscriptions/{tag}"
    await wire.call("Publisher/CreateTopic", t.Topic.pb()(name=topic))
    if subscribe:
        await wire.call("Subscriber/CreateSubscription", t.Subscription.pb()(
            name=subscription, topic=topic, ack_deadline_seconds=ACK_DEADLINE_S))
    return topic, subscription


async def publish_batches(wire: Wire, topic: str, n: int) -> int:
    """Publish n x SIZE bytes in requests of BATCH, PUBLISH_IN_FLIGHT calls at a time, the
    requests serialized once; how many message ids the server returned."""
    t = protos()
    message = t.PubsubMessage.pb()(data=b"x" * SIZE)

    def request(count: int) -> bytes:
        return t.PublishRequest.pb()(topic=topic, messages=[message] * count).SerializeToString()

    full = request(BATCH)
    requests = iter([full] * (n // BATCH) + ([request(n % BATCH)] if n % BATCH else []))
    parse = t.PublishResponse.pb().FromString
    published = 0

    async def sender(i: int) -> None:
        nonlocal published
        publish = wire.method("Publisher/Publish", i)
        for body in requests:  # one iterator shared by every sender (one thread: no race)
            response = await publish(body, timeout=RPC_TIMEOUT_S)
            published += len(parse(response).message_ids)  # (not `+= await ...`: a lost update)

    await asyncio.gather(*(sender(i) for i in range(PUBLISH_IN_FLIGHT)))
    return published


class Profiler:
    """py-spy on the server over the timed window (spec "profile": {"pid", "out"}), or nothing.
    It runs where this process runs (core 1) and does not stop the server (--nonblocking)."""

    def __init__(self, profile: dict | None) -> None:
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: Path | None = None

    def start(self) -> None:
        if not self.profile:
            return
        out = Path(self.profile["out"])
        self.log = out.with_suffix(".log")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [str(VENV_BIN / "py-spy"), "record", "-p", str(self.profile["pid"]), "-f", "raw",
                 "-o", str(out), "--nonblocking", "-r", str(PROFILE_RATE), "-s"],
                stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or b"Sampling" in self.log.read_bytes(),
                 timeout=30, message="py-spy to start sampling")
        if self.proc.poll() is not None:
            raise RuntimeError(f"py-spy exited: {self.log.read_text(errors='replace')[-500:]}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        self.proc.wait(60)


class Window:
    """The timed window: wall time, this process's CPU (the client), each server group's CPU
    (the process trees of its pids, from /proc), and the profiler around it."""

    def __init__(self, groups: dict[str, list[int]], profile: dict | None) -> None:
        self.groups = groups
        self.profiler = Profiler(profile)

    def _server_cpu(self) -> dict[str, float]:
        return {group: sum(tree_cpu_seconds(pid) for pid in pids)
                for group, pids in self.groups.items()}

    def start(self) -> None:
        self.profiler.start()
        self.server_before = self._server_cpu()
        self.core_before = core_busy_seconds(SERVER_CORE)
        self.client_before = time.process_time()
        self.started = time.perf_counter()

    def stop(self, messages: int, **extra: object) -> dict:
        seconds = time.perf_counter() - self.started
        client = time.process_time() - self.client_before
        after = self._server_cpu()
        core = core_busy_seconds(SERVER_CORE) - self.core_before
        self.profiler.stop()
        cpu = {g: after[g] - self.server_before[g] for g in after}
        # What else ran on the servers' core meanwhile (a shared machine: other work is not
        # pinned away from it), as CPU seconds.
        return {"messages": messages, "seconds": seconds, "client_cpu": client, "cpu": cpu,
                "others_cpu": max(0.0, core - sum(cpu.values())), **extra}


def core_busy_seconds(core: str) -> float:
    """CPU seconds core `core` has spent busy (not idle, not waiting on I/O), from /proc/stat."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            ticks = [int(x) for x in line.split()[1:]]
            return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")
    return 0.0


class StreamReceiver:
    """StreamingPulls on one subscription, acking as the official client does: the ack ids of
    a stream gathered and sent in one request once ACK_BATCH are waiting or ACK_LATENCY_S after
    the first (its dispatcher's 100 items / 10 ms: under load, one request per received batch),
    as a unary Acknowledge, or (--acks stream) on the stream; with receipt_modacks a
    ModifyAckDeadline for each received batch as it arrives. `done` once `want` distinct
    messages are acknowledged (their Acknowledge answered, or written to the stream)."""

    def __init__(self, wire: Wire, subscription: str, want: int, spec: dict,
                 on_batch: Callable[[list, int], None] | None = None) -> None:
        self.wire = wire
        self.subscription = subscription
        self.want = want
        self.on_stream = spec["acks"] == "stream"
        self.receipt_modacks = spec["receipt_modacks"]
        self.on_batch = on_batch
        self.acked: set[str] = set()
        self.duplicates = 0
        self.received = 0  # deliveries, duplicates included
        self.closing = False
        self.errors: list[str] = []
        self.done = asyncio.Event()
        self.calls: list = []
        self.tasks: set[asyncio.Task] = set()
        self.waiting: dict[int, tuple[list[str], list[str]]] = {}  # stream: ack ids, message ids
        self.timers: dict[int, asyncio.TimerHandle] = {}
        self.writing: dict[int, asyncio.Lock] = {}  # one writer at a time per stream

    async def open(self, streams: int) -> None:
        t = protos()
        first = t.StreamingPullRequest.pb()(
            subscription=self.subscription, stream_ack_deadline_seconds=ACK_DEADLINE_S,
            max_outstanding_messages=FLOW_MESSAGES, max_outstanding_bytes=FLOW_BYTES)
        for i in range(streams):
            call = self.wire.streaming_pull(i)
            await call.write(first.SerializeToString())
            self.calls.append(call)
            self.writing[i] = asyncio.Lock()
            self._spawn(self._read(i, call))

    def _spawn(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _read(self, i: int, call) -> None:
        import grpc

        parse = protos().StreamingPullResponse.pb().FromString
        try:
            while (raw := await call.read()) is not grpc.aio.EOF:
                received = parse(raw).received_messages
                if not received:
                    continue
                self.received += len(received)
                if self.on_batch:
                    self.on_batch(received, time.perf_counter_ns())
                ack_ids = [m.ack_id for m in received]
                if self.receipt_modacks:
                    self._spawn(self._modack(i, ack_ids))
                ids, message_ids = self.waiting.setdefault(i, ([], []))
                ids += ack_ids
                message_ids += [m.message.message_id for m in received]
                if len(ids) >= ACK_BATCH:
                    self._flush(i, call)
                elif i not in self.timers:
                    self.timers[i] = asyncio.get_running_loop().call_later(
                        ACK_LATENCY_S, self._flush, i, call)
        except grpc.aio.AioRpcError as e:
            if not self.closing:
                self.errors.append(f"stream {i}: {short_error(e)}")

    def _flush(self, i: int, call) -> None:
        if (timer := self.timers.pop(i, None)) is not None:
            timer.cancel()
        ack_ids, message_ids = self.waiting.pop(i, ([], []))
        if ack_ids:
            self._spawn(self._ack(i, call, ack_ids, message_ids))

    async def _modack(self, i: int, ack_ids: list[str]) -> None:
        request = protos().ModifyAckDeadlineRequest.pb()(
            subscription=self.subscription, ack_ids=ack_ids, ack_deadline_seconds=ACK_DEADLINE_S)
        try:
            await self.wire.call("Subscriber/ModifyAckDeadline", request, i)
        except Exception as e:  # noqa: BLE001 - counted and reported
            if not self.closing:
                self.errors.append(f"modack: {short_error(e)}")

    async def _ack(self, i: int, call, ack_ids: list[str], message_ids: list[str]) -> None:
        t = protos()
        try:
            if self.on_stream:
                async with self.writing[i]:
                    await call.write(t.StreamingPullRequest.pb()(
                        ack_ids=ack_ids).SerializeToString())
            else:
                await self.wire.call("Subscriber/Acknowledge", t.AcknowledgeRequest.pb()(
                    subscription=self.subscription, ack_ids=ack_ids), i)
        except Exception as e:  # noqa: BLE001 - counted and reported
            if not self.closing:  # (acks still in flight when the streams are cancelled)
                self.errors.append(f"ack: {short_error(e)}")
            return
        before = len(self.acked)
        self.acked.update(message_ids)
        self.duplicates += len(message_ids) - (len(self.acked) - before)
        if len(self.acked) >= self.want:
            self.done.set()

    async def close(self) -> None:
        self.closing = True
        for timer in self.timers.values():
            timer.cancel()
        for call in self.calls:
            call.cancel()
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def short_error(e: BaseException) -> str:
    """An RPC error as `CODE: details`, anything else as `Type: message` (one short line)."""
    code = getattr(e, "code", None)
    if callable(code):
        return f"{code().name}: {e.details()}"[:200]  # type: ignore[attr-defined]
    return f"{type(e).__name__}: {e}"[:200]


async def wait_done(event: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), seconds)
        return True
    except asyncio.TimeoutError:
        return False


async def load_publish(wire: Wire, spec: dict, window: Window) -> dict:
    topic, _ = await create_topic(wire, "publish", subscribe=False)
    window.start()
    published = await publish_batches(wire, topic, spec["n"])
    return window.stop(published)


async def load_receive(wire: Wire, spec: dict, window: Window) -> dict:
    n = spec["n"]
    topic, subscription = await create_topic(wire, "receive")
    if (published := await publish_batches(wire, topic, n)) != n:
        return {"error": f"backlog: {published} of {n} published"}
    receiver = StreamReceiver(wire, subscription, n, spec)
    window.start()
    await receiver.open(STREAMS)
    complete = await wait_done(receiver.done, spec["timeout"] - 30)
    result = window.stop(len(receiver.acked), complete=complete,
                         duplicates=receiver.duplicates, rpc_errors=len(receiver.errors),
                         errors=receiver.errors[:2])
    await receiver.close()
    return result


async def load_paced(wire: Wire, spec: dict, window: Window, batch_max: int,
                     batch_latency_s: float) -> dict:
    """Messages published on schedule at spec["rate"], one stream open. A message joins the
    open batch when it is published; the batch goes out `batch_latency_s` after its first
    message or at `batch_max` messages (1, 0: each message its own Publish, sent at once).
    Each message carries its publish time (`t`, when publish() would have been called) and
    its batch's send time (`s`): receive - send (p50_ms, p99_ms) is the server's and
    delivery's part; receive - publish (p50_publish_ms, ...) adds the client's batching."""
    t = protos()
    topic, subscription = await create_topic(wire, f"paced-{batch_max}")
    from_send: list[float] = []
    from_publish: list[float] = []

    def on_batch(received, now_ns: int) -> None:
        for m in received:
            stamps = m.message.attributes
            from_send.append((now_ns - int(stamps["s"])) / 1e6)
            from_publish.append((now_ns - int(stamps["t"])) / 1e6)

    total = int(spec["rate"] * spec["seconds"])
    receiver = StreamReceiver(wire, subscription, total + 1, spec, on_batch)
    await receiver.open(1)
    sends: set[asyncio.Task] = set()
    publish_errors: list[str] = []

    async def send(published_ns: list[int]) -> None:
        sent = str(time.perf_counter_ns())
        request = t.PublishRequest.pb()(topic=topic, messages=[
            t.PubsubMessage.pb()(data=b"x" * SIZE, attributes={"t": str(at), "s": sent})
            for at in published_ns])
        try:
            await wire.call("Publisher/Publish", request)
        except Exception as e:  # noqa: BLE001 - counted and reported
            publish_errors.append(f"publish: {short_error(e)}")

    def flush(batch: list[int]) -> None:
        task = asyncio.create_task(send(batch))
        sends.add(task)
        task.add_done_callback(sends.discard)

    await send([time.perf_counter_ns()])  # warm-up: the stream is open and registered once
    await wait_for_async(lambda: len(receiver.acked) >= 1, 30)  # its first message arrived
    from_send.clear()
    from_publish.clear()
    window.start()
    began, began_ns = time.perf_counter(), time.perf_counter_ns()
    batch: list[int] = []
    due_at = began  # when the open batch goes out
    i = 0
    while i < total or batch:
        next_message = began + i / spec["rate"] if i < total else math.inf
        wake = min(next_message, due_at) if batch else next_message
        if (delay := wake - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        now = time.perf_counter()
        while i < total and began + i / spec["rate"] <= now:
            if not batch:
                due_at = began + i / spec["rate"] + batch_latency_s
            batch.append(began_ns + round(i * 1e9 / spec["rate"]))
            i += 1
            if len(batch) == batch_max:
                flush(batch)
                batch = []
        if batch and due_at <= now:
            flush(batch)
            batch = []
    complete = await wait_done(receiver.done, 10)
    result = window.stop(len(receiver.acked) - 1, complete=complete, sent=total,
                         received=receiver.received - 1, duplicates=receiver.duplicates,
                         failed_publishes=len(publish_errors), rpc_errors=len(receiver.errors),
                         errors=(publish_errors + receiver.errors)[:2],
                         p50_ms=percentile(from_send, 50), p99_ms=percentile(from_send, 99),
                         p50_publish_ms=percentile(from_publish, 50),
                         p99_publish_ms=percentile(from_publish, 99))
    await receiver.close()
    return result


async def load_latency(wire: Wire, spec: dict, window: Window) -> dict:
    """One message per Publish, sent as it is published."""
    return await load_paced(wire, spec, window, 1, 0.0)


async def load_batched(wire: Wire, spec: dict, window: Window) -> dict:
    """Published as the official client publishes: batches of BATCH_LATENCY_S or BATCH."""
    return await load_paced(wire, spec, window, BATCH, BATCH_LATENCY_S)


async def wait_for_async(condition: Callable[[], bool], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("waited too long")
        await asyncio.sleep(0.01)


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))]


NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)")
MESSAGE_ID = re.compile(rb'"messageId"\s*:\s*"([^"]*)"')


def take_request(buffer: bytearray) -> bytes | None:
    """The body of the first complete HTTP/1.1 request in `buffer`, taken out of it; None while
    it is incomplete (Content-Length or chunked bodies: what a push client sends)."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).lower()
    start = end + 4
    if b"transfer-encoding: chunked" in head:
        return take_chunked(buffer, start)
    match = CONTENT_LENGTH.search(head)
    stop = start + (int(match.group(1)) if match else 0)
    if len(buffer) < stop:
        return None
    body = bytes(buffer[start:stop])
    del buffer[:stop]
    return body


def take_chunked(buffer: bytearray, at: int) -> bytes | None:
    body = bytearray()
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(bytes(buffer[at:line_end]).split(b";")[0], 16)
        if size == 0:
            if buffer.find(b"\r\n", line_end + 2) != line_end + 2:  # no trailers: "0\r\n\r\n"
                return None
            del buffer[:line_end + 4]
            return bytes(body)
        if len(buffer) < line_end + 2 + size + 2:
            return None
        body += buffer[line_end + 2:line_end + 2 + size]
        at = line_end + 2 + size + 2


class PushEndpoint:
    """A bare HTTP/1.1 server on 127.0.0.1 answering 204 to every request (keep-alive),
    counting the distinct message ids pushed to it; `done` once `want` have arrived."""

    def __init__(self, want: int) -> None:
        self.want = want
        self.seen: set[bytes] = set()
        self.requests = 0
        self.done = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        endpoint = self

        class Connection(asyncio.Protocol):
            def connection_made(self, transport) -> None:
                self.transport = transport
                self.buffer = bytearray()

            def data_received(self, data: bytes) -> None:
                self.buffer += data
                while (body := take_request(self.buffer)) is not None:
                    endpoint.got(body)
                    self.transport.write(NO_CONTENT)

        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(Connection, "127.0.0.1", 0, backlog=1024)
        return self.server.sockets[0].getsockname()[1]

    def got(self, body: bytes) -> None:
        self.requests += 1
        match = MESSAGE_ID.search(body)
        if match:
            self.seen.add(match.group(1))
        if len(self.seen) >= self.want:
            self.done.set()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def load_push(wire: Wire, spec: dict, window: Window) -> dict:
    t = protos()
    n = spec["n"]
    topic, subscription = await create_topic(wire, "push")
    if (published := await publish_batches(wire, topic, n)) != n:
        return {"error": f"backlog: {published} of {n} published"}
    endpoint = PushEndpoint(n)
    port = await endpoint.start()
    try:
        window.start()
        await wire.call("Subscriber/ModifyPushConfig", t.ModifyPushConfigRequest.pb()(
            subscription=subscription,
            push_config=t.PushConfig.pb()(push_endpoint=f"http://127.0.0.1:{port}/push")))
        complete = await wait_done(endpoint.done, min(spec["push_seconds"], spec["timeout"] - 30))
        return window.stop(len(endpoint.seen), complete=complete,
                           duplicates=endpoint.requests - len(endpoint.seen))
    finally:
        endpoint.close()


LOADS = {"publish": load_publish, "receive": load_receive, "latency": load_latency,
         "batched": load_batched, "push": load_push}


async def run_load(spec: dict) -> dict:
    wire = Wire(spec["host"])
    try:
        window = Window(spec["groups"], spec.get("profile"))
        return await LOADS[spec["workload"]](wire, spec, window)
    finally:
        await wire.close()


def load_main(spec_json: str) -> None:
    """The `_load` subcommand: one workload, its result as JSON on the last line of stdout."""
    try:
        result = asyncio.run(run_load(json.loads(spec_json)))
    except Exception as e:  # noqa: BLE001 - reported in the table
        result = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------
# the orchestrator: servers, pinning, one load subprocess per workload
# --------------------------------------------------------------------------------------------

S = TypeVar("S", bound=ServerProcess)


def pinned(server: S, core: str) -> S:
    """`server`, to be started under `taskset -c core` (its threads and children inherit it)."""
    base = type(server)

    class Pinned(base):  # type: ignore[valid-type, misc]
        @property
        def cmd(self) -> list[str]:
            return ["taskset", "-c", core, *super().cmd]

    server.__class__ = Pinned
    return server


def process_tree(root: int) -> set[int]:
    """`root` and every process below it (Linux /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(
                    (entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    below = {root}
    while grown := {pid for pid, ppid in parents.items() if ppid in below} - below:
        below |= grown
    return below


def tree_affinity(root: int) -> str:
    """'N threads on CPUS' for every thread of the process tree of `root` (Cpus_allowed_list)."""
    lists: Counter[str] = Counter()
    for pid in process_tree(root):
        for status in Path(f"/proc/{pid}/task").glob("*/status"):
            try:
                text = status.read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    lists[line.split(":", 1)[1].strip()] += 1
    return ", ".join(f"{count} threads on CPU {cpus}" for cpus, count in lists.items())


class FloorServer(ServerProcess):
    """bench/grpc_floor.py on a free loopback port, logging to work_dir/server.log; ready
    once its port accepts a TCP connection (grpc.aio listens only once started)."""

    name = "grpc-floor"

    def __init__(self, work_dir: Path) -> None:
        self.port = free_port()
        self.work_dir = work_dir
        self.log_path = work_dir / "server.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def cmd(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve().parent / "grpc_floor.py"),
                "--host", "127.0.0.1", "--port", str(self.port)]

    def start(self) -> FloorServer:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._launch()
        return self

    def _ready(self) -> bool:
        return tcp_open(self.port)


FLOOR_TITLE = "bare grpc.aio (floor)"
FLOOR_NOTE = (f"{FLOOR_TITLE}: bench/grpc_floor.py, a grpc.aio server that only keeps messages "
              "in memory and hands them out (no persistence, validation or metrics; no push). "
              "Its CPU per message is what gRPC-Python itself costs for the same calls on this "
              "machine: the floor under ours' figures, not a competitor.")


@dataclass
class Column:
    key: str
    title: str
    # The processes to start, in order; the last one is the Pub/Sub server, any before it its
    # store (nats-server), whose CPU is reported apart.
    processes: Callable[[Path], list[ServerProcess]]
    workloads: tuple[str, ...] = WORKLOADS  # those run; the others' cells are "–"


def columns_for(args: argparse.Namespace) -> tuple[list[Column], list[str]]:
    """The servers of this run, and a note for each one left out."""
    columns = [Column("durable", "ours (durable)", lambda d: [our_emulator("ours", d, [])])]
    notes: list[str] = []
    if not args.skip_in_memory:
        columns.append(Column("memory", "ours --in-memory",
                              lambda d: [our_emulator("ours-mem", d, ["--in-memory"])]))
    nats_bin = None if args.skip_nats else nats_server_path()
    if nats_bin:
        def on_nats(d: Path) -> list[ServerProcess]:
            nats = bench_nats_server(nats_bin, d / "nats")
            return [nats, our_emulator("ours-nats", d / "emulator", ["--store", nats.url])]

        columns.append(Column("nats", "ours on NATS", on_nats))
    else:
        notes.append("ours on NATS: " + ("skipped (--skip-nats)" if args.skip_nats
                                         else "nats-server not installed"))
    ref_bin = None if args.skip_reference else reference_emulator_path()
    if ref_bin:
        columns.append(Column("reference", "Google's emulator",
                              lambda d: [ReferenceEmulator(ref_bin, d / "ref")]))
    else:
        notes.append("Google's emulator: " + ("skipped (--skip-reference)" if args.skip_reference
                                              else "not installed (gcloud's pubsub-emulator)"))
    if args.skip_floor:
        notes.append(f"{FLOOR_TITLE}: skipped (--skip-floor)")
    else:
        columns.append(Column("floor", FLOOR_TITLE, lambda d: [FloorServer(d / "floor")],
                              tuple(w for w in WORKLOADS if w != "push")))
    return columns, notes


def load_spec(workload: str, host: str, groups: dict, args: argparse.Namespace,
              profile: dict | None = None) -> dict:
    return {"workload": workload, "host": host, "groups": groups, "n": args.messages,
            "timeout": args.timeout, "acks": args.acks, "receipt_modacks": args.receipt_modacks,
            "rate": args.latency_rate, "seconds": args.latency_seconds,
            "push_seconds": args.push_seconds, "profile": profile}


def run_load_process(spec: dict, timeout: float) -> dict:
    """One workload in a fresh generator process pinned to LOAD_CORE."""
    cmd = ["taskset", "-c", LOAD_CORE, sys.executable, str(Path(__file__).resolve()), "_load",
           json.dumps(spec)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    lines = done.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError):
        return {"error": f"generator exited {done.returncode}: {done.stderr.strip()[-300:]}"}


def summary(result: dict) -> str:
    """One progress line of a workload's result."""
    if "error" in result:
        return f"error: {result['error']}"
    parts = [f"{result['messages']:,} msgs in {result['seconds']:.2f} s "
             f"({result['messages'] / max(result['seconds'], 1e-9):,.0f}/s)"]
    parts += [f"{group} CPU {cpu:.2f} s" for group, cpu in result["cpu"].items() if cpu or
              group == "server"]
    parts.append(f"client CPU {result['client_cpu']:.2f} s")
    parts.append(f"others on core {SERVER_CORE} {result.get('others_cpu', 0.0):.2f} s")
    for key in ("p50_ms", "p99_ms"):
        if result.get(key) is not None:
            parts.append(f"{key[:3]} {result[key]:.2f} ms")
    if result.get("complete") is False:
        parts.append("INCOMPLETE")
    if result.get("duplicates"):
        parts.append(f"{result['duplicates']} duplicates")
    for key in ("failed_publishes", "rpc_errors"):
        if result.get(key):
            parts.append(f"{result[key]} {key.replace('_', ' ')}")
    if result.get("errors"):
        parts.append(f"first errors: {result['errors']}")
    return ", ".join(parts)


def run_column(column: Column, args: argparse.Namespace, profile_dir: Path) -> dict[str, dict]:
    """Every workload against one freshly started server; with the durable server, the
    profiled runs too (results "profile-WORKLOAD", one for each of PROFILED)."""
    results: dict[str, dict] = {}
    print(f"# {column.title}", flush=True)
    with tempfile.TemporaryDirectory(prefix="cpu-bench-") as tmp:
        started: list[ServerProcess] = []
        try:
            for process in column.processes(Path(tmp)):
                started.append(pinned(process, SERVER_CORE).start())
            server = started[-1]
            groups = {"server": [server.proc.pid], "store": [p.proc.pid for p in started[:-1]]}
            for process in started:
                print(f"  pinned: {process.name}: {tree_affinity(process.proc.pid)}", flush=True)
            for workload in column.workloads:
                spec = load_spec(workload, server.host, groups, args)
                results[workload] = run_load_process(spec, args.timeout)
                print(f"  {workload}: {summary(results[workload])}", flush=True)
            if column.key == "durable" and not args.skip_profile:
                for workload in PROFILED:
                    profile = {"pid": server.proc.pid,
                               "out": str(profile_dir / f"durable-{workload}.raw")}
                    spec = load_spec(workload, server.host, groups, args, profile)
                    results[f"profile-{workload}"] = run_load_process(spec, args.timeout)
                    print(f"  {workload} under py-spy: "
                          f"{summary(results[f'profile-{workload}'])}", flush=True)
        except Exception as e:  # noqa: BLE001 - reported in the table
            results["error"] = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
            print(f"  error: {results['error']['error']}", flush=True)
        finally:
            for process in reversed(started):
                process.stop()
    return results


# --------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    workload: str  # a key of WORKLOADS, or "both" (publish + receive)
    label: str
    metric: str  # rate | server_us | server_cores | client_cores | one of LATENCIES
    goal: str = ""


ROWS = [
    Row("publish", "publish: msgs/s", "rate", "≥ 60,000 (durable)"),
    Row("publish", "publish: server CPU µs/msg", "server_us"),
    Row("publish", "publish: server cores busy", "server_cores"),
    Row("publish", "publish: client cores busy", "client_cores"),
    Row("receive", "receive+ack: msgs/s", "rate", "≥ 40,000 (durable)"),
    Row("receive", "receive+ack: server CPU µs/msg", "server_us"),
    Row("receive", "receive+ack: server cores busy", "server_cores"),
    Row("receive", "receive+ack: client cores busy", "client_cores"),
    Row("both", "publish + receive+ack: server CPU µs/msg", "server_us",
        "≤ 35 (durable), ≤ 25 (in memory)"),
    Row("batched", "latency at 1,000/s, batched: p50 ms", "p50_ms", "≤ 2"),
    Row("batched", "latency at 1,000/s, batched: p99 ms", "p99_ms", "≤ 10"),
    Row("batched", "latency at 1,000/s, batched, from publish(): p50 ms", "p50_publish_ms"),
    Row("batched", "latency at 1,000/s, batched, from publish(): p99 ms", "p99_publish_ms"),
    Row("batched", "latency at 1,000/s, batched: server CPU µs/msg", "server_us"),
    Row("latency", "latency at 1,000/s, one per Publish: p50 ms", "p50_ms", "(≤ 2)"),
    Row("latency", "latency at 1,000/s, one per Publish: p99 ms", "p99_ms", "(≤ 10)"),
    Row("latency", "latency at 1,000/s, one per Publish: server CPU µs/msg", "server_us"),
    Row("push", "push to a 204 endpoint: msgs/s", "rate", "≥ 10,000"),
    Row("push", "push: server CPU µs/msg", "server_us"),
    Row("push", "push: server cores busy", "server_cores"),
    Row("push", "push: endpoint (client) cores busy", "client_cores"),
]
DIGITS = {"rate": ",.0f", "server_us": ",.0f", "server_cores": ".2f", "client_cores": ".2f",
          "p50_ms": ".2f", "p99_ms": ".2f", "p50_publish_ms": ".2f", "p99_publish_ms": ".2f"}


LATENCIES = ("p50_ms", "p99_ms", "p50_publish_ms", "p99_publish_ms")


def metric(result: dict | None, name: str, group: str = "server") -> float | None:
    if not result or "error" in result or not result.get("messages"):
        return None
    seconds, messages = result["seconds"], result["messages"]
    cpu = result["cpu"].get(group, 0.0)
    if name in LATENCIES:
        return result.get(name)
    return {"rate": messages / seconds, "server_us": cpu / messages * 1e6,
            "server_cores": cpu / seconds, "client_cores": result["client_cpu"] / seconds,
            "others_cores": result.get("others_cpu", 0.0) / seconds}[name]


def row_value(row: Row, results: dict[str, dict], group: str = "server") -> float | None:
    if row.workload != "both":
        return metric(results.get(row.workload), row.metric, group)
    parts = [metric(results.get(w), row.metric, group) for w in ("publish", "receive")]
    return None if None in parts else sum(parts)  # type: ignore[arg-type]


def cell(row: Row, results: dict[str, dict]) -> str:
    value = row_value(row, results)
    if value is None:
        workload = results.get(row.workload) or results.get("error") or {}
        return "error" if "error" in workload else "–"
    text = format(value, DIGITS[row.metric])
    store = row_value(row, results, "store") if row.metric.startswith("server_") else None
    if store:
        text += f" (+{format(store, DIGITS[row.metric])} nats-server)"
    others = metric(results.get(row.workload), "others_cores")
    if row.metric == "server_cores" and others and others >= 0.05:
        text += f"; others {others:.2f}"
    workloads = ("publish", "receive") if row.workload == "both" else (row.workload,)
    if any(results.get(w, {}).get("complete") is False for w in workloads):
        text += "*"
    return text


def ratio(row: Row, results: dict[str, dict[str, dict]]) -> str:
    ours = row_value(row, results.get("durable", {}))
    google = row_value(row, results.get("reference", {}))
    if not ours or not google:
        return "–"
    workloads = ("publish", "receive") if row.workload == "both" else (row.workload,)
    incomplete = any(results.get(column, {}).get(w, {}).get("complete") is False
                     for column in ("durable", "reference") for w in workloads)
    return f"{ours / google:.2f}×" + ("*" if incomplete else "")


def table_lines(columns: list[Column], results: dict[str, dict[str, dict]]) -> list[str]:
    head = ["workload: metric", *(c.title for c in columns), "ours durable / Google's",
            "issue 17's goal"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in ROWS:
        cells = [row.label, *(cell(row, results.get(c.key, {})) for c in columns),
                 ratio(row, results), row.goal]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def problem_lines(columns: list[Column], results: dict[str, dict[str, dict]]) -> list[str]:
    """Errors, incomplete runs, duplicates, and every run the generator may have limited."""
    lines = []
    for column in columns:
        for workload, result in results.get(column.key, {}).items():
            where = f"{column.title}, {workload}"
            if "error" in result:
                lines.append(f"- {where}: {result['error']}")
                continue
            if result.get("complete") is False:
                lines.append(f"- {where}: `*` incomplete, {result['messages']:,} messages in the "
                             f"time allowed ({result['seconds']:.0f} s): the rate is of those")
            if result.get("duplicates"):
                lines.append(f"- {where}: {result['duplicates']:,} duplicate deliveries")
            if result.get("errors"):
                lines.append(f"- {where}: {result.get('failed_publishes', 0)} failed publishes, "
                             f"{result.get('rpc_errors', 0)} failed acks or streams; first: "
                             f"{'; '.join(result['errors'])}")
            client, server = metric(result, "client_cores"), metric(result, "server_cores")
            if (workload in ("publish", "receive", "push") and client and server
                    and client > 0.85 and server < 0.85):
                lines.append(f"- {where}: the generator may have been the limit (client "
                             f"{client:.2f} cores, server {server:.2f})")
    return lines


FRAME_LINE = re.compile(r":\d+\)$")
ENTRY_FRAMES = "pubsub_emulator/cli.py"  # under every sample of the server's main thread


def profile_tops(path: Path) -> list[str]:
    """The top frames of a py-spy raw profile: by self time (the leaf) and by inclusive time
    within pubsub_emulator (each frame counted once per sample), % of samples."""
    leaves: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [FRAME_LINE.sub(")", f) for f in stack.split(";")[1:]]  # [0]: the process
        if not frames:
            continue
        total += count
        leaves[frames[-1]] += count
        for frame in set(frames):
            if "pubsub_emulator/" in frame and ENTRY_FRAMES not in frame:
                inclusive[frame] += count
    if not total:
        return [f"(no samples in {path})"]
    lines = [f"{total:,} samples at {PROFILE_RATE}/s", "", "| self % | frame (leaf) |",
             "| --- | --- |"]
    lines += [f"| {n / total:.1%} | `{f}` |" for f, n in leaves.most_common(TOP_FRAMES)]
    lines += ["", "| inclusive % | frame within pubsub_emulator |", "| --- | --- |"]
    lines += [f"| {n / total:.1%} | `{f}` |" for f, n in inclusive.most_common(TOP_FRAMES)]
    return lines


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def print_header(args: argparse.Namespace) -> None:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"# CPU per message (issue 17's harness), {now}")
    print(f"machine: {os.cpu_count()} cores ({cpu_model()}), load average "
          f"{os.getloadavg()[0]:.2f} at the start; servers on core {SERVER_CORE} "
          f"(taskset -c {SERVER_CORE}), generator on core {LOAD_CORE}")
    acks = "on the stream" if args.acks == "stream" else "in unary Acknowledges"
    modacks = ", a receipt ModifyAckDeadline per received batch" if args.receipt_modacks else ""
    print(f"{args.messages:,} x 1 KiB; publish: requests of {BATCH}, {CHANNELS} channels, "
          f"{PUBLISH_IN_FLIGHT} in flight; receive: {STREAMS} streams, acks {acks} of up to "
          f"{ACK_BATCH} ids or {ACK_LATENCY_S * 1000:g} ms{modacks}; latency: one message per "
          f"Publish, {args.latency_rate:,.0f} msgs/s for {args.latency_seconds:g} s; batched: "
          f"the same rate in batches of {BATCH_LATENCY_S * 1000:g} ms or {BATCH} messages; "
          f"push: at most {args.push_seconds:g} s", flush=True)


def print_report(columns: list[Column], results: dict[str, dict[str, dict]],
                 skipped: list[str], args: argparse.Namespace) -> None:
    print()
    print("\n".join(table_lines(columns, results)))
    print()
    notes = [f"- {note}" for note in skipped] + problem_lines(columns, results)
    notes.append("- µs/msg = the server process tree's user + system CPU over the timed window "
                 "/ messages; cores busy = CPU / wall time (1.00 = the whole core); others = "
                 f"CPU other processes took on core {SERVER_CORE} meanwhile. The official "
                 "Python client's figures (what users see) are bench.py's, the first step of "
                 "`make bench`: not repeated here.")
    if any(column.key == "floor" for column in columns):
        notes.append(f"- {FLOOR_NOTE}")
    print("\n".join(notes))
    durable = results.get("durable", {})
    for workload in PROFILED if not args.skip_profile else ():
        path = Path(args.profile_dir) / f"durable-{workload}.raw"
        print(f"\n## py-spy: ours (durable), {workload} "
              f"(that run: {summary(durable.get(f'profile-{workload}', {'error': '-'}))})\n")
        print("\n".join(profile_tops(path) if path.exists() else [f"(no profile: {path})"]))
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}")
    if not args.skip_profile:
        print(f"raw profiles (py-spy raw, folded stacks): {args.profile_dir}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=None,
                    help="messages per workload (default 200,000; --quick 10,000)")
    ap.add_argument("--quick", action="store_true",
                    help="a smoke run: 10,000 messages, 3 s of latency, 20 s of push at most")
    ap.add_argument("--skip-reference", action="store_true", help="no Google's emulator column")
    ap.add_argument("--skip-nats", action="store_true", help="no column for ours on NATS")
    ap.add_argument("--skip-in-memory", action="store_true", help="no --in-memory column")
    ap.add_argument("--skip-floor", action="store_true",
                    help="no bare grpc.aio (floor) column (bench/grpc_floor.py)")
    ap.add_argument("--skip-profile", action="store_true", help="no py-spy runs")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds one workload may take, its backlog included (default 300)")
    ap.add_argument("--profile-dir", help="where the raw profiles go (default: a temp dir)")
    ap.add_argument("--acks", choices=("unary", "stream"), default="unary",
                    help="how each received batch is acked (default: unary Acknowledge, as the "
                         "official client)")
    ap.add_argument("--receipt-modacks", action="store_true",
                    help="a ModifyAckDeadline for each received batch first, as the official "
                         "client sends")
    ap.add_argument("--latency-rate", type=float, default=1000.0, help="msgs/s (default 1,000)")
    ap.add_argument("--latency-seconds", type=float, default=None, help="default 10 (--quick 3)")
    ap.add_argument("--push-seconds", type=float, default=None,
                    help="longest push window (default 60, --quick 20)")
    args = ap.parse_args(argv)
    args.messages = args.messages or (10_000 if args.quick else 200_000)
    args.latency_seconds = args.latency_seconds or (3.0 if args.quick else 10.0)
    args.push_seconds = args.push_seconds or (20.0 if args.quick else 60.0)
    if not args.skip_profile:
        args.profile_dir = args.profile_dir or tempfile.mkdtemp(prefix="cpu-bench-profiles-")
        Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # This process (and so py-spy, started by the generator) stays off the servers' core.
    os.sched_setaffinity(0, {int(LOAD_CORE)})
    started = time.monotonic()
    print_header(args)
    columns, skipped = columns_for(args)
    profile_dir = Path(args.profile_dir or tempfile.gettempdir())
    results = {column.key: run_column(column, args, profile_dir) for column in columns}
    print_report(columns, results, skipped, args)
    print(f"total bench time {time.monotonic() - started:.0f} s")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_load":
        load_main(sys.argv[2])
    else:
        main()
