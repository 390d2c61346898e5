"""Native push's request bodies (pubsub_emulator.push.request) are push_contract's, byte for byte.

The emulator writes the wrapped envelope itself for speed; push_contract (shared with the push
worker and the python27 apps) stays the reference, so every case is built both ways.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from google.pubsub_v1 import types as t

from pubsub_emulator.push.request import PublishTimes, push_request
from push_contract import MessageFields, build_request, format_timestamp

SUB = "projects/p/subscriptions/sub-1"


def received(delivery_attempt: int = 0, **message: Any) -> Any:
    return t.ReceivedMessage.pb()(ack_id="1-2-1", delivery_attempt=delivery_attempt,
                                  message=t.PubsubMessage.pb()(**message))


def subscription(**push_config: Any) -> Any:
    return t.Subscription.pb()(name=SUB, topic="projects/p/topics/t", push_config=push_config)


def reference(sub: Any, rm: Any) -> tuple[bytes, dict[str, str]]:
    """What the pusher sent when it built every request through push_contract."""
    m = rm.message
    fields = MessageFields(
        data=bytes(m.data), message_id=m.message_id, publish_seconds=m.publish_time.seconds,
        publish_nanos=m.publish_time.nanos, attributes=dict(m.attributes),
        ordering_key=m.ordering_key, delivery_attempt=rm.delivery_attempt or None)
    config = sub.push_config
    if config.HasField("no_wrapper"):
        request = build_request(fields, sub.name, "unwrapped", config.no_wrapper.write_metadata)
    else:
        request = build_request(fields, sub.name)
    return request.body, {**request.headers, "User-Agent": "CloudPubSub-Google"}


DATAS = [b"", b"hello push", b"\x00\xff" * 700, "ünïcode ✓".encode()]
ATTRIBUTES = [{}, {"b": "two", "a": "1"}, {"q\"uote": "line\nbreak\t\u2028", "é": "✓ \\"}]
ORDERING_KEYS = ["", "k1", "ключ \"x\""]
TIMES = [(1_700_000_000, 0), (1_700_000_000, 123_000_000), (1_700_000_001, 123_456_000),
         (1_700_000_001, 123_456_789), (0, 1), (253_402_300_799, 999_999_999)]


@pytest.mark.parametrize("data, attributes, ordering_key", list(itertools.product(
    DATAS, ATTRIBUTES, ORDERING_KEYS)))
def test_wrapped_bodies_are_push_contracts(data, attributes, ordering_key):
    for (seconds, nanos), attempt in itertools.product(TIMES, (0, 1, 7)):
        rm = received(attempt, data=data, attributes=attributes, ordering_key=ordering_key,
                      message_id="12345", publish_time={"seconds": seconds, "nanos": nanos})
        for config in ({"push_endpoint": "http://h/p"},
                       {"push_endpoint": "http://h/p", "attributes": {"x-goog-version": "v1"}}):
            sub = subscription(**config)
            assert push_request(sub, rm) == reference(sub, rm)


@pytest.mark.parametrize("write_metadata", [False, True])
def test_unwrapped_requests_are_push_contracts(write_metadata):
    sub = subscription(push_endpoint="http://h/p",
                       no_wrapper={"write_metadata": write_metadata})
    for attributes, ordering_key in itertools.product(ATTRIBUTES, ORDERING_KEYS):
        rm = received(3, data=b"raw \x00", attributes=attributes, ordering_key=ordering_key,
                      message_id="9", publish_time={"seconds": 1_700_000_000, "nanos": 5})
        assert push_request(sub, rm) == reference(sub, rm)


def test_publish_times_follow_the_second_they_are_in():
    times = PublishTimes()
    for seconds, nanos in TIMES + list(reversed(TIMES)):
        assert times.text(seconds, nanos) == format_timestamp(seconds, nanos)
