"""The push worker as a subprocess against a real emulator and a real HTTP endpoint."""

from __future__ import annotations

import base64
import importlib.util
import os
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

from pw_helpers import PubSub, WorkerProcess, sub_entry

from push_endpoint import Got, Receiver, statuses
from support import free_port, wait_for

StartWorker = Callable[..., WorkerProcess]
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")
DOWN_SECONDS = float(os.environ.get("PUSH_WORKER_TEST_DOWN_SECONDS", "20"))


def test_every_message_delivered_once_with_push_envelope(
        pubsub: PubSub, endpoint: Receiver, start_worker: StartWorker) -> None:
    topic = pubsub.topic()
    dead_letter = pubsub.topic()
    plain = pubsub.subscription(topic)
    with_dlq = pubsub.subscription(topic, dead_letter_topic=dead_letter)
    token = "s3cret-T0ken/with+chars"
    metrics_port = free_port() if importlib.util.find_spec("prometheus_client") else None
    worker = start_worker({
        "pubsub_endpoint": pubsub.host,
        "metrics_port": metrics_port,
        "subscriptions": [
            sub_entry(plain, endpoint.url(), token=token, concurrency=4),
            sub_entry(with_dlq, endpoint.url("/push?dlq=1"), token=token),
        ]})

    sent = pubsub.publish(topic, 20, prefix="plain")
    sent |= pubsub.publish(topic, 3, prefix="attrs", color="blue", size="L")
    ordered = pubsub.publisher.publish(topic, b"ordered", ordering_key="key-1").result(30)
    sent[ordered] = b"ordered"

    wait_for(lambda: len(endpoint.snapshot()) >= 2 * len(sent), timeout=60,
             message="every message on both subscriptions")
    requests = endpoint.snapshot()
    if metrics_port is not None:
        url = f"http://127.0.0.1:{metrics_port}/metrics"

        def metrics_show_all() -> bool:
            try:
                text = urllib.request.urlopen(url, timeout=2).read().decode()
            except OSError:
                return False
            return f'push_worker_delivered_total{{subscription="{plain}"}} {len(sent)}.0' \
                in text and "push_worker_push_latency_seconds_bucket" in text

        wait_for(metrics_show_all, timeout=10, message="Prometheus metrics")
    worker_rc = worker.terminate()
    assert worker_rc == 0, worker.log()[-3000:]

    by_sub: dict[str, list[dict[str, Any]]] = {plain: [], with_dlq: []}
    for r in requests:
        assert r.route == "/push"
        assert r.query["token"] == [token]
        assert r.header("content-type") == "application/json"
        body = r.envelope
        by_sub[body["subscription"]].append(body)
        assert ("dlq" in r.query) == (body["subscription"] == with_dlq)

    for sub, bodies in by_sub.items():
        ids = Counter(b["message"]["messageId"] for b in bodies)
        assert ids == Counter(set(sent)), f"{sub}: each message exactly once"
        for body in bodies:
            msg = body["message"]
            mid = msg["messageId"]
            assert base64.b64decode(msg["data"]) == sent[mid]
            assert msg["message_id"] == mid
            assert RFC3339_Z.match(msg["publishTime"]), msg["publishTime"]
            assert msg["publish_time"] == msg["publishTime"]
            if sent[mid].startswith(b"attrs"):
                assert msg["attributes"] == {"color": "blue", "size": "L"}
            else:
                assert "attributes" not in msg
            if mid == ordered:
                assert msg["orderingKey"] == "key-1"
            else:
                assert "orderingKey" not in msg
            expected_keys = {"data", "messageId", "message_id", "publishTime", "publish_time"}
            expected_keys |= {"attributes"} if "attributes" in msg else set()
            expected_keys |= {"orderingKey"} if "orderingKey" in msg else set()
            assert set(msg) == expected_keys
            if sub == with_dlq:
                assert set(body) == {"message", "subscription", "deliveryAttempt"}
                assert body["deliveryAttempt"] >= 1
            else:
                assert set(body) == {"message", "subscription"}

    log = worker.log()
    assert token not in log and "s3cret" not in log, "the token must never be logged"
    assert "delivered" in log


def test_endpoint_failing_then_recovering_gets_everything_with_growing_gaps(
        pubsub: PubSub, start_worker: StartWorker) -> None:
    failures = 7
    endpoint = Receiver(statuses(*[500] * failures)).start()
    try:
        topic = pubsub.topic()
        sub = pubsub.subscription(topic)
        sent = pubsub.publish(topic, 5)
        worker = start_worker({"pubsub_endpoint": pubsub.host,
                               "subscriptions": [sub_entry(sub, endpoint.url(), concurrency=1)]})
        wait_for(lambda: set(endpoint.acked_ids()) >= set(sent), timeout=60,
                 message="all messages acked after the endpoint recovered")
        assert worker.terminate() == 0

        times = [r.arrived for r in endpoint.snapshot()[:failures + 1]]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        # Backoff caps 0.1, 0.2, ... 6.4 s with full jitter: the later retries must, taken
        # together, wait longer than the first ones (ordering, not speed).
        assert sum(gaps[-2:]) > sum(gaps[:2]), gaps
        assert "endpoint http://127.0.0.1" in worker.log()
    finally:
        endpoint.stop()


