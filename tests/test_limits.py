"""Nothing hangs, nothing floods: the emulator's connection limits and timeouts, exercised on real
processes started with small limits, by raw sockets playing the slow, idle or greedy client."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from google.pubsub_v1 import types

from clients import make_clients, unique
from processes import http_ok
from support import EmulatorProcess, wait_for

HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EMPTY_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # an HTTP/2 SETTINGS frame, no settings
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: emulator\r\n\r\n"
TIMEOUT_S = 1.0  # the small timeouts these tests start the emulator with
CLOSED_WITHIN_S = 8 * TIMEOUT_S  # "closed in time": generous, the machine may be busy
NOFILE = 48  # descriptors for the fd-exhaustion test: the emulator idles on ~16


def _emulator(*flags: str) -> EmulatorProcess:
    return EmulatorProcess(extra_args=["--in-memory", *flags])


def _connect(emu: EmulatorProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", emu.port), timeout=5)


def _closed_by_server(sock: socket.socket, within: float, drip: bytes = b"") -> bool:
    """True when the server closes `sock` within `within` seconds; while waiting, send `drip`
    a byte at a time (a slowloris client) if given."""
    deadline = time.monotonic() + within
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if drip:
                sock.sendall(drip[:1])
                drip = drip[1:]
            while sock.recv(65536):  # answers the server may send before closing
                pass
            return True  # EOF
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            continue
    return False


def _open_served(emu: EmulatorProcess) -> socket.socket:
    """A connection that was served once (and so is counted by the emulator)."""
    def attempt() -> socket.socket | None:
        sock = _connect(emu)
        if _served(sock):
            return sock
        sock.close()  # refused: a connection of the start-up probes was not released yet
        return None

    return wait_for(attempt, timeout=10, message="a served connection")


def _served(sock: socket.socket) -> bool:
    """One keep-alive GET /healthz on `sock`; True when it is answered 200."""
    sock.settimeout(5)
    try:
        sock.sendall(HEALTHZ)
        answer = sock.recv(65536)
    except OSError:
        return False
    return answer.startswith(b"HTTP/1.1 200")


@pytest.fixture(scope="module")
def idle() -> Iterator[EmulatorProcess]:
    """Small idle and first-request timeouts; the header and body ones stay long."""
    with _emulator("--idle-timeout", str(TIMEOUT_S),
                   "--first-request-timeout", str(TIMEOUT_S)) as emu:
        yield emu


@pytest.fixture(scope="module")
def slow() -> Iterator[EmulatorProcess]:
    """Small header, body and first-request timeouts; a long idle timeout, so that what closes
    a connection here is the timeout under test."""
    with _emulator("--idle-timeout", "60", "--header-timeout", str(TIMEOUT_S),
                   "--body-timeout", str(TIMEOUT_S),
                   "--first-request-timeout", str(TIMEOUT_S)) as emu:
        yield emu


def test_silent_connection_is_closed_after_the_idle_timeout(idle):
    with _connect(idle) as sock:
        assert _closed_by_server(sock, CLOSED_WITHIN_S)


def test_idle_keep_alive_connection_is_closed_after_the_idle_timeout(idle):
    with _connect(idle) as sock:
        assert _served(sock)
        assert _closed_by_server(sock, CLOSED_WITHIN_S)


def test_http2_connection_without_calls_is_closed_after_the_idle_timeout(idle):
    with _connect(idle) as sock:
        sock.sendall(HTTP2_PREFACE + EMPTY_SETTINGS)
        assert _closed_by_server(sock, CLOSED_WITHIN_S)  # the gRPC server's GOAWAY, then close


@pytest.mark.parametrize("partial", [HTTP2_PREFACE[:10], HEALTHZ[:-2]],
                         ids=["http2-preface", "http1-headers"])
def test_half_sent_preface_or_headers_are_closed_after_the_header_timeout(slow, partial):
    with _connect(slow) as sock:
        sock.sendall(partial)
        assert _closed_by_server(sock, CLOSED_WITHIN_S)


def test_a_slowloris_trickle_does_not_keep_the_headers_open(slow):
    """A byte every 0.2 s is activity, but the header block is still due within the timeout."""
    with _connect(slow) as sock:
        trickle = b"GET /healthz HTTP/1.1\r\n" + b"X-Slow: " + b"a" * 200
        assert _closed_by_server(sock, CLOSED_WITHIN_S, drip=trickle)


def test_half_sent_body_is_closed_after_the_body_timeout(slow):
    with _connect(slow) as sock:
        sock.sendall(b"POST /v1/projects/p/topics/t:publish HTTP/1.1\r\nHost: emulator\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                     b'{"messages": [')
        assert _closed_by_server(sock, CLOSED_WITHIN_S)


def test_whole_requests_are_still_served(idle):
    with _connect(idle) as sock:
        assert _served(sock) and _served(sock)  # keep-alive: twice on one connection
    publisher, subscriber = make_clients(idle.host, "grpc")
    topic = publisher.create_topic(name=f"projects/p/topics/{unique('t')}").name
    assert publisher.publish(topic, b"x").result(timeout=30)
    subscriber.close()


def _streaming_pull(emu: EmulatorProcess, first: types.StreamingPullRequest | None,
                    release: threading.Event) -> Iterator[types.StreamingPullResponse]:
    channel = grpc.insecure_channel(emu.host)
    call = channel.stream_stream(
        "/google.pubsub.v1.Subscriber/StreamingPull",
        request_serializer=types.StreamingPullRequest.serialize,
        response_deserializer=types.StreamingPullResponse.deserialize)

    def requests() -> Iterator[types.StreamingPullRequest]:
        if first is not None:
            yield first
        release.wait(60)  # then silence: no request (or no further one) until the test ends

    return call(requests())


def test_streaming_pull_without_a_first_request_ends_with_deadline_exceeded(slow):
    release = threading.Event()
    try:
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as failure:
            next(_streaming_pull(slow, None, release))
        assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "StreamingPullRequest" in failure.value.details()
        assert time.monotonic() - started < CLOSED_WITHIN_S
    finally:
        release.set()


def test_streaming_pull_with_its_first_request_outlives_the_timeout(idle):
    publisher, subscriber = make_clients(idle.host, "grpc")
    topic = publisher.create_topic(name=f"projects/p/topics/{unique('t')}").name
    sub = subscriber.create_subscription(name=f"projects/p/subscriptions/{unique('s')}",
                                         topic=topic).name
    release = threading.Event()
    stream = _streaming_pull(
        idle, types.StreamingPullRequest(subscription=sub, stream_ack_deadline_seconds=60),
        release)
    got: list = []
    reader = threading.Thread(target=lambda: got.append(next(stream, None)), daemon=True)
    reader.start()
    try:
        # Past three first-request idle (and idle idle: the call is open, not idle).
        quiet_until = time.monotonic() + 3 * TIMEOUT_S
        wait_for(lambda: got or time.monotonic() > quiet_until, timeout=CLOSED_WITHIN_S)
        assert not got, "the stream ended or delivered before anything was published"
        publisher.publish(topic, b"later").result(timeout=30)
        wait_for(lambda: got, timeout=30, message="the message on the open stream")
        assert [m.message.data for m in got[0].received_messages] == [b"later"]
    finally:
        release.set()
        stream.cancel()
        subscriber.close()


def test_connections_past_the_limit_are_closed_then_served_again():
    limit = 4
    with _emulator("--max-connections", str(limit)) as emu:
        held = [_open_served(emu) for _ in range(limit)]
        try:
            with _connect(emu) as extra:
                assert _closed_by_server(extra, CLOSED_WITHIN_S)
            held.pop().close()
            wait_for(lambda: http_ok(f"http://{emu.host}/healthz"), timeout=10,
                     message="a new connection served once one closed")
            assert all(_served(sock) for sock in held)  # the others were left alone
        finally:
            for sock in held:
                sock.close()
        assert "connection limit reached (4 open" in emu.log_tail()


class _DescriptorStarved(EmulatorProcess):
    """The emulator under `prlimit --nofile=N:N`: it runs out of descriptors after a few
    dozen connections."""

    def __init__(self, nofile: int) -> None:
        super().__init__(extra_args=["--in-memory"])
        self.nofile = nofile

    @property
    def cmd(self) -> list[str]:
        return ["prlimit", f"--nofile={self.nofile}:{self.nofile}", *super().cmd]


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="prlimit (util-linux) is missing")
def test_out_of_descriptors_logs_a_line_per_interval_and_recovers():
    with _DescriptorStarved(NOFILE) as emu:
        assert emu.proc is not None
        held: list[socket.socket] = []

        def starved() -> bool:
            # The kernel completes the handshake even when the emulator cannot accept().
            sock = _connect(emu)
            held.append(sock)
            sock.sendall(HEALTHZ)
            return "cannot accept connections" in emu.log_tail(100_000)

        try:
            wait_for(starved, timeout=30, interval=0.05, message="accept() out of descriptors")
            lines = emu.log_path.read_text().count("\n")
            # Keep it starved through several accept retries, with new clients knocking.
            watched_until = time.monotonic() + 4

            def watched() -> bool:
                if len(held) < 80:  # the kernel queues them (backlog 100): connect succeeds
                    held.append(_connect(emu))
                return time.monotonic() > watched_until

            wait_for(watched, timeout=10, interval=0.2)
            assert emu.proc.poll() is None, emu.log_tail()
            log = emu.log_path.read_text()
            assert log.count("\n") - lines <= 3, log[-3000:]
            assert "Traceback" not in log and "out of system resource" not in log, log[-3000:]
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: http_ok(f"http://{emu.host}/healthz"), timeout=20,
                 message="/healthz once descriptors are free")
        publisher, subscriber = make_clients(emu.host, "grpc")
        topic = publisher.create_topic(name=f"projects/p/topics/{unique('t')}").name
        assert publisher.get_topic(topic=topic).name == topic
        subscriber.close()
