"""The HTTP/1.1 client of native push: keep-alive connections on asyncio protocols, one pool per
subscription.

Why not aiohttp's client, which push used before: its per-request machinery (request and
response objects, a writer, timers, header multidicts) cost about 125 µs of CPU per POST on the
2-core bench machine, against about 40 µs for a bare protocol making the same POSTs; at the
10,000 POSTs/s of issue 17 on one core that alone would be more than the core. This client
does what the pusher asked of aiohttp (a POST, its status), as aiohttp did it:

- Request: `POST <path?query> HTTP/1.1` with the headers aiohttp sent: `Host`, the caller's
  headers in their order, `Accept: */*`, `Accept-Encoding: gzip, deflate`, `Authorization:
  Basic` for credentials written in the URL, `Content-Length`; head and body in one write.
  The URL is read by yarl, as aiohttp read it (the same path, query and host as
  `Destinations.refusal` judges). A header value holding CR or LF is refused (ValueError).
  A caller's Host, Accept or Accept-Encoding replaces the client's, as in aiohttp; a caller's
  Content-Length or Transfer-Encoding (an attribute so named, under writeMetadata) is left
  out: the client frames the body itself.
- `post()` waits for a connection if it must; `post_now()` sends only on an idle one, without
  a coroutine (the pusher's common case), and returns the answer's future.
- http and https; https verifies the certificate chain and the host name with
  `ssl.create_default_context()` (the system's CAs, or SSL_CERT_FILE / SSL_CERT_DIR) and offers
  ALPN http/1.1, aiohttp's verified context.
- Where connections go (destinations.py): a host written as an address is connected to as
  written (the pusher judged it with `Destinations.refusal` before calling; legacy forms such
  as `127.1` are refused, as aiohttp does); a name is resolved by the resolver given
  (AllowedResolver: only allowed addresses, PushRefused if none) and connected to at exactly
  the addresses it returned, each in turn until one answers. Resolutions are kept 10 s
  (aiohttp's ttl_dns_cache). No proxy is used and no redirect followed: a 3xx is a status.
- Answer: the status of the first final response; 1xx interim responses (102 Processing...)
  are skipped as aiohttp skipped them. The body is not read: a connection whose whole
  response has arrived with its head goes back to the pool, any other is closed (what
  aiohttp's release did when the caller left without reading).
- Pool: at most `limit` connections open (a request waits for one beyond that); idle ones are
  closed after 15 s (aiohttp's keepalive_timeout) and whenever the server closes them.
- Timeout: resolution, connection, TLS handshake and answer within `timeout` seconds, or
  TimeoutError (asyncio.TimeoutError) and the connection is closed.
- Errors: PushConnectError (no address answered; the cause inside), PushProtocolError (no
  HTTP/1.x answer, or the connection closed before one), PushRefused from the resolver,
  ValueError for an endpoint that is no http(s) URL.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import ipaddress
import math
import socket
import ssl
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from .destinations import looks_like_address

KEEPALIVE_S = 15.0  # aiohttp's keepalive_timeout: an idle connection is closed after this
DNS_TTL_S = 10.0  # aiohttp's ttl_dns_cache
MAX_HEAD = 64 * 1024  # a response head longer than this is no answer we wait for
DEFAULT_HEADERS = b"Accept: */*\r\nAccept-Encoding: gzip, deflate\r\n"
# Headers whose caller's value replaces the client's own (as in aiohttp), or is dropped
# (Content-Length, Transfer-Encoding: the client frames the body itself).
RESERVED = frozenset({"host", "accept", "accept-encoding", "content-length",
                      "transfer-encoding"})
KNOWN_ANSWERS: dict[bytes, tuple[int, bool]] = {}  # read_answer's: whole answers, parsed
CRLF_REFUSED = ("Newline or carriage return character detected in HTTP status message or "
                "header. This is a potential security issue.")  # aiohttp's words


class PushProtocolError(Exception):
    """The endpoint's answer was no HTTP/1.x response, or it closed before answering."""


class PushConnectError(OSError):
    """No connection to the endpoint could be made (refused, unreachable, TLS, no name)."""


