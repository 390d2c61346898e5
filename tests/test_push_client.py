"""Native push's HTTP/1.1 client (pubsub_emulator.push.client) against real sockets.

A scripted server on 127.0.0.1 (an asyncio protocol) records each request as sent and each
connection, and answers with the bytes the test gives; requests are compared with what
aiohttp's client, which the pusher used before, sends for the same call.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

from pubsub_emulator.push import Destinations, PushRefused
from pubsub_emulator.push import client as push_client
from pubsub_emulator.push.client import (
    PushClient,
    PushConnectError,
    PushProtocolError,
    take_response,
    verified_context,
)
from pubsub_emulator.push.destinations import AllowedResolver
from pubsub_emulator.tls import self_signed, server_context
from support import until

NO_CONTENT = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"
HEADERS = {"Content-Type": "application/json", "User-Agent": "CloudPubSub-Google"}


@dataclass
class Script:
    """What the server answers: `answer(request_index)` gives the bytes (None: no answer)."""

    answer: Callable[[int], bytes | None] = lambda _i: NO_CONTENT
    delay: float = 0.0  # seconds before answering
    close_after_reply: bool = False  # close the connection just after each answer
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    closed: int = 0


class ScriptedConnection(asyncio.Protocol):
    def __init__(self, script: Script) -> None:
        self.script = script
        self.buffer = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        s = self.script
        s.connections += 1
        s.open_now += 1
        s.most_open = max(s.most_open, s.open_now)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (request := self._take()) is not None:
            index = len(self.script.requests)
            self.script.requests.append(request)
            reply = self.script.answer(index)
            if reply is not None:
                asyncio.get_running_loop().call_later(self.script.delay, self._reply, reply)

    def _reply(self, reply: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(reply)
            if self.script.close_after_reply:
                asyncio.get_running_loop().call_later(0.05, self.transport.close)

    def _take(self) -> bytes | None:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return None
        length = 0
        for line in self.buffer[:end].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        stop = end + 4 + length
        if len(self.buffer) < stop:
            return None
        request, self.buffer = self.buffer[:stop], self.buffer[stop:]
        return request

    def connection_lost(self, exc: Exception | None) -> None:
        self.script.open_now -= 1
        self.script.closed += 1


async def serve(script: Script, tls: ssl.SSLContext | None = None) -> tuple[asyncio.Server, int]:
    server = await asyncio.get_running_loop().create_server(
        lambda: ScriptedConnection(script), "127.0.0.1", 0, ssl=tls)
    return server, server.sockets[0].getsockname()[1]


@contextlib.asynccontextmanager
async def scripted(script: Script, limit: int = 4, tls: ssl.SSLContext | None = None,
                   ) -> AsyncIterator[tuple[PushClient, int]]:
    """A scripted server and a client (`limit` connections) for it, and the server's port;
    both closed on the way out."""
    server, port = await serve(script, tls)
    client = PushClient(None, limit)
    try:
        yield client, port
    finally:
        await client.close()
        server.close()


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(scenario())


async def times_out(post: Awaitable[int], timeout: float) -> None:
    """`post` fails with the client's TimeoutError, after `timeout` seconds at least: it waited
    as long as it was told to (an outer deadline of 30 s catches one that waits for ever)."""
    started = time.monotonic()
    task = asyncio.ensure_future(post)
    done, _ = await asyncio.wait({task}, timeout=30)
    assert task in done, "the client's timeout never fired"
    assert isinstance(task.exception(), asyncio.TimeoutError), task.exception()
    assert time.monotonic() - started >= timeout * 0.9


# --- the request ----------------------------------------------------------------------------

@pytest.mark.parametrize("path, headers", [
    ("/push?token=a%20b&c=d é#frag", {**HEADERS, "Authorization": "Bearer abc.def"}),
    ("/p/ä x", {"User-Agent": "CloudPubSub-Google", "x-goog-pubsub-message-id": "7",
                "color": "réd", "content-type": "application/json"}),
    ("", {"User-Agent": "CloudPubSub-Google", "Accept": "text/plain", "host": "other:1"}),
])
def test_requests_are_the_bytes_aiohttp_sent(path, headers):
    async def scenario() -> None:
        script = Script()
        async with scripted(script) as (client, port):
            url = f"http://127.0.0.1:{port}{path}"
            body = b'{"message":{}}'
            async with aiohttp.ClientSession(auto_decompress=False, trust_env=False,
                                             skip_auto_headers=("Content-Type",)) as session:
                async with session.post(url, data=body, headers=headers,
                                        allow_redirects=False) as r:
                    assert r.status == 204
            assert await client.post(url, headers, body, 5) == 204
        assert script.requests[1] == script.requests[0]

    run(scenario)


def test_a_header_with_a_line_break_is_refused_before_connecting():
    async def scenario() -> None:
        script = Script()
        async with scripted(script) as (client, port):
            for headers in ({"x-a": "one\r\nInjected: yes"}, {"x-a\n": "v"}, {"x-a": "v\r"}):
                with pytest.raises(ValueError, match="carriage return"):
                    await client.post(f"http://127.0.0.1:{port}/", headers, b"", 5)
        assert script.connections == 0

    run(scenario)


def test_credentials_in_the_url_are_sent_as_basic_auth_unless_a_token_is_too():
    async def scenario() -> None:
        script = Script()
        async with scripted(script) as (client, port):
            url = f"http://user:pa%20ss@127.0.0.1:{port}/p"
            assert await client.post(url, HEADERS, b"x", 5) == 204
            assert b"\r\nAuthorization: Basic dXNlcjpwYSBzcw==\r\n" in script.requests[0]
            with pytest.raises(ValueError, match="Cannot combine AUTHORIZATION"):
                await client.post(url, {**HEADERS, "Authorization": "Bearer t"}, b"x", 5)

    run(scenario)


@pytest.mark.parametrize("url", ["ftp://h/p", "http:///p", "http://127.1:80/p",
                                 "http://h:99999/p"])
def test_urls_the_client_cannot_use_are_errors(url):
    async def scenario() -> None:
        client = PushClient(None, 4)
        with pytest.raises(ValueError):
            await client.post(url, HEADERS, b"x", 5)
        await client.close()

    run(scenario)


# --- answers and connections ----------------------------------------------------------------

@pytest.mark.parametrize("reply, status, reused", [
    (NO_CONTENT, 204, True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, True),
    (b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n", 201,
     True),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", 200, True),
    (b"HTTP/1.1 302 Found\r\nLocation: http://elsewhere/\r\nContent-Length: 0\r\n\r\n", 302,
     True),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", 200, False),
    (b"HTTP/1.1 500 Oops\r\n\r\nread until the connection closes", 500, False),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", 200, False),
    (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", 200, False),
    (b"HTTP/1.0 202 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", 202, True),
])
def test_the_status_and_whether_the_connection_is_kept(reply, status, reused):
    async def scenario() -> None:
        script = Script(answer=lambda _i: reply)
        async with scripted(script) as (client, port):
            url = f"http://127.0.0.1:{port}/"
            assert [await client.post(url, HEADERS, b"x", 5) for _ in range(3)] == [status] * 3
            assert script.connections == (1 if reused else 3)

    run(scenario)


def test_an_answer_split_across_reads_is_put_together():
    assert take_response(b"HTTP/1.1 204 No Content\r\nContent-Le") is None
    assert take_response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2") is None
    assert take_response(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n") == (204, True)
    assert take_response(b"HTTP/1.1 204\r\n\r\n") == (204, True)  # no reason phrase
    for garbage in (b"SSH-2.0-OpenSSH\r\n\r\n", b"HTTP/2 200\r\n\r\n",
                    b"HTTP/1.1 20x OK\r\n\r\n", b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n"):
        with pytest.raises(PushProtocolError):
            take_response(garbage)


def test_no_http_answer_is_an_error_and_closes_the_connection():
    async def scenario() -> None:
        script = Script(answer=lambda _i: b"garbage\r\n\r\n")
        async with scripted(script) as (client, port):
            with pytest.raises(PushProtocolError, match="not an HTTP/1.x status line"):
                await client.post(f"http://127.0.0.1:{port}/", HEADERS, b"x", 5)
            await until(lambda: script.closed == 1, "the connection closed")

    run(scenario)


def test_a_connection_the_server_closed_while_idle_is_replaced():
    async def scenario() -> None:
        script = Script(close_after_reply=True)  # keep-alive announced, then closed anyway
        async with scripted(script) as (client, port):
            url = f"http://127.0.0.1:{port}/"
            assert await client.post(url, HEADERS, b"x", 5) == 204
            await until(lambda: client.connections == 0, "the client to see the server's close")
            assert await client.post(url, HEADERS, b"x", 5) == 204
            assert script.connections == 2

    run(scenario)


def test_no_answer_within_the_timeout_is_a_timeout_and_closes_the_connection():
    async def scenario() -> None:
        script = Script(answer=lambda i: None if i == 0 else NO_CONTENT)
        async with scripted(script) as (client, port):
            url = f"http://127.0.0.1:{port}/"
            await times_out(client.post(url, HEADERS, b"x", 0.3), 0.3)
            await until(lambda: script.closed == 1, "the timed-out connection closed")
            assert await client.post(url, HEADERS, b"x", 5) == 204  # on a new connection
            # A shorter timeout after a longer one is still kept: the 0.3 s one times out
            # while the 300 s one is still waiting.
            script.answer = lambda _i: None
            slow = asyncio.ensure_future(client.post(url, HEADERS, b"x", 300))
            await until(lambda: len(script.requests) == 3, "the slow request sent")
            await times_out(client.post(url, HEADERS, b"x", 0.3), 0.3)
            assert not slow.done()
            slow.cancel()

    run(scenario)


def test_a_refused_connection_is_a_connect_error():
    async def scenario() -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]  # nothing listens on it
        client = PushClient(None, 4)
        with pytest.raises(PushConnectError, match=f"cannot connect to 127.0.0.1:{port}"):
            await client.post(f"http://127.0.0.1:{port}/", HEADERS, b"x", 5)
        await client.close()

    run(scenario)


def test_connections_stay_within_the_limit():
    async def scenario() -> None:
        script = Script(delay=0.05)
        async with scripted(script, limit=2) as (client, port):
            url = f"http://127.0.0.1:{port}/"
            statuses = await asyncio.gather(*(client.post(url, HEADERS, b"x", 5)
                                              for _ in range(8)))
            assert statuses == [204] * 8
            assert script.most_open == 2 and script.connections == 2

    run(scenario)


def test_idle_connections_are_closed_after_the_keepalive(monkeypatch):
    monkeypatch.setattr(push_client, "KEEPALIVE_S", 0.2)

    async def scenario() -> None:
        script = Script()
        async with scripted(script) as (client, port):
            assert await client.post(f"http://127.0.0.1:{port}/", HEADERS, b"x", 5) == 204
            await until(lambda: script.closed == 1, "the idle connection closed")

    run(scenario)


# --- where connections go -------------------------------------------------------------------

class CountingResolver(AbstractResolver):
    """Answers every lookup with `addresses`, counting lookups."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.lookups = 0

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.lookups += 1
        return [ResolveResult(hostname=host, host=a, port=port, family=socket.AF_INET,
                              proto=0, flags=0) for a in self.addresses]

    async def close(self) -> None:
        pass


