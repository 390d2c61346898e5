"""Deleting a large backlog on the durable store: do other requests wait, does the space return?

Run:  .venv/bin/python bench/delete_bench.py [--messages N] [--size BYTES] [--timeout S]

Starts the emulator (default durable store, a temporary data dir), creates a topic and a
subscription, publishes N messages (default 200,000 of 1 KiB) with the generated gRPC client
in requests of 1,000, then deletes the subscription and the topic while a thread polls
`GET /healthz` on one keep-alive connection as fast as it is answered. Prints:

  - /healthz p50 / p99 / max latency before the delete (baseline) and from the delete until
    the space was reclaimed (the subscription's deliveries go in the background at once, its
    messages at the sweeper's next round, every 5 s, then the free pages are given back);
  - the time from the delete until the data dir is back within 2x of its size before
    publishing (plus 1 MiB: SQLite's own slack on a nearly empty database);
  - the data dir's size before publishing, after publishing, and after the delete.
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import threading
import time
from pathlib import Path

# The server processes are started by tests/processes.py, as in the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from clients import gapic_clients  # noqa: E402
from processes import EmulatorProcess  # noqa: E402

PROJECT = "bench-project"
TOPIC = f"projects/{PROJECT}/topics/delete-bench"
SUBSCRIPTION = f"projects/{PROJECT}/subscriptions/delete-bench"
BATCH = 1_000
MIB = 1 << 20


def dir_size(path: str) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


class HealthPoller(threading.Thread):
    """GET /healthz in a loop; (monotonic time at the answer, latency in seconds) of each."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self.stop.is_set():
            start = time.monotonic()
            conn.request("GET", "/healthz")
            response = conn.getresponse()
            response.read()
            end = time.monotonic()
            if response.status != 200:
                raise RuntimeError(f"/healthz answered {response.status}")
            self.samples.append((end, end - start))
        conn.close()

    def between(self, start: float, end: float) -> list[float]:
        return [latency for at, latency in self.samples if start <= at <= end]


def summary(latencies: list[float]) -> str:
    if not latencies:
        return "no samples"
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (f"p50 {statistics.median(ordered) * 1000:7.2f} ms  p99 {p99 * 1000:7.2f} ms  "
            f"max {ordered[-1] * 1000:7.2f} ms  ({len(ordered)} requests)")


def publish_backlog(publisher, count: int, size: int) -> float:
    data = b"x" * size
    start = time.monotonic()
    for first in range(0, count, BATCH):
        messages = [{"data": data} for _ in range(min(BATCH, count - first))]
        publisher.publish(topic=TOPIC, messages=messages, timeout=120)
    return time.monotonic() - start


def wait_reclaimed(data_dir: str, limit: int, timeout: float) -> float | None:
    """Seconds until the data dir is within `limit` bytes, None on timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if dir_size(data_dir) <= limit:
            return time.monotonic() - start
        time.sleep(0.05)
    return None


def run(count: int, size: int, timeout: float) -> None:
    with EmulatorProcess() as emulator:
        publisher, subscriber = gapic_clients(emulator.host, "grpc")
        publisher.create_topic(name=TOPIC)
        subscriber.create_subscription(name=SUBSCRIPTION, topic=TOPIC)
        before = dir_size(emulator.data_dir)
        seconds = publish_backlog(publisher, count, size)
        print(f"published {count} x {size} B in {seconds:.1f} s ({count / seconds:,.0f}/s)")
        published = dir_size(emulator.data_dir)
        poller = HealthPoller(emulator.port)
        poller.start()
        time.sleep(2.0)  # a baseline of the poller alone
        start = time.monotonic()
        subscriber.delete_subscription(subscription=SUBSCRIPTION)
        deleted_sub = time.monotonic()
        publisher.delete_topic(topic=TOPIC)
        deleted_topic = time.monotonic()
        reclaimed = wait_reclaimed(emulator.data_dir, 2 * before + MIB, timeout)
        end = time.monotonic()
        time.sleep(0.5)
        poller.stop.set()
        poller.join(60)
        after = dir_size(emulator.data_dir)
    print(f"DeleteSubscription {(deleted_sub - start) * 1000:.1f} ms, "
          f"DeleteTopic {(deleted_topic - deleted_sub) * 1000:.1f} ms")
    print(f"/healthz before the delete : {summary(poller.between(start - 2.0, start))}")
    print(f"/healthz delete -> reclaim : {summary(poller.between(start, end))}")
    print("space reclaimed after      : "
          + (f"{reclaimed:.1f} s" if reclaimed is not None else
             f"not within {timeout:.0f} s"))
    print(f"data dir before publishing: {before / MIB:9.2f} MiB")
    print(f"data dir after publishing : {published / MIB:9.2f} MiB")
    print(f"data dir after the delete : {after / MIB:9.2f} MiB")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1024, help="bytes per message")
    parser.add_argument("--timeout", type=float, default=180.0,
                        help="seconds to wait for the space to come back")
    args = parser.parse_args(argv)
    run(args.messages, args.size, args.timeout)


if __name__ == "__main__":
    main()
