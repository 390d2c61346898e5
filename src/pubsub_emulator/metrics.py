"""Prometheus metrics of one emulator server, served at `GET /metrics` (README "Metrics,
readiness and reset", docs/metrics.md).

Names are Cloud Monitoring's Pub/Sub metric types where one exists: `pubsub_` + the type
without `pubsub.googleapis.com/`, `/` as `_` (`subscription/num_undelivered_messages` is
`pubsub_subscription_num_undelivered_messages`), counters with prometheus-client's `_total`,
latencies in seconds with `_seconds`. Labels: `project`, `topic`, `subscription` (ids).

Two sources, as a scrape of several processes sharing a NATS store must tell apart:
- store-wide gauges (`StoreGauges`): each subscription's backlog, outstanding messages and
  oldest unacked message age, read from the store at scrape time (one query for all of them on
  SQLite; a few JetStream requests per subscription on NATS), so every process exports the
  same shared figures (aggregate them with max, not sum); nothing is computed on the hot path;
- per-process counters and histograms: what this process did (published, delivered, acked,
  nacked, pushed, calls answered), counted where it happens, once per call with counts (sum
  them across processes).

Each server has its own CollectorRegistry (several servers in one process do not collide).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from .core.errors import Status
from .core.model import Subscription
from .core.observe import Observer
from .core.service import PubSubService
from .store import Kind, StoreError

log = logging.getLogger("pubsub_emulator.metrics")

# Subscriptions whose backlog one scrape reads at most (the first, by name); the others are
# counted in pubsub_emulator_subscriptions_not_scraped. Bounds a scrape's cost on a store
# with very many subscriptions.
MAX_SCRAPED_SUBSCRIPTIONS = 1000
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0, 120.0, 300.0)
SUBSCRIPTION_LABELS = ("project", "subscription")
TOPIC_LABELS = ("project", "topic")
GAUGE_LABELS = ("project", "topic", "subscription")
# Google's response classes of topic/send_request_count: success, invalid, internal.
_INVALID = frozenset({Status.INVALID_ARGUMENT, Status.NOT_FOUND, Status.ALREADY_EXISTS,
                      Status.PERMISSION_DENIED, Status.FAILED_PRECONDITION,
                      Status.OUT_OF_RANGE, Status.UNAUTHENTICATED, Status.CANCELLED})


def project_and_id(name: str) -> tuple[str, str]:
    """("p", "t") of "projects/p/topics/t"; ("", name) for anything else (_deleted-topic_)."""
    parts = name.split("/")
    return (parts[1], parts[3]) if len(parts) == 4 and parts[0] == "projects" else ("", name)


class LatencyHistogram:
    """A histogram fed a batch of values at a time (a pull's first deliveries), kept as plain
    bucket counts per label set: a bisect and an increment per value, no lock (everything runs
    on the server's event loop), exported through prometheus-client's HistogramMetricFamily."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        self._name, self._doc, self._labelnames = name, documentation, list(labelnames)
        self._bounds = list(buckets)
        self._series: dict[tuple[str, ...], tuple[list[int], list[float]]] = {}

    def observe_many(self, labels: tuple[str, ...], values: Iterable[float]) -> None:
        series = self._series.get(labels)
        if series is None:
            series = self._series[labels] = ([0] * (len(self._bounds) + 1), [0.0])
        counts, total = series
        bounds = self._bounds
        for value in values:
            counts[bisect.bisect_left(bounds, value)] += 1  # the first bucket with le >= value
            total[0] += value

    def describe(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self._name, self._doc, labels=self._labelnames)
        for labels, (counts, total) in list(self._series.items()):
            cumulative = list(itertools.accumulate(counts))
            buckets = [(floatToGoString(b), float(c)) for b, c in zip(self._bounds, cumulative,
                                                                     strict=False)]
            buckets.append(("+Inf", float(cumulative[-1])))
            family.add_metric(list(labels), buckets, total[0])
        yield family


class StoreGauges:
    """The store-wide gauges, as the last `refresh` read them (a scrape refreshes first)."""

    def __init__(self, limit: int = MAX_SCRAPED_SUBSCRIPTIONS) -> None:
        self.limit = limit
        self.rows: list[tuple[list[str], Any]] = []  # labels, SubscriptionStats
        self.now_ms = 0
        self.store_up = 1
        self.not_scraped = 0
        self.ready = 0
        self._failing = False

    async def refresh(self, service: PubSubService) -> None:
        self.now_ms = service.clock()
        try:
            items = (await service.catalog.all(Kind.SUBSCRIPTION)).items
            self.not_scraped = max(0, len(items) - self.limit)
            topics = {item.name: Subscription.FromString(item.data).topic
                      for item in items[:self.limit]}
            stats = await service.store.messages.stats(list(topics), self.now_ms)
        except StoreError as exc:
            if not self._failing:
                log.warning("metrics: the store did not answer (%s); backlog gauges left out "
                            "until it does", exc)
            self._failing, self.store_up, self.rows = True, 0, []
            return
        self._failing, self.store_up = False, 1
        rows = []
        for name, found in stats.items():
            project, subscription = project_and_id(name)
            rows.append(([project, project_and_id(topics[name])[1], subscription], found))
        self.rows = rows

    def _families(self) -> list[GaugeMetricFamily]:
        def gauge(name: str, doc: str, labels: Sequence[str] = GAUGE_LABELS
                  ) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=list(labels))

        return [
            gauge("pubsub_subscription_num_undelivered_messages",
                  "Unacknowledged messages (the backlog) of the subscription, outstanding ones "
                  "included (store-wide)."),
            gauge("pubsub_subscription_num_outstanding_messages",
                  "Messages delivered and not acknowledged: leased, or waiting out a nack's "
                  "backoff (store-wide)."),
            gauge("pubsub_subscription_oldest_unacked_message_age",
                  "Age in seconds of the oldest unacknowledged message (store-wide)."),
            gauge("pubsub_emulator_store_up", "1 when the last scrape could read the store.",
                  ()),
            gauge("pubsub_emulator_subscriptions_not_scraped",
                  f"Subscriptions beyond the {self.limit} whose backlog a scrape reads.", ()),
            gauge("pubsub_emulator_ready",
                  "1 once the store is open and the topology file applied (GET /readyz).", ()),
        ]

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        undelivered, outstanding, age, up, not_scraped, ready = self._families()
        for labels, found in self.rows:
            undelivered.add_metric(labels, found.unacked)
            outstanding.add_metric(labels, found.outstanding)
            if found.oldest_unacked_ms is not None:
                age.add_metric(labels, max(0.0, (self.now_ms - found.oldest_unacked_ms) / 1000))
            elif found.unacked == 0:
                age.add_metric(labels, 0.0)
        up.add_metric([], self.store_up)
        not_scraped.add_metric([], self.not_scraped)
        ready.add_metric([], self.ready)
        yield from (undelivered, outstanding, age, up, not_scraped, ready)


class Metrics(Observer):
    """One server's metrics: the core's Observer and the adapters' CallRecorder."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.gauges = StoreGauges()
        self.registry.register(self.gauges)
        ProcessCollector(registry=self.registry)  # CPU, memory, descriptors of this process
        self._children: dict[tuple[Any, ...], Any] = {}
        self._service: PubSubService | None = None
        self._scraping = asyncio.Lock()
        self._define()

    def _counter(self, name: str, doc: str, labels: Sequence[str]) -> Counter:
        return Counter(name, doc, list(labels), registry=self.registry)

    def _define(self) -> None:
        topic, sub = TOPIC_LABELS, SUBSCRIPTION_LABELS
        self.send_requests = self._counter(
            "pubsub_topic_send_request_count", "Publish requests answered, by result.",
            (*topic, "response_class", "response_code"))
        self.sent_messages = self._counter(
            "pubsub_topic_send_message_operation_count", "Messages published.", topic)
        self.sent_bytes = self._counter(
            "pubsub_topic_published_bytes", "Bytes of the messages published.", topic)
        self.delivered_messages = self._counter(
            "pubsub_subscription_sent_message_count",
            "Messages delivered to subscribers (pull, streaming pull, push).", sub)
        self.acks = self._counter("pubsub_subscription_ack_message_count",
                                  "Messages acknowledged.", sub)
        self.nacks = self._counter("pubsub_subscription_nack_requests", "Messages nacked.", sub)
        self.expired_leases = self._counter(
            "pubsub_subscription_expired_ack_deadlines_count",
            "Leases of open StreamingPulls that ran out without an ack or a modack.", sub)
        self.dead_letters = self._counter(
            "pubsub_subscription_dead_letter_message_count",
            "Messages forwarded to the dead-letter topic.", sub)
        self.push_requests = self._counter(
            "pubsub_subscription_push_request_count", "Push POSTs, by result.",
            (*sub, "response_class", "response_code"))
        self.push_latency = Histogram(
            "pubsub_subscription_push_request_latencies_seconds", "Push POST latency.",
            list(sub), registry=self.registry, buckets=LATENCY_BUCKETS)
        self.delivery_latency = LatencyHistogram(
            "pubsub_subscription_delivery_latency_seconds",
            "From a message's publish time to its first delivery.", sub)
        self.registry.register(self.delivery_latency)
        self.api_requests = self._counter(
            "pubsub_api_request_count", "gRPC and REST calls answered, by method and code.",
            ("protocol", "method", "code"))
        self.api_latency = Histogram(
            "pubsub_api_request_latencies_seconds", "gRPC and REST call latency.",
            ["protocol", "method"], registry=self.registry, buckets=LATENCY_BUCKETS)

    def _child(self, metric: Any, name: str, *extra: str) -> Any:
        """The metric's child for a resource (and extra label values), cached."""
        key = (metric, name, *extra)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*project_and_id(name), *extra)
        return child

    # --- scraping ---------------------------------------------------------------------------
    def watch(self, service: PubSubService) -> None:
        """Read the store-wide gauges through this service at each scrape."""
        self._service = service

    def set_ready(self, ready: bool) -> None:
        self.gauges.ready = int(ready)

    async def exposition(self) -> tuple[bytes, str]:
        """The text format and its content type, store-wide gauges read now."""
        async with self._scraping:  # (concurrent scrapes: one reads the store at a time)
            if self._service is not None:
                await self.gauges.refresh(self._service)
            return generate_latest(self.registry), CONTENT_TYPE_LATEST

    # --- the core's Observer ----------------------------------------------------------------
    def publish_answered(self, topic: str, status: Status | None) -> None:
        if status is None:
            labels = ("success", "success")
        else:
            labels = ("invalid" if status in _INVALID else "internal", status.name.lower())
        self._child(self.send_requests, topic, *labels).inc()

    def published(self, topic: str, messages: int, size: int) -> None:
        self._child(self.sent_messages, topic).inc(messages)
        self._child(self.sent_bytes, topic).inc(size)

    def delivered(self, subscription: str, messages: int, first_latencies_ms: Sequence[int]
                  ) -> None:
        self._child(self.delivered_messages, subscription).inc(messages)
        if first_latencies_ms:
            self.delivery_latency.observe_many(
                project_and_id(subscription),
                [ms / 1000 if ms > 0 else 0.0 for ms in first_latencies_ms])

    def acked(self, subscription: str, messages: int) -> None:
        if messages > 0:
            self._child(self.acks, subscription).inc(messages)

    def nacked(self, subscription: str, messages: int) -> None:
        if messages > 0:
            self._child(self.nacks, subscription).inc(messages)

    def expired(self, subscription: str, messages: int) -> None:
        self._child(self.expired_leases, subscription).inc(messages)

    def dead_lettered(self, subscription: str, messages: int) -> None:
        self._child(self.dead_letters, subscription).inc(messages)

    def pushed(self, subscription: str, response_class: str, response_code: str,
               seconds: float) -> None:
        self._child(self.push_requests, subscription, response_class, response_code).inc()
        self._child(self.push_latency, subscription).observe(seconds)

    # --- the adapters' CallRecorder ---------------------------------------------------------
    def call_answered(self, protocol: str, method: str, status: str, seconds: float) -> None:
        key = (protocol, method, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.api_requests.labels(protocol, method, status)
        child.inc()
        key = (protocol, method)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.api_latency.labels(protocol, method)
        child.observe(seconds)
