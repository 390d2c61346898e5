"""Exponential backoff with full jitter, as pure data and functions.

The worker keeps one :class:`BackoffState` per endpoint.  Every failed POST calls
:func:`record_failure`, every successful one :func:`record_success`; before POSTing, the worker
waits :func:`wait_time` seconds.  Nothing here sleeps, reads a clock or draws random numbers:
time (``now``) and randomness (``rand`` in ``[0, 1)``) are arguments, so the behaviour is
deterministic under test.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BackoffPolicy:
    """Delay cap after ``n`` consecutive failures: ``min(maximum, initial * multiplier**(n-1))``.

    With full jitter the actual delay is uniform in ``[0, cap)``.
    """

    initial: float = 0.1
    multiplier: float = 2.0
    maximum: float = 60.0

    def __post_init__(self) -> None:
        if self.initial <= 0:
            raise ValueError("initial must be > 0")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if self.maximum < self.initial:
            raise ValueError("maximum must be >= initial")

    def cap(self, failures: int) -> float:
        """Upper bound of the delay after `failures` consecutive failures (0 when none)."""
        if failures <= 0:
            return 0.0
        try:
            value = self.initial * self.multiplier ** (failures - 1)
        except OverflowError:
            return self.maximum
        return min(self.maximum, value)

    def delay(self, failures: int, rand: float) -> float:
        """Full jitter: `rand` (in [0, 1)) scaled to [0, cap(failures))."""
        return self.cap(failures) * min(max(rand, 0.0), 1.0)


@dataclass(frozen=True)
class BackoffState:
    """Consecutive failures of an endpoint and the monotonic time before which not to POST."""

    failures: int = 0
    not_before: float = 0.0

    @property
    def in_backoff(self) -> bool:
        return self.failures > 0


def record_failure(state: BackoffState, policy: BackoffPolicy, now: float, rand: float,
                   observed_failures: int | None = None) -> BackoffState:
    """State after a failed POST at time `now`.

    `observed_failures` is ``state.failures`` as it was when the failed request started.  If
    failures were recorded since (other requests in flight at the same time failed first), this
    failure is already accounted for and the state is unchanged: a burst of N concurrent failures
    escalates the backoff by one step, not N.
    """
    if observed_failures is not None and observed_failures < state.failures:
        return state
    failures = state.failures + 1
    return BackoffState(failures=failures, not_before=now + policy.delay(failures, rand))


def record_success(state: BackoffState) -> BackoffState:
    """State after a successful POST: the endpoint is healthy again."""
    return BackoffState()


def wait_time(state: BackoffState, now: float) -> float:
    """Seconds to wait at time `now` before the next POST (0 when it may go now)."""
    return max(0.0, state.not_before - now)


# Native push (the emulator's own) eases off one step per success instead of resetting, and
# waits the full cap without jitter, as Cloud Pub/Sub's push backoff is described: a nack
# doubles the pause, a success halves it. Failures stop counting once the cap is at its
# maximum, so a long outage is followed by halving from the maximum, not from far above it.
def failures_at_maximum(policy: BackoffPolicy) -> int:
    """The fewest consecutive failures whose cap is the policy's maximum."""
    failures = 1
    while policy.cap(failures) < policy.maximum:
        failures += 1
    return failures


def record_nack(state: BackoffState, policy: BackoffPolicy, now: float) -> BackoffState:
    """State after a nacked push: one more failure, a pause of the full cap."""
    failures = min(state.failures + 1, failures_at_maximum(policy))
    return BackoffState(failures=failures, not_before=now + policy.cap(failures))


def record_ack(state: BackoffState) -> BackoffState:
    """State after an acked push: one failure fewer (the pause halves); the current pause,
    if any, still runs out."""
    return BackoffState(failures=max(0, state.failures - 1), not_before=state.not_before)
