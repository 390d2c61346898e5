"""Throughput and latency benchmark: our emulator vs Google's reference emulator.

Run:  .venv/bin/python bench/bench.py [--messages N] [--quick] [--skip-reference]
                                      [--skip-in-memory] [--skip-nats] [--skip-secure]

Every workload runs in a fresh subprocess of this script (`bench.py _worker JSON`) with a
timeout, so client-library threads never pile up and a stuck stream shows as "timeout".
The script starts its own servers on free loopback ports (temporary data dirs, removed after):

  ours (one port)  pubsub-emulator on the default durable store, gRPC + REST on one port
  ours (gRPC port) the same process, gRPC straight to --grpc-port (no one-port front)
  ours (TLS + auth) a second durable process with --tls-self-signed --auth, running beside the
                   first and interleaved with it; its clients use a service-account key file
                   (`keys create --role roles/pubsub.editor`: IAM checked on every call) and
                   the CA it made, never PUBSUB_EMULATOR_HOST
  ours (TLS + auth, admin) the same TLS + auth process, interleaved with the others; its
                   clients use a second key file, made with `keys create --admin`: an
                   administrator, authenticated alike, for whom IAM is not consulted
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
Below the table, "TLS + auth / plain": ours (TLS + auth) against ours (one port) per transport
(the issue's goal: throughput and publish -> receive p50 within 20% of plain); and "IAM on /
auth alone": ours (TLS + auth) against ours (TLS + auth, admin), the same process, per transport
(IAM's cost; the issue's goal: within 10% of --auth alone).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

# The server processes are started by tests/processes.py, as in the tests.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from processes import (  # noqa: E402
    EmulatorProcess,
    NatsServer,
    ReferenceEmulator,
    ServerProcess,
    TlsEmulatorProcess,
    free_port,
    nats_server_path,
    reference_emulator_path,
)

PROJECT = "bench-project"
BENCH_ACCOUNT = f"bench@{PROJECT}.iam.gserviceaccount.com"  # the TLS + auth column's caller
# The TLS + auth, admin column's caller: `keys create --admin`, so IAM is not consulted.
BENCH_ADMIN = f"bench-admin@{PROJECT}.iam.gserviceaccount.com"
# Under --auth IAM decides; the bench creates topics and subscriptions, publishes and consumes:
# the least role that fits, on the project (so every call also pays the IAM check).
BENCH_ROLE = "roles/pubsub.editor"
GOAL_PUBLISH = 20_000
GOAL_RECEIVE = 10_000
GOAL_P50_MS = 5.0


# --------------------------------------------------------------------------------------------
# workers (run in a subprocess)
# --------------------------------------------------------------------------------------------

# The TLS + auth columns: set by worker_main from the spec's "secure" entry ({"key_file": ...,
# "ca": ...}); None for every other column. The clients then speak TLS to `host`, trusting the
# CA, with the key file's service-account credentials (one credentials object per worker, so
# one self-signed JWT, minted at the first call), as README "TLS and credentials" shows.
_SECURE: dict | None = None


def _use_secure(secure: dict | None) -> None:
    global _SECURE
    if not secure:
        return
    from google.oauth2 import service_account

    os.environ.pop("PUBSUB_EMULATOR_HOST", None)  # with it the library drops TLS and credentials
    os.environ["REQUESTS_CA_BUNDLE"] = secure["ca"]  # the REST transport (requests) trusts the CA
    _SECURE = {"credentials": service_account.Credentials.from_service_account_file(
                   secure["key_file"]),
               "ca": Path(secure["ca"]).read_bytes()}


def _secure_grpc_transport(host: str, service: str):
    """A gRPC transport over TLS with the key file's credentials (service: publisher or
    subscriber)."""
    import grpc

    assert _SECURE is not None
    if service == "publisher":
        from google.pubsub_v1.services.publisher.transports import (
            PublisherGrpcTransport as GrpcTransport,
        )
    else:
        from google.pubsub_v1.services.subscriber.transports import (
            SubscriberGrpcTransport as GrpcTransport,
        )
    return GrpcTransport(host=host, credentials=_SECURE["credentials"],
                         ssl_channel_credentials=grpc.ssl_channel_credentials(_SECURE["ca"]))


def _rest_options(host: str) -> dict:
    """The keyword arguments of a REST client (anonymous over HTTP, or TLS + credentials)."""
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials

    # The library forces gRPC when PUBSUB_EMULATOR_HOST is set.
    os.environ.pop("PUBSUB_EMULATOR_HOST", None)
    if _SECURE is not None:
        return dict(transport="rest", client_options=ClientOptions(api_endpoint=f"https://{host}"),
                    credentials=_SECURE["credentials"])
    return dict(transport="rest", client_options=ClientOptions(api_endpoint=f"http://{host}"),
                credentials=AnonymousCredentials())


def close_streaming(future, sub) -> None:
    """End a streaming pull of the official client and its subscriber (the last ack batch is
    given half a second to leave first: the client sends acks in the background)."""
    time.sleep(0.5)
    future.cancel()
    try:
        future.result(timeout=20)
    except Exception:  # noqa: BLE001
        pass
    sub.close()


def _grpc_subscriber(host: str):
    from google.cloud import pubsub_v1

    if _SECURE is not None:
        return pubsub_v1.SubscriberClient(transport=_secure_grpc_transport(host, "subscriber"))
    os.environ["PUBSUB_EMULATOR_HOST"] = host
    return pubsub_v1.SubscriberClient()


def _clients(host: str, transport: str, batch_settings=None):
    from google.cloud import pubsub_v1

    pub_kwargs = {}
    if batch_settings is not None:
        pub_kwargs["batch_settings"] = batch_settings
    if transport == "grpc" and _SECURE is not None:
        return (pubsub_v1.PublisherClient(transport=_secure_grpc_transport(host, "publisher"),
                                          **pub_kwargs),
                _grpc_subscriber(host))
    if transport == "grpc":
        os.environ["PUBSUB_EMULATOR_HOST"] = host
        return pubsub_v1.PublisherClient(**pub_kwargs), pubsub_v1.SubscriberClient()
    kw = _rest_options(host)
    return pubsub_v1.PublisherClient(**kw, **pub_kwargs), pubsub_v1.SubscriberClient(**kw)


def _rest_subscriber(host: str):
    from google.cloud import pubsub_v1

    return pubsub_v1.SubscriberClient(**_rest_options(host))


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
        sub = _grpc_subscriber(host)
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
        close_streaming(future, sub)
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
        close_streaming(future, sub)
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

    if transport == "grpc" and _SECURE is not None:
        pub = gapic.PublisherClient(transport=_secure_grpc_transport(host, "publisher"))
    elif transport == "grpc":
        import grpc
        from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport

        channel = grpc.insecure_channel(host)
        pub = gapic.PublisherClient(transport=PublisherGrpcTransport(channel=channel))
    else:
        pub = gapic.PublisherClient(**_rest_options(host))
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
    secure = spec.pop("secure", None)
    fn = {"publish": work_publish, "receive": work_receive, "latency": work_latency,
          "rtt": work_rtt}[kind]
    try:
        _use_secure(secure)
        result = fn(**spec)
    except Exception as e:  # noqa: BLE001
        result = {"error": f"{type(e).__name__}: {str(e)[:300]}"}
    sys.stdout.write("\nRESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    os._exit(0)  # don't wait for client-library threads


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
TRANSPORTS = ("grpc", "rest")
BOTH = TRANSPORTS
GRPC_ONLY = ("grpc",)


@dataclass(frozen=True)
class Row:
    """One line of the results table: `metric` of `workload` over `transport`, per column.

    `cpu` rows show two decimals, no (!) mark and an empty ratio cell.
    """

    label: str
    transport: str
    workload: str
    metric: str
    cpu: bool = False


ROWS = [
    Row("gRPC publish (msgs/s)", "grpc", "publish", "rate"),
    Row("gRPC receive+ack, streaming pull (msgs/s)", "grpc", "receive", "rate"),
    Row("gRPC publish->receive p50 (ms)", "grpc", "latency", "p50"),
    Row("gRPC publish->receive p99 (ms)", "grpc", "latency", "p99"),
    Row("gRPC unary Publish RTT p50 (ms), 1 msg/RPC", "grpc", "rtt", "p50"),
    Row("REST publish (msgs/s)", "rest", "publish", "rate"),
    Row("REST receive+ack, unary pull(1000)+ack x2 thr (msgs/s)", "rest", "receive", "rate"),
    Row("REST publish->receive p50 (ms), pull loop", "rest", "latency", "p50"),
    Row("REST publish->receive p99 (ms), pull loop", "rest", "latency", "p99"),
    Row("REST unary Publish RTT p50 (ms), 1 msg/RPC", "rest", "rtt", "p50"),
]
CPU_ROWS = [
    Row("server CPU cores, gRPC publish", "grpc", "publish", "server_cores", cpu=True),
    Row("client CPU cores, gRPC publish", "grpc", "publish", "client_cores", cpu=True),
    Row("server CPU cores, gRPC recv+ack", "grpc", "receive", "server_cores", cpu=True),
    Row("client CPU cores, gRPC recv+ack", "grpc", "receive", "client_cores", cpu=True),
    Row("server CPU cores, REST publish", "rest", "publish", "server_cores", cpu=True),
    Row("client CPU cores, REST publish", "rest", "publish", "client_cores", cpu=True),
    Row("server CPU cores, REST recv+ack", "rest", "receive", "server_cores", cpu=True),
    Row("client CPU cores, REST recv+ack", "rest", "receive", "client_cores", cpu=True),
]
TABLE = [*ROWS, None, *CPU_ROWS]  # None: a separator line


@dataclass(frozen=True)
class Column:
    """A column of the table: one server (or one port of it) and the transports it serves."""

    key: str
    title: str
    transports: tuple[str, ...] = BOTH


# The columns in table order; which of them run depends on the flags and on what is installed.
OURS = Column("ours", "ours (one port)")
OURS_GRPC = Column("ours_g", "ours (gRPC port)", GRPC_ONLY)
SECURE = Column("tls", "ours (TLS + auth)")
SECURE_ADMIN = Column("tlsadm", "ours (TLS + auth, admin)")  # the same process, an admin key
MEMORY = Column("mem", "ours in-memory", GRPC_ONLY)
NATS = Column("nats", "ours on NATS")
REFERENCE = Column("ref", "reference")

# The one-port front's cost: (label, workload, metric, unit), ours one port vs --grpc-port.
FRONT_COST = [
    ("publish", "publish", "rate", "msgs/s"),
    ("receive+ack", "receive", "rate", "msgs/s"),
    ("latency p50", "latency", "p50", "ms"),
    ("latency p99", "latency", "p99", "ms"),
    ("unary RTT p50", "rtt", "p50", "ms"),
]

# A column against another: (label, workload, metric, judged against the goal). TLS + auth
# against plain: ours (TLS + auth) vs ours (one port), both durable, both on the one port; IAM
# on against auth alone: ours (TLS + auth) vs ours (TLS + auth, admin), one process.
SECURE_COST = [
    ("publish", "publish", "rate", True),
    ("receive+ack", "receive", "rate", True),
    ("latency p50", "latency", "p50", True),
    ("unary RTT p50", "rtt", "p50", False),
]
SECURE_GOAL = 0.20  # the goal: TLS + auth within 20% of plain
IAM_GOAL = 0.10  # the goal: IAM on within 10% of --auth alone

NOTES = ("Notes: medians of the repetitions. 'ours (gRPC port)' = the same server process, "
         "gRPC straight to --grpc-port, bypassing the one-port front. Ratio = ours (one port) "
         "/ reference (for latency rows, below 1 is better). (!) = some repetition reported a "
         "problem (listed below). REST has no streaming pull: REST receive uses unary "
         "pull+acknowledge from 2 threads, REST latency a pull loop. Unary RTT = generated "
         "(unbatched) client, sequential one-message Publish calls. CPU cores = CPU seconds / "
         "timed window; client and server share the same 2 cores.")

SECURE_NOTE = ("'ours (TLS + auth)' = a second durable process with --tls-self-signed --auth, run "
               "beside ours and interleaved with it; the official client over TLS (the CA it "
               "made) with a service-account key file (roles/pubsub.editor on the project): one "
               "self-signed JWT per client process, verified by the server on every call, "
               "and IAM checked on every call.")
SECURE_ADMIN_NOTE = ("'ours (TLS + auth, admin)' = the same TLS + auth process, interleaved with "
                     "it, its clients with a key made by `keys create --admin`: TLS and the JWT "
                     "alike, but an administrator, for whom IAM is not consulted (so 'IAM on / "
                     "auth alone' is IAM's cost).")

Results = dict[tuple[str, str, str], list[dict]]  # (column key, transport, workload) -> runs


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


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------

def row_cells(row: Row, columns: list[Column], results: Results, ratio: bool) -> list[str]:
    """The label, one cell per column, and the ours/ref ratio cell when `ratio`."""
    cells = [row.label]
    for col in columns:
        if row.transport not in col.transports:
            cells.append("n/a")
        elif row.cpu:
            runs = results.get((col.key, row.transport, row.workload))
            cells.append(cell(runs, row.metric, 2).replace(" (!)", ""))
        else:
            cells.append(cell(results.get((col.key, row.transport, row.workload)), row.metric))
    if ratio:
        cells.append("" if row.cpu else ratio_cell(row, results))
    return cells


def ratio_cell(row: Row, results: Results) -> str:
    a = metric_median(results.get((OURS.key, row.transport, row.workload)), row.metric)
    b = metric_median(results.get((REFERENCE.key, row.transport, row.workload)), row.metric)
    return f"{a / b:.2f}x" if a and b else "-"


def table_lines(columns: list[Column], results: Results) -> list[str]:
    """The results table, Markdown, one line per Row (and a separator line for None)."""
    ratio = any(col.key == REFERENCE.key for col in columns)
    headers = ["workload"] + [col.title for col in columns]
    if ratio:
        headers.append("ratio ours/ref")
    rows = [None if row is None else row_cells(row, columns, results, ratio) for row in TABLE]
    real_rows = [r for r in rows if r is not None]
    widths = [max(len(str(r[i])) for r in real_rows + [headers]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths, strict=True))) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return [line(headers), sep] + [sep if r is None else line(r) for r in rows]


def front_cost_line(results: Results) -> str | None:
    """What the one-port front costs gRPC: ours (one port) against ours (--grpc-port)."""
    parts = []
    for label, workload, metric, unit in FRONT_COST:
        a = metric_median(results.get((OURS.key, "grpc", workload)), metric)
        b = metric_median(results.get((OURS_GRPC.key, "grpc", workload)), metric)
        if a is None or b is None:
            continue
        if unit == "ms":
            parts.append(f"{label} {a - b:+.2f} ms")
        else:
            parts.append(f"{label} {100 * (a / b - 1):+.1f}%")
    if not parts:
        return None
    return "One-port front cost for gRPC (one port vs --grpc-port): " + "; ".join(parts)


def cost_lines(title: str, results: Results, measured: Column, baseline: Column,
               goal: float) -> list[str]:
    """`title`: `measured` against `baseline`, per transport (SECURE_COST's workloads); a ratio
    outside the goal (throughput below 1 - goal, p50 above 1 + goal) is marked (!)."""
    lines = []
    for transport in TRANSPORTS:
        parts = []
        for label, workload, metric, judged in SECURE_COST:
            a = metric_median(results.get((measured.key, transport, workload)), metric)
            b = metric_median(results.get((baseline.key, transport, workload)), metric)
            if not a or not b:
                continue
            ratio = a / b
            text = f"{label} {ratio:.2f}x"
            if metric != "rate":
                text += f" ({a - b:+.2f} ms)"
            if judged and (ratio < 1 - goal if metric == "rate" else ratio > 1 + goal):
                text += " (!)"
            parts.append(text)
        if parts:
            lines.append(f"  {transport.upper():4}: " + "; ".join(parts))
    if not lines:
        return []
    return [f"{title} ({measured.title} / {baseline.title}; goal: within {goal:.0%}, (!) = "
            f"outside it; RTT not judged):", *lines]


def secure_cost_lines(results: Results) -> list[str]:
    """TLS + auth / plain: ours (TLS + auth) against ours (one port) (goal: within 20%)."""
    return cost_lines("TLS + auth / plain", results, SECURE, OURS, SECURE_GOAL)


def iam_cost_lines(results: Results) -> list[str]:
    """IAM on / auth alone: ours (TLS + auth), IAM checked on every call, against ours (TLS +
    auth, admin), IAM not consulted, one process (goal: within 10%): throughput, then the
    server's CPU per message, which is what IAM adds to the server's work."""
    lines = cost_lines("IAM on / auth alone", results, SECURE, SECURE_ADMIN, IAM_GOAL)
    return lines + cpu_cost_lines("IAM on / auth alone, server CPU per message", results,
                                  SECURE, SECURE_ADMIN, IAM_GOAL)


def server_us_per_message(runs: list[dict] | None) -> float | None:
    """Median over the runs of the server's CPU microseconds per message handled (its CPU
    cores over the timed window / messages per second)."""
    return median([r["server_cores"] / r["rate"] * 1e6 for r in runs or []
                   if r.get("server_cores") and r.get("rate") and not r.get("error")])


def cpu_cost_lines(title: str, results: Results, measured: Column, baseline: Column,
                   goal: float) -> list[str]:
    """`title`: the server's CPU per message of `measured` against `baseline`, per transport,
    for publish and receive+ack. Client and server share two cores, so throughput ratios of
    two columns swing with how the scheduler shared them in each run (either way, run to
    run); CPU per message does not depend on who else was running (above 1 + goal: (!))."""
    lines = []
    for transport in TRANSPORTS:
        parts = []
        for label, workload in (("publish", "publish"), ("receive+ack", "receive")):
            a = server_us_per_message(results.get((measured.key, transport, workload)))
            b = server_us_per_message(results.get((baseline.key, transport, workload)))
            if a and b:
                mark = " (!)" if a / b > 1 + goal else ""
                parts.append(f"{label} {a:.0f} / {b:.0f} us = {a / b:.2f}x{mark}")
        if parts:
            lines.append(f"  {transport.upper():4}: " + "; ".join(parts))
    return [f"{title} ({measured.title} / {baseline.title}):", *lines] if lines else []


def verdict(v: float | None, goal: float, higher: bool = True) -> str:
    if v is None:
        return "n/a"
    ok = v >= goal if higher else v < goal
    shown = f"{v:,.0f}" if higher else f"{v:.2f} ms"
    return f"{'MET' if ok else 'NOT met'} ({shown})"


def goal_lines(results: Results) -> list[str]:
    def med(transport: str, workload: str, metric: str) -> float | None:
        return metric_median(results.get((OURS.key, transport, workload)), metric)

    lines = [f"Goals (2-core machine): publish >= {GOAL_PUBLISH:,} msgs/s, receive+ack >= "
             f"{GOAL_RECEIVE:,} msgs/s, p50 < {GOAL_P50_MS:.0f} ms -- ours (one port, durable):"]
    for transport in TRANSPORTS:
        lines.append(
            f"  {transport.upper():4}: publish "
            f"{verdict(med(transport, 'publish', 'rate'), GOAL_PUBLISH)}; "
            f"receive+ack {verdict(med(transport, 'receive', 'rate'), GOAL_RECEIVE)}; "
            f"p50 {verdict(med(transport, 'latency', 'p50'), GOAL_P50_MS, False)}")
    return lines


def print_report(columns: list[Column], results: Results, problems: list[str],
                 ref_note: str | None) -> None:
    """Everything after the per-run lines: table, notes, front cost, goals, problems."""
    print()
    for line in table_lines(columns, results):
        print(line)
    print()
    print(NOTES)
    if ref_note:
        print(f"Note: {ref_note}")
    front = front_cost_line(results)
    if front:
        print(front)
    if SECURE in columns:
        print(SECURE_NOTE)
        for line in secure_cost_lines(results):
            print(line)
    if SECURE_ADMIN in columns:
        print(SECURE_ADMIN_NOTE)
        for line in iam_cost_lines(results):
            print(line)
    print()
    for line in goal_lines(results):
        print(line)
    if problems:
        print()
        print("Problems observed:")
        for p in problems:
            print(f"  - {p}")
    print()


# --------------------------------------------------------------------------------------------
# running the workloads
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Settings:
    n: int
    size: int
    timeout: float
    rate: float
    latency_seconds: float
    reps: int
    rtt_calls: int


@dataclass(frozen=True)
class Target:
    """One column served by a server process: where its clients connect, and (TLS + auth)
    what they connect with: {"key_file": ..., "ca": ...}."""

    column: Column
    host: str
    server: ServerProcess
    secure: dict | None = field(default=None, compare=False, hash=False)


@dataclass
class Bench:
    """The results of every workload run so far, and the problems seen."""

    settings: Settings
    results: Results = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def spec(self, workload: str, transport: str, target: Target) -> dict:
        s = self.settings
        server = target.server
        spec: dict = {"kind": workload, "host": target.host, "transport": transport,
                      "size": s.size, "timeout": s.timeout,
                      "server_pid": server.proc.pid if server.proc else None}
        if target.secure:
            spec["secure"] = target.secure
        if workload == "latency":
            spec.update(rate=s.rate, seconds=s.latency_seconds)
        elif workload == "rtt":
            spec.update(calls=s.rtt_calls)
        else:
            spec.update(n=s.n)
        return spec

    def run_once(self, target: Target, transport: str, workload: str, rep: int) -> None:
        """One workload in a worker process; records it, prints its line, notes problems."""
        col = target.column.key
        server = target.server
        t0 = time.perf_counter()
        res = run_worker(self.spec(workload, transport, target), self.settings.timeout + 30)
        wall = time.perf_counter() - t0
        self.results.setdefault((col, transport, workload), []).append(res)
        short = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in res.items()
                 if not (k == "note" and v in ("streaming pull", "unary pull+ack x2 threads"))}
        print(f"  [{col:6}] {transport:4} {workload:8} rep {rep + 1}/{self.settings.reps} "
              f"{wall:5.1f}s  {json.dumps(short)}", flush=True)
        if (res.get("error") or res.get("left_in_backlog") or res.get("nack_errors")
                or res.get("failures") or (res.get("note") or "").find("error") >= 0):
            self.problems.append(f"{col} {transport} {workload} rep {rep + 1}: "
                                 f"{json.dumps(short)}")
        if server.proc and server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited ({server.proc.returncode}): "
                               f"{server.log_tail(1500)}")

    def run_targets(self, targets: list[Target]) -> None:
        """Every workload `reps` times; the targets (of one server or of servers running side
        by side) interleaved, so that drift (store growth, background work, other load on the
        machine) hits the one-port, gRPC-port and both TLS + auth columns alike."""
        for rep in range(self.settings.reps):
            # alternate the order each repetition: no column always goes first
            ordered = targets if rep % 2 == 0 else targets[::-1]
            for transport in TRANSPORTS:
                for workload in WORKLOADS:
                    for target in ordered:
                        if transport in target.column.transports:
                            self.run_once(target, transport, workload, rep)

    def serve(self, servers: list[ServerProcess], targets: list[Target]) -> None:
        """Start `servers` (side by side), run every workload against the targets of those
        that started, stop them."""
        started: list[ServerProcess] = []
        try:
            for server in servers:
                print(f"# {server.name}: {' '.join(server.cmd[1:])}", flush=True)
                try:
                    started.append(server.start())
                except Exception as e:  # noqa: BLE001
                    self.problems.append(f"{server.name}: {e}")
            self.run_targets([t for t in targets if any(t.server is s for s in started)])
        except Exception as e:  # noqa: BLE001
            self.problems.append(f"{', '.join(s.name for s in servers)}: {e}")
        finally:
            for server in servers:
                server.stop()
                log = server.log_tail(2000).strip()
                if log and server.name.startswith("ours"):
                    self.problems.append(f"{server.name} server log (tail): {log}")


# --------------------------------------------------------------------------------------------
# the servers
# --------------------------------------------------------------------------------------------

def our_emulator(name: str, work_dir: Path, extra_args: list[str]) -> EmulatorProcess:
    """`pubsub-emulator start` for the bench: its own session, logging warnings to a file in
    `work_dir` (and run there), data in work_dir/data."""
    work_dir.mkdir(parents=True, exist_ok=True)
    return EmulatorProcess(data_dir=work_dir / "data",
                           extra_args=[*extra_args, "--log-level", "warning"], name=name,
                           log_path=work_dir / "server.log", cwd=work_dir, new_session=True,
                           start_timeout=60)


class SecureEmulator(TlsEmulatorProcess):
    """Ours with `--tls-self-signed --auth` on the durable store, for the TLS + auth columns:
    ready when /healthz answers over TLS (trusting the CA it made in DATA_DIR/tls/); start()
    then makes the clients' key files with `keys create` beside the running server: one
    granting the account BENCH_ROLE on the bench's project (IAM checked on every call), one
    of an administrator (`--admin`: IAM not consulted)."""

    def __init__(self, name: str, work_dir: Path) -> None:
        work_dir.mkdir(parents=True, exist_ok=True)
        super().__init__(data_dir=work_dir / "data",
                         extra_args=["--tls-self-signed", "--auth", "--log-level", "warning"],
                         name=name, log_path=work_dir / "server.log", cwd=work_dir,
                         new_session=True, start_timeout=60)
        self.key_file = work_dir / "bench-key.json"
        self.admin_key_file = work_dir / "bench-admin-key.json"

    @property
    def client_spec(self) -> dict:
        """What a worker of the TLS + auth column needs besides the host: key file and CA."""
        return {"key_file": str(self.key_file), "ca": str(self.ca)}

    @property
    def admin_client_spec(self) -> dict:
        """The same for the TLS + auth, admin column: the administrator's key file."""
        return {"key_file": str(self.admin_key_file), "ca": str(self.ca)}

    def start(self) -> SecureEmulator:
        super().start()
        self.create_key(BENCH_ACCOUNT, self.key_file, "--role", BENCH_ROLE)
        self.create_key(BENCH_ADMIN, self.admin_key_file, "--admin")
        return self

    def create_key(self, email: str, out: Path, *extra: str) -> None:
        """`keys create EMAIL --out OUT [extra]` in the running server's store."""
        done = subprocess.run(
            [str(Path(sys.executable).parent / "pubsub-emulator"), "keys", "create", email,
             "--out", str(out), "--data-dir", self.data_dir, "--url", f"https://{self.host}",
             *extra], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"keys create {email} failed ({done.returncode}): "
                               f"{(done.stderr or done.stdout).strip()[-400:]}")


