"""Unit tests: the push body (wrapped) and the unwrapped request, against push-contract.md."""

from __future__ import annotations

import base64
import datetime as dt
import json
from types import SimpleNamespace

from push_contract import fields_from_message, wrapped_envelope
from push_worker import MessageFields, build_request, format_timestamp

SUB = "projects/p/subscriptions/s"
# 2021-02-26T19:13:55.749Z, the example in Google's push documentation
SECONDS = 1614366835


def msg(**kw: object) -> MessageFields:
    base: dict[str, object] = {"data": b"hello", "message_id": "2070443601311540",
                               "publish_seconds": SECONDS, "publish_nanos": 749_000_000}
    base.update(kw)
    return MessageFields(**base)  # type: ignore[arg-type]


def test_timestamp_formats_like_protobuf_json() -> None:
    assert format_timestamp(SECONDS, 749_000_000) == "2021-02-26T19:13:55.749Z"
    assert format_timestamp(SECONDS, 0) == "2021-02-26T19:13:55Z"
    assert format_timestamp(SECONDS, 749_100_000) == "2021-02-26T19:13:55.749100Z"
    assert format_timestamp(SECONDS, 749_100_001) == "2021-02-26T19:13:55.749100001Z"


def test_minimal_wrapped_envelope_has_exactly_the_contract_fields() -> None:
    env = wrapped_envelope(msg(), SUB)
    assert env == {
        "message": {
            "data": base64.b64encode(b"hello").decode(),
            "messageId": "2070443601311540",
            "message_id": "2070443601311540",
            "publishTime": "2021-02-26T19:13:55.749Z",
            "publish_time": "2021-02-26T19:13:55.749Z",
        },
        "subscription": SUB,
    }


def test_optional_fields_appear_when_set() -> None:
    env = wrapped_envelope(msg(attributes={"a": "1"}, ordering_key="k", delivery_attempt=5),
                           SUB)
    assert env["message"]["attributes"] == {"a": "1"}
    assert env["message"]["orderingKey"] == "k"
    assert env["deliveryAttempt"] == 5


def test_empty_data_is_an_empty_string() -> None:
    assert wrapped_envelope(msg(data=b""), SUB)["message"]["data"] == ""


def test_wrapped_request_is_json() -> None:
    req = build_request(msg(data=b"\x00\xff"), SUB)
    assert req.headers == {"Content-Type": "application/json"}
    body = json.loads(req.body)
    assert base64.b64decode(body["message"]["data"]) == b"\x00\xff"


def test_unwrapped_without_metadata_is_raw_data_only() -> None:
    req = build_request(msg(attributes={"a": "1"}), SUB, "unwrapped")
    assert req.body == b"hello" and req.headers == {}


def test_unwrapped_with_metadata_sets_headers() -> None:
    req = build_request(msg(attributes={"Content-Type": "application/json"},
                            ordering_key="k"), SUB, "unwrapped", write_metadata=True)
    assert req.body == b"hello"
    assert req.headers == {
        "x-goog-pubsub-subscription-name": SUB,
        "x-goog-pubsub-message-id": "2070443601311540",
        "x-goog-pubsub-publish-time": "2021-02-26T19:13:55.749Z",
        "x-goog-pubsub-ordering-key": "k",
        "Content-Type": "application/json",
    }


def test_fields_from_client_message() -> None:
    raw = SimpleNamespace(publish_time=SimpleNamespace(seconds=SECONDS, nanos=5))
    m = SimpleNamespace(_message=raw, data=b"x", message_id="7", attributes={"k": "v"},
                        ordering_key="", delivery_attempt=None,
                        publish_time=dt.datetime.fromtimestamp(SECONDS, tz=dt.timezone.utc))
    f = fields_from_message(m)
    assert f == MessageFields(data=b"x", message_id="7", publish_seconds=SECONDS,
                              publish_nanos=5, attributes={"k": "v"})


def test_attributes_that_cannot_be_headers_are_left_out() -> None:
    req = build_request(msg(attributes={"ok": "1", "bad name": "x", "multi": "a\nb",
                                        "wide": "\u20ac"}), SUB, "unwrapped",
                        write_metadata=True)
    assert req.headers["ok"] == "1"
    assert not {"bad name", "multi", "wide"} & set(req.headers)


def test_wrapped_attributes_are_sorted_by_name() -> None:
    req = build_request(msg(attributes={"b": "2", "a": "1", "c": "3"}), SUB)
    assert list(json.loads(req.body)["message"]["attributes"]) == ["a", "b", "c"]

