"""Throughput and latency benchmark: our emulator vs Google's reference emulator.

Run:  .venv/bin/python bench/bench.py [--messages N] [--quick] [--skip-reference]

Every workload runs in a fresh subprocess of this script (`bench.py _worker JSON`) with a
timeout, so client-library threads never pile up and a stuck stream shows as "timeout".
The script starts its own servers on free loopback ports (temporary data dirs, removed after):

  ours (one port)  pubsub-emulator on the default durable store, gRPC + REST on one port
  ours (gRPC port) the same process, gRPC straight to --grpc-port (no one-port front)
  ours (in-memory) a second process with --in-memory (gRPC rows only)
  reference        Google's Java emulator (gRPC + REST on one port), when installed

Workloads (official google-cloud-pubsub client, 1 KiB messages):
  publish      PublisherClient, default batching, N messages, first publish -> last future
  receive+ack  gRPC: SubscriberClient.subscribe (streaming pull, FlowControl(max_messages=5000)),
               callback acks; REST has no streaming pull: 2 threads of unary pull(1000)+acknowledge.
               Time until N unique messages received; then every ack id is nacked
               (modifyAckDeadline 0, a no-op for acked messages) and the subscription pulled
               dry: anything still there is an ack that did not take.
  latency      one message per publish (BatchSettings(max_messages=1)) at a light steady rate,
               publish time in an attribute; subscriber (streaming pull / REST pull loop)
               records receive - publish.
  unary RTT    the generated (unbatched) client, sequential one-message Publish RPCs: the
               per-RPC cost of each path (where the one-port front's splice shows most).
Each workload runs --repeat times (default 3, --quick 1); the table shows medians, the
per-run lines above it every figure, including server and client CPU during the timed window.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

PROJECT = "bench-project"
VENV_BIN = Path(sys.executable).parent
GOAL_PUBLISH = 20_000
GOAL_RECEIVE = 10_000
GOAL_P50_MS = 5.0


# --------------------------------------------------------------------------------------------
# workers (run in a subprocess)
# --------------------------------------------------------------------------------------------

def _clients(host: str, transport: str, batch_settings=None):
    from google.cloud import pubsub_v1

    pub_kwargs = {}
    if batch_settings is not None:
        pub_kwargs["batch_settings"] = batch_settings
    if transport == "grpc":
        os.environ["PUBSUB_EMULATOR_HOST"] = host
        return pubsub_v1.PublisherClient(**pub_kwargs), pubsub_v1.SubscriberClient()
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    # The library forces gRPC when PUBSUB_EMULATOR_HOST is set.
    os.environ.pop("PUBSUB_EMULATOR_HOST", None)
    kw = dict(transport="rest", client_options=ClientOptions(api_endpoint=f"http://{host}"),
              credentials=AnonymousCredentials())
    return pubsub_v1.PublisherClient(**kw, **pub_kwargs), pubsub_v1.SubscriberClient(**kw)


def _rest_subscriber(host: str):
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import pubsub_v1

    os.environ.pop("PUBSUB_EMULATOR_HOST", None)
    return pubsub_v1.SubscriberClient(
        transport="rest", client_options=ClientOptions(api_endpoint=f"http://{host}"),
        credentials=AnonymousCredentials())


def _names(kind: str, transport: str) -> tuple[str, str]:
    tag = f"bench-{kind}-{transport}-{uuid.uuid4().hex[:8]}"
    return f"projects/{PROJECT}/topics/{tag}", f"projects/{PROJECT}/subscriptions/{tag}"


def _publish_all(pub, topic: str, n: int, data: bytes, timeout: float) -> tuple[float, int]:
    """Publish n messages, wait for every future; (seconds, failures)."""
    t0 = time.perf_counter()
    futures = [pub.publish(topic, data) for _ in range(n)]
    failures = 0
    for f in futures:
        try:
            f.result(timeout=timeout)
        except Exception:  # noqa: BLE001 - counted and reported
            failures += 1
    return time.perf_counter() - t0, failures


def _cpu(pid: int | None) -> float | None:
    """User+system CPU seconds of process `pid` (the server under test)."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def _cores(pid: int | None, c0: float | None, seconds: float) -> float | None:
    c1 = _cpu(pid)
    if c0 is None or c1 is None or seconds <= 0:
        return None
    return (c1 - c0) / seconds