def test_endpoint_down_for_a_while_loses_nothing(
        pubsub: PubSub, start_worker: StartWorker) -> None:
    port = free_port()  # nothing listens here yet
    topic = pubsub.topic()
    sub = pubsub.subscription(topic)
    url = f"http://127.0.0.1:{port}/push"
    worker = start_worker({"pubsub_endpoint": pubsub.host, "subscriptions": [
        sub_entry(sub, url, concurrency=5, timeout=5, backoff={"max": 4})]})
    sent = pubsub.publish(topic, 30)
    down_until = time.monotonic() + DOWN_SECONDS
    wait_for(lambda: "backing off" in worker.log(), timeout=30,
             message="the worker noticing the endpoint is down")
    assert worker.proc is not None and worker.proc.poll() is None
    # The endpoint stays down for DOWN_SECONDS; the wait is the scenario, not synchronisation.
    time.sleep(max(0.0, down_until - time.monotonic()))

    endpoint = Receiver(port=port).start()
    try:
        wait_for(lambda: set(endpoint.acked_ids()) >= set(sent), timeout=60,
                 message="every message after the endpoint came back")
        assert worker.terminate() == 0
        assert "recovered" in worker.log()
    finally:
        endpoint.stop()


def test_sigterm_mid_stream_loses_nothing(pubsub: PubSub, start_worker: StartWorker) -> None:
    slow = {"on": True}

    def respond(_g: Got, _i: int) -> int:
        if slow["on"]:
            time.sleep(0.5)
        return 200

    endpoint = Receiver(respond).start()
    try:
        topic = pubsub.topic()
        sub = pubsub.subscription(topic)
        sent = pubsub.publish(topic, 60)
        config = {"pubsub_endpoint": pubsub.host,
                  "subscriptions": [sub_entry(sub, endpoint.url(), concurrency=5,
                                              ack_deadline=10)]}
        first = start_worker(config, name="first")
        wait_for(lambda: len(endpoint.snapshot()) >= 8, timeout=60,
                 message="messages flowing")
        in_flight = [r for r in endpoint.snapshot() if r.status == 0]
        assert in_flight, "SIGTERM should land while POSTs are in flight"
        assert first.terminate() == 0, first.log()[-3000:]
        # The POSTs in flight at SIGTERM were finished (and acked), not abandoned.
        assert all(r.status == 200 for r in in_flight)
        assert len(set(endpoint.acked_ids())) < len(sent)

        slow["on"] = False
        second = start_worker(config, name="second")
        # Messages nacked at shutdown come back at once; any the server had sent but the
        # client never read (in transit when the stream closed: Google's reference emulator
        # ignores max_outstanding_messages and streams everything) come back when their ack
        # deadline (ack_deadline: 10) expires.
        wait_for(lambda: set(endpoint.acked_ids()) >= set(sent), timeout=60,
                 message="every message after the restart")
        assert second.terminate() == 0
    finally:
        endpoint.stop()


def test_permanent_rejection_is_logged_as_error_and_nacked_and_unwrapped_format(
        pubsub: PubSub, start_worker: StartWorker) -> None:
    rejecting = Receiver(statuses(400, then=204)).start()
    raw = Receiver().start()
    try:
        topic = pubsub.topic()
        wrapped_sub = pubsub.subscription(topic)
        unwrapped_sub = pubsub.subscription(topic)
        worker = start_worker({"pubsub_endpoint": pubsub.host, "subscriptions": [
            sub_entry(wrapped_sub, rejecting.url(), concurrency=1),
            sub_entry(unwrapped_sub, raw.url(), format="unwrapped", write_metadata=True)]})
        (mid,) = pubsub.publish(topic, 1, prefix="raw", color="red")
        wait_for(lambda: rejecting.acked_ids() == [mid] and raw.snapshot(), timeout=30,
                 message="the rejected message redelivered and acked; the unwrapped one")
        assert [r.status for r in rejecting.snapshot()] == [400, 204]
        (r,) = raw.snapshot()
        assert r.body == b"raw-0"
        assert r.header("x-goog-pubsub-message-id") == mid
        assert r.header("x-goog-pubsub-subscription-name") == unwrapped_sub
        assert RFC3339_Z.match(r.header("x-goog-pubsub-publish-time") or "")
        assert r.header("color") == "red"
        assert worker.terminate() == 0
        log = worker.log()
        assert re.search(r"ERROR push_worker: endpoint \S+ rejected message " + mid, log)
        assert "failed=1" in log
    finally:
        rejecting.stop()
        raw.stop()
