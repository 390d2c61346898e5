from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from push_endpoint import Receiver  # noqa: E402
from support import EmulatorProcess  # noqa: E402


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A push endpoint (push_endpoint.py) on a free loopback port, acking with 204."""
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="session")
def emulator(request) -> Iterator[EmulatorProcess]:
    """One real emulator for the session; PUBSUB_EMULATOR_HOST points Google's clients at it.

    PUBSUB_TEST_STORE=nats runs it on the NATS JetStream backend (a nats-server of its own).
    """
    extra = []
    if os.environ.get("PUBSUB_TEST_STORE") == "nats":
        extra = ["--store", request.getfixturevalue("nats_server").url]
    with EmulatorProcess(extra_args=extra) as emu:
        old = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = emu.host
        yield emu
        if old is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = old


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory) -> Iterator[object]:
    """One real nats-server with JetStream for the session (tests use separate namespaces)."""
    from support import NatsServer

    server = NatsServer(tmp_path_factory.mktemp("nats") / "js").start()
    yield server
    server.stop()