def work_publish(host: str, transport: str, n: int, size: int, timeout: float,
                 server_pid: int | None = None) -> dict:
    pub, _sub = _clients(host, transport)
    topic, _ = _names("pub", transport)
    pub.create_topic(name=topic)
    c0, p0 = _cpu(server_pid), time.process_time()
    elapsed, failures = _publish_all(pub, topic, n, b"x" * size, timeout)
    cores = _cores(server_pid, c0, elapsed)
    client = (time.process_time() - p0) / elapsed
    pub.stop()
    return {"rate": (n - failures) / elapsed, "seconds": elapsed, "failures": failures,
            "server_cores": cores, "client_cores": client}


def _drain_check(host: str, transport: str, sub_path: str, ack_ids: list[str]) -> dict:
    """Nack every ack id we saw (no-op for acked messages), then pull the subscription dry."""
    if transport == "grpc":
        from google.cloud import pubsub_v1
        os.environ["PUBSUB_EMULATOR_HOST"] = host
        sub = pubsub_v1.SubscriberClient()
    else:
        sub = _rest_subscriber(host)
    nack_errors = 0
    for i in range(0, len(ack_ids), 1000):
        try:
            sub.modify_ack_deadline(subscription=sub_path, ack_ids=ack_ids[i:i + 1000],
                                    ack_deadline_seconds=0, timeout=30)
        except Exception as e:  # noqa: BLE001
            nack_errors += 1
            last_nack_error = repr(e)[:200]
    left: set[str] = set()
    empty_pulls = 0
    deadline = time.monotonic() + 20
    while empty_pulls < 1 and time.monotonic() < deadline:
        try:
            resp = sub.pull(subscription=sub_path, max_messages=1000, timeout=2)
            msgs = resp.received_messages
        except Exception:  # noqa: BLE001 - deadline exceeded == nothing there
            msgs = []
        if not msgs:
            empty_pulls += 1
            continue
        for m in msgs:
            left.add(m.message.message_id)
        sub.acknowledge(subscription=sub_path, ack_ids=[m.ack_id for m in msgs], timeout=30)
    out = {"left_in_backlog": len(left), "nack_errors": nack_errors}
    if nack_errors:
        out["nack_error"] = last_nack_error
    try:
        sub.close()
    except Exception:  # noqa: BLE001
        pass
    return out


def work_receive(host: str, transport: str, n: int, size: int, timeout: float,
                 server_pid: int | None = None) -> dict:
    from google.cloud import pubsub_v1

    pub, sub = _clients(host, transport)
    topic, sub_path = _names("recv", transport)
    pub.create_topic(name=topic)
    sub.create_subscription(name=sub_path, topic=topic, ack_deadline_seconds=60)
    _, failures = _publish_all(pub, topic, n, b"x" * size, timeout)
    pub.stop()
    if failures:
        return {"error": f"pre-publish: {failures} of {n} publishes failed"}

    seen: set[str] = set()
    ack_ids: list[str] = []
    deliveries = 0
    lock = threading.Lock()
    done = threading.Event()
    budget = max(10.0, timeout - 25)  # leave time for the drain check

    if transport == "grpc":
        def callback(message) -> None:
            nonlocal deliveries
            message.ack()
            with lock:
                deliveries += 1
                seen.add(message.message_id)
                ack_ids.append(message.ack_id)
                if len(seen) >= n:
                    done.set()

        c0, p0 = _cpu(server_pid), time.process_time()
        t0 = time.perf_counter()
        future = sub.subscribe(sub_path, callback,
                               flow_control=pubsub_v1.types.FlowControl(max_messages=5000))
        finished = done.wait(budget)
        elapsed = time.perf_counter() - t0
        cores = _cores(server_pid, c0, elapsed)
        client = (time.process_time() - p0) / elapsed
        time.sleep(0.5)  # let the last ack batch leave
        future.cancel()
        try:
            future.result(timeout=20)
        except Exception:  # noqa: BLE001
            pass
        sub.close()
        label_note = "streaming pull"
    else:
        stop = threading.Event()
        errors: list[str] = []

        def loop() -> None:
            nonlocal deliveries
            s = _rest_subscriber(host)
            while not stop.is_set() and not done.is_set():
                try:
                    resp = s.pull(subscription=sub_path, max_messages=1000, timeout=5)
                except Exception as e:  # noqa: BLE001
                    if not done.is_set():
                        errors.append(repr(e)[:200])
                    continue
                msgs = resp.received_messages
                if not msgs:
                    continue
                ids = [m.ack_id for m in msgs]
                try:
                    s.acknowledge(subscription=sub_path, ack_ids=ids, timeout=30)
                except Exception as e:  # noqa: BLE001
                    errors.append(repr(e)[:200])
                with lock:
                    deliveries += len(msgs)
                    ack_ids.extend(ids)
                    seen.update(m.message.message_id for m in msgs)
                    if len(seen) >= n:
                        done.set()

        c0, p0 = _cpu(server_pid), time.process_time()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=loop, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        finished = done.wait(budget)
        elapsed = time.perf_counter() - t0
        cores = _cores(server_pid, c0, elapsed)
        client = (time.process_time() - p0) / elapsed
        stop.set()
        for t in threads:
            t.join(15)
        label_note = "unary pull+ack x2 threads"
        if errors:
            label_note += f"; {len(errors)} RPC errors, first: {errors[0]}"

    result = {"rate": len(seen) / elapsed, "seconds": elapsed, "received": len(seen),
              "deliveries": deliveries, "duplicates": deliveries - len(seen), "note": label_note,
              "server_cores": cores, "client_cores": client}
    if not finished:
        result["error"] = f"only {len(seen)} of {n} received within {budget:.0f}s"
    result.update(_drain_check(host, transport, sub_path, ack_ids))
    return result


