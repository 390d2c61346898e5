"""`--log-format json`: one JSON object per line (time, level, logger, message), and on each
RPC's line (`--log-level debug`) its method, resource, status and duration, over gRPC and
REST alike."""

from __future__ import annotations

import json
import logging
import sys

import pytest
import requests
from google.api_core import exceptions

from clients import gapic_clients, unique
from pubsub_emulator.logs import JsonFormatter
from support import EmulatorProcess, wait_for

PROJECT = "log-proj"


def test_a_record_is_one_json_object_with_its_fields():
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("pubsub_emulator.grpc", logging.ERROR, __file__, 1,
                                   "failed %s", ("Publish",), sys.exc_info())
    record.__dict__.update(method="Publish", resource="projects/p/topics/t", status="INTERNAL",
                           duration=0.0123)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "ERROR" and entry["logger"] == "pubsub_emulator.grpc"
    assert entry["message"] == "failed Publish"
    assert entry["time"].endswith("Z") and entry["time"][10] == "T"
    assert (entry["method"], entry["resource"], entry["status"], entry["duration"]) == (
        "Publish", "projects/p/topics/t", "INTERNAL", 0.0123)
    assert "ValueError: boom" in entry["exception"]


def _lines(emu: EmulatorProcess) -> list[dict]:
    return [json.loads(line) for line in emu.log_path.read_text().splitlines() if line.strip()]


def test_every_line_is_json_and_rpcs_carry_their_fields():
    with EmulatorProcess(extra_args=["--in-memory", "--log-format", "json",
                                     "--log-level", "debug"]) as emu:
        topic = f"projects/{PROJECT}/topics/{unique('t')}"
        publisher, _ = gapic_clients(emu.host, "grpc")
        publisher.create_topic(name=topic)
        missing = f"{topic}-missing"
        with pytest.raises(exceptions.NotFound):
            publisher.get_topic(topic=missing)
        assert requests.get(f"http://{emu.host}/v1/{topic}", timeout=10).status_code == 200

        def rpc_lines() -> list[dict] | None:
            found = [e for e in _lines(emu) if "method" in e]
            return found if len(found) >= 3 else None

        rpcs = wait_for(rpc_lines, timeout=10, message="three RPC log lines")
        lines = _lines(emu)  # (every line parsed: not one is plain text)
    assert all({"time", "level", "logger", "message"} <= set(e) for e in lines)
    assert any("listening on" in e["message"] for e in lines)
    seen = {(e["protocol"], e["method"], e["resource"], e["status"]) for e in rpcs}
    assert {("grpc", "CreateTopic", topic, "OK"), ("grpc", "GetTopic", missing, "NOT_FOUND"),
            ("rest", "GetTopic", topic, "OK")} <= seen
    assert all(isinstance(e["duration"], float) and 0 <= e["duration"] < 10 for e in rpcs)