def bench_nats_server(nats_bin: str, work_dir: Path) -> NatsServer:
    """nats-server with JetStream (store in work_dir/js), ready when its monitor says so."""
    return NatsServer(work_dir / "js", name=None, monitor_port=free_port(),
                      log_path=work_dir / "nats-server.log", start_timeout=60,
                      binary=nats_bin)


def run_ours(bench: Bench, tmp: Path, secure: bool) -> None:
    """Ours on the durable store: the one port and the gRPC-only port of the same process;
    with `secure`, beside it a second process with TLS and --auth serving two columns (an
    editor's key, an administrator's), their workloads interleaved with the first's (so that
    their ratios to plain and to each other are not ratios of two moments)."""
    gport = free_port()
    server = our_emulator("ours", tmp / "ours", ["--grpc-port", str(gport)])
    servers: list[ServerProcess] = [server]
    targets = [Target(OURS, server.host, server),
               Target(OURS_GRPC, f"127.0.0.1:{gport}", server)]
    if secure:
        tls = SecureEmulator("ours-tls-auth", tmp / "tls")
        servers.append(tls)
        targets += [Target(SECURE, tls.host, tls, tls.client_spec),
                    Target(SECURE_ADMIN, tls.host, tls, tls.admin_client_spec)]
    bench.serve(servers, targets)


