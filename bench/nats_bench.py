#!/usr/bin/env python3
"""The NATS backend at Pub/Sub's full scale: 1 KiB and 1 MiB messages and an ordered backlog,
ours on NATS JetStream beside ours on the embedded store, in one Markdown table.

Run:  .venv/bin/python bench/nats_bench.py [--quick] [--skip-embedded] [--messages N]
          [--big-messages N] [--ordered-messages N] [--ordering-keys K] [--timeout S]
          [--ordered-publisher gapic|client] [--big-flow-mib M]

The script starts its own servers on free loopback ports (temporary directories, removed after),
as bench.py does (its bench_nats_server / our_emulator, tests/processes.py underneath):

  ours on NATS     a fresh nats-server -js with the default configuration (max_payload 1 MB)
                   and one `pubsub-emulator start --store nats://...`
  ours (embedded)  one `pubsub-emulator start` on the default durable store (temporary
                   --data-dir)

Every workload runs in a fresh subprocess (`nats_bench.py _worker JSON`) with a timeout, so a
stuck stream shows as "timeout" and a failed worker as "error (!)". Clients: the official
google-cloud-pubsub library over gRPC.

  1 KiB     bench.py's own publish and receive workers: PublisherClient with default batching,
            N messages (--messages, default 20,000), first publish -> last future; then
            SubscriberClient.subscribe (streaming pull, FlowControl(max_messages=5000)) on a
            fresh backlog of N until N unique messages are acked, the backlog then checked empty.
  1 MiB     N messages (--big-messages, default 200) of 1,048,576 random bytes (distinct
            windows of one random block: over max_payload, so stored as pieces on NATS),
            default batching, to a topic with two subscriptions; then streaming pull until all
            N are received, on the first with FlowControl(max_bytes=--big-flow-mib MiB, default
            32), then on the second with the client's default flow control (100 MiB, 1,000
            messages). Every delivery's size is checked and its bytes compared with those
            published (a mismatch is reported with both sha-256 digests). The subscriber's
            channel takes messages of any size, as the library's channel to the real service
            does (see official_subscriber: under PUBSUB_EMULATOR_HOST it takes 4 MiB).
  ordered   a subscription with enable_message_ordering; N x 1 KiB messages (--ordered-messages,
            default 100,000) on K ordering keys (--ordering-keys, default 1,000), round robin,
            the key's sequence number in attribute `seq`, published while nothing receives
            (--ordered-publisher: `gapic`, the default = the generated client, Publish requests
            of 1,000 messages, one after the other; `client` = PublisherClient(enable_message_
            ordering=True), one publish() per message: ~500-700 msgs/s here, 100,000 taking
            minutes); then streaming pull (FlowControl(max_messages=1000)) until all N are
            acked. Each delivery is checked against its key's previous one: duplicates (a
            message id seen before) and out-of-order deliveries (seq not the key's highest so
            far + 1, or the ordering key not the one published) are counted.

A receive that gets no new message for 20 s is given up ("only X of N received") and
reported, as is one that outlasts the workload's time. A per-run line shows every figure of a
worker, including the servers' CPU (the emulator, plus nats-server for the NATS column) over
the worker's whole run and per phase.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# bench.py (this folder) puts tests/ on sys.path and starts servers with tests/processes.py.
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402
from bench import bench_nats_server, our_emulator  # noqa: E402
from push_worker_bench import worker_cpu_seconds  # noqa: E402

from processes import EmulatorProcess, ServerProcess, nats_server_path  # noqa: E402

PROJECT = "nats-bench"
SMALL = 1024
BIG = 1_048_576
GAPIC_BATCH = 1_000
WINDOW_STEP = 4099  # a prime: message i is block[i * 4099 % BIG:][:BIG], distinct for every i
STALL_S = 20.0  # a receive without a new message for this long has stalled: given up

NATS = "nats"
EMBEDDED = "embedded"
TITLES = {NATS: "ours on NATS", EMBEDDED: "ours (embedded)"}
KINDS = ("publish", "receive", "big", "ordered")


# --------------------------------------------------------------------------------------------
# workers (run in a subprocess)
# --------------------------------------------------------------------------------------------

def part(phase: str, figures: dict) -> None:
    """One phase's figures, on stdout at once: what a worker killed later still reports."""
    sys.stdout.write(f"\nPART {phase} {json.dumps(figures)}\n")
    sys.stdout.flush()