@dataclass(frozen=True)
class Target:
    """An endpoint URL as the client uses it."""

    key: tuple[bool, str, int]  # (https, host, port): connections are pooled by it
    host: str  # the host to resolve or connect to (IDNA, no brackets)
    port: int
    tls: bool
    address: bool  # written as an address: connected to as written, not resolved
    server_hostname: str | None  # what the certificate must name (https only)
    head: bytes  # the request line and Host header
    basic_auth: str  # an Authorization header value from credentials in the URL, or ""


def parse_target(url: str) -> Target:
    """ValueError if `url` is no absolute http(s) URL."""
    parsed = URL(url)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"not an http or https URL: {url}")
    host = parsed.raw_host
    port = parsed.port
    if not host or port is None:
        raise ValueError(f"no host in URL: {url}")
    if host.endswith(".."):  # several trailing dots mean one (aiohttp, #7364)
        host = host.rstrip(".") + "."
    tls = parsed.scheme == "https"
    address = looks_like_address(host)
    if address and ":" not in host and not _canonical_ipv4(host):
        raise ValueError(f"{host} is not a canonical IPv4 address")
    head = f"POST {parsed.raw_path_qs} HTTP/1.1\r\nHost: {parsed.host_port_subcomponent}\r\n"
    basic = ""
    if parsed.raw_user or parsed.raw_password:
        credentials = f"{parsed.user or ''}:{parsed.password or ''}".encode("latin-1")
        basic = "Basic " + base64.b64encode(credentials).decode("ascii")  # as aiohttp's BasicAuth
    return Target((tls, host, port), host, port, tls, address,
                  host.rstrip(".") if tls else None, head.encode("utf-8"), basic)


def _canonical_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)  # dotted quad only: no 127.1, 2130706433, 0177.0.0.1
    except ValueError:
        return False
    return True


def request_head(target: Target, headers: Mapping[str, str]) -> bytes:
    """The request line and headers up to Content-Length (ValueError for CR or LF in one)."""
    head = target.head
    own = DEFAULT_HEADERS
    if any(name.lower() in RESERVED for name in headers):
        head, own, headers = _with_reserved(target, headers)
    lines = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
    # Each line ends in the one CRLF added above: any other CR or LF came from a name or value.
    if lines.count("\r") != len(headers) or lines.count("\n") != len(headers):
        raise ValueError(CRLF_REFUSED)
    if target.basic_auth:
        if any(name.lower() == "authorization" for name in headers):
            raise ValueError("Cannot combine AUTHORIZATION header with AUTH argument or "
                             "credentials encoded in URL")
        own += f"Authorization: {target.basic_auth}\r\n".encode("latin-1")
    return b"".join((head, lines.encode("utf-8"), own))


def _with_reserved(target: Target, headers: Mapping[str, str]
                   ) -> tuple[bytes, bytes, dict[str, str]]:
    """The request line, the client's own headers and the caller's, when the caller names a
    header the client writes itself (an attribute of that name under writeMetadata)."""
    names = {name.lower(): name for name in headers}
    head = target.head
    if "host" in names:  # the caller's Host replaces the URL's (aiohttp's special case)
        head = head.split(b"\r\n", 1)[0] + b"\r\n"
    own = b"".join(line + b"\r\n" for line in DEFAULT_HEADERS.split(b"\r\n")[:-1]
                   if line.split(b":", 1)[0].decode().lower() not in names)
    kept = {name: value for name, value in headers.items()
            if name.lower() not in ("content-length", "transfer-encoding")}
    if "host" in names:
        kept = {names["host"]: headers[names["host"]],
                **{k: v for k, v in kept.items() if k.lower() != "host"}}
    return head, own, kept


def read_answer(buffer: bytes) -> tuple[int, bool] | None:
    """take_response, remembering short whole answers: an endpoint sends the same bytes again
    and again (until its Date header changes)."""
    known = KNOWN_ANSWERS.get(buffer)
    if known is not None:
        return known
    parsed = take_response(buffer)
    if parsed is not None and len(buffer) <= 512:
        if len(KNOWN_ANSWERS) >= 64:
            KNOWN_ANSWERS.clear()
        KNOWN_ANSWERS[buffer] = parsed
    return parsed


