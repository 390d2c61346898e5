"""GET /metrics: a real Prometheus scrapes emulators and reads a subscription's backlog through
its HTTP API, on SQLite and on NATS with two emulator processes sharing a store (each
process's scrape shows the shared backlog, and its own counters); the counters follow what
the core, push and the adapters do.

Prometheus is Debian's package `prometheus`, installed when missing (as root; see
tests/prometheus_server.py); the NATS case needs `nats-server`, as tests/test_nats_backend.py.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import pytest
from google.pubsub_v1 import types
from prometheus_client.parser import text_string_to_metric_families

from clients import gapic_clients, unique
from processes import nats_server_path
from prometheus_server import PrometheusServer, ensure_prometheus
from pubsub_emulator.core.errors import ApiError
from pubsub_emulator.core.service import PubSubService
from pubsub_emulator.metrics import Metrics
from pubsub_emulator.store.sqlite import SqliteStore
from push_endpoint import Receiver, statuses
from support import NATS_MISSING, EmulatorProcess, NatsServer, wait_for

PROJECT = "metrics-proj"


def scrape(host: str, headers: dict[str, str] | None = None) -> dict[tuple[str, tuple], float]:
    """Every sample of GET /metrics: (name, sorted labels) -> value."""
    request = urllib.request.Request(f"http://{host}/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain; version=")
        text = answer.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict[tuple[str, tuple], float], name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def backlog(publisher: Any, subscriber: Any, published: int, leased: int) -> tuple[str, str]:
    """A topic and subscription with `published` messages, `leased` of them pulled, unacked."""
    topic = f"projects/{PROJECT}/topics/{unique('t')}"
    sub = f"projects/{PROJECT}/subscriptions/{unique('s')}"
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic, ack_deadline_seconds=600)
    publisher.publish(topic=topic, messages=[{"data": b"m%d" % i} for i in range(published)])
    got = 0
    while got < leased:
        got += len(subscriber.pull(subscription=sub, max_messages=leased - got)
                   .received_messages)
    return topic, sub


@pytest.fixture(scope="module")
def prometheus_binary() -> str:
    return ensure_prometheus()


def _values(prometheus: PrometheusServer, promql: str, count: int) -> dict[str, float]:
    """instance -> value of a query, once it has `count` series (Prometheus scrapes each
    second: this waits for the first scrapes that saw the state, not for time to pass)."""
    def answered() -> dict[str, float] | None:
        found = {r["metric"]["instance"]: float(r["value"][1])
                 for r in prometheus.query(promql)}
        return found if len(found) == count else None

    return wait_for(answered, timeout=30, message=f"{promql} in Prometheus")


def test_prometheus_reads_the_backlog_of_a_subscription(tmp_path, prometheus_binary):
    with EmulatorProcess(extra_args=["--in-memory"]) as emu:
        publisher, subscriber = gapic_clients(emu.host, "grpc")
        _, sub = backlog(publisher, subscriber, published=7, leased=2)
        sub_id = sub.rsplit("/", 1)[1]
        prometheus = PrometheusServer(tmp_path / "prom", [emu.host], prometheus_binary).start()
        try:
            selector = f'{{project="{PROJECT}",subscription="{sub_id}"}}'
            assert _values(prometheus, f"pubsub_subscription_num_undelivered_messages{selector}",
                           1) == {emu.host: 7.0}
            assert _values(prometheus, f"pubsub_subscription_num_outstanding_messages{selector}",
                           1) == {emu.host: 2.0}
            age = _values(prometheus, f"pubsub_subscription_oldest_unacked_message_age{selector}",
                          1)[emu.host]
            assert 0 <= age < 60
        finally:
            prometheus.stop()


@pytest.mark.skipif(nats_server_path() is None, reason=NATS_MISSING)
def test_on_nats_each_process_shows_the_shared_backlog(tmp_path, prometheus_binary):
    nats = NatsServer(tmp_path / "js").start()
    emulators = [EmulatorProcess(extra_args=["--store", nats.url]) for _ in range(2)]
    try:
        for emu in emulators:
            emu.start()
        publisher, _ = gapic_clients(emulators[0].host, "grpc")
        _, subscriber = gapic_clients(emulators[1].host, "grpc")
        topic, sub = backlog(publisher, subscriber, published=5, leased=2)
        sub_id = sub.rsplit("/", 1)[1]
        hosts = [emu.host for emu in emulators]
        prometheus = PrometheusServer(tmp_path / "prom", hosts, prometheus_binary).start()
        try:
            selector = f'{{subscription="{sub_id}"}}'
            assert _values(prometheus, f"pubsub_subscription_num_undelivered_messages{selector}",
                           2) == dict.fromkeys(hosts, 5.0)
            assert _values(prometheus, f"pubsub_subscription_num_outstanding_messages{selector}",
                           2) == dict.fromkeys(hosts, 2.0)
            ages = _values(prometheus,
                           f"pubsub_subscription_oldest_unacked_message_age{selector}", 2)
            assert all(0 <= age < 60 for age in ages.values())
        finally:
            prometheus.stop()
        # Counters are each process's own: published through one, delivered through the other.
        topic_id = topic.rsplit("/", 1)[1]
        first, second = (scrape(host) for host in hosts)
        name = "pubsub_topic_send_message_operation_count_total"
        assert sample(first, name, project=PROJECT, topic=topic_id) == 5
        assert sample(second, name, project=PROJECT, topic=topic_id) is None
        name = "pubsub_subscription_sent_message_count_total"
        assert sample(second, name, project=PROJECT, subscription=sub_id) == 2
        assert sample(first, name, project=PROJECT, subscription=sub_id) is None
    finally:
        for emu in emulators:
            emu.close()
        nats.stop()


async def _stats_scenario(store: Any, project: str) -> None:
    service = PubSubService(store)
    topic = f"projects/{project}/topics/stats"
    subs = [f"projects/{project}/subscriptions/stats-{i}" for i in range(2)]
    await service.unary["CreateTopic"](_proto("Topic", name=topic))
    for sub in subs:
        await service.unary["CreateSubscription"](_proto("Subscription", name=sub, topic=topic))
    before = service.clock()
    await service.unary["Publish"](_proto("PublishRequest", topic=topic,
                                          messages=[{"data": b"%d" % i} for i in range(3)]))
    after = service.clock()
    pulled = await service.unary["Pull"](_proto("PullRequest", subscription=subs[0],
                                                max_messages=1))
    assert len(pulled.received_messages) == 1
    found = await store.messages.stats([*subs, f"projects/{project}/subscriptions/none"],
                                       service.clock())
    assert set(found) == set(subs)  # a subscription that does not exist is left out
    assert (found[subs[0]].unacked, found[subs[0]].outstanding) == (3, 1)
    assert (found[subs[1]].unacked, found[subs[1]].outstanding) == (3, 0)
    for sub in subs:  # both have the same oldest unacked message
        assert before <= found[sub].oldest_unacked_ms <= after
    await service.unary["Acknowledge"](_proto("AcknowledgeRequest", subscription=subs[0],
                                              ack_ids=[pulled.received_messages[0].ack_id]))
    found = await store.messages.stats(subs, service.clock())
    assert (found[subs[0]].unacked, found[subs[0]].outstanding) == (2, 0)
    await store.close()


@pytest.mark.parametrize("backend", ["sqlite", "nats"])
def test_the_store_reads_the_figures_of_every_subscription_at_once(request, backend):
    async def scenario() -> None:
        if backend == "sqlite":
            store = SqliteStore(None)
        else:
            if nats_server_path() is None:
                pytest.fail(NATS_MISSING)
            from pubsub_emulator.store.nats import NatsStore

            url = request.getfixturevalue("nats_server").url
            store = await NatsStore.open([url], namespace=unique("stats").replace("-", "_"))
        await _stats_scenario(store, PROJECT)

    asyncio.run(scenario())


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def _core_scenario() -> None:
    """Publish, deliver, ack, nack, dead-letter and let a StreamingPull lease run out, on the
    core with a clock the test moves; the counters say so."""
    now = [1_000_000_000]
    metrics = Metrics()
    service = PubSubService(SqliteStore(None), clock=lambda: now[0], observer=metrics)
    call = service.unary
    topic, dead = f"projects/{PROJECT}/topics/core", f"projects/{PROJECT}/topics/dead"
    sub = f"projects/{PROJECT}/subscriptions/core"
    for name in (topic, dead):
        await call["CreateTopic"](_proto("Topic", name=name))
    await call["CreateSubscription"](_proto(
        "Subscription", name=sub, topic=topic,
        dead_letter_policy={"dead_letter_topic": dead, "max_delivery_attempts": 5}))
    await call["Publish"](_proto("PublishRequest", topic=topic,
                                 messages=[{"data": b"a"}, {"data": b"bb"}]))
    with pytest.raises(ApiError):
        await call["Publish"](_proto("PublishRequest", topic=f"{topic}-missing",
                                     messages=[{"data": b"c"}]))
    now[0] += 250  # the first deliveries come 250 ms after the publish
    pulled = await call["Pull"](_proto("PullRequest", subscription=sub, max_messages=1))
    await call["Acknowledge"](_proto("AcknowledgeRequest", subscription=sub,
                                     ack_ids=[pulled.received_messages[0].ack_id]))
    for _ in range(5):  # the other message: five attempts, each nacked
        pulled = await call["Pull"](_proto("PullRequest", subscription=sub, max_messages=1))
        await call["ModifyAckDeadline"](_proto(
            "ModifyAckDeadlineRequest", subscription=sub, ack_deadline_seconds=0,
            ack_ids=[pulled.received_messages[0].ack_id]))
    pulled = await call["Pull"](_proto("PullRequest", subscription=sub, max_messages=1,
                                       return_immediately=True))
    assert not pulled.received_messages  # the sixth attempt went to the dead-letter topic
    await _expire_a_streaming_lease(service, topic, now)
    labels = {"project": PROJECT, "subscription": "core"}
    assert _value(metrics, "pubsub_topic_send_message_operation_count_total",
                  project=PROJECT, topic="core") == 3
    assert _value(metrics, "pubsub_topic_published_bytes_total", project=PROJECT,
                  topic="core") > 0
    assert _value(metrics, "pubsub_topic_send_request_count_total", project=PROJECT,
                  topic="core-missing", response_class="invalid",
                  response_code="not_found") == 1
    assert _value(metrics, "pubsub_subscription_ack_message_count_total", **labels) == 1
    assert _value(metrics, "pubsub_subscription_nack_requests_total", **labels) == 5
    assert _value(metrics, "pubsub_subscription_dead_letter_message_count_total", **labels) == 1
    assert _value(metrics, "pubsub_subscription_expired_ack_deadlines_count_total",
                  project=PROJECT, subscription="stream") == 1
    # First deliveries only: the two messages of `core`, 250 ms after their publish.
    assert _value(metrics, "pubsub_subscription_delivery_latency_seconds_count", **labels) == 2
    assert _value(metrics, "pubsub_subscription_delivery_latency_seconds_sum",
                  **labels) == pytest.approx(0.5)
    assert _value(metrics, "pubsub_subscription_delivery_latency_seconds_bucket",
                  le="0.25", **labels) == 2
    assert _value(metrics, "pubsub_subscription_delivery_latency_seconds_bucket",
                  le="0.1", **labels) == 0


async def _expire_a_streaming_lease(service: PubSubService, topic: str, now: list[int]) -> None:
    """A StreamingPull holds a lease past its deadline (10 s on the moved clock)."""
    sub = f"projects/{PROJECT}/subscriptions/stream"
    await service.unary["CreateSubscription"](_proto("Subscription", name=sub, topic=topic))
    await service.unary["Publish"](_proto("PublishRequest", topic=topic,
                                          messages=[{"data": b"s"}]))
    opened = asyncio.Event()

    async def requests():
        yield _proto("StreamingPullRequest", subscription=sub, stream_ack_deadline_seconds=10)
        await opened.wait()

    stream = service.streaming_pull(requests())
    decode = types.StreamingPullResponse.pb().FromString  # (messages come encoded)
    first = decode(await anext(stream))
    assert len(first.received_messages) == 1
    now[0] += 11_000
    service.events.wake(sub)  # the stream looks again: its lease ran out
    again = decode(await anext(stream))  # redelivered to the same stream
    assert again.received_messages[0].delivery_attempt in (0, 2)
    opened.set()
    await stream.aclose()


def _proto(kind: str, **fields: Any) -> Any:
    """A request or resource proto of google.pubsub_v1 (nested fields as dicts)."""
    return getattr(types, kind).pb()(**fields)


def test_counters_follow_what_the_core_does():
    asyncio.run(_core_scenario())


def test_push_and_calls_are_counted_by_result(tmp_path):
    """Push POSTs by response class; gRPC and REST calls by method and code."""
    receiver = Receiver(statuses(500, then=204)).start()
    try:
        with EmulatorProcess(extra_args=["--in-memory"]) as emu:
            publisher, subscriber = gapic_clients(emu.host, "grpc")
            topic = f"projects/{PROJECT}/topics/{unique('t')}"
            sub = f"projects/{PROJECT}/subscriptions/{unique('push')}"
            publisher.create_topic(name=topic)
            subscriber.create_subscription(name=sub, topic=topic,
                                           push_config={"push_endpoint": receiver.url()})
            publisher.publish(topic=topic, messages=[{"data": b"p"}])
            wait_for(lambda: receiver.acked_ids(), timeout=30, message="the push")
            labels = {"project": PROJECT, "subscription": sub.rsplit("/", 1)[1]}
            name = "pubsub_subscription_push_request_count_total"

            def counted() -> dict | None:
                samples = scrape(emu.host)
                return samples if sample(samples, name, response_class="2xx",
                                         response_code="204", **labels) else None

            samples = wait_for(counted, timeout=10, message="the push counted")
            assert sample(samples, name, response_class="5xx", response_code="500",
                          **labels) == 1
            assert sample(samples, "pubsub_subscription_push_request_latencies_seconds_count",
                          **labels) == 2
            _not_found_twice(emu.host)
            samples = scrape(emu.host)
            for protocol in ("grpc", "rest"):
                assert sample(samples, "pubsub_api_request_count_total", protocol=protocol,
                              method="GetTopic", code="NOT_FOUND") == 1
            assert sample(samples, "pubsub_api_request_count_total", protocol="grpc",
                          method="CreateSubscription", code="OK") == 1
    finally:
        receiver.stop()


def _not_found_twice(host: str) -> None:
    from google.api_core import exceptions

    missing = f"projects/{PROJECT}/topics/{unique('missing')}"
    publisher, _ = gapic_clients(host, "grpc")
    with pytest.raises(exceptions.NotFound):
        publisher.get_topic(topic=missing)
    request = urllib.request.Request(f"http://{host}/v1/{missing}")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 404
    assert json.loads(refused.value.read())["error"]["status"] == "NOT_FOUND"
