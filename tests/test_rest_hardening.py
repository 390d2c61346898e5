"""Hostile input at the adapters: each case an attacker's review found, as a regression test.

No client input may produce a 5xx (but UNIMPLEMENTED), a gRPC UNKNOWN or INTERNAL, a hang or
a traceback in the log; every REST error is Google's `{"error": {code, message, status}}`.
The emulator runs in a process of its own so that its log and its memory can be read.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import gzip
import json
import logging
import time
import zlib

import grpc
import pytest
from aiohttp import web
from google.iam.v1 import iam_policy_pb2

from pubsub_emulator.api import protos, rest
from pubsub_emulator.api.client_errors import ClientErrorLog
from support import EmulatorProcess, free_port, wait_for
from wire import (
    assert_google_error,
    assert_no_server_error,
    log_tracebacks,
    memory_kb,
    request_bytes,
    send,
)

P = "hardening"
LIMIT = rest.MAX_BODY_BYTES


@pytest.fixture(scope="module")
def emu():
    with EmulatorProcess() as process:
        yield process
        assert send(process.port, request_bytes("GET", "/healthz")).status == 200
        assert log_tracebacks(process.log_path) == [], process.log_tail()


def _topic_url(name: str = "t-hardening") -> str:
    return f"/v1/projects/{P}/topics/{name}"


def _put_topic(emu, body: bytes, headers: dict[str, str] | None = None, name: str = "t1"):
    return send(emu.port, request_bytes("PUT", _topic_url(name), body, headers))


@pytest.mark.parametrize("body", [b"null", b"123", b"true", b"[]", b"[{}]", b'"topic"',
                                  b"  \r\n [1, 2]", b"-1.5e3"])
def test_a_body_that_is_not_an_object_is_refused(emu, body):
    answer = _put_topic(emu, body)
    error = assert_google_error(answer)
    assert answer.status == 400 and error["status"] == "INVALID_ARGUMENT"
    assert "Root element must be a message" in error["message"]


@pytest.mark.parametrize("body", [
    b'{"labels": ' * 5000 + b"1" + b"}" * 5000,
    b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b"[" * 100_000,
], ids=["objects", "arrays-in-object", "arrays"])
def test_deeply_nested_json_is_refused(emu, body):
    answer = _put_topic(emu, body)
    assert answer.status == 400 and assert_google_error(answer)["status"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize("body", [b"\xff\xfe{", b'{"name": "\xff"}', b"{not json", b"\x00",
                                  b'{"labels": {"a": NaN}}'])
def test_bytes_that_are_not_json_are_refused(emu, body):
    answer = _put_topic(emu, body)
    assert answer.status == 400 and assert_google_error(answer)["status"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize("encoding, body", [
    ("gzip", b'{"labels": {"a": "b"}}'),  # says gzip, is not
    ("gzip", gzip.compress(b'{"labels": {"a": "b"}}')[:-6]),  # cut short
    ("gzip", gzip.compress(b"{}") + b"trailing"),
    ("deflate", b"plain"),
    ("br", b"{}"),
    ("gzip, gzip", gzip.compress(gzip.compress(b"{}"))),
    ("nonsense", b"{}"),
])
def test_a_body_that_does_not_match_its_encoding_is_refused(emu, encoding, body):
    answer = _put_topic(emu, body, {"Content-Encoding": encoding})
    assert answer.status == 400 and assert_google_error(answer)["status"] == "INVALID_ARGUMENT"


@pytest.mark.parametrize("encoding, compress", [
    ("gzip", gzip.compress), ("deflate", zlib.compress), ("identity", lambda b: b)])
def test_encoded_bodies_are_accepted(emu, encoding, compress):
    name = f"t-{encoding}-{time.monotonic_ns()}"
    answer = _put_topic(emu, compress(json.dumps({"labels": {"enc": encoding}}).encode()),
                        {"Content-Encoding": encoding}, name=name)
    assert answer.status == 200, answer
    assert answer.json()["labels"] == {"enc": encoding}


@pytest.mark.parametrize("target", [
    _topic_url("a%0Ab"), _topic_url("a%00b"), _topic_url("%FF%FE"), "/v1/%0A", "/%0D%0A",
    "/v1/projects/p/topics/t\xe9", "/v1/projects/p/topics/t:%0Apublish", "/" + "a" * 4000,
    "/v1/projects/%2F%2E%2E/topics/x", "*", "http://other.example/v1/projects/p/topics/t",
])
@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "DELETE", "PATCH"])
def test_odd_paths_get_google_errors(emu, target, method):
    answer = send(emu.port, request_bytes(method, target, b"{}"))
    assert_no_server_error(answer)


@pytest.mark.parametrize("raw", [
    request_bytes("CONNECT", "example.com:443"),
    request_bytes("TRACE", "/v1/projects/p/topics"),
    request_bytes("OPTIONS", "*"),
    request_bytes("FROB", _topic_url()),
    request_bytes("G\x00T", _topic_url()),
    b"GET\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 64,  # a TLS ClientHello
    b"GET / HTTP/9.9\r\n\r\n",
    b"GET /v1 HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20_000 + b"\r\n\r\n",
    b"GET /v1 HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(300)) + b"\r\n",
    b"GET /v1 HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"PUT /v1/projects/p/topics/t HTTP/1.1\r\nContent-Length: abc\r\n\r\n{}",
    b"PUT /v1/projects/p/topics/t HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"PUT /v1/projects/p/topics/t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n",
    b"PUT /v1/projects/p/topics/t HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 2\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    b"PUT /v1/projects/p/topics/t HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n{}",
], ids=["connect", "trace", "options-star", "unknown-method", "nul-in-method", "no-target",
        "tls", "http-9.9", "header-too-long", "too-many-headers", "header-without-colon",
        "bad-length", "two-lengths", "bad-chunk", "chunked-and-length", "unknown-te"])
def test_what_http_cannot_parse_gets_google_errors(emu, raw):
    answer = send(emu.port, raw)
    assert_no_server_error(answer)
    assert answer.status >= 400


def test_a_declared_length_over_the_limit_is_refused_before_reading(emu):
    started = time.monotonic()
    # Headers only: the server must answer without waiting for the 10^12 bytes announced.
    answer = send(emu.port, request_bytes("POST", f"{_topic_url()}:publish",
                                          length=10**12), timeout=10)
    assert time.monotonic() - started < 5
    error = assert_google_error(answer)
    assert answer.status == 400 and error["status"] == "INVALID_ARGUMENT"
    assert error["message"] == f"Request payload size exceeds the limit: {LIMIT} bytes."


def test_a_chunked_body_over_the_limit_is_refused(emu):
    chunk = b"x" * (1 << 20)
    body = b'{"messages": [{"data": "' + chunk * (LIMIT // len(chunk) + 1)
    framed = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    raw = (f"POST {_topic_url()}:publish HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
           "Transfer-Encoding: chunked\r\n\r\n").encode() + framed
    answer = send(emu.port, raw)
    assert answer.status == 400
    assert "exceeds the limit" in assert_google_error(answer)["message"]


def test_a_10mb_message_reaches_the_service(emu):
    """~13.4 MB of JSON once base64 encoded: refused by the service with Google's message,
    not by the HTTP layer."""
    topic = f"t-big-{time.monotonic_ns()}"
    assert _put_topic(emu, b"{}", name=topic).status == 200
    data = base64.b64encode(b"x" * 10_000_001)
    body = b'{"messages": [{"data": "' + data + b'"}]}'
    assert len(body) < LIMIT
    answer = send(emu.port, request_bytes("POST", f"{_topic_url(topic)}:publish", body))
    error = assert_google_error(answer)
    assert answer.status == 400 and "request_size" in error["message"], error


IAM_ROUTES = [r for r in rest.compile_routes() if r.method.package == protos.IAM_PACKAGE]


@pytest.mark.parametrize("route", IAM_ROUTES, ids=lambda r: f"{r.verb}-{r.template}")
def test_iam_routes_are_served(emu, route):
    """Every IAM route answers (it was 501 before IAM was served): NOT_FOUND for a policy of
    a resource that does not exist, the empty set for TestIamPermissions on it, and the
    project-level routes answer the project's policy."""
    path = route.template.replace("{resource=projects/*}", f"projects/{P}").replace(
        "{resource=projects/*/", f"projects/{P}/").replace(
        "/*}", "/thing")  # e.g. /v1/projects/hardening/topics/thing:getIamPolicy
    answer = send(emu.port, request_bytes(route.verb, path, b"{}" if route.body else b""))
    if "/thing:" in path and route.method.name != "TestIamPermissions":
        error = assert_google_error(answer)
        assert answer.status == 404 and error["status"] == "NOT_FOUND", error
    else:
        assert answer.status == 200, answer
        assert json.loads(answer.body) in ({}, {"etag": "ACAB"})


