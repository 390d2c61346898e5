"""One port for gRPC and REST, and the limits that keep it from hanging or flooding.

gRPC clients open HTTP/2 connections with prior knowledge: the first bytes are the fixed
connection preface "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n". HTTP/1.1 clients start with a method
name. The front reads the first bytes of each connection, hands HTTP/1.1 connections to the REST
app's protocol in-process, and splices HTTP/2 connections to the gRPC server listening on a
private loopback port. The splice costs one extra loopback hop per gRPC connection; `make bench`
measures it against the gRPC port directly.

Limits (`ConnectionLimits`): connections past `max_connections` are closed at once; a connection
that sends nothing is closed after `idle_timeout`; the preface or an HTTP/1.1 header block must
arrive within `header_timeout` of its first byte, an HTTP/1.1 body within `body_timeout` of the
end of its headers. Idle HTTP/1.1 keep-alive connections are aiohttp's (its keepalive_timeout)
and HTTP/2 connections the gRPC server's (grpc.max_connection_idle_ms): server.py sets both.
The front accepts connections itself (`_Acceptor`): out of descriptors, asyncio's own accept
loop logs a traceback and schedules a retry for every failed accept(), up to 100 per wake-up,
a storm that grows; the acceptor stops, backs off (0.1 s doubling to 1 s), logs one counted line
per interval, and serves again as soon as descriptors are freed.

TLS (`tls`, a context from tls.server_context): the acceptor admits a connection (the limit
counts it from accept, handshake included: a handshake costs more than a read), then asyncio
performs the handshake, bounded by `header_timeout` (the ClientHello is the first thing a TLS
client sends), and the sniffer reads the decrypted bytes exactly as it reads plaintext ones: the
HTTP/2 preface is spliced in plaintext to the private loopback gRPC port, HTTP/1.1 goes to the
REST app (which sees an https request). A failed handshake (a client that does not trust the
certificate, a plaintext client) is a client error: one counted log line per kind.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .client_errors import ClientErrorLog, one_line

log = logging.getLogger("pubsub_emulator.front")
handshakes = ClientErrorLog(log)

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
REPORT_INTERVAL_S = 10.0  # between two lines of a repeated warning (refusals, accept errors)
OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
MAX_HEADER_BYTES = 1 << 20  # past this aiohttp has rejected the request; stop buffering it
BACKLOG = 100  # pending connections the kernel queues, and how many one wake-up accepts
RETRY_FIRST_S, RETRY_MAX_S = 0.1, 1.0  # accept() back-off after running out of resources
# asyncio cannot turn a handshake's timeout off: with --header-timeout 0 a day stands for never.
HANDSHAKE_NEVER_S = 86400.0


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may cost (seconds; 0 turns a timeout off)."""

    max_connections: int = 1000
    idle_timeout: float = 300.0
    header_timeout: float = 30.0
    body_timeout: float = 120.0