def servers_cpu(pids: list[int]) -> float | None:
    """User + system CPU seconds of the server processes so far."""
    seconds = [worker_cpu_seconds(pid) for pid in pids]
    return None if any(s is None for s in seconds) else sum(seconds)  # type: ignore[misc]


class Meter:
    """Wall time, the servers' CPU and this process's CPU of one phase."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.cpu0 = servers_cpu(pids)
        self.process0 = time.process_time()
        self.t0 = time.perf_counter()

    def done(self, count: int, size: int) -> dict:
        seconds = max(time.perf_counter() - self.t0, 1e-9)
        cpu1 = servers_cpu(self.pids)
        return {"seconds": seconds, "rate": count / seconds, "mbps": count * size / seconds / 1e6,
                "server_cores": (None if self.cpu0 is None or cpu1 is None
                                 else (cpu1 - self.cpu0) / seconds),
                "client_cores": (time.process_time() - self.process0) / seconds}


def official_publisher(host: str, **kwargs):
    from google.cloud import pubsub_v1

    os.environ["PUBSUB_EMULATOR_HOST"] = host
    return pubsub_v1.PublisherClient(**kwargs)


def official_subscriber(host: str):
    """The official SubscriberClient for the emulator at `host`, its channel without a limit on
    the size of what it receives, as the library makes it for the real service: under
    PUBSUB_EMULATOR_HOST it keeps gRPC's default 4 MiB, and a StreamingPull response of several
    1 MiB messages is refused (the stream reopened again and again, nothing delivered)."""
    import grpc
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    channel = grpc.insecure_channel(host, options=[("grpc.max_receive_message_length", -1),
                                                   ("grpc.max_send_message_length", -1)])
    return pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=channel))


def names(kind: str) -> tuple[str, str]:
    tag = f"bench-{kind}-{uuid.uuid4().hex[:8]}"
    return f"projects/{PROJECT}/topics/{tag}", f"projects/{PROJECT}/subscriptions/{tag}"


def wait_futures(futures: list, timeout: float) -> tuple[int, str | None]:
    """(failures, the first failure) of publish futures."""
    failures, first = 0, None
    for f in futures:
        try:
            f.result(timeout=timeout)
        except Exception as e:  # noqa: BLE001 - counted and reported
            failures += 1
            first = first or f"{type(e).__name__}: {str(e)[:200]}"
    return failures, first


class Check:
    """The deliveries of one receive: unique messages, duplicates, done once n are in."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.seen: set[str] = set()
        self.deliveries = 0
        self.problems: list[str] = []

    def first_time(self, message_id: str) -> bool:
        """Count a delivery (under the lock): True for a message not seen before."""
        self.deliveries += 1
        if message_id in self.seen:
            return False
        self.seen.add(message_id)
        if len(self.seen) >= self.n:
            self.done.set()
        return True

    def record(self, message) -> None:
        raise NotImplementedError

    def count(self) -> int:
        with self.lock:
            return len(self.seen)

    def summary(self) -> dict:
        with self.lock:
            out = {"received": len(self.seen), "deliveries": self.deliveries,
                   "duplicates": self.deliveries - len(self.seen)}
            if self.problems:
                out["problems"] = self.problems[:5]
            return out


def stream(sub, sub_path: str, check: Check, size: int, flow_control, budget: float,
           pids: list[int]) -> dict:
    """Streaming pull until check.n unique messages came, each delivery checked before its
    ack; given up after `budget` s, or STALL_S s without a new message."""
    def callback(message) -> None:
        # checked before the ack: on an ordered subscription the ack lets the client hand out
        # the key's next message
        check.record(message)
        message.ack()

    meter = Meter(pids)
    future = sub.subscribe(sub_path, callback, flow_control=flow_control)
    deadline, last, last_change = time.monotonic() + budget, -1, time.monotonic()
    while not check.done.wait(1.0):
        got, now = check.count(), time.monotonic()
        if got != last:
            last, last_change = got, now
        if now > deadline or now - last_change > STALL_S:
            break
    out = meter.done(check.count(), size)
    bench.close_streaming(future, sub)
    out.update(check.summary())
    if not check.done.is_set():
        out["error"] = (f"only {out['received']} of {check.n} received"
                        + (f" within {budget:.0f}s" if time.monotonic() > deadline else
                           f", none in the last {STALL_S:.0f}s"))
    return out


