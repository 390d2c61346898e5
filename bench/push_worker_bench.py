#!/usr/bin/env python3
"""Push worker benchmark: publish N x 1 KiB messages, let `push-worker` POST them to a fast
local endpoint (answers 204), print delivered msgs/s and publish-to-delivery latency.

    .venv/bin/python bench/push_worker_bench.py --emulator-host 127.0.0.1:8085 [-n 5000]

Any Pub/Sub emulator works (the project's or Google's reference one). The publish time is
carried in the `ts` attribute (wall clock, seconds); latency = endpoint arrival - ts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

# The emulator is started by tests/processes.py, as in the tests and bench.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from processes import VENV_BIN, EmulatorProcess  # noqa: E402


class Endpoint:
    """aiohttp server in a thread: 204 for every POST, records arrival time and `ts`."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, float, str]] = []  # (arrival, ts, message id)
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Endpoint:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("endpoint did not start")
        return self

    def _run(self) -> None:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            body = json.loads(await request.read())
            msg = body["message"]
            self.arrivals.append((time.time(), float(msg["attributes"]["ts"]),
                                  msg["messageId"]))
            return web.Response(status=204)

        async def main() -> None:
            app = web.Application()
            app.router.add_post("/push", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            self._ready.set()
            await asyncio.Event().wait()

        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(main())


def worker_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--emulator-host", default=os.environ.get("PUBSUB_EMULATOR_HOST"),
                    help="host:port of a running emulator (default $PUBSUB_EMULATOR_HOST)")
    ap.add_argument("-n", "--messages", type=int, default=5000)
    ap.add_argument("--size", type=int, default=1024, help="payload bytes (default 1024)")
    ap.add_argument("--concurrency", type=int, default=64,
                    help="worker concurrency (POSTs in flight), default 64")
    ap.add_argument("--timeout", type=float, default=120, help="give up after this many s")
    ap.add_argument("--native", action="store_true",
                    help="no worker: the emulator pushes (a push subscription to the endpoint)")
    ap.add_argument("--rate", type=float, default=200,
                    help="messages/s of the light steady load for latency (default 200)")
    ap.add_argument("--latency-seconds", type=float, default=3.0)
    args = ap.parse_args()
    emulator = None
    if not args.emulator_host:  # start the project's own emulator for the run
        # in a temporary data dir (removed by close()), logging warnings to a file there
        emulator = EmulatorProcess(extra_args=["--log-level", "warning"]).start()
        args.emulator_host = emulator.host
    os.environ["PUBSUB_EMULATOR_HOST"] = args.emulator_host
    try:
        return run(args)
    finally:
        if emulator is not None:
            emulator.close()


def run(args: argparse.Namespace) -> int:
    from google.cloud import pubsub_v1

    endpoint = Endpoint().start()
    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    project = "push-worker-bench"
    topic = publisher.topic_path(project, f"bench-{uuid.uuid4().hex[:8]}")
    sub = subscriber.subscription_path(project, f"bench-{uuid.uuid4().hex[:8]}")
    publisher.create_topic(name=topic)
    push_config = ({"push_endpoint": f"http://127.0.0.1:{endpoint.port}/push"}
                   if args.native else None)
    subscriber.create_subscription(request={"name": sub, "topic": topic,
                                            "ack_deadline_seconds": 60,
                                            "push_config": push_config})

    tmp = Path(tempfile.mkdtemp(prefix="push-worker-bench-"))
    config = {"pubsub_endpoint": args.emulator_host, "stats_interval": 3600,
              "subscriptions": [{"project_id": project, "subscription_id": sub.split("/")[-1],
                                 "endpoint": f"http://127.0.0.1:{endpoint.port}/push",
                                 "concurrency": args.concurrency}]}
    (tmp / "config.yaml").write_text(yaml.safe_dump(config))
    log = open(tmp / "worker.log", "wb")
    worker_cmd = [str(VENV_BIN / "push-worker"), str(tmp / "config.yaml"), "--log-level",
                  "WARNING"]
    if args.native:  # a stand-in process so the bookkeeping below stays the same
        worker_cmd = [sys.executable, "-c", "import signal; signal.pause()"]
    worker = subprocess.Popen(worker_cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        payload = b"x" * args.size
        t0 = time.time()
        futures = [publisher.publish(topic, payload, ts=repr(time.time()))
                   for _ in range(args.messages)]
        for f in futures:
            f.result(timeout=60)
        t_published = time.time()
        deadline = time.monotonic() + args.timeout
        while len({a[2] for a in endpoint.arrivals}) < args.messages:
            if time.monotonic() > deadline or worker.poll() is not None:
                break
            time.sleep(0.05)
        arrivals = list(endpoint.arrivals)
        cpu = worker_cpu_seconds(worker.pid)
        # Latency at a light steady rate, once the burst is through.
        light = int(args.rate * args.latency_seconds)
        # One message per publish request: latency without the client's batching delay.
        single = pubsub_v1.PublisherClient(
            batch_settings=pubsub_v1.types.BatchSettings(max_messages=1))
        before = len(endpoint.arrivals)
        start = time.monotonic()
        for i in range(light):
            target = start + i / args.rate
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            single.publish(topic, payload, ts=repr(time.time()))
        deadline = time.monotonic() + 30
        while len(endpoint.arrivals) < before + light and time.monotonic() < deadline:
            time.sleep(0.05)
        steady = [(a[0] - a[1]) * 1000 for a in list(endpoint.arrivals)[before:]]
    finally:
        worker.terminate()
        try:
            rc = worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            rc = worker.wait()
        log.close()
        publisher.stop()
        subscriber.close()

    unique_ids = {a[2] for a in arrivals}
    if not arrivals:
        print(f"no deliveries; worker log: {tmp / 'worker.log'}", file=sys.stderr)
        return 1
    first, last = min(a[0] for a in arrivals), max(a[0] for a in arrivals)
    latencies = [(a[0] - a[1]) * 1000 for a in arrivals]
    span = last - t0
    print("native push benchmark (the emulator pushes)" if args.native
          else "push worker benchmark")
    print(f"  emulator            {args.emulator_host}")
    print(f"  messages            {args.messages} x {args.size} B, worker concurrency "
          f"{args.concurrency}")
    print(f"  delivered           {len(unique_ids)}/{args.messages} unique "
          f"({len(arrivals) - len(unique_ids)} duplicates)")
    print(f"  publish             {args.messages / max(t_published - t0, 1e-9):,.0f} msg/s")
    print(f"  delivered           {len(unique_ids) / max(span, 1e-9):,.0f} msg/s "
          f"(first publish -> last delivery {span:.2f} s; "
          f"first -> last delivery {last - first:.2f} s)")
    print(f"  latency, burst      p50 {statistics.median(latencies):.1f} ms  "
          f"p99 {percentile(latencies, 99):.1f} ms  max {max(latencies):.1f} ms "
          "(queueing behind the burst)")
    if steady:
        print(f"  latency, {args.rate:.0f} msg/s  p50 {statistics.median(steady):.1f} ms  "
              f"p99 {percentile(steady, 99):.1f} ms  (publish -> POST arrival, "
              f"{len(steady)} messages)")
    if cpu is not None and not args.native:
        print(f"  worker CPU          {cpu:.2f} s ({cpu * 1e6 / max(len(arrivals), 1):.0f} us "
              f"per delivered message, including startup)")
    if not args.native:
        print(f"  worker exit code    {rc} (after SIGTERM)")
    return 0 if len(unique_ids) == args.messages and (rc == 0 or args.native) else 1


if __name__ == "__main__":
    sys.exit(main())
