"""HTTP delivery to one endpoint: a pooled keep-alive POST that classifies the outcome, and the
per-endpoint gate that applies the backoff.
"""

from __future__ import annotations

import enum
import http.client
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

from push_contract import (
    ACK_STATUSES,
    BackoffPolicy,
    BackoffState,
    record_failure,
    record_success,
    wait_time,
)

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


def describe_error(exc: BaseException) -> str:
    """A short reason for a failed request: the root OS error when there is one."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    root: BaseException = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        root = cause
        cause = cause.__cause__ or cause.__context__
    for candidate in (root, *exc.args):
        if isinstance(candidate, OSError) and candidate.strerror:
            return f"{type(exc).__name__}: {candidate.strerror}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}"


# A kept-alive connection the server has closed in the meantime fails like this before any
# response; the request is then retried once on a fresh connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class Deliverer:
    """POSTs to one endpoint over a pool of keep-alive connections (thread-safe).

    Plain ``http.client``: a fraction of the CPU of a requests.Session per POST.  Proxy
    environment variables are not used.  `timeout` applies to connecting and to each read.
    """

    def __init__(self, endpoint: str, token: str | None, timeout: float, pool_size: int) -> None:
        self.endpoint = endpoint  # without token: safe to log
        parts = urlsplit(url_with_token(endpoint, token))
        self._https = parts.scheme == "https"
        self._host = parts.hostname or ""
        self._port = parts.port
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._secrets = (token,) if token else ()
        self._timeout = timeout
        self._pool_size = max(1, pool_size)
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._ssl = ssl.create_default_context() if self._https else None

    def _new_connection(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                               context=self._ssl)
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def _checkout(self) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._new_connection(), False

    def _checkin(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < self._pool_size:
                self._idle.append(conn)
                return
        conn.close()

    def post(self, body: bytes, headers: Mapping[str, str]) -> DeliveryResult:
        start = time.monotonic()
        encoded = {k: v.encode("utf-8") for k, v in headers.items()}
        conn, reused = self._checkout()
        try:
            try:
                status, keep = self._exchange(conn, body, encoded)
            except _STALE:
                if not reused:
                    raise
                conn.close()
                conn = self._new_connection()
                status, keep = self._exchange(conn, body, encoded)
        except TimeoutError:
            conn.close()
            return DeliveryResult(Outcome.RETRY, None, f"timeout after {self._timeout:g}s",
                                  time.monotonic() - start)
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            return DeliveryResult(Outcome.RETRY, None, redact(describe_error(e), self._secrets),
                                  time.monotonic() - start)
        except ValueError as e:  # e.g. an attribute name that is not a valid header name
            conn.close()
            return DeliveryResult(Outcome.PERMANENT, None,
                                  redact(describe_error(e), self._secrets),
                                  time.monotonic() - start)
        if keep:
            self._checkin(conn)
        else:
            conn.close()
        return DeliveryResult(classify(status), status, None, time.monotonic() - start)

    def _exchange(self, conn: http.client.HTTPConnection, body: bytes,
                  headers: Mapping[str, bytes]) -> tuple[int, bool]:
        conn.request("POST", self._target, body=body, headers=dict(headers))
        resp = conn.getresponse()
        resp.read()
        return resp.status, not resp.will_close

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


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
