"""HTTP delivery to one endpoint: a pooled POST that classifies the outcome, and the
per-endpoint gate that applies the backoff.
"""

from __future__ import annotations

import enum
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from ._backoff import BackoffPolicy, BackoffState, record_failure, record_success, wait_time

#: Statuses Pub/Sub push treats as an ack.
ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
#: Statuses that will not succeed on retry; logged at error level (still nacked).
PERMANENT_STATUSES = frozenset({400, 403, 413})


class Outcome(enum.Enum):
    ACK = "ack"
    RETRY = "retry"  # 5xx, 429, other statuses, timeout, connection error
    PERMANENT = "permanent"  # 400, 403, 413


def classify(status: int) -> Outcome:
    if status in ACK_STATUSES:
        return Outcome.ACK
    if status in PERMANENT_STATUSES:
        return Outcome.PERMANENT
    return Outcome.RETRY


@dataclass(frozen=True)
class DeliveryResult:
    outcome: Outcome
    status: int | None
    error: str | None
    latency: float


def url_with_token(endpoint: str, token: str | None) -> str:
    """`endpoint` with ``token=<token>`` appended to its query string."""
    if not token:
        return endpoint
    parts = urlsplit(endpoint)
    extra = "token=" + quote(token, safe="")
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def redact(text: str, secrets: list[str] | tuple[str, ...]) -> str:
    """`text` with every secret (raw and URL-quoted) replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
            quoted = quote(secret, safe="")
            if quoted != secret:
                text = text.replace(quoted, "***")
    return text


class Deliverer:
    """POSTs to one endpoint over a pooled keep-alive session (thread-safe)."""

    def __init__(self, endpoint: str, token: str | None, timeout: float, pool_size: int) -> None:
        self.endpoint = endpoint  # without token: safe to log
        self._url = url_with_token(endpoint, token)
        self._secrets = (token,) if token else ()
        self._timeout = timeout
        self._session = requests.Session()
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=max(1, pool_size),
                              max_retries=0, pool_block=False)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def post(self, body: bytes, headers: Mapping[str, str]) -> DeliveryResult:
        start = time.monotonic()
        try:
            resp = self._session.post(self._url, data=body, headers=dict(headers),
                                      timeout=self._timeout, allow_redirects=False)
            resp.close()
        except requests.Timeout:
            return DeliveryResult(Outcome.RETRY, None, f"timeout after {self._timeout:g}s",
                                  time.monotonic() - start)
        except requests.RequestException as e:
            error = redact(f"{type(e).__name__}: {e}", self._secrets)
            return DeliveryResult(Outcome.RETRY, None, error, time.monotonic() - start)
        return DeliveryResult(classify(resp.status_code), resp.status_code, None,
                              time.monotonic() - start)

    def close(self) -> None:
        self._session.close()


@dataclass(frozen=True)
class Ticket:
    """Permission to POST, handed out by :meth:`EndpointGate.acquire`."""

    observed_failures: int
    probe: bool


class EndpointGate:
    """Applies the backoff of one endpoint to all threads that POST to it.

    Healthy endpoint: every caller goes at once.  In backoff: callers wait until the backoff
    delay has passed, then a single request probes the endpoint; the others wait for its result
    (success reopens the gate for everyone, failure extends the backoff).  So a down endpoint
    sees one request per backoff period, not `concurrency` of them.
    """

    def __init__(self, policy: BackoffPolicy, rand: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy
        self._rand = rand
        self._clock = clock
        self._cond = threading.Condition()
        self._state = BackoffState()
        self._probing = False
        self._closed = False

    @property
    def state(self) -> BackoffState:
        return self._state

    def acquire(self, stop: threading.Event) -> Ticket | None:
        """Block until a POST may go; None if `stop` was set (or the gate closed) meanwhile."""
        with self._cond:
            while True:
                if stop.is_set() or self._closed:
                    return None
                state = self._state
                if not state.in_backoff:
                    return Ticket(observed_failures=0, probe=False)
                wait = wait_time(state, self._clock())
                if wait <= 0 and not self._probing:
                    self._probing = True
                    return Ticket(observed_failures=state.failures, probe=True)
                self._cond.wait(timeout=min(wait, 1.0) if wait > 0 else 1.0)

    def release(self, ticket: Ticket, success: bool) -> BackoffState:
        """Record the result of a POST; returns the state as it was before."""
        with self._cond:
            before = self._state
            if success:
                self._state = record_success(self._state)
            else:
                self._state = record_failure(self._state, self.policy, self._clock(),
                                             self._rand(), ticket.observed_failures)
            if ticket.probe:
                self._probing = False
            self._cond.notify_all()
            return before

    def close(self) -> None:
        """Wake every waiter; subsequent acquires return None."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
