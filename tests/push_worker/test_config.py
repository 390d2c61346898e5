"""Unit tests: configuration validation; and the CLI's exit code 2 on a bad config."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

from push_worker import ConfigError, load_config, parse_config
from push_worker._delivery import classify, redact, url_with_token
from support import VENV_BIN

GOOD: dict[str, Any] = {
    "pubsub_endpoint": "127.0.0.1:8085",
    "subscriptions": [{"project_id": "p", "subscription_id": "s",
                       "endpoint": "http://127.0.0.1:8080/push"}],
}


def with_sub(**kw: Any) -> dict[str, Any]:
    return {**GOOD, "subscriptions": [{**GOOD["subscriptions"][0], **kw}]}


def test_defaults() -> None:
    c = parse_config(GOOD)
    s = c.subscriptions[0]
    assert c.pubsub_endpoint == "127.0.0.1:8085" and c.stats_interval == 30
    assert (s.concurrency, s.timeout, s.format, s.write_metadata, s.token) == (
        10, 30.0, "wrapped", False, None)
    assert s.subscription_path == "projects/p/subscriptions/s"
    assert parse_config({"subscriptions": GOOD["subscriptions"]}).pubsub_endpoint is None


def test_token_file_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "tok").write_text("abc\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("subscriptions:\n- {project_id: p, subscription_id: s, "
                   "endpoint: 'http://h/x', token_file: tok}\n")
    assert load_config(cfg).subscriptions[0].token == "abc"


@pytest.mark.parametrize(("raw", "field"), [
    ({"subscriptions": []}, "subscriptions"),
    ({}, "subscriptions"),
    ({**GOOD, "pubsub_endpoint": "localhost"}, "pubsub_endpoint"),
    ({**GOOD, "colour": 1}, "colour"),
    (with_sub(endpoint=None), "subscriptions[0].endpoint"),
    (with_sub(endpoint="ftp://x"), "subscriptions[0].endpoint"),
    (with_sub(project_id="a/b"), "subscriptions[0].project_id"),
    (with_sub(concurrency=0), "subscriptions[0].concurrency"),
    (with_sub(timeout="soon"), "subscriptions[0].timeout"),
    (with_sub(format="xml"), "subscriptions[0].format"),
    (with_sub(write_metadata=True), "subscriptions[0].write_metadata"),
    (with_sub(token="a", token_file="b"), "subscriptions[0].token_file"),
    (with_sub(token_file="/nonexistent/tok"), "subscriptions[0].token_file"),
    (with_sub(backoff={"max": 0.01}), "subscriptions[0].backoff.max"),
    (with_sub(ack_deadline=5), "subscriptions[0].ack_deadline"),
    (with_sub(extra=1), "subscriptions[0].extra"),
    ({**GOOD, "subscriptions": GOOD["subscriptions"] * 2}, "subscriptions[1]"),
])
def test_invalid_config_names_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(raw)
    assert str(e.value).startswith(field), str(e.value)


def test_url_with_token_and_redaction() -> None:
    assert url_with_token("http://h/p", "a b/c") == "http://h/p?token=a%20b%2Fc"
    assert url_with_token("http://h/p?x=1", "t") == "http://h/p?x=1&token=t"
    assert url_with_token("http://h/p", None) == "http://h/p"
    assert redact("GET /p?token=a%20b%2Fc and a b/c", ["a b/c"]) == "GET /p?token=*** and ***"


def test_status_classification() -> None:
    assert {classify(s).value for s in (102, 200, 201, 202, 204)} == {"ack"}
    assert {classify(s).value for s in (400, 403, 413)} == {"permanent"}
    assert {classify(s).value for s in (203, 301, 404, 429, 500, 503)} == {"retry"}


@pytest.mark.parametrize(("yaml_text", "field"), [
    ("subscriptions:\n- {project_id: p, subscription_id: s}\n", "subscriptions[0].endpoint"),
    ("subscriptions:\n- {project_id: p, subscription_id: s, endpoint: 'http://h/', "
     "concurrency: many}\n", "subscriptions[0].concurrency"),
    ("pubsub_endpoint: [oops\n", "not valid YAML"),
])
def test_cli_bad_config_exits_2_naming_the_field(tmp_path: Path, yaml_text: str,
                                                 field: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml_text)
    proc = subprocess.run([str(VENV_BIN / "push-worker"), str(cfg)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2
    assert field in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_help_explains_config() -> None:
    proc = subprocess.run([str(VENV_BIN / "push-worker"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for word in ("pubsub_endpoint", "token_file", "write_metadata", "SIGTERM", "--log-level"):
        assert word in proc.stdout


def test_deliverer_retries_once_when_a_kept_alive_connection_was_closed() -> None:
    import socket
    import threading

    from push_worker._delivery import Deliverer, Outcome

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted: list[int] = []

    def serve() -> None:
        # Answers one request per connection, then closes it without saying so.
        for _ in range(2):
            conn, _addr = server.accept()
            accepted.append(1)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    d = Deliverer(f"http://127.0.0.1:{port}/push", "tok", 5, 2)
    try:
        assert d.post(b"{}", {}).outcome is Outcome.ACK
        assert d.post(b"{}", {}).outcome is Outcome.ACK  # stale connection, then a fresh one
    finally:
        d.close()
        server.close()
    assert len(accepted) == 2