def test_names_go_to_the_allowed_addresses_only_and_lookups_are_kept():
    async def scenario() -> None:
        closing = b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        script = Script(answer=lambda _i: closing)
        server, port = await serve(script)
        only_loopback = Destinations.from_flags(["127.0.0.0/8"], auth_required=True)
        inner = CountingResolver("10.9.9.9", "127.0.0.1")
        client = PushClient(AllowedResolver(only_loopback, inner), 4)
        url = f"http://push.test:{port}/p"
        assert await client.post(url, HEADERS, b"x", 5) == 204
        assert await client.post(url, HEADERS, b"x", 5) == 204  # a new connection, no lookup
        assert inner.lookups == 1 and script.connections == 2
        assert b"\r\nHost: push.test:%d\r\n" % port in script.requests[0]
        await client.close()
        refused = PushClient(AllowedResolver(only_loopback, CountingResolver("8.8.8.8")), 4)
        with pytest.raises(PushRefused, match=r"push.test \(8.8.8.8\) is outside"):
            await refused.post(url, HEADERS, b"x", 5)
        await refused.close()
        server.close()
        assert script.connections == 2

    run(scenario)


def test_https_verifies_the_certificate(tmp_path, monkeypatch):
    files = self_signed(tmp_path, ["localhost", "127.0.0.1"])

    async def scenario(trusted: bool) -> None:
        script = Script()
        async with scripted(script, tls=server_context(files.cert, files.key)) as (client, port):
            url = f"https://localhost:{port}/push"
            if trusted:
                assert await client.post(url, HEADERS, b"x", 5) == 204
                assert len(script.requests) == 1
            else:
                with pytest.raises(PushConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                    await client.post(url, HEADERS, b"x", 5)
                assert script.requests == []

    verified_context.cache_clear()
    try:
        run(lambda: scenario(trusted=False))
        monkeypatch.setenv("SSL_CERT_FILE", str(files.ca))
        verified_context.cache_clear()
        run(lambda: scenario(trusted=True))
    finally:
        verified_context.cache_clear()


def test_post_now_sends_on_an_idle_connection_only_and_keeps_the_deadline():
    async def scenario() -> None:
        script = Script(answer=lambda i: None if i == 2 else NO_CONTENT)
        async with scripted(script) as (client, port):
            url = f"http://127.0.0.1:{port}/"
            assert not client.has_idle(url)
            assert client.post_now(url, HEADERS, b"x", 5) is None  # nothing idle: post() it is
            assert await client.post(url, HEADERS, b"x", 5) == 204
            assert client.has_idle(url)
            answer = client.post_now(url, HEADERS, b"x", 5)
            assert answer is not None and await answer == 204
            silent = client.post_now(url, HEADERS, b"x", 0.3)  # the server never answers it
            assert silent is not None
            await times_out(silent, 0.3)
            await until(lambda: script.closed == 1, "the timed-out connection closed")
            assert script.connections == 1 and len(script.requests) == 3

    run(scenario)
