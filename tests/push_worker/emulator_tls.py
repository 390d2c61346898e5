"""The emulator started with TLS and --auth, for the push worker's end-to-end test.

Written against the emulator's announced interface: `start --auth --tls-self-signed` (the CA
it makes under <data-dir>/tls/), `keys create EMAIL --out F --data-dir D --url URL
[--role ROLE]...` (under --auth a key may do only what its roles grant: docs/iam.md).
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pw_helpers import WorkerProcess

from processes import TlsEmulatorProcess
from support import VENV_BIN, wait_for


class TlsAuthEmulator(TlsEmulatorProcess):
    """`pubsub-emulator start --auth --tls-self-signed`, ready once https /healthz answers."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(data_dir=data_dir, extra_args=["--auth", "--tls-self-signed"])

    def key_file(self, email: str, *roles: str) -> Path:
        """A key for `email`, granted `roles` on its project."""
        out = Path(self.data_dir) / f"key-{uuid.uuid4().hex[:8]}.json"
        grants = [arg for role in roles for arg in ("--role", role)]
        subprocess.run([str(VENV_BIN / "pubsub-emulator"), "keys", "create", email, "--out",
                        str(out), "--data-dir", self.data_dir, "--url", f"https://{self.host}",
                        *grants],
                       check=True, capture_output=True, timeout=60)
        return out


@contextmanager
def auth_emulator(tmp: Path) -> Iterator[TlsAuthEmulator]:
    emu = TlsAuthEmulator(tmp / "emulator").start()
    try:
        yield emu
    finally:
        emu.close()


def _transport_kwargs(emu: TlsAuthEmulator, key_path: Path) -> dict[str, Any]:
    import grpc
    from google.oauth2 import service_account

    return {"host": emu.host,
            "credentials": service_account.Credentials.from_service_account_file(
                str(key_path)),
            "ssl_channel_credentials": grpc.ssl_channel_credentials(emu.ca.read_bytes())}


def publish_one(emu: TlsAuthEmulator, key_path: Path, data: bytes) -> str:
    """Create a topic and a subscription in push-worker-test, publish `data`; the
    subscription id."""
    from google.cloud import pubsub_v1
    from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
    from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

    kwargs = _transport_kwargs(emu, key_path)
    publisher = pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(**kwargs))
    subscriber = pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(**kwargs))
    suffix = uuid.uuid4().hex[:10]
    topic = publisher.topic_path("push-worker-test", f"t-{suffix}")
    subscription = subscriber.subscription_path("push-worker-test", f"s-{suffix}")
    try:
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=subscription, topic=topic)
        publisher.publish(topic, data).result(timeout=30)
    finally:
        subscriber.close()
    return subscription.rsplit("/", 1)[1]


def run_worker(tmp: Path, config: dict[str, Any], until: Callable[[], bool]) -> str:
    """Run `push-worker` on `config` until `until()` holds; its log."""
    worker = WorkerProcess(tmp, config, name="tls-worker").start()
    try:
        wait_for(until, timeout=60, message="the worker's push")
        assert worker.terminate() == 0, worker.log()[-3000:]
    finally:
        worker.kill()
    return worker.log()
