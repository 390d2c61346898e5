"""Helpers the Python 3 test suites share: free ports, deadline waits, a real emulator process."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], T], timeout: float = 30.0, interval: float = 0.02,
             message: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class SyncStore:
    """A store driven from synchronous test code, standing for one emulator process.

    Stores are asynchronous and a NATS store lives on the loop that opened it, so each
    SyncStore runs its own event loop on a thread of its own, for as long as it is open (its
    connection keeps reading and writing between calls, as a process's would); every call is
    run there and waited for.
    """

    def __init__(self, opener: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="store-loop",
                                        daemon=True)
        self._thread.start()
        try:
            self.store = self.run(opener())
        except BaseException:
            self._stop()
            raise

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await awaitable

        future = asyncio.run_coroutine_threadsafe(wrapped(), self.loop)
        return future.result(self.timeout)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self.run(attr(*args, **kwargs))

        return call

    def _stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()

    def close(self) -> None:
        if not self.loop.is_closed():
            try:
                self.run(self.store.close())
            finally:
                self._stop()


class _ServerProcess:
    """A server in a subprocess: started, awaited until ready, logged to a file, stopped."""

    what = "server"
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path

    def _launch(self, cmd: list[str], timeout: float) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._up, timeout=timeout, message=self.what)

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.what} exited: {self.log_path.read_text()[-2000:]}")
        return self._ready()

    def _ready(self) -> bool:
        raise NotImplementedError

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; the exit code."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()
        return self.proc.returncode if self.proc else None


class EmulatorProcess(_ServerProcess):
    """`pubsub-emulator start` in a subprocess, on a free loopback port."""

    def __init__(self, data_dir: str | None = None, extra_args: list[str] | None = None,
                 port: int | None = None) -> None:
        self.port = port or free_port()
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="emu-")
        self.data_dir = data_dir or self._tmp.name  # type: ignore[union-attr]
        self.extra_args = extra_args or []
        self.log_path = Path(self.data_dir) / "emulator.log"
        self.what = f"emulator on {self.host}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> EmulatorProcess:
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        self._launch([str(VENV_BIN / "pubsub-emulator"), "start", "--host", "127.0.0.1",
                      "--port", str(self.port), "--data-dir", self.data_dir,
                      *self.extra_args], timeout=30)
        return self

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.host}/healthz", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    def close(self) -> None:
        self.stop()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def emulator_env(host: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PUBSUB_EMULATOR_HOST"] = host
    return env


NATS_MISSING = ("nats-server is not installed: `apt-get install nats-server` (Debian/Ubuntu; "
                "CI installs it) to run the NATS JetStream backend tests")


class NatsServer(_ServerProcess):
    """A real `nats-server -js` on a free loopback port, optionally one node of a cluster."""

    def __init__(self, store_dir: str | Path, name: str = "n1", port: int | None = None,
                 cluster_port: int | None = None, routes: list[int] | None = None) -> None:
        import shutil

        binary = shutil.which("nats-server") or (
            "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)
        if binary is None:
            raise AssertionError(NATS_MISSING)
        self.binary = binary
        self.name = name
        self.port = port or free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.store_dir = Path(store_dir)
        self.log_path = self.store_dir.parent / f"{name}.log"
        self.what = f"nats-server {name} on {self.port}"

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> NatsServer:
        cmd = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js",
               "-sd", str(self.store_dir), "-n", self.name]
        if self.cluster_port:
            cmd += ["--cluster_name", "pubsub", "--cluster",
                    f"nats://127.0.0.1:{self.cluster_port}",
                    "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._launch(cmd, timeout=20)
        return self

    def _ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False