def test_iam_over_grpc_is_served(emu):
    with grpc.insecure_channel(emu.host) as channel:
        call = channel.unary_unary("/google.iam.v1.IAMPolicy/GetIamPolicy")
        with pytest.raises(grpc.RpcError) as info:
            call(b"", timeout=10)  # no resource
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        missing = iam_policy_pb2.GetIamPolicyRequest(resource=f"projects/{P}/topics/thing")
        with pytest.raises(grpc.RpcError) as info:
            call(missing.SerializeToString(), timeout=10)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


def _send_undecodable(channel: grpc.Channel, method: protos.Method) -> grpc.RpcError:
    bad = b"\xff\xff\xff"
    with pytest.raises(grpc.RpcError) as info:
        if method.client_streaming:
            list(channel.stream_stream(method.path)(iter([bad]), timeout=10))
        else:
            channel.unary_unary(method.path)(bad, timeout=10)
    return info.value


def test_grpc_bytes_that_are_not_the_request_are_invalid_argument(emu):
    start = emu.log_path.stat().st_size
    with grpc.insecure_channel(emu.host) as channel:
        for method in protos.methods().values():
            for _ in range(20):  # a client in a loop
                error = _send_undecodable(channel, method)
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
                assert "Error" not in error.details()  # no Python exception names
    logged = emu.log_path.read_bytes()[start:].decode("utf-8", "replace")
    assert "Traceback" not in logged
    # Rate-limited: one line per method at most, not one per call.
    assert logged.count("client error") <= len(protos.methods()), logged[-3000:]