class Reporter:
    """Warnings that may repeat thousands of times a second, logged at most once per interval
    each with how many times they happened: the log stays readable under attack."""

    def __init__(self, interval: float = REPORT_INTERVAL_S) -> None:
        self.interval = interval
        self.counts: Counter[str] = Counter()
        self.timer: asyncio.TimerHandle | None = None

    def event(self, message: str) -> None:
        self.counts[message] += 1
        if self.timer is None:  # the first of a burst is told at once, the rest at the interval
            self._flush()

    def _flush(self) -> None:
        if not self.counts:
            self.timer = None
            return
        for message, count in self.counts.items():
            log.warning("%s (%d in the last %.0f s)", message, count, self.interval)
        self.counts.clear()
        self.timer = asyncio.get_running_loop().call_later(self.interval, self._flush)

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class _Deadline:
    """One timer per connection, re-armed as the connection moves from phase to phase."""

    def __init__(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.handle: asyncio.TimerHandle | None = None

    def arm(self, seconds: float, why: str) -> None:
        self.cancel()
        if seconds > 0:
            self.handle = asyncio.get_running_loop().call_later(seconds, self._expire, why)

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None

    def _expire(self, why: str) -> None:
        self.handle = None
        log.debug("closing a connection: %s", why)
        # abort, not close: close() waits to flush what is buffered for a client that may
        # never read it.
        self.transport.abort()


class _Pipe(asyncio.Protocol):
    """One direction of a splice: what arrives here is written to `peer`."""

    def __init__(self, on_lost: Callable[[], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None
        self.on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and not self.peer.is_closing():
            self.peer.close()
        if self.on_lost is not None:
            self.on_lost()

    def eof_received(self) -> bool | None:
        if self.peer is not None and self.peer.can_write_eof():
            self.peer.write_eof()
        # Half-open where the transport can be (TCP); a TLS transport cannot (and warns when
        # asked to): it closes, and connection_lost closes the peer.
        return self.transport is None or self.transport.can_write_eof()

    # Backpressure: when our peer's buffer is full, stop reading from our own side.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()


class _HttpRequests(asyncio.Protocol):
    """Between the transport and aiohttp's protocol: times each request's header block and body.

    It only finds where requests end (the blank line after the headers, Content-Length or the
    last chunk); parsing and rejecting is aiohttp's. A chunked body ends at the first
    "\\r\\n0\\r\\n\\r\\n": a stray match inside a chunk only hands the rest to the header timer.
    """

    def __init__(self, inner: asyncio.Protocol, deadline: _Deadline, limits: ConnectionLimits,
                 on_lost: Callable[[], None]) -> None:
        self.inner = inner
        self.deadline = deadline
        self.limits = limits
        self.on_lost = on_lost
        self.head = b""  # the header block read so far
        self.in_head = False  # False between requests: aiohttp's keep-alive timer is on then
        self.remaining = 0  # body bytes still due (Content-Length)
        self.chunked_tail: bytes | None = None  # chunked body: its last bytes, to find the end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self._track(data)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline.cancel()
        self.inner.connection_lost(exc)
        self.on_lost()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def start_request(self, timer_running: bool) -> None:
        """A request's first byte: its header block is due within header_timeout."""
        self.in_head = True
        self.head = b""
        if not timer_running:
            self.deadline.arm(self.limits.header_timeout, "request headers too slow")

    def _track(self, data: bytes) -> None:
        while data:
            if self.remaining:
                used = min(self.remaining, len(data))
                self.remaining -= used
                data = data[used:]
                if not self.remaining:
                    self.deadline.cancel()
            elif self.chunked_tail is not None:
                data = self._track_chunked(data)
            elif self.in_head:
                data = self._track_head(data)
            else:
                self.start_request(False)

    def _track_head(self, data: bytes) -> bytes:
        start = max(0, len(self.head) - 3)
        if len(self.head) < MAX_HEADER_BYTES:
            self.head += data
        end = self.head.find(b"\r\n\r\n", start)
        if end < 0:
            return b""
        rest = self.head[end + 4:]
        self._body_of(self.head[:end])
        return rest

    def _body_of(self, head: bytes) -> None:
        self.in_head = False
        self.head = b""
        length, chunked = 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length" and value.strip().isdigit():
                length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if chunked:
            self.chunked_tail = b"\r\n"  # so that an empty body ("0\r\n\r\n") matches too
        self.remaining = 0 if chunked else length
        if chunked or length:
            self.deadline.arm(self.limits.body_timeout, "request body too slow")
        else:
            self.deadline.cancel()

    def _track_chunked(self, data: bytes) -> bytes:
        assert self.chunked_tail is not None
        seen = self.chunked_tail + data
        end = seen.find(b"\r\n0\r\n\r\n")
        if end < 0:
            self.chunked_tail = seen[-6:]
            return b""
        self.chunked_tail = None
        self.deadline.cancel()
        return seen[end + 7:]


class _Sniffer(asyncio.Protocol):
    """A connection's first bytes (decrypted, under TLS): HTTP/2 preface or HTTP/1.1.

    Made for an admitted connection: it holds the connection's count until it hands the
    connection on (and the new protocol releases it) or loses it.
    """

    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.deadline: _Deadline | None = None
        self.buffer = b""
        self.decided = False
        self.counted = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.deadline = _Deadline(transport)
        self.deadline.arm(self.front.limits.idle_timeout, "idle connection")

    def abandon(self) -> None:
        """Its transport was never made (the client left, the TLS handshake failed)."""
        if self.transport is None and self.counted:
            self.counted = False
            self.front.release()

    def data_received(self, data: bytes) -> None:
        if self.deadline is None:  # (asyncio calls connection_made first: never here)
            return
        if self.decided:  # bytes that arrive while the gRPC splice is being set up
            self.buffer += data
            return
        if not self.buffer:  # the first bytes: the preface or headers are due from now
            self.deadline.arm(self.front.limits.header_timeout, "connection preface too slow")
        self.buffer += data
        head = self.buffer[:len(HTTP2_PREFACE)]
        if HTTP2_PREFACE.startswith(head) and len(head) < len(HTTP2_PREFACE):
            return  # could still be the preface: wait for more
        self.decided = True
        if head == HTTP2_PREFACE:
            # From here on the gRPC server times the connection (grpc.max_connection_idle_ms).
            self.deadline.cancel()
            assert self.transport is not None
            self.transport.pause_reading()
            asyncio.ensure_future(self._splice())
        else:
            self._to_http()

    def _to_http(self) -> None:
        assert self.transport is not None and self.deadline is not None
        protocol = _HttpRequests(self.front.http_protocol(), self.deadline, self.front.limits,
                                 self.front.release)
        self.counted = False  # the HTTP protocol releases the connection now
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        protocol.start_request(timer_running=True)  # the header timer runs since the 1st byte
        protocol.data_received(self.buffer)
        self.buffer = b""

    async def _splice(self) -> None:
        client = self.transport
        assert client is not None
        loop = asyncio.get_running_loop()
        try:
            upstream, up_proto = await loop.create_connection(
                _Pipe, self.front.grpc_host, self.front.grpc_port)
        except OSError as exc:
            self.front.reporter.event(f"gRPC backend unreachable: {exc}")
            client.close()
            return
        self.counted = False  # the client's pipe releases the connection now
        down = _Pipe(self.front.release)
        down.transport, down.peer = client, upstream  # type: ignore[assignment]
        up_proto.peer = client
        client.set_protocol(down)
        if self.buffer:
            upstream.write(self.buffer)
            self.buffer = b""
        if client.is_closing():
            upstream.close()
            return
        client.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        if self.counted:
            self.counted = False
            self.front.release()


class Front:
    """The public listener: REST in-process, gRPC spliced to `grpc_host:grpc_port`; with `tls`
    every connection is TLS first (tls.server_context: ALPN h2 and http/1.1)."""

    def __init__(self, http_protocol: Callable[[], asyncio.Protocol], grpc_host: str,
                 grpc_port: int, limits: ConnectionLimits | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.http_protocol = http_protocol
        self.grpc_host = grpc_host
        self.grpc_port = grpc_port
        self.limits = limits or ConnectionLimits()
        self.tls = tls
        self.acceptor: _Acceptor | None = None
        self.reporter = Reporter()
        self.connections = 0  # open connections, each counted from accept to close

    def admit(self) -> bool:
        if self.limits.max_connections and self.connections >= self.limits.max_connections:
            self.reporter.event(f"connection limit reached ({self.limits.max_connections} open, "
                                f"--max-connections): new connections are closed at once")
            return False
        self.connections += 1
        return True

    def release(self) -> None:
        self.connections -= 1

    async def listen(self, host: str, port: int) -> int:
        self.acceptor = _Acceptor(self, _bind(host, port))
        self.acceptor.start()
        return self.acceptor.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.acceptor is not None:
            self.acceptor.close()
        self.reporter.close()


def _bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address `host` resolves to (as loop.create_server binds)."""
    sockets: list[socket.socket] = []
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(sockets) > 1:  # one port for all addresses
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class _Acceptor:
    """Accepts connections on the listening sockets; backs off when accept() fails."""

    def __init__(self, front: Front, sockets: list[socket.socket]) -> None:
        self.front = front
        self.sockets = sockets
        self.loop = asyncio.get_running_loop()
        self.retry_s = RETRY_FIRST_S
        self.retries: dict[int, asyncio.TimerHandle] = {}  # fd -> its pending retry
        self.opening: set[asyncio.Future[Any]] = set()  # transports being set up

    def start(self) -> None:
        for sock in self.sockets:
            self.loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(BACKLOG):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return  # none left
            except OSError as exc:
                self._back_off(sock, exc)
                return
            self.retry_s = RETRY_FIRST_S
            opening = asyncio.ensure_future(self._open(conn))
            self.opening.add(opening)
            opening.add_done_callback(self.opening.discard)

    async def _open(self, conn: socket.socket) -> None:
        front = self.front
        if not front.admit():
            conn.close()  # over the limit: closed at once, before reading (or a handshake)
            return
        sniffer = _Sniffer(front)
        tls: dict[str, Any] = {}
        if front.tls is not None:
            tls = {"ssl": front.tls,
                   "ssl_handshake_timeout": front.limits.header_timeout or HANDSHAKE_NEVER_S}
        try:
            await self.loop.connect_accepted_socket(lambda: sniffer, conn, **tls)
        except (OSError, asyncio.TimeoutError) as exc:
            # The client left before its transport was set up, or (TLS) the handshake failed
            # or took longer than the header timeout (ConnectionAbortedError).
            conn.close()
            sniffer.abandon()
            if front.tls is not None:
                # One line per reason: an unknown CA, a plaintext client, a timeout, ...
                reason = getattr(exc, "reason", None) or type(exc).__name__
                handshakes.record(f"TLS handshake failed ({reason})",
                                  one_line(str(exc) or repr(exc)))

    def _back_off(self, sock: socket.socket, exc: OSError) -> None:
        """Stop accepting on `sock` for a while: a full descriptor table stays full for a moment,
        and the listening socket stays readable all the while (the connections wait in the
        kernel's queue meanwhile)."""
        what = ("out of descriptors or memory" if exc.errno in OUT_OF_RESOURCES
                else "accept() failed")
        self.front.reporter.event(f"cannot accept connections ({what}: {exc.strerror}); "
                                  f"retrying until they can be")
        fd = sock.fileno()
        self.loop.remove_reader(fd)
        self.retries[fd] = self.loop.call_later(self.retry_s, self._resume, sock)
        self.retry_s = min(self.retry_s * 2, RETRY_MAX_S)

    def _resume(self, sock: socket.socket) -> None:
        self.retries.pop(sock.fileno(), None)
        self.loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stop listening; open connections are left to finish (as asyncio's Server.close)."""
        for retry in self.retries.values():
            retry.cancel()
        self.retries.clear()
        for sock in self.sockets:
            self.loop.remove_reader(sock.fileno())
            sock.close()