def window(block: bytes, i: int, size: int) -> bytes:
    """Message i of the 1 MiB workload: its own window of the random block (2 x size long)."""
    start = i * WINDOW_STEP % size
    return block[start:start + size]


class SizeCheck(Check):
    """1 MiB deliveries: each one's size, and its bytes against those published."""

    def __init__(self, n: int, block: bytes, size: int) -> None:
        super().__init__(n)
        self.block, self.size = block, size
        self.wrong_size = self.wrong_bytes = 0

    def record(self, message) -> None:
        data, i = message.data, int(message.attributes.get("i", "-1"))
        expected = window(self.block, i, self.size) if i >= 0 else b""
        with self.lock:
            self.first_time(message.message_id)
            if len(data) != self.size:
                self.wrong_size += 1
                self.problems.append(f"message #{i} ({message.message_id}): {len(data)} bytes, "
                                     f"not {self.size}")
            elif data != expected:
                self.wrong_bytes += 1
                self.problems.append(f"message #{i} ({message.message_id}): sha-256 "
                                     f"{hashlib.sha256(data).hexdigest()[:16]}, published "
                                     f"{hashlib.sha256(expected).hexdigest()[:16]}")

    def summary(self) -> dict:
        out = super().summary()
        out.update(wrong_size=self.wrong_size, content_mismatch=self.wrong_bytes,
                   checks=f"{self.wrong_size} / {self.wrong_bytes} of {out['deliveries']}")
        return out


def work_big(host: str, n: int, size: int, timeout: float, pids: list[int],
             flow_bytes: int) -> None:
    """Publish n random messages of `size` bytes to a topic with two subscriptions; receive and
    check them all on the first with FlowControl(max_bytes=flow_bytes), on the second with
    the client's default flow control."""
    from google.cloud import pubsub_v1

    pub = official_publisher(host)
    topic, sub_path = names("big")
    pub.create_topic(name=topic)
    paths = {"receive": (sub_path, pubsub_v1.types.FlowControl(max_bytes=flow_bytes)),
             "receive_default": (sub_path + "-default", pubsub_v1.types.FlowControl())}
    for path, _ in paths.values():
        official_subscriber(host).create_subscription(name=path, topic=topic,
                                                      ack_deadline_seconds=60)
    block = os.urandom(2 * size)
    started = time.monotonic()
    meter = Meter(pids)
    futures = [pub.publish(topic, window(block, i, size), i=str(i)) for i in range(n)]
    failures, first = wait_futures(futures, timeout)
    published = meter.done(n - failures, size) | {"failures": failures}
    if first:
        published["error"] = f"{failures} publishes failed, first: {first}"
    part("publish", published)
    pub.stop()
    for phase, (path, flow_control) in paths.items():
        budget = max(10.0, timeout - (time.monotonic() - started) - 10)
        part(phase, stream(official_subscriber(host), path, SizeCheck(n - failures, block, size),
                           size, flow_control, budget, pids))


