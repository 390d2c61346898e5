from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pw_helpers import PubSub, WorkerProcess  # noqa: E402

from push_endpoint import Receiver  # noqa: E402


@pytest.fixture(scope="session")
def emulator_host(request: pytest.FixtureRequest) -> str:
    """host:port of the emulator: PUSH_WORKER_TEST_EMULATOR_HOST if set (an already running
    emulator, e.g. Google's reference one), else the project's own (tests/conftest.py)."""
    host = os.environ.get("PUSH_WORKER_TEST_EMULATOR_HOST")
    if host:
        os.environ["PUBSUB_EMULATOR_HOST"] = host
        return host
    return request.getfixturevalue("emulator").host


@pytest.fixture
def pubsub(emulator_host: str) -> Iterator[PubSub]:
    ps = PubSub(emulator_host)
    yield ps
    ps.close()


@pytest.fixture
def endpoint() -> Iterator[Receiver]:
    ep = Receiver().start()
    yield ep
    ep.stop()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(config: dict[str, Any], name: str = "worker", **kw: Any) -> WorkerProcess:
        w = WorkerProcess(tmp_path, config, name=name, **kw).start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.kill()