def run_in_memory(bench: Bench, tmp: Path) -> None:
    server = our_emulator("ours-in-memory", tmp / "mem", ["--in-memory"])
    bench.serve([server], [Target(MEMORY, server.host, server)])


def run_on_nats(bench: Bench, tmp: Path, nats_bin: str) -> None:
    """Ours on the NATS JetStream backend, with a nats-server of its own."""
    nats = bench_nats_server(nats_bin, tmp / "nats")
    try:
        nats.start()
        server = our_emulator("ours-on-nats", tmp / "nats" / "emulator", ["--store", nats.url])
        bench.serve([server], [Target(NATS, server.host, server)])
    except Exception as e:  # noqa: BLE001
        bench.problems.append(f"nats-server: {e}")
    finally:
        nats.stop()


def run_reference(bench: Bench, tmp: Path, ref_bin: str) -> None:
    """Google's reference emulator (Java; serves gRPC and REST on one port)."""
    server = ReferenceEmulator(ref_bin, tmp / "ref")
    bench.serve([server], [Target(REFERENCE, server.host, server)])


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=None,
                    help="messages per throughput workload (default 20000; --quick 3000)")
    ap.add_argument("--quick", action="store_true", help="small, fast run (one repetition)")
    ap.add_argument("--skip-reference", action="store_true",
                    help="do not run Google's reference emulator")
    ap.add_argument("--skip-in-memory", action="store_true", help="no --in-memory column")
    ap.add_argument("--skip-nats", action="store_true",
                    help="no column for the NATS JetStream backend (--store nats://)")
    ap.add_argument("--skip-secure", action="store_true",
                    help="no columns for ours with TLS and --auth (--tls-self-signed --auth): "
                         "neither the editor's key (IAM checked) nor the administrator's")
    ap.add_argument("--repeat", type=int, default=None,
                    help="repetitions per workload, median reported (default 3; --quick 1)")
    ap.add_argument("--rate", type=float, default=200.0, help="latency workload msgs/s")
    ap.add_argument("--latency-seconds", type=float, default=None,
                    help="latency workload duration (default 5; --quick 2)")
    ap.add_argument("--rtt-calls", type=int, default=None,
                    help="sequential unary Publish RPCs (default 2000; --quick 500)")
    ap.add_argument("--timeout", type=float, default=120.0, help="per-workload timeout (s)")
    ap.add_argument("--size", type=int, default=1024, help="message size in bytes")
    return ap.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    """The flags with the --quick / full defaults filled in."""
    return Settings(n=args.messages or (3000 if args.quick else 20_000), size=args.size,
                    timeout=args.timeout, rate=args.rate,
                    latency_seconds=args.latency_seconds or (2.0 if args.quick else 5.0),
                    reps=args.repeat or (1 if args.quick else 3),
                    rtt_calls=args.rtt_calls or (500 if args.quick else 2000))


