"""Helpers the Python 3 test suites share: free ports, deadline waits, real server processes.

The server processes (and free_port, wait_for) live in processes.py, which the benchmarks use
too; they are re-exported here so that the tests have one place to import from.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

from processes import (
    NATS_MISSING,
    VENV_BIN,
    EmulatorProcess,
    NatsServer,
    free_port,
    wait_for,
)

__all__ = ["NATS_MISSING", "REPO", "VENV_BIN", "EmulatorProcess", "NatsServer", "emulator_env",
           "free_port", "until", "wait_for"]

REPO = Path(__file__).resolve().parent.parent


def emulator_env(host: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PUBSUB_EMULATOR_HOST"] = host
    return env


async def until(done: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """wait_for on the event loop: poll `done` until it is truthy; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
