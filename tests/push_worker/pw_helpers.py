"""Helpers for the push worker tests: a recording HTTP endpoint, Pub/Sub setup, a worker
subprocess."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

from support import VENV_BIN

PROJECT = "push-worker-test"


@dataclass
class Recorded:
    arrived: float  # time.monotonic()
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes
    status: int = 0


@dataclass
class Endpoint:
    """A real HTTP server in a thread that records every request.

    `responder(request, index)` returns the status (default 200); it may sleep.
    """

    port: int = 0
    responder: Callable[[Recorded, int], int] = lambda _r, _i: 200
    requests: list[Recorded] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Endpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                parts = urlsplit(self.path)
                rec = Recorded(time.monotonic(), parts.path, parse_qs(parts.query),
                               {k.lower(): v for k, v in self.headers.items()}, body)
                with endpoint._lock:
                    index = len(endpoint.requests)
                    endpoint.requests.append(rec)
                status = endpoint.responder(rec, index)
                rec.status = status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        ThreadingHTTPServer.daemon_threads = True
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/push"

    def snapshot(self) -> list[Recorded]:
        with self._lock:
            return list(self.requests)

    def acked_ids(self) -> list[str]:
        """Message ids (from the wrapped body) of requests answered with an ack status."""
        import json

        return [json.loads(r.body)["message"]["messageId"] for r in self.snapshot()
                if r.status in (200, 204)]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class PubSub:
    """Publisher and subscriber clients pointed at the test emulator."""

    def __init__(self, host: str) -> None:
        from google.cloud import pubsub_v1

        os.environ["PUBSUB_EMULATOR_HOST"] = host
        self.host = host
        self.publisher = pubsub_v1.PublisherClient(
            publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))
        self.subscriber = pubsub_v1.SubscriberClient()

    def topic(self) -> str:
        path = self.publisher.topic_path(PROJECT, unique("t"))
        self.publisher.create_topic(name=path)
        return path

    def subscription(self, topic: str, dead_letter_topic: str | None = None,
                     ack_deadline: int = 10) -> str:
        from google.cloud import pubsub_v1

        path = self.subscriber.subscription_path(PROJECT, unique("s"))
        request: dict[str, Any] = {"name": path, "topic": topic,
                                   "ack_deadline_seconds": ack_deadline}
        if dead_letter_topic:
            request["dead_letter_policy"] = pubsub_v1.types.DeadLetterPolicy(
                dead_letter_topic=dead_letter_topic, max_delivery_attempts=100)
        self.subscriber.create_subscription(request=request)
        return path

    def publish(self, topic: str, count: int, prefix: str = "m",
                **attrs: str) -> dict[str, bytes]:
        """Publish `count` messages; returns message id -> data."""
        futures = [(self.publisher.publish(topic, f"{prefix}-{i}".encode(), **attrs),
                    f"{prefix}-{i}".encode()) for i in range(count)]
        return {f.result(timeout=30): data for f, data in futures}

    def close(self) -> None:
        self.subscriber.close()


def sub_entry(subscription_path: str, endpoint: str, **extra: Any) -> dict[str, Any]:
    _, project, _, sub = subscription_path.split("/")
    return {"project_id": project, "subscription_id": sub, "endpoint": endpoint, **extra}


class WorkerProcess:
    """`push-worker CONFIG` as a subprocess, logging to a file."""

    def __init__(self, tmp: Path, config: dict[str, Any], log_level: str = "DEBUG",
                 name: str = "worker") -> None:
        self.config_path = tmp / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.log_path = tmp / f"{name}.log"
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.pop("PUBSUB_EMULATOR_HOST", None)  # the config must be enough
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "push-worker"), str(self.config_path), "--log-level",
             self.log_level], stdout=self._log, stderr=subprocess.STDOUT, env=env)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if getattr(self, "_log", None) and not self._log.closed:
            self._log.close()