def print_header(s: Settings) -> None:
    print(f"# Pub/Sub emulator benchmark  {datetime.now(timezone.utc):%Y-%m-%d %H:%M:%S UTC}")
    print(f"# machine: {os.cpu_count()} cores (nproc), "
          f"{platform.python_implementation()} {platform.python_version()}, "
          f"{platform.system()} {platform.release()}; client: google-cloud-pubsub "
          f"{_pubsub_version()}")
    print(f"# workload: {s.n:,} x {s.size} B messages per throughput run; latency at "
          f"{s.rate:.0f} msgs/s for {s.latency_seconds:.0f}s; {s.rtt_calls} unary RPCs for RTT; "
          f"{s.reps} repetition(s), median shown; per-workload timeout {s.timeout:.0f}s")


def reference_plan(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(the reference emulator's binary or None, the note to print when it does not run)."""
    if args.skip_reference:
        return None, "reference emulator skipped (--skip-reference)"
    ref_bin = reference_emulator_path()
    if ref_bin is None:
        return None, ("reference emulator absent (no gcloud / platform/pubsub-emulator): "
                      "column skipped")
    return ref_bin, None


def columns_for(args: argparse.Namespace, nats_bin: str | None,
                ref_bin: str | None) -> list[Column]:
    columns = [OURS, OURS_GRPC]
    if not args.skip_secure:
        columns += [SECURE, SECURE_ADMIN]
    if not args.skip_in_memory:
        columns.append(MEMORY)
    if nats_bin:
        columns.append(NATS)
    if ref_bin:
        columns.append(REFERENCE)
    return columns


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) >= 2 and argv[0] == "_worker":
        worker_main(argv[1])
        return
    args = parse_args(argv)
    settings = settings_from(args)
    started = time.monotonic()
    print_header(settings)
    ref_bin, ref_note = reference_plan(args)
    nats_bin = None if args.skip_nats else nats_server_path()
    columns = columns_for(args, nats_bin, ref_bin)
    bench = Bench(settings)
    with tempfile.TemporaryDirectory(prefix="pubsub-bench-") as tmp:
        run_ours(bench, Path(tmp), SECURE in columns)
        if MEMORY in columns:
            run_in_memory(bench, Path(tmp))
        if nats_bin:
            run_on_nats(bench, Path(tmp), nats_bin)
        if ref_bin:
            run_reference(bench, Path(tmp), ref_bin)
    print_report(columns, bench.results, bench.problems, ref_note)
    if nats_bin:
        scaling_on_nats(nats_bin, settings.n, settings.size, settings.timeout)
    print(f"# total bench time {time.monotonic() - started:.0f}s")


# --------------------------------------------------------------------------------------------
# scaling on NATS
# --------------------------------------------------------------------------------------------

def scaling_on_nats(nats_bin: str, n: int, size: int, timeout: float) -> None:
    """Aggregate gRPC throughput with 1 and with 3 emulator processes sharing one nats-server,
    each process driven by its own client process (n messages in all, split evenly)."""
    print("\n# Scaling on the NATS backend: K emulator processes on one nats-server, one client "
          "process per emulator, gRPC, all on the same cores", flush=True)
    print("| emulator processes | publish (msgs/s, all clients) | receive+ack (msgs/s) |")
    print("|---|---|---|")
    for k in (1, 3):
        with tempfile.TemporaryDirectory(prefix="pubsub-scale-") as tmp:
            print(f"| {k} | {scaling_cells(nats_bin, Path(tmp), k, n, size, timeout)} |",
                  flush=True)


def scaling_cells(nats_bin: str, tmp: Path, k: int, n: int, size: int, timeout: float) -> str:
    """'publish | receive' of k emulator processes on one fresh nats-server (or the error)."""
    nats = bench_nats_server(nats_bin, tmp / "nats")
    emulators: list[EmulatorProcess] = []
    try:
        nats.start()
        for i in range(k):
            emulators.append(our_emulator(f"ours-nats-{i}", tmp / f"e{i}",
                                          ["--store", nats.url]).start())
        return " | ".join(scaling_cell(emulators, workload, n, size, timeout)
                          for workload in ("publish", "receive"))
    except Exception as e:  # noqa: BLE001
        return f"error: {e} |"
    finally:
        for server in emulators:
            server.stop()
        nats.stop()


def scaling_cell(emulators: list[EmulatorProcess], workload: str, n: int, size: int,
                 timeout: float) -> str:
    """Aggregate msgs/s of one client process per emulator, all running at the same time."""
    k = len(emulators)
    specs = [{"kind": workload, "host": e.host, "transport": "grpc", "n": n // k, "size": size,
              "timeout": timeout} for e in emulators]
    with ThreadPoolExecutor(k) as pool:
        results = list(pool.map(run_worker, specs, [timeout + 30] * k))
    errors = [r.get("error") for r in results if r.get("error")]
    seconds = [r.get("seconds") or (n // k) / r["rate"] for r in results if r.get("rate")]
    if errors or len(seconds) != k:
        return f"error: {errors[:1]}"
    return f"{(n // k) * k / max(seconds):,.0f}"


def _pubsub_version() -> str:
    try:
        from importlib.metadata import version
        return version("google-cloud-pubsub")
    except Exception:  # noqa: BLE001
        return "?"


if __name__ == "__main__":
    main()
