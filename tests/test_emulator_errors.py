"""Invalid input, table-driven: each case over gRPC and over REST gets Cloud Pub/Sub's status,
with the matching HTTP status and Google's JSON error body over REST."""

from __future__ import annotations

import pytest
from google.api_core import exceptions

from clients import TRANSPORTS, gapic_clients, unique

P = "err-project"

# (case id, client ("pub" or "sub"), method, request builder, expected google.rpc code)
# Builders get the names of an existing topic ("topic") and subscription ("sub").
CASES = [
    ("topic-id-too-short", "pub", "create_topic", lambda r: {"name": f"projects/{P}/topics/ab"},
     "INVALID_ARGUMENT"),
    ("topic-id-reserved", "pub", "create_topic",
     lambda r: {"name": f"projects/{P}/topics/goog-topic"}, "INVALID_ARGUMENT"),
    ("topic-id-bad-start", "pub", "create_topic",
     lambda r: {"name": f"projects/{P}/topics/1topic"}, "INVALID_ARGUMENT"),
    ("topic-exists", "pub", "create_topic", lambda r: {"name": r["topic"]}, "ALREADY_EXISTS"),
    ("topic-missing", "pub", "get_topic", lambda r: {"topic": f"projects/{P}/topics/nope-x"},
     "NOT_FOUND"),
    ("topic-retention-too-short", "pub", "create_topic",
     lambda r: {"name": f"projects/{P}/topics/{unique('t')}",
                "message_retention_duration": {"seconds": 60}}, "INVALID_ARGUMENT"),
    ("update-topic-empty-mask", "pub", "update_topic",
     lambda r: {"topic": {"name": r["topic"]}}, "INVALID_ARGUMENT"),
    ("update-topic-immutable-field", "pub", "update_topic",
     lambda r: {"topic": {"name": r["topic"]}, "update_mask": {"paths": ["name"]}},
     "INVALID_ARGUMENT"),
    ("publish-missing-topic", "pub", "publish",
     lambda r: {"topic": f"projects/{P}/topics/nope-x", "messages": [{"data": b"x"}]},
     "NOT_FOUND"),
    ("publish-no-messages", "pub", "publish", lambda r: {"topic": r["topic"], "messages": []},
     "INVALID_ARGUMENT"),
    ("publish-empty-message", "pub", "publish",
     lambda r: {"topic": r["topic"], "messages": [{}]}, "INVALID_ARGUMENT"),
    ("publish-101-attributes", "pub", "publish",
     lambda r: {"topic": r["topic"],
                "messages": [{"attributes": {f"k{i}": "v" for i in range(101)}}]},
     "INVALID_ARGUMENT"),
    ("publish-long-attribute-key", "pub", "publish",
     lambda r: {"topic": r["topic"], "messages": [{"attributes": {"k" * 257: "v"}}]},
     "INVALID_ARGUMENT"),
    ("publish-long-attribute-value", "pub", "publish",
     lambda r: {"topic": r["topic"], "messages": [{"attributes": {"k": "v" * 1025}}]},
     "INVALID_ARGUMENT"),
    ("publish-over-10MB", "pub", "publish",
     lambda r: {"topic": r["topic"], "messages": [{"data": b"x" * (10_000_001)}]},
     "INVALID_ARGUMENT"),
    ("publish-long-ordering-key", "pub", "publish",
     lambda r: {"topic": r["topic"], "messages": [{"data": b"x", "ordering_key": "k" * 1025}]},
     "INVALID_ARGUMENT"),
    ("list-topics-bad-project", "pub", "list_topics", lambda r: {"project": "projects/bad project"},
     "INVALID_ARGUMENT"),
    ("list-topics-bad-token", "pub", "list_topics",
     lambda r: {"project": f"projects/{P}", "page_token": "!!!"}, "INVALID_ARGUMENT"),
    ("subscription-topic-missing", "sub", "create_subscription",
     lambda r: {"name": f"projects/{P}/subscriptions/{unique('s')}",
                "topic": f"projects/{P}/topics/nope-x"}, "NOT_FOUND"),
    ("subscription-exists", "sub", "create_subscription",
     lambda r: {"name": r["sub"], "topic": r["topic"]}, "ALREADY_EXISTS"),
    ("ack-deadline-too-short", "sub", "create_subscription",
     lambda r: {"name": f"projects/{P}/subscriptions/{unique('s')}", "topic": r["topic"],
                "ack_deadline_seconds": 5}, "INVALID_ARGUMENT"),
    ("ack-deadline-too-long", "sub", "create_subscription",
     lambda r: {"name": f"projects/{P}/subscriptions/{unique('s')}", "topic": r["topic"],
                "ack_deadline_seconds": 601}, "INVALID_ARGUMENT"),
    ("dead-letter-attempts-too-few", "sub", "create_subscription",
     lambda r: {"name": f"projects/{P}/subscriptions/{unique('s')}", "topic": r["topic"],
                "dead_letter_policy": {"dead_letter_topic": r["topic"],
                                       "max_delivery_attempts": 3}}, "INVALID_ARGUMENT"),
    ("retry-backoff-inverted", "sub", "create_subscription",
     lambda r: {"name": f"projects/{P}/subscriptions/{unique('s')}", "topic": r["topic"],
                "retry_policy": {"minimum_backoff": {"seconds": 60},
                                 "maximum_backoff": {"seconds": 10}}}, "INVALID_ARGUMENT"),
    ("update-subscription-topic", "sub", "update_subscription",
     lambda r: {"subscription": {"name": r["sub"], "topic": r["topic"]},
                "update_mask": {"paths": ["topic"]}}, "INVALID_ARGUMENT"),
    ("subscription-missing", "sub", "get_subscription",
     lambda r: {"subscription": f"projects/{P}/subscriptions/nope-x"}, "NOT_FOUND"),
    ("pull-zero-messages", "sub", "pull", lambda r: {"subscription": r["sub"], "max_messages": 0},
     "INVALID_ARGUMENT"),
    ("pull-missing-subscription", "sub", "pull",
     lambda r: {"subscription": f"projects/{P}/subscriptions/nope-x", "max_messages": 1},
     "NOT_FOUND"),
    ("ack-no-ids", "sub", "acknowledge", lambda r: {"subscription": r["sub"], "ack_ids": []},
     "INVALID_ARGUMENT"),
    ("ack-malformed-id", "sub", "acknowledge",
     lambda r: {"subscription": r["sub"], "ack_ids": ["not-an-ack-id"]}, "INVALID_ARGUMENT"),
    ("modack-too-long", "sub", "modify_ack_deadline",
     lambda r: {"subscription": r["sub"], "ack_ids": ["1-1-1"], "ack_deadline_seconds": 601},
     "INVALID_ARGUMENT"),
    ("push-endpoint-not-http", "sub", "modify_push_config",
     lambda r: {"subscription": r["sub"], "push_config": {"push_endpoint": "ftp://x"}},
     "INVALID_ARGUMENT"),
    ("snapshot-missing", "sub", "get_snapshot",
     lambda r: {"snapshot": f"projects/{P}/snapshots/nope-x"}, "NOT_FOUND"),
    ("snapshot-subscription-missing", "sub", "create_snapshot",
     lambda r: {"name": f"projects/{P}/snapshots/{unique('sn')}",
                "subscription": f"projects/{P}/subscriptions/nope-x"}, "NOT_FOUND"),
    ("seek-without-target", "sub", "seek", lambda r: {"subscription": r["sub"]},
     "INVALID_ARGUMENT"),
    ("pull-detached", "sub", "pull", lambda r: {"subscription": r["detached"], "max_messages": 1},
     "FAILED_PRECONDITION"),
]

HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "NOT_FOUND": 404,
               "ALREADY_EXISTS": 409}


@pytest.fixture(scope="module", params=TRANSPORTS)
def setup(request, emulator):
    publisher, subscriber = gapic_clients(emulator.host, request.param)
    topic = publisher.create_topic(name=f"projects/{P}/topics/{unique('t')}").name
    sub = subscriber.create_subscription(
        name=f"projects/{P}/subscriptions/{unique('s')}", topic=topic).name
    detached = subscriber.create_subscription(
        name=f"projects/{P}/subscriptions/{unique('d')}", topic=topic).name
    publisher.detach_subscription(request={"subscription": detached})
    return request.param, {"pub": publisher, "sub": subscriber}, {
        "topic": topic, "sub": sub, "detached": detached}


@pytest.mark.parametrize("case, client, method, build, expected", CASES,
                         ids=[c[0] for c in CASES])
def test_invalid_input(setup, case, client, method, build, expected):
    transport, clients, resources = setup
    with pytest.raises(exceptions.GoogleAPICallError) as info:
        getattr(clients[client], method)(request=build(resources), retry=None, timeout=30)
    error = info.value
    if transport == "grpc":
        assert error.grpc_status_code.name == expected, error
    else:
        assert error.code == HTTP_STATUS[expected], error
        body = error.response.json()
        assert body["error"]["status"] == expected
        assert body["error"]["code"] == HTTP_STATUS[expected]
        assert body["error"]["message"]
    assert error.message  # the caller learns why


def test_rest_unknown_route_and_bad_json(emulator):
    import requests

    base = f"http://{emulator.host}"
    missing = requests.get(f"{base}/v1/projects/{P}/nothing-here", timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["status"] == "NOT_FOUND"
    bad = requests.put(f"{base}/v1/projects/{P}/topics/{unique('t')}", data=b"{not json",
                       timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["status"] == "INVALID_ARGUMENT"
    unknown = requests.put(f"{base}/v1/projects/{P}/topics/{unique('t')}",
                           json={"noSuchField": 1}, timeout=10)
    assert unknown.status_code == 400
    assert "noSuchField" in unknown.json()["error"]["message"]


@pytest.mark.parametrize("body", [b"null", b"123", b"true", b"[]"])
def test_rest_body_must_be_a_json_object(emulator, body):
    import requests

    answer = requests.put(f"http://{emulator.host}/v1/projects/{P}/topics/{unique('t')}",
                          data=body, timeout=10)
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert error["status"] == "INVALID_ARGUMENT" and error["code"] == 400
    assert "Root element must be a message" in error["message"]


def test_rest_iam_on_a_missing_topic_is_not_found(emulator):
    import requests

    answer = requests.post(
        f"http://{emulator.host}/v1/projects/{P}/topics/{unique('t')}:setIamPolicy",
        json={"policy": {}}, timeout=10)
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert error["code"] == 404 and error["status"] == "NOT_FOUND" and error["message"]


def test_grpc_undecodable_request_is_invalid_argument(emulator):
    import grpc

    with grpc.insecure_channel(emulator.host) as channel:
        publish = channel.unary_unary("/google.pubsub.v1.Publisher/Publish")
        with pytest.raises(grpc.RpcError) as info:
            publish(b"\xff\xff\xff\xff", timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "PublishRequest" in info.value.details()
