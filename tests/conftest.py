from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support import EmulatorProcess  # noqa: E402


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorProcess]:
    """One real emulator for the session; PUBSUB_EMULATOR_HOST points Google's clients at it."""
    with EmulatorProcess() as emu:
        old = os.environ.get("PUBSUB_EMULATOR_HOST")
        os.environ["PUBSUB_EMULATOR_HOST"] = emu.host
        yield emu
        if old is None:
            os.environ.pop("PUBSUB_EMULATOR_HOST", None)
        else:
            os.environ["PUBSUB_EMULATOR_HOST"] = old
