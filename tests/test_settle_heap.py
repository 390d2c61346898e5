"""What start-up made is out of the garbage collector's sight once the server runs: a full
collection then walks only what calls made (cli.settle_heap)."""

from __future__ import annotations

import gc

from pubsub_emulator.cli import settle_heap


def test_start_up_objects_are_frozen_out_of_collections() -> None:
    gc.unfreeze()
    try:
        settled = list(range(100))  # made before: frozen with the rest
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert not any(o is settled for o in gc.get_objects())  # no collection walks it
    finally:
        gc.unfreeze()
