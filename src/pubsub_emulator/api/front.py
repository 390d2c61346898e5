"""One port for gRPC and REST.

gRPC clients open HTTP/2 connections with prior knowledge: the first bytes are the fixed
connection preface "PRI * HTTP/2.0\\r\\n\\r\\nSM\\r\\n\\r\\n". HTTP/1.1 clients start with a method
name. The front reads the first bytes of each connection, hands HTTP/1.1 connections to the REST
app's protocol in-process, and splices HTTP/2 connections to the gRPC server listening on a
private loopback port. The splice costs one extra loopback hop per gRPC connection; `make bench`
measures it against the gRPC port directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("pubsub_emulator.front")

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class _Pipe(asyncio.Protocol):
    """One direction of a splice: what arrives here is written to `peer`."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        self.peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and not self.peer.is_closing():
            self.peer.close()

    def eof_received(self) -> bool | None:
        if self.peer is not None and self.peer.can_write_eof():
            self.peer.write_eof()
        return True

    # Backpressure: when our peer's buffer is full, stop reading from our own side.
    def pause_writing(self) -> None:
        if self.peer is not None:
            self.peer.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None:
            self.peer.resume_reading()


class _Sniffer(asyncio.Protocol):
    def __init__(self, front: Front) -> None:
        self.front = front
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.decided = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.decided:  # bytes that arrive while the gRPC splice is being set up
            self.buffer += data
            return
        self.buffer += data
        head = self.buffer[:len(HTTP2_PREFACE)]
        if HTTP2_PREFACE.startswith(head) and len(head) < len(HTTP2_PREFACE):
            return  # could still be the preface: wait for more
        self.decided = True
        if head == HTTP2_PREFACE:
            assert self.transport is not None
            self.transport.pause_reading()
            asyncio.ensure_future(self._splice())
        else:
            self._to_http()

    def _to_http(self) -> None:
        assert self.transport is not None
        protocol = self.front.http_protocol()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
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
            log.warning("gRPC backend unreachable: %s", exc)
            client.close()
            return
        down = _Pipe()
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
        pass


class Front:
    """The public listener: REST in-process, gRPC spliced to `grpc_host:grpc_port`."""

    def __init__(self, http_protocol: Callable[[], asyncio.Protocol], grpc_host: str,
                 grpc_port: int) -> None:
        self.http_protocol = http_protocol
        self.grpc_host = grpc_host
        self.grpc_port = grpc_port
        self.server: asyncio.AbstractServer | None = None

    async def listen(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Sniffer(self), host, port,
                                               reuse_address=True)
        return self.server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
