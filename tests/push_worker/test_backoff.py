"""Unit tests: the backoff policy and state transitions, and the per-endpoint gate."""

from __future__ import annotations

import threading

import pytest

from push_worker import BackoffPolicy, BackoffState, record_failure, record_success, wait_time
from push_worker._delivery import EndpointGate


def test_default_policy_is_100ms_doubling_up_to_60s() -> None:
    p = BackoffPolicy()
    assert (p.initial, p.multiplier, p.maximum) == (0.1, 2.0, 60.0)
    assert [p.cap(n) for n in range(0, 5)] == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.8])
    assert p.cap(10) == pytest.approx(51.2)
    assert p.cap(11) == 60.0
    assert p.cap(10_000) == 60.0  # no overflow


def test_full_jitter_spans_zero_to_cap() -> None:
    p = BackoffPolicy()
    assert p.delay(4, 0.0) == 0.0
    assert p.delay(4, 0.5) == pytest.approx(0.4)
    assert p.delay(4, 0.999999) < p.cap(4)
    assert p.delay(4, 7.0) == p.cap(4)  # clamped


@pytest.mark.parametrize("kwargs", [{"initial": 0}, {"multiplier": 0.5},
                                    {"initial": 2, "maximum": 1}])
def test_invalid_policy(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        BackoffPolicy(**kwargs)


def test_failures_escalate_and_success_resets() -> None:
    p = BackoffPolicy()
    s = BackoffState()
    assert not s.in_backoff and wait_time(s, 100.0) == 0.0
    s = record_failure(s, p, now=100.0, rand=1.0)
    assert s == BackoffState(failures=1, not_before=pytest.approx(100.1))
    s = record_failure(s, p, now=101.0, rand=0.5)
    assert s.failures == 2 and s.not_before == pytest.approx(101.1)
    assert wait_time(s, 101.0) == pytest.approx(0.1)
    assert wait_time(s, 102.0) == 0.0
    assert record_success(s) == BackoffState()


def test_concurrent_failures_escalate_once() -> None:
    p = BackoffPolicy()
    s = BackoffState()
    # Three requests started while healthy (observed 0 failures) all fail.
    s = record_failure(s, p, 1.0, 0.5, observed_failures=0)
    s2 = record_failure(s, p, 1.0, 0.5, observed_failures=0)
    assert s2 is s and s.failures == 1


def test_growing_delay_sequence_is_deterministic_given_rand() -> None:
    p = BackoffPolicy(initial=1, multiplier=3, maximum=20)
    s, delays = BackoffState(), []
    for _ in range(5):
        s = record_failure(s, p, now=0.0, rand=0.5)
        delays.append(s.not_before)
    assert delays == [0.5, 1.5, 4.5, 10.0, 10.0]


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_gate_lets_everyone_through_while_healthy() -> None:
    gate = EndpointGate(BackoffPolicy(), rand=lambda: 1.0, clock=FakeClock())
    stop = threading.Event()
    tickets = [gate.acquire(stop) for _ in range(3)]
    assert all(t is not None and not t.probe for t in tickets)


def test_gate_in_backoff_allows_one_probe_after_the_delay() -> None:
    clock = FakeClock()
    gate = EndpointGate(BackoffPolicy(initial=1.0), rand=lambda: 1.0, clock=clock)
    stop = threading.Event()
    t = gate.acquire(stop)
    assert t is not None
    before = gate.release(t, success=False)
    assert not before.in_backoff and gate.state.failures == 1
    assert gate.state.not_before == 1.0

    clock.now = 1.0
    probe = gate.acquire(stop)
    assert probe is not None and probe.probe

    # A second caller must wait for the probe's result.
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(gate.acquire(stop)))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not got
    gate.release(probe, success=True)
    waiter.join(5)
    assert got and got[0] is not None and not got[0].probe  # type: ignore[union-attr]
    assert not gate.state.in_backoff


def test_gate_waiters_return_none_on_stop() -> None:
    clock = FakeClock()
    gate = EndpointGate(BackoffPolicy(initial=30.0), rand=lambda: 1.0, clock=clock)
    stop = threading.Event()
    t = gate.acquire(stop)
    assert t is not None
    gate.release(t, success=False)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(gate.acquire(stop)))
    waiter.start()
    stop.set()
    gate.close()
    waiter.join(5)
    assert got == [None]