def ordered_message(i: int, keys: int) -> tuple[str, str]:
    """(ordering key, seq) of message i: keys round robin, seq counting per key."""
    return f"k{i % keys}", str(i // keys)


def publish_ordered_client(host: str, topic: str, n: int, keys: int, size: int,
                           timeout: float) -> tuple[int, str | None]:
    from google.cloud import pubsub_v1

    options = pubsub_v1.types.PublisherOptions(enable_message_ordering=True)
    pub = official_publisher(host, publisher_options=options)
    data = b"x" * size
    futures = []
    for i in range(n):
        key, seq = ordered_message(i, keys)
        futures.append(pub.publish(topic, data, ordering_key=key, seq=seq, k=key))
    result = wait_futures(futures, timeout)
    pub.stop()
    return result


def publish_ordered_gapic(host: str, topic: str, n: int, keys: int, size: int,
                          timeout: float) -> tuple[int, str | None]:
    from google import pubsub_v1 as gapic

    from clients import gapic_clients

    publisher, _ = gapic_clients(host, "grpc")
    data = b"x" * size
    failures, first = 0, None
    for start in range(0, n, GAPIC_BATCH):
        messages = []
        for i in range(start, min(n, start + GAPIC_BATCH)):
            key, seq = ordered_message(i, keys)
            messages.append(gapic.PubsubMessage(data=data, ordering_key=key,
                                                attributes={"seq": seq, "k": key}))
        try:
            publisher.publish(topic=topic, messages=messages, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - counted and reported
            failures += len(messages)
            first = first or f"{type(e).__name__}: {str(e)[:200]}"
    return failures, first


def work_ordered(host: str, n: int, keys: int, size: int, timeout: float, pids: list[int],
                 publisher: str) -> None:
    """An ordered backlog of n messages on `keys` keys, published, then received and checked."""
    from google.cloud import pubsub_v1

    topic, sub_path = names("ordered")
    official_publisher(host).create_topic(name=topic)
    official_subscriber(host).create_subscription(
        request={"name": sub_path, "topic": topic, "ack_deadline_seconds": 60,
                 "enable_message_ordering": True})
    started = time.monotonic()
    meter = Meter(pids)
    publish = publish_ordered_gapic if publisher == "gapic" else publish_ordered_client
    failures, first = publish(host, topic, n, keys, size, timeout)
    published = meter.done(n - failures, size) | {"failures": failures, "publisher": publisher}
    if first:
        published["error"] = f"{failures} publishes failed, first: {first}"
    part("publish", published)
    budget = max(10.0, timeout - (time.monotonic() - started) - 10)
    received = stream(official_subscriber(host), sub_path, OrderCheck(n - failures), size,
                      pubsub_v1.types.FlowControl(max_messages=1000), budget, pids)
    part("receive", received)
    part("total", {"seconds": time.monotonic() - started})


class OrderCheck(Check):
    """Deliveries of an ordered subscription, checked per key as they come."""

    def __init__(self, n: int) -> None:
        super().__init__(n)
        self.highest: dict[str, int] = {}
        self.out_of_order = 0
        self.t0 = time.perf_counter()
        self.arrivals: list[float] = []  # seconds from t0 of each first delivery

    def record(self, message) -> None:
        key, attrs = message.ordering_key, message.attributes
        seq = int(attrs.get("seq", "-1"))
        with self.lock:
            if not self.first_time(message.message_id):
                return
            self.arrivals.append(time.perf_counter() - self.t0)
            previous = self.highest.get(key, -1)
            if seq != previous + 1 or key != attrs.get("k"):
                self.out_of_order += 1
                self.problems.append(f"key {key!r} (published {attrs.get('k')!r}): seq {seq} "
                                     f"after {previous}")
            self.highest[key] = max(previous, seq)

    def summary(self) -> dict:
        """The counts; `arrived`: seconds until 50, 90, 99, 100% had come."""
        out = super().summary()
        with self.lock:
            out.update(out_of_order=self.out_of_order, keys_seen=len(self.highest),
                       order=f"{out['duplicates']} / {self.out_of_order}")
            if self.arrivals:
                last = len(self.arrivals) - 1
                out["arrived"] = {f"{p}%": round(self.arrivals[min(last, last * p // 100)], 2)
                                  for p in (50, 90, 99, 100)}
        return out


def worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    kind = spec.pop("kind")
    try:
        if kind in ("publish", "receive"):  # bench.py's own workers, 1 KiB
            part(kind, {"publish": bench.work_publish, "receive": bench.work_receive}[kind](**spec))
        else:
            {"big": work_big, "ordered": work_ordered}[kind](**spec)
        sys.stdout.write("\nDONE\n")
    except Exception as e:  # noqa: BLE001
        sys.stdout.write("\nFAILED " + json.dumps(f"{type(e).__name__}: {str(e)[:300]}") + "\n")
    sys.stdout.flush()
    os._exit(0)  # don't wait for client-library threads


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------

def run_worker(spec: dict, timeout: float) -> dict:
    """{phase: figures} of one worker, with "timeout": True or "error" when it did not finish
    (the phases it reported before that kept)."""
    cmd = [sys.executable, os.path.abspath(__file__), "_worker", json.dumps(spec)]
    env = dict(os.environ)
    env.pop("PUBSUB_EMULATOR_HOST", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True, text=True)
    run: dict = {}
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the worker and its threads
        except ProcessLookupError:
            pass
        out, err = proc.communicate()
        run.update(timeout=True, error=f"timeout after {timeout:.0f}s")
    finished = False
    for line in out.splitlines():
        if line.startswith("PART "):
            _, phase, figures = line.split(" ", 2)
            run[phase] = json.loads(figures)
        elif line.startswith("FAILED "):
            run["error"] = json.loads(line[7:])
        finished = finished or line == "DONE"
    if not finished and "error" not in run:
        run["error"] = f"worker exit {proc.returncode}: {err.strip()[-400:]}"
    return run


def rounded(value):
    if isinstance(value, float):
        return round(value, 2)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items() if v is not None}
    return value


PHASE_TROUBLE = ("error", "problems", "failures", "left_in_backlog", "nack_errors", "duplicates",
                 "out_of_order", "wrong_size", "content_mismatch")


def troubles(run: dict) -> list[str]:
    """What went wrong in a worker: its own error, each phase's errors and odd counts."""
    found = [run["error"]] if run.get("error") else []
    for phase, figures in run.items():
        if isinstance(figures, dict):
            odd = {k: figures[k] for k in PHASE_TROUBLE if figures.get(k)}
            if odd:
                found.append(f"{phase}: {json.dumps(rounded(odd))}")
    return found


@dataclass(frozen=True)
class Row:
    """A line of the table: `metric` of `phase` of the `kind` worker, per column."""

    label: str
    kind: str
    phase: str
    metric: str
    digits: int = 0


def rows_for(s: argparse.Namespace) -> list[Row]:
    big = f"{s.big_messages:,} x 1 MiB"
    ordered = f"{s.ordered_messages:,} x 1 KiB, {s.ordering_keys:,} keys"
    return [
        Row(f"1 KiB publish, default batching ({s.messages:,} msgs; msgs/s)", "publish",
            "publish", "rate"),
        Row(f"1 KiB receive+ack, streaming pull ({s.messages:,}; msgs/s)", "receive",
            "receive", "rate"),
        Row(f"1 MiB publish, default batching ({big}; msgs/s)", "big", "publish", "rate", 1),
        Row("1 MiB publish (MB/s)", "big", "publish", "mbps", 1),
        Row(f"1 MiB receive+ack, streaming pull, max_bytes {s.big_flow_mib} MiB (msgs/s)", "big",
            "receive", "rate", 1),
        Row("1 MiB receive+ack (MB/s)", "big", "receive", "mbps", 1),
        Row("1 MiB wrong size / wrong bytes, of deliveries", "big", "receive", "checks"),
        Row("1 MiB receive+ack, default flow control (msgs/s)", "big", "receive_default",
            "rate", 1),
        Row("1 MiB wrong size / wrong bytes, default flow control", "big", "receive_default",
            "checks"),
        Row(f"ordered backlog: publish ({ordered}, {s.ordered_publisher}; msgs/s)", "ordered",
            "publish", "rate"),
        Row("ordered backlog: receive+ack, streaming pull (msgs/s)", "ordered", "receive",
            "rate"),
        Row("ordered backlog: publish + receive, total (s)", "ordered", "total", "seconds", 1),
        Row("ordered backlog: duplicates / out-of-order", "ordered", "receive", "order"),
    ]


MARKED = tuple(k for k in PHASE_TROUBLE if k != "duplicates")  # (!) in the cell


def cell(run: dict | None, row: Row) -> str:
    if run is None:
        return "-"  # not run (column skipped, or its server failed before)
    figures = run.get(row.phase)
    value = figures.get(row.metric) if isinstance(figures, dict) else None
    if value is None:
        return "timeout" if run.get("timeout") else "error (!)"
    if figures.get("error") and row.metric in ("rate", "mbps"):
        return "error (!)"  # a phase that did not finish: its rate would mislead
    text = value if isinstance(value, str) else f"{value:,.{row.digits}f}"
    return text + " (!)" if any(figures.get(k) for k in MARKED) else text


def table_lines(rows: list[Row], columns: list[str], results: dict) -> list[str]:
    headers = ["workload", *(TITLES[c] for c in columns)]
    lines = [[r.label, *(cell(results.get((c, r.kind)), r) for c in columns)] for r in rows]
    widths = [max(len(line[i]) for line in [headers, *lines]) for i in range(len(headers))]

    def show(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    return [show(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *(show(line) for line in lines)]


@dataclass
class Bench:
    """The runs so far, {(column, kind): run}, and the problems seen."""

    args: argparse.Namespace
    results: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def spec(self, kind: str, host: str, pids: list[int]) -> dict:
        a = self.args
        spec: dict = {"kind": kind, "host": host, "timeout": a.timeout}
        if kind in ("publish", "receive"):
            spec.update(transport="grpc", n=a.messages, size=SMALL, server_pid=pids[0])
        elif kind == "big":
            spec.update(n=a.big_messages, size=BIG, pids=pids, flow_bytes=a.big_flow_mib << 20)
        else:
            spec.update(n=a.ordered_messages, keys=a.ordering_keys, size=SMALL, pids=pids,
                        publisher=a.ordered_publisher)
        return spec

    def run_once(self, column: str, kind: str, servers: list[ServerProcess]) -> None:
        """One worker against the first of `servers` (the others: its nats-server)."""
        pids = [s.proc.pid for s in servers if s.proc]
        host = servers[0].host  # type: ignore[attr-defined]
        cpu0, t0 = servers_cpu(pids), time.perf_counter()
        run = run_worker(self.spec(kind, host, pids), self.args.timeout + 30)
        wall = time.perf_counter() - t0
        cpu1 = servers_cpu(pids)
        self.results[(column, kind)] = run
        cpu = "?" if cpu0 is None or cpu1 is None else f"{cpu1 - cpu0:.1f}"
        print(f"  [{column:8}] {kind:8} {wall:6.1f}s  servers' CPU {cpu} s  "
              f"{json.dumps(rounded(run))}", flush=True)
        self.problems += [f"{column} {kind}: {t}" for t in troubles(run)]
        for server in servers:
            if server.proc and server.proc.poll() is not None:
                raise RuntimeError(f"{server.name} exited ({server.proc.returncode}): "
                                   f"{server.log_tail(1500)}")

    def serve(self, column: str, server: EmulatorProcess, others: list[ServerProcess]) -> None:
        """Start the emulator, run every workload against it, stop it."""
        print(f"# {TITLES[column]}: {' '.join(server.cmd[1:])}", flush=True)
        try:
            server.start()
            for kind in KINDS:
                self.run_once(column, kind, [server, *others])
        except Exception as e:  # noqa: BLE001
            self.problems.append(f"{column}: {type(e).__name__}: {e}")
        finally:
            server.stop()
            log = log_summary(server.log_tail(10 ** 8))
            if log:
                self.problems.append(f"{server.name} server log: {log}")


def log_summary(text: str) -> str | None:
    """The emulator's log (--log-level warning) in brief: how many warnings and errors, the
    last of them, and its last line (a traceback's exception)."""
    lines = [line for line in text.splitlines() if line.strip()]
    flagged = [line for line in lines if any(f" {level} " in line
                                             for level in ("WARNING", "ERROR", "CRITICAL"))]
    if not flagged:
        return text.strip()[-800:] or None
    return (f"{len(flagged)} warning/error lines, the last: {flagged[-1][:300]}; last line of "
            f"the log: {lines[-1][:300]}")


def max_payload(monitor_port: int | None) -> str:
    """The running nats-server's max_payload (its monitor's /varz), '?' when unknown."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/varz", timeout=5) as r:
            return f"{json.loads(r.read())['max_payload']:,}"
    except (OSError, ValueError, KeyError):
        return "?"


def run_on_nats(b: Bench, tmp: Path, nats_bin: str) -> None:
    """Ours on a fresh nats-server (default configuration) of its own."""
    nats = bench_nats_server(nats_bin, tmp / "nats")
    try:
        nats.start()
        print(f"# nats-server: {' '.join(nats.cmd[1:])}; max_payload "
              f"{max_payload(nats.monitor_port)} bytes", flush=True)
        server = our_emulator("ours-on-nats", tmp / "nats" / "emulator", ["--store", nats.url])
        b.serve(NATS, server, [nats])
    except Exception as e:  # noqa: BLE001
        b.problems.append(f"nats-server: {type(e).__name__}: {e}")
    finally:
        nats.stop()
        log = "\n".join(line for line in nats.log_tail(20_000).splitlines()
                        if "[ERR]" in line or "[WRN]" in line)
        if log:
            b.problems.append(f"nats-server log, warnings and errors (tail): {log[-1500:]}")


def run_embedded(b: Bench, tmp: Path) -> None:
    """Ours on the default durable store, a temporary data dir."""
    b.serve(EMBEDDED, our_emulator("ours-embedded", tmp / "embedded", []), [])


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small, fast run")
    ap.add_argument("--skip-embedded", action="store_true",
                    help="no column for the embedded store")
    ap.add_argument("--messages", type=int, default=None,
                    help="1 KiB messages per throughput run (default 20000; --quick 2000)")
    ap.add_argument("--big-messages", type=int, default=None,
                    help="1 MiB messages (default 200; --quick 20)")
    ap.add_argument("--ordered-messages", type=int, default=None,
                    help="messages of the ordered backlog (default 100000; --quick 5000)")
    ap.add_argument("--ordering-keys", type=int, default=None,
                    help="ordering keys of the backlog (default 1000; --quick 100)")
    ap.add_argument("--ordered-publisher", choices=("gapic", "client"), default="gapic",
                    help="gapic (default): the generated client, Publish requests of 1,000; "
                         "client: PublisherClient(enable_message_ordering=True)")
    ap.add_argument("--big-flow-mib", type=int, default=32,
                    help="FlowControl max_bytes (MiB) of the 1 MiB receive (default 32)")
    ap.add_argument("--timeout", type=float, default=300.0, help="per-workload timeout (s)")
    args = ap.parse_args(argv)
    quick = args.quick
    args.messages = args.messages or (2000 if quick else 20_000)
    args.big_messages = args.big_messages or (20 if quick else 200)
    args.ordered_messages = args.ordered_messages or (5000 if quick else 100_000)
    args.ordering_keys = args.ordering_keys or (100 if quick else 1000)
    return args


def print_header(args: argparse.Namespace, nats_bin: str) -> None:
    try:
        version = subprocess.run([nats_bin, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        version = "nats-server ?"
    print(f"# NATS backend benchmark  {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S UTC}")
    print(f"# machine: {os.cpu_count()} cores (nproc), {platform.python_implementation()} "
          f"{platform.python_version()}, {platform.system()} {platform.release()}; "
          f"{version} ({nats_bin}); client: google-cloud-pubsub {pubsub_version()}")
    print(f"# workload: 1 KiB x {args.messages:,}; 1 MiB x {args.big_messages:,} (receive with "
          f"max_bytes {args.big_flow_mib} MiB, then default flow control); ordered "
          f"backlog {args.ordered_messages:,} x 1 KiB on {args.ordering_keys:,} keys "
          f"({args.ordered_publisher} publisher); one run each; per-workload timeout "
          f"{args.timeout:.0f}s", flush=True)


def pubsub_version() -> str:
    try:
        from importlib.metadata import version
        return version("google-cloud-pubsub")
    except Exception:  # noqa: BLE001
        return "?"


NOTES = ("Notes: one run per figure; client and servers share the machine's cores (and, on a "
         "shared machine, whatever else runs there): figures are noisy. MB = 10^6 bytes. "
         "(!) = a problem in that phase (listed below). 'timeout' = the worker was killed at "
         "the per-workload timeout before reporting that phase; 'error (!)' = it failed, or, "
         "for a rate, that receive stalled or ran out of time (what it got is in its per-run "
         "line). 1 MiB messages exceed nats-server's max_payload (1 MB): on NATS they are "
         "stored as pieces. Ordered backlog: published while nothing receives, then received "
         "with FlowControl(max_messages=1000); out-of-order = a delivery whose seq is not its "
         "key's highest so far + 1.")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "_worker":
        worker_main(argv[1])
        return 0
    args = parse_args(argv)
    nats_bin = nats_server_path()
    if nats_bin is None:
        print("# nats_bench: nats-server is not installed (make nats-server): skipped")
        return 0
    started = time.monotonic()
    print_header(args, nats_bin)
    b = Bench(args)
    columns = [NATS] if args.skip_embedded else [NATS, EMBEDDED]
    with tempfile.TemporaryDirectory(prefix="nats-bench-") as tmp:
        run_on_nats(b, Path(tmp), nats_bin)
        if EMBEDDED in columns:
            run_embedded(b, Path(tmp))
    print()
    for line in table_lines(rows_for(args), columns, b.results):
        print(line)
    print()
    print(NOTES)
    if b.problems:
        print("\nProblems observed:")
        for p in b.problems:
            print(f"  - {p}")
    print(f"\n# total bench time {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