def work_latency(host: str, transport: str, rate: float, seconds: float, size: int,
                 timeout: float, server_pid: int | None = None) -> dict:
    from google.cloud import pubsub_v1

    batch = pubsub_v1.types.BatchSettings(max_messages=1, max_latency=0.001)
    pub, sub = _clients(host, transport, batch_settings=batch)
    topic, sub_path = _names("lat", transport)
    pub.create_topic(name=topic)
    sub.create_subscription(name=sub_path, topic=topic, ack_deadline_seconds=60)
    lats: list[float] = []
    seen: set[str] = set()
    lock = threading.Lock()
    stop = threading.Event()
    warm = threading.Event()

    def record(message_id: str, attrs, data: bytes) -> None:
        now = time.time_ns()
        with lock:
            if message_id in seen:
                return
            seen.add(message_id)
            if attrs.get("warm") == "1":
                warm.set()
                return
            lats.append((now - int(attrs["ts"])) / 1e6)

    if transport == "grpc":
        def callback(message) -> None:
            record(message.message_id, message.attributes, message.data)
            message.ack()

        future = sub.subscribe(sub_path, callback,
                               flow_control=pubsub_v1.types.FlowControl(max_messages=5000))
        threads = []
    else:
        def loop() -> None:
            s = _rest_subscriber(host)
            while not stop.is_set():
                try:
                    resp = s.pull(subscription=sub_path, max_messages=1000, timeout=5)
                except Exception:  # noqa: BLE001
                    continue
                msgs = resp.received_messages
                if not msgs:
                    continue
                for m in msgs:
                    record(m.message.message_id, m.message.attributes, m.message.data)
                s.acknowledge(subscription=sub_path, ack_ids=[m.ack_id for m in msgs],
                              timeout=30)

        threads = [threading.Thread(target=loop, daemon=True)]
        for t in threads:
            t.start()

    # Warm-up: wait until the subscriber path is live before timing anything.
    data = b"x" * size
    warm_deadline = time.monotonic() + 20
    while not warm.is_set() and time.monotonic() < warm_deadline:
        pub.publish(topic, data, warm="1", ts="0").result(timeout=10)
        warm.wait(1.0)
    if not warm.is_set():
        return {"error": "subscriber never received the warm-up message"}

    total = int(rate * seconds)
    futures = []
    t0 = time.perf_counter()
    for i in range(total):
        target = t0 + i / rate
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        futures.append(pub.publish(topic, data, ts=str(time.time_ns())))
    failures = 0
    for f in futures:
        try:
            f.result(timeout=30)
        except Exception:  # noqa: BLE001
            failures += 1
    tail_deadline = time.monotonic() + 10
    while time.monotonic() < tail_deadline:
        with lock:
            if len(lats) >= total - failures:
                break
        time.sleep(0.05)
    stop.set()
    if transport == "grpc":
        future.cancel()
        try:
            future.result(timeout=20)
        except Exception:  # noqa: BLE001
            pass
        sub.close()
    for t in threads:
        t.join(10)
    pub.stop()
    with lock:
        got = sorted(lats)
    if not got:
        return {"error": "no messages received"}

    def pct(p: float) -> float:
        return got[min(len(got) - 1, int(round(p / 100 * (len(got) - 1))))]

    out = {"p50": pct(50), "p99": pct(99), "max": got[-1], "received": len(got),
           "sent": total, "failures": failures}
    if len(got) < total - failures:
        out["error"] = f"only {len(got)} of {total - failures} received"
    return out