def take_response(buffer: bytes) -> tuple[int, bool] | None:
    """(status, whether the connection may carry another request) of the first final response
    in `buffer`; None while its head is incomplete. PushProtocolError if it is no response."""
    start = 0
    while True:
        end = buffer.find(b"\r\n\r\n", start)
        if end < 0:
            if len(buffer) - start > MAX_HEAD:
                raise PushProtocolError("response head too long")
            return None
        lines = buffer[start:end].split(b"\r\n")
        version, status = _status_line(lines[0])
        start = end + 4
        if status < 200 and status != 101:
            continue  # interim (100 Continue, 102 Processing...): the final one follows
        if status == 101:
            return status, False
        fields = _fields(lines[1:])
        connection = fields.get(b"connection", b"").lower()
        keep = b"close" not in connection if version == b"1.1" else b"keep-alive" in connection
        return status, keep and _body_end(status, fields, buffer, start) == len(buffer)


def _status_line(line: bytes) -> tuple[bytes, int]:
    parts = line.split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3 \
            or not parts[1].isdigit():
        raise PushProtocolError(f"not an HTTP/1.x status line: {line[:80]!r}")
    return parts[0][5:], int(parts[1])


def _fields(lines: list[bytes]) -> dict[bytes, bytes]:
    fields = {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon:
            raise PushProtocolError(f"not a header line: {line[:80]!r}")
        fields[name.strip().lower()] = value.strip()
    return fields


def _body_end(status: int, fields: dict[bytes, bytes], buffer: bytes, start: int) -> int:
    """Where the response's body ends in `buffer`; -1 if not (yet) there or not delimited."""
    if status in (204, 304):
        return start
    encoding = fields.get(b"transfer-encoding")
    if encoding is not None:
        return _chunked_end(buffer, start) if encoding.lower().endswith(b"chunked") else -1
    length = fields.get(b"content-length")
    if length is None or not length.isdigit():
        return -1  # delimited by the connection's close
    return start + int(length)


def _chunked_end(buffer: bytes, at: int) -> int:
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return -1
        try:
            size = int(buffer[at:line_end].split(b";", 1)[0], 16)
        except ValueError:
            return -1
        if size == 0:
            trailers_end = buffer.find(b"\r\n\r\n", line_end)
            return -1 if trailers_end < 0 else trailers_end + 4
        at = line_end + 2 + size + 2


class Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time, its answer's status in `answer`."""

    def __init__(self, pool: PushClient, key: tuple[bool, str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.answer: asyncio.Future[int] | None = None
        self.reusable = False  # the last answer was whole and the server keeps the connection
        self.idle_since = 0.0
        self.deadline = 0.0  # loop.time() by which the answer must have come
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, data: bytes, deadline: float) -> asyncio.Future[int]:
        assert self.transport is not None
        self.deadline = deadline
        self.answer = answer = self.pool.loop.create_future()
        self.reusable = False
        self.transport.write(data)
        return answer

    def data_received(self, data: bytes) -> None:
        answer = self.answer
        if answer is None or answer.done():
            self.close()  # bytes nobody asked for: the connection is out of step
            return
        buffer = self.buffer + data if self.buffer else data
        try:
            parsed = read_answer(buffer)
        except PushProtocolError as exc:
            self.answer = None
            answer.set_exception(exc)
            self.close()
            return
        if parsed is None:
            self.buffer = buffer
            return
        self.buffer = b""
        self.answer = None
        status, self.reusable = parsed
        self.pool.release(self)  # (before the waiter runs: the connection may serve it again)
        answer.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        answer, self.answer = self.answer, None
        if answer is not None and not answer.done():
            answer.set_exception(PushProtocolError(
                f"the server closed the connection before answering ({exc or 'EOF'})"))
        self.pool.forget(self)

    def usable(self) -> bool:
        return not self.lost and self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@functools.cache
def verified_context() -> ssl.SSLContext:
    """aiohttp's verified client context (made once: it reads the CA files)."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(["http/1.1"])
    return context


class PushClient:
    """One subscription's connections, and its POSTs over them."""

    def __init__(self, resolver: AbstractResolver | None, limit: int) -> None:
        self.loop = asyncio.get_running_loop()
        self._resolver = resolver or ThreadedResolver()  # (aiohttp's default resolver here)
        self._limit = max(1, limit)
        self._open: set[Connection] = set()  # connecting, busy or idle
        self._idle: dict[tuple[bool, str, int], list[Connection]] = {}
        self._waiters: deque[asyncio.Future[None]] = deque()  # for a free connection slot
        self._targets: dict[str, Target] = {}
        self._heads: dict[tuple[object, ...], bytes] = {}  # request heads by URL and headers
        self._resolved: dict[tuple[str, int], tuple[float, list[ResolveResult]]] = {}
        self._resolving: dict[tuple[str, int], asyncio.Task[list[ResolveResult]]] = {}
        self._tls: ssl.SSLContext | None = None
        self._sweep: asyncio.TimerHandle | None = None  # closes idle connections
        self._expiry: asyncio.TimerHandle | None = None  # fails answers past their deadline
        self._expiry_at = math.inf  # when it fires
        self.closed = False

    @property
    def connections(self) -> int:
        """Connections open (connecting, busy or idle)."""
        return len(self._open)

    async def post(self, url: str, headers: Mapping[str, str], body: bytes,
                   timeout: float) -> int:
        """POST `body` to `url`; the answer's HTTP status."""
        target = self._target(url)
        data = self._request(url, target, headers, body)
        deadline = self.loop.time() + timeout
        connection = self._idle_connection(target.key)
        if connection is None:
            async with asyncio.timeout_at(deadline):  # lookup, connection, TLS handshake
                connection = await self._acquire(target)
        try:
            return await self._send(connection, data, deadline)
        except BaseException:
            connection.close()  # (cancelled: the answer may still come, to nobody)
            raise

    def post_now(self, url: str, headers: Mapping[str, str], body: bytes,
                 timeout: float) -> asyncio.Future[int] | None:
        """post() without a coroutine, when an idle connection is at hand (None if not): the
        answer's future, its status or post()'s errors. Whoever cancels it closes the client
        (a connection whose answer nobody waits for is closed only when the answer comes or
        its deadline passes)."""
        target = self._target(url)
        data = self._request(url, target, headers, body)
        connection = self._idle_connection(target.key)
        if connection is None:
            return None
        return self._send(connection, data, self.loop.time() + timeout)

    def has_idle(self, url: str) -> bool:
        """Whether a connection to `url` is idle (post_now would most likely send at once)."""
        try:
            return bool(self._idle.get(self._target(url).key))
        except ValueError:
            return False

    def _target(self, url: str) -> Target:
        target = self._targets.get(url)
        if target is None:
            target = parse_target(url)
            if len(self._targets) > 16:  # an endpoint changes rarely: keep a few
                self._targets.clear()
            self._targets[url] = target
        return target

    def _request(self, url: str, target: Target, headers: Mapping[str, str],
                 body: bytes) -> bytes:
        key = (url, *headers.items())
        head = self._heads.get(key)
        if head is None:  # (the same headers each time but with writeMetadata)
            head = request_head(target, headers)
            if len(self._heads) >= 64:
                self._heads.clear()
            self._heads[key] = head
        return b"".join((head, b"Content-Length: %d\r\n\r\n" % len(body), body))

    def _send(self, connection: Connection, data: bytes, deadline: float
              ) -> asyncio.Future[int]:
        answer = connection.send(data, deadline)
        # The answer's deadline is watched by one timer for all connections (_expire): a timer
        # per POST (asyncio.timeout) cost more than the rest of the wait for it.
        if deadline < self._expiry_at:  # none due earlier (or a shorter ack deadline now)
            if self._expiry is not None:
                self._expiry.cancel()
            self._expiry = self.loop.call_at(deadline, self._expire)
            self._expiry_at = deadline
        return answer

    def _expire(self) -> None:
        """Fail the answers past their deadline; look again at the next deadline."""
        self._expiry, self._expiry_at = None, math.inf
        now = self.loop.time()
        next_deadline = None
        for connection in list(self._open):
            if connection.answer is None:
                continue
            if connection.answer.done():  # cancelled: nobody waits for its answer any more
                connection.close()
            elif connection.deadline <= now:
                connection.answer.set_exception(TimeoutError())
                connection.answer = None
                connection.close()
            elif next_deadline is None or connection.deadline < next_deadline:
                next_deadline = connection.deadline
        if next_deadline is not None:
            self._expiry = self.loop.call_at(next_deadline, self._expire)
            self._expiry_at = next_deadline

    def _idle_connection(self, key: tuple[bool, str, int]) -> Connection | None:
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.usable():
                return connection
        return None

    async def _acquire(self, target: Target) -> Connection:
        if self.closed:
            raise PushProtocolError("the client is closed")
        while True:
            connection = self._idle_connection(target.key)
            if connection is not None:
                return connection
            if len(self._open) < self._limit or self._close_other_idle(target.key):
                return await self._connect(target)
            waiter = self.loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def _close_other_idle(self, key: tuple[bool, str, int]) -> bool:
        """Make room by closing an idle connection to another endpoint (the one before)."""
        for other, idle in self._idle.items():
            if other != key and idle:
                connection = idle.pop()
                self._open.discard(connection)  # (its close completes later)
                connection.close()
                return True
        return False

    async def _connect(self, target: Target) -> Connection:
        connection = Connection(self, target.key)
        self._open.add(connection)
        try:
            tls = None
            if target.tls:
                if self._tls is None:
                    self._tls = await asyncio.to_thread(verified_context)
                tls = self._tls
            if target.address:
                addresses = [(target.host, target.port)]
            else:
                addresses = [(r["host"], r["port"])
                             for r in await self._resolve(target.host, target.port)]
            await self._connect_to_one(connection, addresses, tls, target)
        except BaseException:
            self.forget(connection)
            raise
        return connection

    async def _connect_to_one(self, connection: Connection, addresses: list[tuple[str, int]],
                              tls: ssl.SSLContext | None, target: Target) -> None:
        last: OSError | None = None
        for host, port in addresses:
            try:
                await self.loop.create_connection(lambda: connection, host, port, ssl=tls,
                                                  server_hostname=target.server_hostname)
                return
            except OSError as exc:  # refused, unreachable, reset, TLS (ssl.SSLError)
                last = exc
        raise PushConnectError(
            f"cannot connect to {target.host}:{target.port}"
            f"{' over TLS' if target.tls else ''}: {type(last).__name__}: {last}") from last

    async def _resolve(self, host: str, port: int) -> list[ResolveResult]:
        key = (host, port)
        cached = self._resolved.get(key)
        if cached is not None and cached[0] > self.loop.time():
            return cached[1]
        lookup = self._resolving.get(key)
        if lookup is None:  # connections opened together share one lookup
            lookup = self._resolving[key] = asyncio.ensure_future(self._lookup(host, port))
            lookup.add_done_callback(functools.partial(self._looked_up, key))
        return await asyncio.shield(lookup)

    async def _lookup(self, host: str, port: int) -> list[ResolveResult]:
        try:
            found = await self._resolver.resolve(host, port, family=socket.AF_UNSPEC)
        except socket.gaierror as exc:
            raise PushConnectError(f"cannot resolve {host}: {exc}") from exc
        self._resolved[(host, port)] = (self.loop.time() + DNS_TTL_S, found)
        return found

    def _looked_up(self, key: tuple[str, int], lookup: asyncio.Task[list[ResolveResult]]
                   ) -> None:
        self._resolving.pop(key, None)
        if not lookup.cancelled():
            lookup.exception()  # retrieved here too: every waiter may have timed out

    def release(self, connection: Connection) -> None:
        """The connection answered: back to the pool if it can carry another request."""
        if connection.reusable and connection.usable() and not self.closed:
            connection.idle_since = self.loop.time()
            self._idle.setdefault(connection.key, []).append(connection)
            if self._sweep is None:
                self._sweep = self.loop.call_later(KEEPALIVE_S, self._close_stale)
        else:
            connection.close()
        self._wake_one()

    def forget(self, connection: Connection) -> None:
        """The connection is closed (or never opened): its slot is free."""
        if connection in self._open:
            self._open.discard(connection)
            self._wake_one()
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _close_stale(self) -> None:
        self._sweep = None
        before = self.loop.time() - KEEPALIVE_S
        remaining = False
        for idle in self._idle.values():
            for connection in [c for c in idle if c.idle_since <= before]:
                idle.remove(connection)
                connection.close()
            remaining = remaining or bool(idle)
        if remaining and not self.closed:
            self._sweep = self.loop.call_later(KEEPALIVE_S / 2, self._close_stale)

    async def close(self) -> None:
        """Close every connection (requests under way fail) and the resolver."""
        self.closed = True
        for timer in (self._sweep, self._expiry):
            if timer is not None:
                timer.cancel()
        self._sweep = self._expiry = None
        self._expiry_at = math.inf
        for connection in list(self._open):
            connection.close()
        self._idle.clear()
        for lookup in self._resolving.values():
            lookup.cancel()
        await self._resolver.close()
