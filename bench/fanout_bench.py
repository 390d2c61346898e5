#!/usr/bin/env python3
"""Fan-out: N topics with a subscription each and N open StreamingPulls; one message published
to each topic; how long until every one has reached its subscriber, and what the servers cost
while the N streams sit idle. Ours (durable store, and on NATS JetStream) beside Google's
emulator, in one Markdown table.

Run:  .venv/bin/python bench/fanout_bench.py [--counts 50,400,2000] [--skip-reference]
          [--skip-nats] [--idle-seconds S] [--timeout S]

For each N and each server (started fresh on free loopback ports, temporary directories):

  1. N topics and N subscriptions (ack deadline 60 s), created 50 calls at a time.
  2. N StreamingPulls, raw gRPC (grpc.aio, the protos' own serializers: a lean client that
     costs little per message), 100 streams per channel, each channel its own connection.
  3. Warm-up: one message to each topic, every stream waits for its own (so that every stream
     is open and registered on the server), acked on the stream.
  4. Idle: once the server has settled after the warm-up (at least 6 s: ours sweeps once
     more in the 5 s after activity, which on NATS with 2,000 streams takes a few seconds
     more; then until a whole second passes with the server under 5% of a core, 60 s at
     most), the server's CPU (its process tree: the JVM of Google's emulator, nats-server for
     ours on NATS) over --idle-seconds (default 60) with the N streams open and nothing
     published, as a percentage of one core.
  5. Timed: one message published to each topic (100 Publish calls at a time, each of one
     message); the time from the first Publish sent to the last message received, acked.

A publish that wakes every open stream, whatever its topic, makes step 5 grow with N^2; one
that wakes only the streams of its topic, with N.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import bench_nats_server, our_emulator  # noqa: E402

from processes import (  # noqa: E402
    ReferenceEmulator,
    ServerProcess,
    nats_server_path,
    reference_emulator_path,
)

PROJECT = "fanout-bench"
STREAMS_PER_CHANNEL = 100
CALLS_AT_ONCE = 50
# Between the warm-up and the idle window: ours sweeps once more in the 5 s after activity;
# then the servers count as settled after a second under SETTLED_CORES of a core.
SETTLE_S = 6.0
SETTLE_MAX_S = 60.0
SETTLED_CORES = 0.05


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of `root` and every process below it (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tick
    below = {root}
    grew = True
    while grew:
        grew = False
        for pid, ppid in parents.items():
            if ppid in below and pid not in below:
                below.add(pid)
                grew = True
    return sum(times.get(pid, 0.0) for pid in below)


@dataclass
class Figures:
    warm_s: float
    idle_cpu_percent: float
    timed_s: float


class FanOut:
    """The N topics, subscriptions and open streams of one run against one server."""

    def __init__(self, host: str, n: int, timeout: float) -> None:
        import grpc
        from google.pubsub_v1 import types

        self.t = types
        self.n = n
        self.timeout = timeout
        channels = (n + STREAMS_PER_CHANNEL - 1) // STREAMS_PER_CHANNEL
        # grpc.use_local_subchannel_pool: each channel its own connection (channels with the
        # same target and arguments would otherwise share one).
        self.channels = [grpc.aio.insecure_channel(host, options=[
            ("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)])
            for _ in range(channels)]
        self.topics = [f"projects/{PROJECT}/topics/fanout-topic-{i}" for i in range(n)]
        self.subscriptions = [f"projects/{PROJECT}/subscriptions/fanout-sub-{i}" for i in range(n)]
        self.arrived: list[asyncio.Queue] = [asyncio.Queue() for _ in range(n)]
        self.calls: list = []
        self.readers: list[asyncio.Task] = []

    def _unary(self, i: int, method: str, request_type, response_type) -> Callable:
        channel = self.channels[i % len(self.channels)]
        return channel.unary_unary(method, request_serializer=request_type.serialize,
                                   response_deserializer=response_type.deserialize)

    async def _each(self, make) -> None:
        gate = asyncio.Semaphore(CALLS_AT_ONCE)

        async def one(i: int) -> None:
            async with gate:
                await make(i)

        await asyncio.gather(*(one(i) for i in range(self.n)))

    async def create(self) -> None:
        t = self.t

        async def topic(i: int) -> None:
            await self._unary(i, "/google.pubsub.v1.Publisher/CreateTopic", t.Topic, t.Topic)(
                t.Topic(name=self.topics[i]), timeout=self.timeout)

        async def subscription(i: int) -> None:
            create = self._unary(i, "/google.pubsub.v1.Subscriber/CreateSubscription",
                                 t.Subscription, t.Subscription)
            await create(t.Subscription(name=self.subscriptions[i], topic=self.topics[i],
                                        ack_deadline_seconds=60), timeout=self.timeout)

        await self._each(topic)
        await self._each(subscription)

    async def open_streams(self) -> None:
        t = self.t
        for i, name in enumerate(self.subscriptions):
            channel = self.channels[i // STREAMS_PER_CHANNEL]
            call = channel.stream_stream(
                "/google.pubsub.v1.Subscriber/StreamingPull",
                request_serializer=t.StreamingPullRequest.serialize,
                response_deserializer=t.StreamingPullResponse.deserialize)()
            await call.write(t.StreamingPullRequest(subscription=name,
                                                    stream_ack_deadline_seconds=60))
            self.calls.append(call)
            self.readers.append(asyncio.create_task(self._read(i, call)))

    async def _read(self, i: int, call) -> None:
        t = self.t
        while True:
            response = await call.read()
            if response is None or not hasattr(response, "received_messages"):
                return
            now = time.perf_counter()
            ids = [m.ack_id for m in response.received_messages]
            for _ in ids:
                self.arrived[i].put_nowait(now)
            if ids:
                await call.write(t.StreamingPullRequest(ack_ids=ids))

    async def publish_each(self) -> float:
        """One message to each topic; returns when the first Publish was sent."""
        t = self.t
        started = time.perf_counter()

        async def publish(i: int) -> None:
            request = t.PublishRequest(topic=self.topics[i],
                                       messages=[t.PubsubMessage(data=b"x" * 1024)])
            await self._unary(i, "/google.pubsub.v1.Publisher/Publish", t.PublishRequest,
                              t.PublishResponse)(request, timeout=self.timeout)

        await self._each(publish)
        return started

    async def last_arrival(self) -> float:
        """When the last of the N streams received its message (each waits for one)."""
        times = await asyncio.wait_for(
            asyncio.gather(*(queue.get() for queue in self.arrived)), self.timeout)
        return max(times)

    async def close(self) -> None:
        for call in self.calls:
            call.cancel()
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        for channel in self.channels:
            await channel.close()


async def settle(cpu: Callable[[], float]) -> None:
    """SETTLE_S, then until a second passes with the servers under SETTLED_CORES (or
    SETTLE_MAX_S in all)."""
    await asyncio.sleep(SETTLE_S)
    deadline = time.monotonic() + SETTLE_MAX_S - SETTLE_S
    while time.monotonic() < deadline:
        before = cpu()
        await asyncio.sleep(1.0)
        if cpu() - before < SETTLED_CORES:
            return


async def measure(host: str, server_pids: list[int], n: int, idle_s: float,
                  timeout: float) -> Figures:
    run = FanOut(host, n, timeout)

    def cpu() -> float:
        return sum(tree_cpu_seconds(pid) for pid in server_pids)

    try:
        await run.create()
        await run.open_streams()
        warm_started = time.perf_counter()
        await run.publish_each()
        warm = await run.last_arrival() - warm_started
        await settle(cpu)  # (the sweep that follows activity: not idle yet)
        cpu_before, idle_started = cpu(), time.perf_counter()
        await asyncio.sleep(idle_s)  # (the measurement itself: nothing published meanwhile)
        idle = (cpu() - cpu_before) / (time.perf_counter() - idle_started)
        started = await run.publish_each()
        timed = await run.last_arrival() - started
        return Figures(warm, idle * 100, timed)
    finally:
        await run.close()


@dataclass
class Server:
    title: str
    # The processes to start, in order; the last one is the Pub/Sub server the clients use.
    processes: Callable[[Path], list[ServerProcess]]


def servers(args: argparse.Namespace) -> list[Server]:
    found = [Server("ours", lambda d: [our_emulator("ours", d / "ours", [])])]
    nats_bin = None if args.skip_nats else nats_server_path()
    if nats_bin:
        def on_nats(d: Path) -> list[ServerProcess]:
            nats = bench_nats_server(nats_bin, d / "nats")
            return [nats, our_emulator("ours-on-nats", d / "emulator", ["--store", nats.url])]

        found.append(Server("ours on NATS", on_nats))
    ref_bin = None if args.skip_reference else reference_emulator_path()
    if ref_bin:
        found.append(Server("Google's emulator",
                            lambda d: [ReferenceEmulator(ref_bin, d / "ref")]))
    return found


async def run_one(server: Server, n: int, args: argparse.Namespace) -> Figures | str:
    """One server's figures for N (the idle CPU counts every process it started: nats-server
    is ours on NATS's store). Servers start synchronously: nothing else runs on the loop
    meanwhile. One loop for the whole run: grpc.aio keeps its poller bound to the first."""
    with tempfile.TemporaryDirectory(prefix="fanout-") as tmp:
        started: list[ServerProcess] = []
        try:
            for process in server.processes(Path(tmp)):
                started.append(process.start())
            return await measure(started[-1].host, [p.proc.pid for p in started], n,
                                 args.idle_seconds, args.timeout)
        except Exception as exc:  # noqa: BLE001 - reported in the table
            return f"error: {type(exc).__name__}: {' '.join(str(exc).split())[:160]}"
        finally:
            for process in reversed(started):
                process.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--counts", default="50,400,2000",
                    help="numbers of topics (each with one subscription and one open stream)")
    ap.add_argument("--skip-reference", action="store_true", help="no Google's emulator column")
    ap.add_argument("--skip-nats", action="store_true", help="no column for ours on NATS")
    ap.add_argument("--idle-seconds", type=float, default=60.0,
                    help="how long the idle CPU is measured (default 60)")
    ap.add_argument("--timeout", type=float, default=300.0, help="per step (s)")
    asyncio.run(run_all(ap.parse_args()))


async def run_all(args: argparse.Namespace) -> None:
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    columns = servers(args)
    print("Fan-out: N topics x 1 subscription x 1 open StreamingPull; one message to each "
          "topic, first Publish sent -> last message received (s); idle = server CPU with the "
          "N streams open, % of one core")
    print()
    print("| N | " + " | ".join(f"{s.title}: arrival | idle" for s in columns) + " |")
    print("|---|" + "---|---|" * len(columns))
    for n in counts:
        cells = []
        for server in columns:
            figures = await run_one(server, n, args)
            if isinstance(figures, str):
                cells += [figures, "-"]
            else:
                cells += [f"{figures.timed_s:.2f} s", f"{figures.idle_cpu_percent:.1f}%"]
        print(f"| {n:,} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
