"""Servers in subprocesses for the tests and the benchmarks: our emulator, nats-server, Google's
reference emulator. Each is started on a loopback port, awaited until it answers, logged to a
file and stopped (SIGTERM, then SIGKILL).

The module lives beside the tests (the tests import it through `support`) and `bench/*.py` put
this folder on sys.path: it is test tooling, so it stays out of `src/` (which is the installed
package) and needs nothing but the standard library and the project's virtualenv.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO, TypeVar

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


def http_ok(url: str) -> bool:
    """True when GET `url` answers 200 within a second."""
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except OSError:
        return False


def tcp_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


class ServerProcess:
    """A server in a subprocess: started, awaited until ready, logged to a file, stopped.

    Subclasses set `name`, `log_path`, `start_timeout` and define `cmd` and `_ready()`.
    `new_session=True` starts it in a session of its own and signals the whole group (for
    servers that are a wrapper script around the real process, as Google's emulator is).
    """

    name = "server"
    start_timeout = 30.0
    log_path: Path
    cwd: str | None = None
    new_session = False
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def cmd(self) -> list[str]:
        raise NotImplementedError

    def _ready(self) -> bool:
        raise NotImplementedError

    def _launch(self) -> None:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.cwd, start_new_session=self.new_session)
        try:
            wait_for(self._up, timeout=self.start_timeout, message=self.name)
        except AssertionError as e:
            raise AssertionError(f"{e}: {self.log_tail(2000)}") from None

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited: {self.log_tail(2000)}")
        return self._ready()

    def log_tail(self, n: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        if self.new_session:
            try:
                os.killpg(self.proc.pid, sig)  # its own session: the server and its children
            except ProcessLookupError:
                pass
        else:
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.proc and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after 15 s; the exit code."""
        if self.proc and self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(5)
        if self._log is not None:
            self._log.close()
        return self.proc.returncode if self.proc else None


class EmulatorProcess(ServerProcess):
    """`pubsub-emulator start --host 127.0.0.1 --port P --data-dir D [extra_args]` on a free
    loopback port; D is a temporary directory (removed by close()) unless given."""

    def __init__(self, data_dir: str | Path | None = None, extra_args: list[str] | None = None,
                 port: int | None = None, *, name: str | None = None,
                 log_path: str | Path | None = None, cwd: str | Path | None = None,
                 new_session: bool = False, start_timeout: float = 30.0) -> None:
        self.port = port or free_port()
        self._tmp = None if data_dir else tempfile.TemporaryDirectory(prefix="emu-")
        self.data_dir = str(data_dir or self._tmp.name)  # type: ignore[union-attr]
        self.extra_args = extra_args or []
        self.log_path = Path(log_path or Path(self.data_dir) / "emulator.log")
        self.name = name or f"emulator on {self.host}"
        self.cwd = str(cwd) if cwd else None
        self.new_session = new_session
        self.start_timeout = start_timeout

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def cmd(self) -> list[str]:
        return [str(VENV_BIN / "pubsub-emulator"), "start", "--host", "127.0.0.1",
                "--port", str(self.port), "--data-dir", self.data_dir, *self.extra_args]

    def start(self) -> EmulatorProcess:
        Path(self.data_dir).mkdir(parents=True, exist_ok=True)
        self._launch()
        return self

    def _ready(self) -> bool:
        return http_ok(f"http://{self.host}/healthz")

    def close(self) -> None:
        self.stop()
        if self._tmp:
            self._tmp.cleanup()

    def __enter__(self) -> EmulatorProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


NATS_MISSING = ("nats-server is not installed: `apt-get install nats-server` (Debian/Ubuntu; "
                "CI installs it) to run the NATS JetStream backend tests")


def nats_server_path() -> str | None:
    """The nats-server binary (PATH, then Debian's /usr/sbin), None when not installed."""
    return shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists() else None)



class TlsEmulatorProcess(EmulatorProcess):
    """An emulator serving TLS (`--tls-self-signed` or a CA of the test's, `ca_path`): ready
    once `/healthz` answers over TLS, trusting that CA."""

    ca_path: Path | None = None

    @property
    def ca(self) -> Path:
        return self.ca_path or Path(self.data_dir) / "tls" / "ca.pem"

    def _ready(self) -> bool:
        if not self.ca.exists():
            return False
        try:
            context = ssl.create_default_context(cafile=str(self.ca))
            with urllib.request.urlopen(f"https://{self.host}/healthz", timeout=1,
                                        context=context) as r:
                return r.status == 200
        except (OSError, ssl.SSLError):
            return False

class NatsServer(ServerProcess):
    """A real `nats-server -js` on a free loopback port, optionally one node of a cluster.

    `name` is its server name (-n, omitted when None); with `monitor_port` it also serves the
    monitoring endpoint (-m) and counts as ready when GET /healthz there says so (JetStream
    included), otherwise as soon as its client port accepts connections.
    """

    def __init__(self, store_dir: str | Path, name: str | None = "n1", port: int | None = None,
                 cluster_port: int | None = None, routes: list[int] | None = None, *,
                 monitor_port: int | None = None, log_path: str | Path | None = None,
                 start_timeout: float = 20.0, binary: str | None = None) -> None:
        binary = binary or nats_server_path()
        if binary is None:
            raise AssertionError(NATS_MISSING)
        self.binary = binary
        self.server_name = name
        self.port = port or free_port()
        self.cluster_port = cluster_port
        self.routes = routes or []
        self.monitor_port = monitor_port
        self.store_dir = Path(store_dir)
        self.log_path = Path(log_path or self.store_dir.parent / f"{name or 'nats-server'}.log")
        self.name = f"nats-server {name} on {self.port}" if name else "nats-server"
        self.start_timeout = start_timeout

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def cmd(self) -> list[str]:
        cmd = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js",
               "-sd", str(self.store_dir)]
        if self.server_name:
            cmd += ["-n", self.server_name]
        if self.monitor_port:
            cmd += ["-m", str(self.monitor_port)]
        if self.cluster_port:
            cmd += ["--cluster_name", "pubsub", "--cluster",
                    f"nats://127.0.0.1:{self.cluster_port}",
                    "--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        return cmd

    def start(self) -> NatsServer:
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._launch()
        return self

    def _ready(self) -> bool:
        if self.monitor_port:
            return http_ok(f"http://127.0.0.1:{self.monitor_port}/healthz")
        return tcp_open(self.port)


def reference_emulator_path() -> str | None:
    """Google's emulator (gcloud's platform/pubsub-emulator), None when not installed."""
    gcloud = shutil.which("gcloud")
    if not gcloud:
        return None
    p = (Path(os.path.realpath(gcloud)).parent.parent / "platform" / "pubsub-emulator" / "bin"
         / "cloud-pubsub-emulator")
    return str(p) if p.exists() else None


class ReferenceEmulator(ServerProcess):
    """Google's Java emulator (gRPC and REST on one port), run in `work_dir`: a wrapper script
    around a JVM, hence a session of its own so that stopping it stops the JVM too."""

    name = "reference"
    new_session = True

    def __init__(self, binary: str, work_dir: str | Path, port: int | None = None,
                 start_timeout: float = 90.0) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.cwd = str(work_dir)
        self.log_path = Path(work_dir) / "server.log"
        self.start_timeout = start_timeout

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def cmd(self) -> list[str]:
        return [self.binary, "--host=127.0.0.1", f"--port={self.port}"]

    def start(self) -> ReferenceEmulator:
        Path(self.cwd).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        self._launch()
        return self

    def _ready(self) -> bool:
        return http_ok(f"http://{self.host}/")
