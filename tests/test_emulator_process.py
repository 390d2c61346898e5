"""The emulator as a process: crash durability, restart with a topology, CLI, clean shutdown."""

from __future__ import annotations

import signal
import socket
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
