"""A push endpoint for tests: a real HTTP server in a thread that records every request.

Used by the emulator's native push tests and by the push worker tests alike. What it answers is
programmable: `answer(got, index)` returns the status of the index-th request and may sleep or
wait on an event first (a slow or hanging endpoint); `statuses(...)` makes the common "these
statuses first, then this one" answer.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Got:
    arrived: float  # time.monotonic()
    path: str  # as requested, query string included
    headers: list[tuple[str, str]]
    body: bytes
    status: int = 0  # what the endpoint answered; 0 while the answer is pending

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def route(self) -> str:
        """The path without the query string."""
        return urlsplit(self.path).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.path).query)

    @property
    def envelope(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def data(self) -> bytes:
        return base64.b64decode(self.envelope["message"]["data"])


Answer = Callable[[Got, int], int]


def statuses(*first: int, then: int = 200) -> Answer:
    """An answer: the first requests get `first` in turn, every later one `then`."""
    return lambda _g, index: first[index] if index < len(first) else then


@dataclass
class Receiver:
    """A push endpoint: records each request; `answer(got, index)` gives the status (may sleep)."""

    answer: Answer = lambda _g, _i: 200
    port: int = 0
    got: list[Got] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got = Got(time.monotonic(), self.path, list(self.headers.items()), body)
                with receiver.lock:
                    receiver.got.append(got)
                    index = len(receiver.got) - 1
                status = receiver.answer(got, index)
                got.status = status
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def url(self, path: str = "/push") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def snapshot(self) -> list[Got]:
        with self.lock:
            return list(self.got)

    def acked_ids(self) -> list[str]:
        """Message ids (of wrapped envelopes) of the requests answered with 200 or 204."""
        return [g.envelope["message"]["messageId"] for g in self.snapshot()
                if g.status in (200, 204)]
