"""A push endpoint for tests: a real HTTP server in a thread that records every request."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Got:
    arrived: float  # time.monotonic()
    path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def envelope(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def data(self) -> bytes:
        return base64.b64decode(self.envelope["message"]["data"])


@dataclass
class Receiver:
    """A push endpoint: records each request; `answer(got, index)` gives the status (may sleep)."""

    answer: Callable[[Got, int], int] = lambda _g, _i: 200
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

    def snapshot(self) -> list[Got]:
        with self.lock:
            return list(self.got)
