"""gRPC and REST behave identically: the same script of every unary RPC, run through Google's
generated clients over each transport, gives the same transcript (StreamingPull has no REST
mapping in Google's API and is covered by the gRPC tests)."""

from __future__ import annotations

import datetime
import re
from typing import Any

from google.api_core import exceptions
from google.protobuf import json_format

from clients import gapic_clients, unique

P = "parity-project"


def _normalise(value: Any, suffix: str) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if key in ("messageId", "publishTime", "expireTime"):
                out[key] = "<set>" if item else item
            elif key == "ackId":
                out[key] = "<ack id>"
            elif key == "messageIds":
                out[key] = [f"<id {i}>" for i, _ in enumerate(item)]
            else:
                out[key] = _normalise(item, suffix)
        return out
    if isinstance(value, list):
        return [_normalise(item, suffix) for item in value]
    if isinstance(value, str):
        return value.replace(suffix, "<run>")
    return value


def _script(transport: str, host: str) -> list[tuple[str, Any]]:
    publisher, subscriber = gapic_clients(host, transport)
    run = unique("run")
    topic = f"projects/{P}/topics/t-{run}"
    sub = f"projects/{P}/subscriptions/s-{run}"
    detach_me = f"projects/{P}/subscriptions/d-{run}"
    snapshot = f"projects/{P}/snapshots/sn-{run}"
    transcript: list[tuple[str, Any]] = []
    ack_ids: list[str] = []

    def call(client: Any, method: str, request: dict[str, Any]) -> Any:
        try:
            response = getattr(client, method)(request=request, retry=None, timeout=30)
        except exceptions.GoogleAPICallError as exc:
            # Same google.rpc status either way (REST maps it to the HTTP status).
            status = (exc.grpc_status_code.name if transport == "grpc"
                      else exc.response.json()["error"]["status"])
            transcript.append((method, {"error": status}))
            return None
        if response is None:
            transcript.append((method, None))
            return None
        pb = getattr(type(response), "pb", None)
        raw = pb(response) if pb else response
        if hasattr(raw, "DESCRIPTOR"):
            as_dict = json_format.MessageToDict(raw)
        else:  # pagers: the pages' items
            as_dict = [json_format.MessageToDict(type(item).pb(item) if hasattr(
                type(item), "pb") else item) if not isinstance(item, str) else item
                for item in raw]
        transcript.append((method, _normalise(as_dict, run)))
        return response

    call(publisher, "create_topic", {"name": topic, "labels": {"a": "1"}})
    call(publisher, "create_topic", {"name": topic})
    call(publisher, "get_topic", {"topic": topic})
    call(publisher, "update_topic", {"topic": {"name": topic, "labels": {"a": "2"}},
                                     "update_mask": {"paths": ["labels"]}})
    call(publisher, "list_topics", {"project": f"projects/{P}", "page_size": 1000})
    call(subscriber, "create_subscription", {"name": sub, "topic": topic,
                                             "ack_deadline_seconds": 20})
    call(subscriber, "create_subscription", {"name": detach_me, "topic": topic})
    call(subscriber, "get_subscription", {"subscription": sub})
    call(subscriber, "update_subscription", {"subscription": {"name": sub, "labels": {"b": "1"}},
                                             "update_mask": {"paths": ["labels"]}})
    call(subscriber, "list_subscriptions", {"project": f"projects/{P}", "page_size": 1000})
    call(publisher, "list_topic_subscriptions", {"topic": topic})
    call(publisher, "publish", {"topic": topic, "messages": [
        {"data": b"one", "attributes": {"k": "v"}}, {"data": b"two", "ordering_key": "o"}]})
    pulled = call(subscriber, "pull", {"subscription": sub, "max_messages": 10})
    ack_ids = [m.ack_id for m in pulled.received_messages]
    call(subscriber, "modify_ack_deadline", {"subscription": sub, "ack_ids": ack_ids[:1],
                                             "ack_deadline_seconds": 0})
    call(subscriber, "acknowledge", {"subscription": sub, "ack_ids": ack_ids[1:]})
    again = call(subscriber, "pull", {"subscription": sub, "max_messages": 10})
    call(subscriber, "create_snapshot", {"name": snapshot, "subscription": sub})
    call(subscriber, "get_snapshot", {"snapshot": snapshot})
    call(subscriber, "update_snapshot", {"snapshot": {"name": snapshot, "labels": {"c": "1"}},
                                         "update_mask": {"paths": ["labels"]}})
    call(subscriber, "list_snapshots", {"project": f"projects/{P}", "page_size": 1000})
    call(publisher, "list_topic_snapshots", {"topic": topic})
    call(subscriber, "acknowledge", {"subscription": sub,
                                     "ack_ids": [m.ack_id for m in again.received_messages]})
    call(subscriber, "seek", {"subscription": sub, "snapshot": snapshot})
    call(subscriber, "pull", {"subscription": sub, "max_messages": 10})
    call(subscriber, "seek", {"subscription": sub, "time": datetime.datetime.now(
        datetime.UTC) + datetime.timedelta(seconds=5)})
    call(subscriber, "pull", {"subscription": sub, "max_messages": 10,
                              "return_immediately": True})
    call(subscriber, "modify_push_config", {"subscription": sub, "push_config": {
        "push_endpoint": "http://127.0.0.1:9/push", "attributes": {"x-goog-version": "v1"}}})
    call(publisher, "detach_subscription", {"subscription": detach_me})
    call(subscriber, "pull", {"subscription": detach_me, "max_messages": 1})
    call(subscriber, "delete_snapshot", {"snapshot": snapshot})
    call(subscriber, "delete_snapshot", {"snapshot": snapshot})
    call(publisher, "delete_topic", {"topic": topic})
    call(subscriber, "get_subscription", {"subscription": sub})
    call(subscriber, "delete_subscription", {"subscription": sub})
    call(subscriber, "delete_subscription", {"subscription": sub})
    call(publisher, "get_topic", {"topic": topic})
    return transcript


def test_every_unary_rpc_behaves_the_same_over_grpc_and_rest(emulator):
    grpc_transcript = _script("grpc", emulator.host)
    rest_transcript = _script("rest", emulator.host)
    # Lists include other runs' resources: keep only this run's.
    def own(transcript):
        out = []
        for method, result in transcript:
            if method.startswith("list_") and isinstance(result, list):
                result = [r for r in result if "<run>" in str(r)]
            out.append((method, result))
        return out

    assert own(grpc_transcript) == own(rest_transcript)
    called = {method for method, _ in grpc_transcript}
    expected = {re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() for name in (
        "CreateTopic", "UpdateTopic", "Publish", "GetTopic", "ListTopics",
        "ListTopicSubscriptions", "ListTopicSnapshots", "DeleteTopic", "DetachSubscription",
        "CreateSubscription", "GetSubscription", "UpdateSubscription", "ListSubscriptions",
        "DeleteSubscription", "ModifyAckDeadline", "Acknowledge", "Pull", "ModifyPushConfig",
        "GetSnapshot", "ListSnapshots", "CreateSnapshot", "UpdateSnapshot", "DeleteSnapshot",
        "Seek")}
    assert expected <= called
    # The script exercised errors too, not only happy paths.
    assert ("delete_subscription", {"error": "NOT_FOUND"}) in grpc_transcript
    assert ("pull", {"error": "FAILED_PRECONDITION"}) in grpc_transcript
