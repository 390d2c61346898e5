"""Counters per subscription, the periodic info-level summary, optional Prometheus export."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("push_worker")


@dataclass
class Counts:
    delivered: int = 0  # POST acked (102/200/201/202/204): message acked
    retried: int = 0  # POST failed transiently (other status, timeout, connection): nacked
    failed: int = 0  # POST rejected for good (400/403/413): nacked, logged at error
    shutdown_nacked: int = 0  # nacked without a POST because the worker was stopping

    def minus(self, other: Counts) -> Counts:
        return Counts(self.delivered - other.delivered, self.retried - other.retried,
                      self.failed - other.failed, self.shutdown_nacked - other.shutdown_nacked)


class Stats:
    """Thread-safe counters per subscription, optionally mirrored to Prometheus."""

    def __init__(self, subscriptions: list[str]) -> None:
        self._lock = threading.Lock()
        self._counts = {s: Counts() for s in subscriptions}
        self._last = {s: Counts() for s in subscriptions}
        self._prom: dict[str, Any] | None = None

    def enable_prometheus(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (port 0: any); returns the bound port.

        Raises ImportError when prometheus-client is not installed.
        """
        import prometheus_client as prom

        registry = prom.CollectorRegistry()
        labels = ["subscription"]
        self._prom = {
            "delivered": prom.Counter("push_worker_delivered", "Messages POSTed and acked",
                                      labels, registry=registry),
            "retried": prom.Counter("push_worker_retried",
                                    "POSTs failed transiently (nacked for redelivery)",
                                    labels, registry=registry),
            "failed": prom.Counter("push_worker_failed",
                                   "POSTs rejected with 400/403/413 (nacked)",
                                   labels, registry=registry),
            "latency": prom.Histogram("push_worker_push_latency_seconds",
                                      "Duration of the POST to the endpoint", labels,
                                      registry=registry),
        }
        server, _thread = prom.start_http_server(port, addr=host, registry=registry)
        return int(server.server_port)

    def record(self, subscription: str, kind: str, latency: float | None = None) -> None:
        with self._lock:
            counts = self._counts[subscription]
            setattr(counts, kind, getattr(counts, kind) + 1)
        if self._prom is not None:
            if kind in ("delivered", "retried", "failed"):
                self._prom[kind].labels(subscription).inc()
            if latency is not None:
                self._prom["latency"].labels(subscription).observe(latency)

    def totals(self) -> dict[str, Counts]:
        with self._lock:
            return {s: Counts(**vars(c)) for s, c in self._counts.items()}

    def interval(self) -> dict[str, Counts]:
        """Counts since the previous call."""
        with self._lock:
            result = {}
            for s, c in self._counts.items():
                result[s] = c.minus(self._last[s])
                self._last[s] = Counts(**vars(c))
            return result

    def log_interval(self, seconds: float) -> None:
        for sub, c in self.interval().items():
            log.info("stats %s last %gs: delivered=%d retried=%d failed=%d", sub, seconds,
                     c.delivered, c.retried, c.failed)
