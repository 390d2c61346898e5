"""The emulator as a process: crash durability, restart with a topology, CLI, clean shutdown."""

from __future__ import annotations

import json
import signal
import socket
import stat
import subprocess
import urllib.request

import pytest

from clients import make_clients, unique
from support import VENV_BIN, EmulatorProcess, free_port, wait_for


def _drain(subscriber, sub: str, ack: bool = True) -> list[bytes]:
    got: list[bytes] = []
    while True:
        response = subscriber.pull(subscription=sub, max_messages=1000, return_immediately=True)
        if not response.received_messages:
            return got
        got.extend(m.message.data for m in response.received_messages)
        if ack:
            subscriber.acknowledge(subscription=sub,
                                   ack_ids=[m.ack_id for m in response.received_messages])


def test_published_messages_survive_sigkill(tmp_path):
    topic_id, sub_id = unique("t"), unique("s")
    with EmulatorProcess(data_dir=str(tmp_path)) as emu:
        publisher, subscriber = make_clients(emu.host, "grpc")
        topic = publisher.topic_path("p", topic_id)
        sub = subscriber.subscription_path("p", sub_id)
        publisher.create_topic(name=topic)
        subscriber.create_subscription(name=sub, topic=topic)
        futures = [publisher.publish(topic, f"m{i}".encode()) for i in range(200)]
        for f in futures:
            f.result()
        # Ack the first 50, leave 50 leased (pulled, not acked) and 100 never pulled.
        acked = subscriber.pull(subscription=sub, max_messages=50).received_messages
        while len(acked) < 50:
            acked += subscriber.pull(subscription=sub,
                                     max_messages=50 - len(acked)).received_messages
        subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in acked])
        leased = subscriber.pull(subscription=sub, max_messages=50).received_messages
        assert leased
        subscriber.close()
        emu.kill()  # SIGKILL: no shutdown code runs
        emu.start()  # same data directory, same port
        publisher, subscriber = make_clients(emu.host, "grpc")
        acked_data = {m.message.data for m in acked}
        # The leased ones come back once their lease (10 s default) has run out.
        remaining: set[bytes] = set()
        wait_for(lambda: remaining.update(_drain(subscriber, sub)) or len(remaining) >= 150,
                 timeout=40, interval=0.5, message="every unacked message after the crash")
        assert remaining == {f"m{i}".encode() for i in range(200)} - acked_data
        assert not remaining & acked_data
        subscriber.close()


def test_topology_file_applies_idempotently(tmp_path):
    topology = tmp_path / "topology.yaml"
    topology.write_text(
        "projects:\n"
        "  my-project:\n"
        "    topics:\n"
        "      my-topic:\n"
        "        labels: {team: demo}\n"
        "        subscriptions:\n"
        "          subscription-to-my-topic:\n"
        "            ackDeadlineSeconds: 30\n"
        "            pushConfig: {pushEndpoint: 'http://127.0.0.1:9/pubsub/push'}\n"
        "          pull-sub: {}\n")
    data_dir = tmp_path / "data"
    with EmulatorProcess(data_dir=str(data_dir), extra_args=["--config", str(topology)]) as emu:
        publisher, subscriber = make_clients(emu.host, "grpc")
        sub = subscriber.get_subscription(
            subscription="projects/my-project/subscriptions/subscription-to-my-topic")
        assert sub.ack_deadline_seconds == 30
        assert sub.push_config.push_endpoint == "http://127.0.0.1:9/pubsub/push"
        assert dict(publisher.get_topic(topic="projects/my-project/topics/my-topic").labels) == {
            "team": "demo"}
        publisher.publish("projects/my-project/topics/my-topic", b"kept").result()
        subscriber.close()
        emu.stop()
        emu.start()  # same file again: nothing is recreated, nothing is lost
        publisher, subscriber = make_clients(emu.host, "grpc")
        got = _drain(subscriber, "projects/my-project/subscriptions/pull-sub")
        assert got == [b"kept"]
        subscriber.close()
    log = emu.log_path.read_text()
    assert log.count("topology applied: 3 resources created") == 1
    assert "topology applied: 0 resources created" in log


