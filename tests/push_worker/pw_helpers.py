"""Helpers for the push worker tests: Pub/Sub setup, the worker as a subprocess. (The recording
HTTP endpoint is tests/push_endpoint.py, shared with the emulator's push tests.)"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import yaml

from support import VENV_BIN

PROJECT = "push-worker-test"


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