def work_rtt(host: str, transport: str, calls: int, size: int, timeout: float,
             server_pid: int | None = None) -> dict:
    """Sequential unary Publish RPCs of one message with the generated (unbatched) client:
    the per-RPC cost of the path, where the one-port front's splice shows most directly."""
    from google import pubsub_v1 as gapic

    if transport == "grpc":
        import grpc
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

        channel = grpc.insecure_channel(host)
        pub = gapic.PublisherClient(transport=PublisherGrpcTransport(channel=channel))
    else:
        from google.api_core.client_options import ClientOptions
        from google.auth.credentials import AnonymousCredentials

        os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        pub = gapic.PublisherClient(
            transport="rest", client_options=ClientOptions(api_endpoint=f"http://{host}"),
            credentials=AnonymousCredentials())
    topic, _ = _names("rtt", transport)
    pub.create_topic(name=topic)
    msg = gapic.PubsubMessage(data=b"x" * size)
    for _ in range(50):  # warm-up
        pub.publish(topic=topic, messages=[msg], timeout=timeout)
    times = []
    c0 = _cpu(server_pid)
    t_all = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        pub.publish(topic=topic, messages=[msg], timeout=timeout)
        times.append((time.perf_counter() - t0) * 1e3)
    elapsed = time.perf_counter() - t_all
    times.sort()
    return {"p50": times[len(times) // 2], "p99": times[int(0.99 * (len(times) - 1))],
            "rate": calls / elapsed, "server_cores": _cores(server_pid, c0, elapsed)}


def worker_main(spec_json: str) -> None:
    spec = json.loads(spec_json)
    kind = spec.pop("kind")
    fn = {"publish": work_publish, "receive": work_receive, "latency": work_latency,
          "rtt": work_rtt}[kind]
    try:
        result = fn(**spec)
    except Exception as e:  # noqa: BLE001
        result = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    sys.stdout.write("\nRESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # don't wait for client-library threads


# --------------------------------------------------------------------------------------------
# servers
# --------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference_emulator_path() -> str | None:
    gcloud = shutil.which("gcloud")
    if not gcloud:
        return None
    p = (Path(os.path.realpath(gcloud)).parent.parent / "platform" / "pubsub-emulator" / "bin"
         / "cloud-pubsub-emulator")
    return str(p) if p.exists() else None


class Server:
    def __init__(self, name: str, cmd: list[str], port: int, health_path: str,
                 tmpdir: str) -> None:
        self.name, self.cmd, self.port, self.health_path = name, cmd, port, health_path
        self.tmpdir = tmpdir
        self.log_path = Path(tmpdir) / "server.log"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.tmpdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log_tail()}")
            try:
                url = f"http://127.0.0.1:{self.port}{self.health_path}"
                with urllib.request.urlopen(url, timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not healthy after {timeout}s: {self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)  # our own session: server + children
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------

def run_worker(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "_worker", json.dumps(spec)]
    env = dict(os.environ)
    env.pop("PUBSUB_EMULATOR_HOST", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                            start_new_session=True, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        return {"error": "timeout", "timeout": True}
    for line in reversed(out.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": f"worker exit {proc.returncode}: {err.strip()[-400:]}"}


WORKLOADS = ("publish", "receive", "latency", "rtt")

ROWS = [
    # (label, transport, workload, metric)
    ("gRPC publish (msgs/s)", "grpc", "publish", "rate"),
    ("gRPC receive+ack, streaming pull (msgs/s)", "grpc", "receive", "rate"),
    ("gRPC publish->receive p50 (ms)", "grpc", "latency", "p50"),
    ("gRPC publish->receive p99 (ms)", "grpc", "latency", "p99"),
    ("gRPC unary Publish RTT p50 (ms), 1 msg/RPC", "grpc", "rtt", "p50"),
    ("REST publish (msgs/s)", "rest", "publish", "rate"),
    ("REST receive+ack, unary pull(1000)+ack x2 thr (msgs/s)", "rest", "receive", "rate"),
    ("REST publish->receive p50 (ms), pull loop", "rest", "latency", "p50"),
    ("REST publish->receive p99 (ms), pull loop", "rest", "latency", "p99"),
    ("REST unary Publish RTT p50 (ms), 1 msg/RPC", "rest", "rtt", "p50"),
]
CPU_ROWS = [
    ("server CPU cores, gRPC publish", "grpc", "publish", "server_cores"),
    ("client CPU cores, gRPC publish", "grpc", "publish", "client_cores"),
    ("server CPU cores, gRPC recv+ack", "grpc", "receive", "server_cores"),
    ("client CPU cores, gRPC recv+ack", "grpc", "receive", "client_cores"),
    ("server CPU cores, REST publish", "rest", "publish", "server_cores"),
    ("client CPU cores, REST publish", "rest", "publish", "client_cores"),
    ("server CPU cores, REST recv+ack", "rest", "receive", "server_cores"),
    ("client CPU cores, REST recv+ack", "rest", "receive", "client_cores"),
]


def median(values: list[float]) -> float | None:
    if not values:
        return None
    v = sorted(values)
    mid = len(v) // 2
    return v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2


def metric_median(runs: list[dict] | None, metric: str) -> float | None:
    return median([r[metric] for r in runs or [] if r.get(metric) is not None])


def cell(runs: list[dict] | None, metric: str, digits: int | None = None) -> str:
    if not runs:
        return "-"
    v = metric_median(runs, metric)
    if v is None:
        return "timeout" if any(r.get("timeout") for r in runs) else "error"
    if digits is None:
        text = f"{v:,.0f}" if metric == "rate" else f"{v:.2f}"
    else:
        text = f"{v:.{digits}f}"
    if any(r.get("error") or r.get("left_in_backlog") or r.get("failures") for r in runs):
        text += " (!)"
    return text


def main() -> None:
    if len(sys.argv) >= 3 and sys.argv[1] == "_worker":
        worker_main(sys.argv[2])
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=None,
                    help="messages per throughput workload (default 20000; --quick 3000)")
    ap.add_argument("--quick", action="store_true", help="small, fast run (one repetition)")
    ap.add_argument("--skip-reference", action="store_true",
                    help="do not run Google's reference emulator")
    ap.add_argument("--skip-in-memory", action="store_true", help="no --in-memory column")
    ap.add_argument("--skip-nats", action="store_true",
                    help="no column for the NATS JetStream backend (--store nats://)")
    ap.add_argument("--repeat", type=int, default=None,
                    help="repetitions per workload, median reported (default 3; --quick 1)")
    ap.add_argument("--rate", type=float, default=200.0, help="latency workload msgs/s")
    ap.add_argument("--latency-seconds", type=float, default=None,
                    help="latency workload duration (default 5; --quick 2)")
    ap.add_argument("--rtt-calls", type=int, default=None,
                    help="sequential unary Publish RPCs (default 2000; --quick 500)")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-workload timeout (s)")
    ap.add_argument("--size", type=int, default=1024, help="message size in bytes")
    args = ap.parse_args()
    n = args.messages or (3000 if args.quick else 20_000)
    lat_s = args.latency_seconds or (2.0 if args.quick else 5.0)
    reps = args.repeat or (1 if args.quick else 3)
    rtt_calls = args.rtt_calls or (500 if args.quick else 2000)

    started = time.monotonic()
    print(f"# Pub/Sub emulator benchmark  {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S UTC}")
    print(f"# machine: {os.cpu_count()} cores (nproc), "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{platform.system()} {platform.release()}; client: google-cloud-pubsub "
          f"{_pubsub_version()}")
    print(f"# workload: {n:,} x {args.size} B messages per throughput run; latency at "
          f"{args.rate:.0f} msgs/s for {lat_s:.0f}s; {rtt_calls} unary RPCs for RTT; "
          f"{reps} repetition(s), median shown; per-workload timeout {args.timeout:.0f}s")

    ref_bin = None if args.skip_reference else reference_emulator_path()
    ref_note = None
    if args.skip_reference:
        ref_note = "reference emulator skipped (--skip-reference)"
    elif ref_bin is None:
        ref_note = ("reference emulator absent (no gcloud / platform/pubsub-emulator): "
                    "column skipped")

    columns: list[tuple[str, str]] = [("ours", "ours (one port)"), ("ours_g", "ours (gRPC port)")]
    if not args.skip_in_memory:
        columns.append(("mem", "ours in-memory"))
    nats_bin = None if args.skip_nats else (
        shutil.which("nats-server") or
        ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None))
    if nats_bin:
        columns.append(("nats", "ours on NATS"))
    if ref_bin:
        columns.append(("ref", "reference"))
    grpc_only = {"ours_g", "mem"}
    results: dict[tuple[str, str, str], list[dict]] = {}
    problems: list[str] = []

    def spec_for(workload: str, transport: str, host: str, server: Server) -> dict:
        spec: dict = {"kind": workload, "host": host, "transport": transport,
                      "size": args.size, "timeout": args.timeout,
                      "server_pid": server.proc.pid if server.proc else None}
        if workload == "latency":
            spec.update(rate=args.rate, seconds=lat_s)
        elif workload == "rtt":
            spec.update(calls=rtt_calls)
        else:
            spec.update(n=n)
        return spec

    def run_targets(server: Server, targets: list[tuple[str, str, tuple[str, ...]]]) -> None:
        """Every workload `reps` times; targets of one server interleaved, so that drift
        (store growth, background work) hits the one-port and gRPC-port columns alike."""
        for rep in range(reps):
            for transport in ("grpc", "rest"):
                for workload in WORKLOADS:
                    # alternate the order each repetition: no column always goes first
                    for col, host, transports in (targets if rep % 2 == 0 else targets[::-1]):
                        if transport not in transports:
                            continue
                        t0 = time.perf_counter()
                        res = run_worker(spec_for(workload, transport, host, server),
                                         args.timeout + 30)
                        wall = time.perf_counter() - t0
                        results.setdefault((col, transport, workload), []).append(res)
                        short = {k: (round(v, 2) if isinstance(v, float) else v)
                                 for k, v in res.items()
                                 if not (k == "note" and v in ("streaming pull",
                                                               "unary pull+ack x2 threads"))}
                        print(f"  [{col:6}] {transport:4} {workload:8} rep {rep + 1}/{reps} "
                              f"{wall:5.1f}s  {json.dumps(short)}", flush=True)
                        if (res.get("error") or res.get("left_in_backlog")
                                or res.get("nack_errors") or res.get("failures")
                                or (res.get("note") or "").find("error") >= 0):
                            problems.append(f"{col} {transport} {workload} rep {rep + 1}: "
                                            f"{json.dumps(short)}")
                        if server.proc and server.proc.poll() is not None:
                            raise RuntimeError(f"{server.name} exited "
                                               f"({server.proc.returncode}): "
                                               f"{server.log_tail(1500)}")

    def serve(server: Server, targets, timeout: float = 60) -> None:
        print(f"# {server.name}: {' '.join(server.cmd[1:])}", flush=True)
        try:
            server.start(timeout=timeout)
            run_targets(server, targets)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{server.name}: {e}")
        finally:
            server.stop()
            log = server.log_tail(2000).strip()
            if log and server.name.startswith("ours"):
                problems.append(f"{server.name} server log (tail): {log}")

    with tempfile.TemporaryDirectory(prefix="pubsub-bench-") as tmp:
        emu = str(VENV_BIN / "pubsub-emulator")
        # 1. ours, durable store: one port + the gRPC-only port of the same process
        port, gport = free_port(), free_port()
        d = Path(tmp, "ours")
        d.mkdir()
        ours = Server("ours", [emu, "start", "--host", "127.0.0.1", "--port", str(port),
                               "--grpc-port", str(gport), "--data-dir", str(d / "data"),
                               "--log-level", "warning"], port, "/healthz", str(d))
        serve(ours, [("ours", f"127.0.0.1:{port}", ("grpc", "rest")),
                     ("ours_g", f"127.0.0.1:{gport}", ("grpc",))])
        # 2. ours, in-memory
        if not args.skip_in_memory:
            port = free_port()
            d = Path(tmp, "mem")
            d.mkdir()
            mem = Server("ours-in-memory", [emu, "start", "--host", "127.0.0.1", "--port",
                                            str(port), "--in-memory", "--data-dir",
                                            str(d / "data"), "--log-level", "warning"],
                         port, "/healthz", str(d))
            serve(mem, [("mem", f"127.0.0.1:{port}", ("grpc",))])
        # 3. ours on the NATS JetStream backend (a nats-server of its own)
        if nats_bin:
            nport, mport = free_port(), free_port()
            d = Path(tmp, "nats")
            (d / "server").mkdir(parents=True)
            (d / "emulator").mkdir()
            nats = Server("nats-server", [nats_bin, "-a", "127.0.0.1", "-p", str(nport), "-js",
                                          "-sd", str(d / "js"), "-m", str(mport)],
                          mport, "/healthz", str(d / "server"))
            try:
                nats.start()
                port = free_port()
                on_nats = Server("ours-on-nats", [emu, "start", "--host", "127.0.0.1", "--port",
                                                  str(port), "--store",
                                                  f"nats://127.0.0.1:{nport}",
                                                  "--log-level", "warning"],
                                 port, "/healthz", str(d / "emulator"))
                serve(on_nats, [("nats", f"127.0.0.1:{port}", ("grpc", "rest"))])
            except Exception as e:  # noqa: BLE001
                problems.append(f"nats-server: {e}")
            finally:
                nats.stop()
        # 4. Google's reference emulator (Java; serves gRPC and REST on one port)
        if ref_bin:
            port = free_port()
            d = Path(tmp, "ref")
            d.mkdir()
            ref = Server("reference", [ref_bin, "--host=127.0.0.1", f"--port={port}"], port,
                         "/", str(d))
            serve(ref, [("ref", f"127.0.0.1:{port}", ("grpc", "rest"))], timeout=90)

    # ---- table ----
    headers = ["workload"] + [c[1] for c in columns]
    if ref_bin:
        headers.append("ratio ours/ref")
    rows: list[list[str]] = []
    for label, transport, workload, metric in ROWS:
        row = [label]
        for col, _ in columns:
            if col in grpc_only and transport == "rest":
                row.append("n/a")
            else:
                row.append(cell(results.get((col, transport, workload)), metric))
        if ref_bin:
            a = metric_median(results.get(("ours", transport, workload)), metric)
            b = metric_median(results.get(("ref", transport, workload)), metric)
            row.append(f"{a / b:.2f}x" if a and b else "-")
        rows.append(row)
    rows.append(None)  # separator
    for label, transport, workload, metric in CPU_ROWS:
        row = [label]
        for col, _ in columns:
            if col in grpc_only and transport == "rest":
                row.append("n/a")
            else:
                row.append(cell(results.get((col, transport, workload)), metric, 2)
                           .replace(" (!)", ""))
        if ref_bin:
            row.append("")
        rows.append(row)
    real_rows = [r for r in rows if r is not None]
    widths = [max(len(str(r[i])) for r in real_rows + [headers]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    print()
    print(line(headers))
    print(sep)
    for r in rows:
        print(sep if r is None else line(r))
    print()
    print("Notes: medians of the repetitions. 'ours (gRPC port)' = the same server process, "
          "gRPC straight to --grpc-port, bypassing the one-port front. Ratio = ours (one port) "
          "/ reference (for latency rows, below 1 is better). (!) = some repetition reported a "
          "problem (listed below). REST has no streaming pull: REST receive uses unary "
          "pull+acknowledge from 2 threads, REST latency a pull loop. Unary RTT = generated "
          "(unbatched) client, sequential one-message Publish calls. CPU cores = CPU seconds / "
          "timed window; client and server share the same 2 cores.")
    if ref_note:
        print(f"Note: {ref_note}")

    # ---- the front's cost ----
    def med(col: str, transport: str, workload: str, metric: str) -> float | None:
        return metric_median(results.get((col, transport, workload)), metric)

    parts = []
    for label, workload, metric, unit in (("publish", "publish", "rate", "msgs/s"),
                                          ("receive+ack", "receive", "rate", "msgs/s"),
                                          ("latency p50", "latency", "p50", "ms"),
                                          ("latency p99", "latency", "p99", "ms"),
                                          ("unary RTT p50", "rtt", "p50", "ms")):
        a, b = med("ours", "grpc", workload, metric), med("ours_g", "grpc", workload, metric)
        if a is None or b is None:
            continue
        if unit == "ms":
            parts.append(f"{label} {a - b:+.2f} ms")
        else:
            parts.append(f"{label} {100 * (a / b - 1):+.1f}%")
    if parts:
        print("One-port front cost for gRPC (one port vs --grpc-port): " + "; ".join(parts))

    # ---- goals ----
    print()
    print(f"Goals (2-core machine): publish >= {GOAL_PUBLISH:,} msgs/s, receive+ack >= "
          f"{GOAL_RECEIVE:,} msgs/s, p50 < {GOAL_P50_MS:.0f} ms -- ours (one port, durable):")

    def verdict(v: float | None, goal: float, higher: bool = True) -> str:
        if v is None:
            return "n/a"
        ok = v >= goal if higher else v < goal
        shown = f"{v:,.0f}" if higher else f"{v:.2f} ms"
        return f"{'MET' if ok else 'NOT met'} ({shown})"

    for transport in ("grpc", "rest"):
        print(f"  {transport.upper():4}: publish "
              f"{verdict(med('ours', transport, 'publish', 'rate'), GOAL_PUBLISH)}; "
              f"receive+ack {verdict(med('ours', transport, 'receive', 'rate'), GOAL_RECEIVE)}; "
              f"p50 {verdict(med('ours', transport, 'latency', 'p50'), GOAL_P50_MS, False)}")

    if problems:
        print()
        print("Problems observed:")
        for p in problems:
            print(f"  - {p}")
    print()
    if nats_bin:
        scaling_on_nats(nats_bin, n, args.size, args.timeout)
    print(f"# total bench time {time.monotonic() - started:.0f}s")


def scaling_on_nats(nats_bin: str, n: int, size: int, timeout: float) -> None:
    """Aggregate gRPC throughput with 1 and with 3 emulator processes sharing one nats-server,
    each process driven by its own client process (n messages in all, split evenly)."""
    emu = str(VENV_BIN / "pubsub-emulator")
    print("\n# Scaling on the NATS backend: K emulator processes on one nats-server, one client "
          "process per emulator, gRPC, all on the same cores", flush=True)
    print("| emulator processes | publish (msgs/s, all clients) | receive+ack (msgs/s) |")
    print("|---|---|---|")
    for k in (1, 3):
        with tempfile.TemporaryDirectory(prefix="pubsub-scale-") as tmp:
            nport, mport = free_port(), free_port()
            Path(tmp, "nats").mkdir()
            nats = Server("nats-server", [nats_bin, "-a", "127.0.0.1", "-p", str(nport), "-js",
                                          "-sd", str(Path(tmp, "js")), "-m", str(mport)],
                          mport, "/healthz", str(Path(tmp, "nats")))
            emulators: list[Server] = []
            try:
                nats.start()
                for i in range(k):
                    port = free_port()
                    Path(tmp, f"e{i}").mkdir()
                    emulators.append(Server(f"ours-nats-{i}", [
                        emu, "start", "--host", "127.0.0.1", "--port", str(port), "--store",
                        f"nats://127.0.0.1:{nport}", "--log-level", "warning"],
                        port, "/healthz", str(Path(tmp, f"e{i}"))))
                    emulators[-1].start()
                cells = []
                for workload in ("publish", "receive"):
                    specs = [{"kind": workload, "host": f"127.0.0.1:{e.port}",
                              "transport": "grpc", "n": n // k, "size": size,
                              "timeout": timeout} for e in emulators]
                    with ThreadPoolExecutor(k) as pool:  # the clients run at the same time
                        results = list(pool.map(run_worker, specs, [timeout + 30] * k))
                    errors = [r.get("error") for r in results if r.get("error")]
                    seconds = [r.get("seconds") or (n // k) / r["rate"] for r in results
                               if r.get("rate")]
                    if errors or len(seconds) != k:
                        cells.append(f"error: {errors[:1]}")
                    else:
                        cells.append(f"{(n // k) * k / max(seconds):,.0f}")
                print(f"| {k} | {cells[0]} | {cells[1]} |", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"| {k} | error: {e} | |", flush=True)
            finally:
                for server in emulators:
                    server.stop()
                nats.stop()


def _pubsub_version() -> str:
    try:
        from importlib.metadata import version
        return version("google-cloud-pubsub")
    except Exception:  # noqa: BLE001
        return "?"


if __name__ == "__main__":
    main()
