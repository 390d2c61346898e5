"""The worker: one streaming pull per subscription, each message POSTed to its endpoint."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from push_contract import BackoffPolicy, build_request, fields_from_message

from ._config import Config, SubscriptionConfig
from ._delivery import Deliverer, EndpointGate, Outcome
from ._metrics import Stats
from ._subscriber import make_subscriber

log = logging.getLogger("push_worker")

# Re-subscribing after the streaming pull ended with an error (e.g. subscription not found yet).
_RESUBSCRIBE = BackoffPolicy(initial=1.0, multiplier=2.0, maximum=30.0)


@dataclass
class _Relay:
    """One configured subscription relayed to its endpoint: its streaming pull, its POSTs."""

    sub: SubscriptionConfig
    deliverer: Deliverer
    gate: EndpointGate
    future: Any = None
    failures: int = 0
    retry_at: float = 0.0


class Worker:
    """Pull from every configured subscription and push each message to its endpoint.

    ``run()`` blocks until :meth:`stop` is called (e.g. from a signal handler), then shuts
    down gracefully: stops pulling, lets in-flight POSTs finish (acking or nacking them), nacks
    everything else, and returns.
    """

    def __init__(self, config: Config, subscriber: Any = None) -> None:
        self.config = config
        self._subscriber = subscriber
        self._stop = threading.Event()
        self._stopping = threading.Event()  # seen by message callbacks
        self.stats = Stats([s.subscription_path for s in config.subscriptions])
        self._gates: dict[str, EndpointGate] = {}
        self._deliverers: dict[str, Deliverer] = {}
        self._relays: list[_Relay] = []
        self.metrics_port: int | None = None
        self.started = threading.Event()
        self._busy_lock = threading.Lock()
        self._busy = 0  # callbacks waiting for the gate or POSTing

    # -- lifecycle -------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask `run()` to shut down (safe from signal handlers and other threads)."""
        self._stop.set()

    def run(self) -> None:
        self._start()
        try:
            next_stats = time.monotonic() + self.config.stats_interval
            while not self._stop.wait(0.25):
                now = time.monotonic()
                self._supervise(now)
                if now >= next_stats:
                    self.stats.log_interval(self.config.stats_interval)
                    next_stats = now + self.config.stats_interval
        finally:
            self._shutdown()

    def _start(self) -> None:
        if self._subscriber is None:
            self._subscriber = make_subscriber(self.config)

        if self.config.metrics_port is not None:
            try:
                self.metrics_port = self.stats.enable_prometheus(self.config.metrics_host,
                                                                 self.config.metrics_port)
                log.info("Prometheus metrics on http://%s:%d/metrics", self.config.metrics_host,
                         self.metrics_port)
            except ImportError:
                log.warning("metrics_port is set but prometheus-client is not installed: "
                            "no metrics endpoint")

        for sub in self.config.subscriptions:
            # One gate and one connection pool per endpoint URL, shared by subscriptions.
            gate = self._gates.get(sub.endpoint)
            if gate is None:
                gate = self._gates[sub.endpoint] = EndpointGate(sub.backoff)
            deliverer = Deliverer(sub.endpoint, sub.token, sub.timeout, sub.concurrency)
            self._deliverers[sub.subscription_path] = deliverer
            relay = _Relay(sub, deliverer, gate)
            self._relays.append(relay)
            self._subscribe(relay)
        self.started.set()

    def _subscribe(self, relay: _Relay) -> None:
        from google.cloud import pubsub_v1
        from google.cloud.pubsub_v1.subscriber.scheduler import ThreadScheduler

        sub = relay.sub
        executor = ThreadPoolExecutor(max_workers=sub.concurrency,
                                      thread_name_prefix=f"push-{sub.subscription_id}")
        relay.future = self._subscriber.subscribe(
            sub.subscription_path,
            callback=lambda message, s=relay: self._handle(s, message),
            # max_duration_per_lease_extension is also the streaming pull's ack deadline: messages
            # lost in transit when the worker stops or dies come back after that long.
            flow_control=pubsub_v1.types.FlowControl(
                max_messages=sub.concurrency,
                max_duration_per_lease_extension=sub.ack_deadline),
            scheduler=ThreadScheduler(executor),
            await_callbacks_on_shutdown=True,
        )
        log.info("pulling %s -> %s (concurrency %d, timeout %gs, format %s%s)",
                 sub.subscription_path, sub.endpoint, sub.concurrency, sub.timeout, sub.format,
                 ", token ***" if sub.token else "")

    def _supervise(self, now: float) -> None:
        """Re-open streaming pulls that ended with an error (the library retries transient ones)."""
        for relay in self._relays:
            future = relay.future
            if future is None:
                if now >= relay.retry_at and not self._stop.is_set():
                    self._subscribe(relay)
                continue
            if not future.done():
                if relay.failures and now >= relay.retry_at + 10:
                    relay.failures = 0
                continue
            try:
                future.result(timeout=0)
                error: BaseException | None = None
            except BaseException as e:  # noqa: BLE001 - reported, then retried
                error = e
            relay.failures += 1
            delay = _RESUBSCRIBE.cap(relay.failures)
            log.error("streaming pull on %s ended: %s; retrying in %gs",
                      relay.sub.subscription_path, error or "closed", delay)
            relay.future = None
            relay.retry_at = now + delay

    def _shutdown(self) -> None:
        log.info("shutting down: finish in-flight POSTs, nack the rest, stop pulling")
        # 1. From now on every message is nacked without a POST, and messages waiting for a
        #    backed-off endpoint are nacked at once.  This happens while the streaming pulls are
        #    still open: servers honour those nacks immediately (a nack sent after the relay
        #    closed may only take effect when the ack deadline expires, e.g. on Google's
        #    reference emulator).
        self._stopping.set()
        for gate in self._gates.values():
            gate.close()
        timeout = max((s.timeout for s in self.config.subscriptions), default=30.0)
        deadline = time.monotonic() + timeout + 5.0
        # 2. Let in-flight POSTs finish (each acks or nacks its message); messages the client
        #    library held back for flow control are released to the callback and nacked.
        while self._busy_count() and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.2)
        # 3. Stop pulling; the library nacks whatever it still holds and waits for callbacks.
        futures = [s.future for s in self._relays if s.future is not None]
        for future in futures:
            future.cancel()
        deadline = time.monotonic() + timeout + 15.0
        for future in futures:
            try:
                future.result(timeout=max(0.1, deadline - time.monotonic()))
            except Exception as e:  # noqa: BLE001 - shutting down anyway
                log.debug("streaming pull ended with %r during shutdown", e)
        if self._subscriber is not None:
            try:
                self._subscriber.close()
            except Exception as e:  # noqa: BLE001
                log.debug("closing subscriber: %r", e)
        for deliverer in self._deliverers.values():
            deliverer.close()
        for sub, c in self.stats.totals().items():
            log.info("totals %s: delivered=%d retried=%d failed=%d nacked_on_shutdown=%d",
                     sub, c.delivered, c.retried, c.failed, c.shutdown_nacked)

    def _busy_count(self) -> int:
        with self._busy_lock:
            return self._busy

    def _set_busy(self, delta: int) -> None:
        with self._busy_lock:
            self._busy += delta

    # -- per message -----------------------------------------------------------------------

    def _handle(self, relay: _Relay, message: Any) -> None:
        """Message callback (runs in the subscription's thread pool).

        The message is held (and its lease extended by the client library) until the POST
        has finished; only then is it acked or nacked.
        """
        sub = relay.sub
        path = sub.subscription_path
        try:
            if self._stopping.is_set():
                message.nack()
                self.stats.record(path, "shutdown_nacked")
                return
            request = build_request(fields_from_message(message), path, sub.format,
                                    sub.write_metadata)
            self._set_busy(+1)
            try:
                ticket = relay.gate.acquire(self._stopping)
                if ticket is None:
                    message.nack()
                    self.stats.record(path, "shutdown_nacked")
                    return
                result = relay.deliverer.post(request.body, request.headers)
                before = relay.gate.release(ticket, result.outcome is Outcome.ACK)
            finally:
                self._set_busy(-1)
        except Exception:
            log.exception("unexpected error pushing message %s from %s; nacking",
                          getattr(message, "message_id", "?"), path)
            message.nack()
            self.stats.record(path, "retried")
            return

        what = f"status {result.status}" if result.status is not None else result.error
        if result.outcome is Outcome.ACK:
            message.ack()
            self.stats.record(path, "delivered", result.latency)
            log.debug("delivered %s from %s to %s: %s in %.3fs", message.message_id, path,
                      sub.endpoint, what, result.latency)
            if before.in_backoff:
                log.info("endpoint %s recovered after %d failed attempts", sub.endpoint,
                         before.failures)
            return
        message.nack()
        if result.outcome is Outcome.PERMANENT:
            self.stats.record(path, "failed", result.latency)
            log.error("endpoint %s rejected message %s from %s with %s: it will not accept it "
                      "on retry either (nacked; a dead-letter policy on the subscription ends "
                      "the loop)", sub.endpoint, message.message_id, path, what)
        else:
            self.stats.record(path, "retried", result.latency)
            log.debug("push of %s from %s to %s failed: %s; nacked for redelivery",
                      message.message_id, path, sub.endpoint, what)
        if not before.in_backoff:
            log.warning("endpoint %s failing (%s): backing off (%s from %gs up to %gs)",
                        sub.endpoint, what, "exponential with full jitter",
                        sub.backoff.initial, sub.backoff.maximum)
