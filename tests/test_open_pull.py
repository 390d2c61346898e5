"""An open StreamingPull's leases (core/streaming.py OpenPull): which ran out, and when to look
next, kept without scanning every lease on every turn of the call's loop."""

from __future__ import annotations

import asyncio

from google.pubsub_v1 import types as t

from pubsub_emulator.core.streaming import OpenPull


def _call() -> OpenPull:
    sub = t.Subscription.pb()(name="projects/p/subscriptions/s", topic="projects/p/topics/t")
    return OpenPull(sub, 10_000, 100, 0, asyncio.Event())


def test_leases_run_out_at_their_time_and_the_next_look_follows_them() -> None:
    call = _call()
    assert call.soonest_expiry() is None and call.expire(10**12) == 0
    call.hold([("a", 1), ("b", 1)], 1_000)
    call.hold([("c", 1)], 3_000)
    assert call.soonest_expiry() == 1_000
    assert call.expire(999) == 0 and len(call.outstanding) == 3
    call.extend(["a"], 5_000)  # a modack: a now runs out last
    assert call.expire(1_000) == 1 and set(call.outstanding) == {"a", "c"}  # b ran out
    assert call.soonest_expiry() == 3_000
    call.extend(["a"], 2_000)  # a shorter deadline: looked at sooner
    assert call.soonest_expiry() == 2_000
    assert call.expire(2_500) == 1 and set(call.outstanding) == {"c"}
    call.release(["c"])  # acked
    assert call.soonest_expiry() is None and call.outstanding_bytes == 0


def test_a_look_after_acks_moves_the_next_look_to_the_first_lease_still_held() -> None:
    call = _call()
    call.hold([("a", 1)], 1_000)
    call.hold([("b", 1)], 4_000)
    call.release(["a"])  # acked before it ran out: the next look may come early, finds nothing
    assert call.soonest_expiry() <= 1_000
    assert call.expire(1_500) == 0 and set(call.outstanding) == {"b"}
    assert call.soonest_expiry() == 4_000