def _bomb(prefix: bytes, inflated: int) -> bytes:
    squeeze = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"A" * (1 << 20)
    parts = [squeeze.compress(prefix)]
    parts += [squeeze.compress(block) for _ in range(inflated // len(block))]
    return b"".join(parts) + squeeze.flush()


def _send_bombs(emu, bomb: bytes, times: int) -> list:
    raw = request_bytes("POST", f"{_topic_url()}:publish", bomb,
                        {"Content-Encoding": "gzip", "Content-Type": "application/json"})
    with concurrent.futures.ThreadPoolExecutor(times) as pool:
        return list(pool.map(lambda _: send(emu.port, raw, timeout=60), range(times)))


def test_a_gzip_bomb_is_refused_with_bounded_memory(emu):
    pid = emu.proc.pid
    before = memory_kb(pid)["VmHWM"]
    # 60 MB of non-JSON (the classic bomb): refused on its first inflated bytes.
    for answer in _send_bombs(emu, _bomb(b"", 60 << 20), 8):
        assert answer.status == 400 and assert_google_error(answer)
    after_plain = memory_kb(pid)["VmHWM"]
    assert after_plain - before < 30 * 1024, (before, after_plain)
    # 60 MB that starts as a request: inflated up to the limit, no further, then refused.
    for answer in _send_bombs(emu, _bomb(b'{"messages": [{"data": "', 60 << 20), 8):
        assert answer.status == 400
        assert "exceeds the limit" in assert_google_error(answer)["message"]
    after_json = memory_kb(pid)["VmHWM"]
    assert after_json - before < 3 * LIMIT // 1024, (before, after_json)  # 8 x 60 MB inflated


def test_client_error_log_is_rate_limited():
    now = [0.0]
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    logger = logging.getLogger("test.client_errors")
    logger.setLevel(logging.INFO)
    logger.addHandler(Capture())
    errors = ClientErrorLog(logger, interval_s=60, clock=lambda: now[0])
    for _ in range(100):
        errors.record("REST INVALID_ARGUMENT", "bad\nbody")
    errors.record("gRPC Publish INVALID_ARGUMENT", "bad bytes")
    now[0] = 61.0
    errors.record("REST INVALID_ARGUMENT", "bad body")
    assert len(records) == 3, records
    assert "\n" not in records[0] and "99 more" in records[2], records


def test_a_bug_gives_internal_in_googles_form_and_a_traceback(caplog):
    """A handler that fails unexpectedly: the client gets INTERNAL, the log the traceback."""

    async def broken(name: str, request: object) -> object:
        raise RuntimeError("a bug")

    async def scenario() -> tuple:
        runner = web.AppRunner(rest.create_app(broken), access_log=None, handle_signals=False)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            bug = await asyncio.to_thread(
                send, port, request_bytes("PUT", _topic_url(), b"{}"))
            framing = await asyncio.to_thread(send, port, b"GET / HTTP/9.9\r\n\r\n")
        finally:
            await runner.cleanup()
        return bug, framing

    with caplog.at_level(logging.INFO):
        bug, framing = asyncio.run(scenario())
    error = assert_google_error(bug)
    assert bug.status == 500 and error == {"code": 500, "status": "INTERNAL",
                                           "message": "Internal error encountered."}
    assert "RuntimeError: a bug" in caplog.text
    assert framing.status == 400 and assert_google_error(framing)
    wait_for(lambda: "client error" in caplog.text, timeout=5, message="client error line")