def test_bad_topology_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("projects:\n  p:\n    topics:\n      ab: {}\n")
    result = subprocess.run(
        [str(VENV_BIN / "pubsub-emulator"), "start", "--port", str(free_port()),
         "--in-memory", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "projects.p.topics.ab" in result.stderr and "Invalid [topics] name" in result.stderr


def test_help_explains_every_flag():
    out = subprocess.run([str(VENV_BIN / "pubsub-emulator"), "start", "--help"],
                         capture_output=True, text=True, timeout=60).stdout
    for flag in ("--host", "--port", "--data-dir", "--in-memory", "--config", "--log-level",
                 "--max-connections", "--idle-timeout", "--header-timeout", "--body-timeout",
                 "--first-request-timeout"):
        assert flag in out
    gateway = subprocess.run([str(VENV_BIN / "pubsub-emulator"), "gateway", "--help"],
                             capture_output=True, text=True, timeout=60).stdout
    assert "--upstream" in gateway


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signals_shut_down_cleanly(sig):
    with EmulatorProcess(extra_args=["--in-memory"]) as emu:
        assert emu.proc is not None
        emu.proc.send_signal(sig)
        assert emu.proc.wait(20) == 0
        assert "stopped" in emu.log_path.read_text()


def test_binds_loopback_by_default():
    with EmulatorProcess(extra_args=["--in-memory"]) as emu:
        with urllib.request.urlopen(f"http://{emu.host}/healthz", timeout=5) as r:
            assert r.status == 200
        listening = subprocess.run(["ss", "-ltn"], capture_output=True, text=True).stdout
        assert f"127.0.0.1:{emu.port} " in listening
        assert f"0.0.0.0:{emu.port} " not in listening and f"*:{emu.port} " not in listening


def test_gateway_serves_rest_in_front_of_grpc(emulator):
    port = free_port()
    proc = subprocess.Popen([str(VENV_BIN / "pubsub-emulator"), "gateway", "--upstream",
                             emulator.host, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def healthy():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return True
            except OSError:
                return False

        wait_for(healthy, timeout=30, message="the gateway")
        publisher, _ = make_clients(f"127.0.0.1:{port}", "rest")
        topic = publisher.create_topic(name=f"projects/p/topics/{unique('gw')}").name
        grpc_publisher, _ = make_clients(emulator.host, "grpc")
        assert grpc_publisher.get_topic(topic=topic).name == topic  # it reached the upstream
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0


def test_limit_flags_reach_the_server():
    """A limit given on the command line is the one the running emulator enforces."""
    with EmulatorProcess(extra_args=["--in-memory", "--idle-timeout", "1"]) as emu:
        with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as silent:
            silent.settimeout(10)
            assert silent.recv(1) == b""  # closed by the 1 s idle timeout, not after minutes


def test_bad_limit_values_are_rejected():
    result = subprocess.run([str(VENV_BIN / "pubsub-emulator"), "start", "--in-memory",
                             "--idle-timeout", "soon"], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2 and "--idle-timeout" in result.stderr


def _start(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "pubsub-emulator"), "start", "--port", str(free_port()),
                           "--in-memory", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, why", [
    ([], "without --auth"),
    (["--auth"], "without TLS"),
    (["--tls-self-signed"], "without --auth"),
])
def test_a_public_address_needs_auth_and_tls(tmp_path, args, why):
    result = _start("--host", "0.0.0.0", "--data-dir", str(tmp_path), *args)
    assert result.returncode == 2, result.stderr
    assert "refusing to start" in result.stderr and why in result.stderr
    for how in ("--auth", "--tls-self-signed", "keys create", "127.0.0.1", "--insecure"):
        assert how in result.stderr  # and how to start


def test_insecure_starts_on_a_public_address_with_a_warning():
    with EmulatorProcess(extra_args=["--in-memory", "--host", "0.0.0.0", "--insecure"]) as emu:
        with urllib.request.urlopen(f"http://{emu.host}/healthz", timeout=5) as r:
            assert r.status == 200
        log = emu.log_path.read_text()
    assert "WARNING" in log and "--insecure" in log and "without --auth" in log


@pytest.mark.parametrize("args, message", [
    (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
    (["--tls-cert", "missing.pem", "--tls-key", "missing.pem"], "cannot use --tls-cert"),
    (["--push-allow", "10.0.0.0/8,127.1"], "--push-allow"),
    (["--push-allow", "bad host"], "--push-allow"),
    (["--tls-hostname", "not a name"], "--tls-hostname"),
    (["--host", ""], "--host"),  # an unset variable in a unit file: not retried as a failure
])
def test_bad_security_flags_are_usage_errors(tmp_path, args, message):
    result = _start("--data-dir", str(tmp_path), *args)
    assert result.returncode == 2 and message in result.stderr


def test_help_explains_the_security_flags():
    out = subprocess.run([str(VENV_BIN / "pubsub-emulator"), "start", "--help"],
                         capture_output=True, text=True, timeout=60).stdout
    for flag in ("--tls-cert", "--tls-key", "--tls-self-signed", "--tls-hostname", "--auth",
                 "--insecure", "--push-allow"):
        assert flag in out


def _keys(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "pubsub-emulator"), "keys", *args],
                          capture_output=True, text=True, timeout=60)


def test_keys_create_list_delete(tmp_path):
    data = str(tmp_path / "data")
    email = "ci@proj-keys.iam.gserviceaccount.com"
    files = [tmp_path / "one.json", tmp_path / "two.json"]
    for out, extra in zip(files, (["--admin"], []), strict=True):
        made = _keys("create", email, "--out", str(out), "--data-dir", data,
                     "--url", "https://pubsub.internal:8443", *extra)
        assert made.returncode == 0, made.stderr
        assert stat.S_IMODE(out.stat().st_mode) == 0o600
    one, two = (json.loads(f.read_text()) for f in files)
    assert one["type"] == "service_account" and one["client_email"] == email
    assert one["project_id"] == "proj-keys" and "PRIVATE KEY" in one["private_key"]
    assert one["token_uri"] == "https://pubsub.internal:8443/token"
    assert one["private_key_id"] != two["private_key_id"]
    listed = _keys("list", "--data-dir", data).stdout
    assert one["private_key_id"] in listed and two["private_key_id"] in listed
    assert "admin" in listed and "PRIVATE" not in listed
    assert _keys("delete", one["private_key_id"], "--data-dir", data).returncode == 0
    listed = _keys("list", "--data-dir", data).stdout
    assert one["private_key_id"] not in listed and two["private_key_id"] in listed
    assert _keys("delete", email, "--data-dir", data).returncode == 0
    assert _keys("list", "--data-dir", data).stdout == ""
    missing = _keys("delete", email, "--data-dir", data)
    assert missing.returncode == 1 and "no key matches" in missing.stderr
    bad = _keys("create", "not-an-email", "--out", str(tmp_path / "x.json"), "--data-dir", data)
    assert bad.returncode == 2 and not (tmp_path / "x.json").exists()
