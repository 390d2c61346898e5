"""Raw HTTP/1.1 for the hardening and fuzz tests: requests that well-behaved clients refuse to
send (odd bytes in the path, bad framing, any method), and checks of what comes back."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass, field
from pathlib import Path

# google/rpc/code.proto: the HTTP status of each code Google's JSON errors carry.
HTTP_OF_STATUS = {
    "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429, "FAILED_PRECONDITION": 400, "ABORTED": 409,
    "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501, "INTERNAL": 500, "UNAVAILABLE": 503,
    "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}


@dataclass
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> object:
        return json.loads(self.body)


def request_bytes(method: str | bytes, target: str | bytes, body: bytes = b"",
                  headers: dict[str, str] | None = None, length: int | None = None) -> bytes:
    """One HTTP/1.1 request asking the server to close the connection after answering."""
    head = [_b(method) + b" " + _b(target) + b" HTTP/1.1", b"Host: 127.0.0.1",
            b"Connection: close"]
    head += [_b(k) + b": " + _b(v) for k, v in (headers or {}).items()]
    if length is None:
        length = len(body)
    head.append(b"Content-Length: " + str(length).encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _b(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def send(port: int, data: bytes, timeout: float = 15.0) -> Answer:
    """Send raw bytes, read the answer until the server closes; a hang fails by timeout."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # the server may answer (and stop reading) before the body is all sent
        received = bytearray()
        while not _complete(received):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
    return parse(bytes(received))


def _complete(received: bytearray) -> bool:
    """Whether a whole answer with a Content-Length is in: a server may linger, reading the
    rest of a body it refused, before it closes."""
    head, found, body = bytes(received).partition(b"\r\n\r\n")
    if not found:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(body) >= int(value)
    return False


def parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1."):
        raise AssertionError(f"not an HTTP answer: {raw[:200]!r}")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = body[:int(headers["content-length"])]
    return Answer(status, headers, body)


def assert_google_error(answer: Answer) -> dict:
    """The answer is Google's JSON error body, its code the HTTP status, its status that
    code's name; returns the `error` object."""
    assert answer.headers.get("content-type", "").startswith("application/json"), answer
    error = answer.json()["error"]  # type: ignore[index]
    assert error["code"] == answer.status, (answer, error)
    assert HTTP_OF_STATUS[error["status"]] == answer.status, (answer, error)
    assert isinstance(error["message"], str) and error["message"], error
    return error


def assert_no_server_error(answer: Answer) -> None:
    """No 5xx but UNIMPLEMENTED; every error in Google's form."""
    assert answer.status < 500 or answer.status == 501, answer
    if answer.status >= 400:
        assert_google_error(answer)


def log_tracebacks(log_path: Path, since: int = 0) -> list[str]:
    """The tracebacks written to a log after byte offset `since`."""
    text = log_path.read_bytes()[since:].decode("utf-8", "replace")
    return [chunk[:2000] for chunk in text.split("Traceback (most recent call last)")[1:]]


def memory_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of a process, in kB."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values
