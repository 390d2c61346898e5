"""Delivery settings with their Cloud Pub/Sub semantics: dead-letter policy and retry policy."""

from __future__ import annotations

import time

import pytest

from clients import TRANSPORTS, make_clients, unique
from support import wait_for

P = "policy-project"


@pytest.fixture(params=TRANSPORTS)
def clients(request, emulator):
    return make_clients(emulator.host, request.param)


def _pull(subscriber, sub, n=10):
    return subscriber.pull(subscription=sub, max_messages=n, return_immediately=True
                           ).received_messages


def test_dead_letter_after_max_delivery_attempts(clients):
    publisher, subscriber = clients
    topic = publisher.create_topic(name=f"projects/{P}/topics/{unique('t')}").name
    dlt = publisher.create_topic(name=f"projects/{P}/topics/{unique('dlt')}").name
    dlq = subscriber.create_subscription(name=f"projects/{P}/subscriptions/{unique('dlq')}",
                                         topic=dlt).name
    sub_id = unique("s")
    sub = subscriber.create_subscription(request={
        "name": f"projects/{P}/subscriptions/{sub_id}", "topic": topic,
        "dead_letter_policy": {"dead_letter_topic": dlt, "max_delivery_attempts": 5}}).name
    published_id = publisher.publish(topic, b"poison", origin="test").result()
    attempts = []
    for _ in range(5):
        [m] = wait_for(lambda: _pull(subscriber, sub), timeout=15, message="a delivery")
        attempts.append(m.delivery_attempt)
        subscriber.modify_ack_deadline(subscription=sub, ack_ids=[m.ack_id],
                                       ack_deadline_seconds=0)
    assert attempts == [1, 2, 3, 4, 5]
    # The sixth attempt does not happen: the message goes to the dead-letter topic instead.
    assert _pull(subscriber, sub) == []
    [dead] = wait_for(lambda: _pull(subscriber, dlq), timeout=15, message="the dead letter")
    assert dead.message.data == b"poison"
    attrs = dict(dead.message.attributes)
    assert attrs["origin"] == "test"
    assert attrs["CloudPubSubDeadLetterSourceDeliveryCount"] == "5"
    assert attrs["CloudPubSubDeadLetterSourceSubscription"] == sub_id
    assert attrs["CloudPubSubDeadLetterSourceSubscriptionProject"] == P
    assert attrs["CloudPubSubDeadLetterSourceTopicPublishTime"].endswith("Z")
    assert dead.message.message_id != published_id
    assert _pull(subscriber, sub) == []  # acked on the source


def test_no_delivery_attempt_without_dead_letter_policy(clients):
    publisher, subscriber = clients
    topic = publisher.create_topic(name=f"projects/{P}/topics/{unique('t')}").name
    sub = subscriber.create_subscription(name=f"projects/{P}/subscriptions/{unique('s')}",
                                         topic=topic).name
    publisher.publish(topic, b"x").result()
    [m] = wait_for(lambda: _pull(subscriber, sub), timeout=15, message="a delivery")
    assert m.delivery_attempt == 0  # unset, as Google leaves it


def test_retry_policy_delays_redelivery_after_nack(clients):
    publisher, subscriber = clients
    topic = publisher.create_topic(name=f"projects/{P}/topics/{unique('t')}").name
    sub = subscriber.create_subscription(request={
        "name": f"projects/{P}/subscriptions/{unique('s')}", "topic": topic,
        "retry_policy": {"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 2}},
    }).name
    publisher.publish(topic, b"later").result()
    nacked_at: list[float] = []
    gaps: list[float] = []
    for _ in range(3):
        [m] = wait_for(lambda: _pull(subscriber, sub), timeout=15, interval=0.05,
                       message="a delivery")
        if nacked_at:
            gaps.append(time.monotonic() - nacked_at[-1])
        subscriber.modify_ack_deadline(subscription=sub, ack_ids=[m.ack_id],
                                       ack_deadline_seconds=0)
        nacked_at.append(time.monotonic())
        # Right after the nack the message is held back by the policy's backoff.
        assert _pull(subscriber, sub) == []
    # Attempt 1 waits the minimum (1 s), attempt 2 twice that, capped at the maximum (2 s).
    assert gaps[0] >= 0.9 and gaps[1] >= 1.9, gaps


def test_filter_delivers_only_matching_messages(clients):
    from google.api_core import exceptions

    publisher, subscriber = clients
    topic = publisher.create_topic(name=f"projects/{P}/topics/{unique('t')}").name
    reds = subscriber.create_subscription(request={
        "name": f"projects/{P}/subscriptions/{unique('red')}", "topic": topic,
        "filter": 'attributes.color = "red" AND NOT attributes:draft'}).name
    everything = subscriber.create_subscription(
        name=f"projects/{P}/subscriptions/{unique('all')}", topic=topic).name
    for data, attrs in [(b"r1", {"color": "red"}), (b"b1", {"color": "blue"}), (b"n1", {}),
                        (b"r2", {"color": "red", "draft": ""}), (b"r3", {"color": "red"})]:
        publisher.publish(topic, data, **attrs).result()
    got: list[bytes] = []

    def drain(sub, into):
        for m in _pull(subscriber, sub, 100):
            into.append(m.message.data)
            subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id])
        return len(into)

    wait_for(lambda: drain(reds, got) >= 2, timeout=15, message="the matching messages")
    assert sorted(got) == [b"r1", b"r3"]
    all_got: list[bytes] = []
    wait_for(lambda: drain(everything, all_got) >= 5, timeout=15, message="every message")
    # Non-matching messages were never delivered to the filtered subscription: nothing left.
    assert _pull(subscriber, reds) == []
    with pytest.raises(exceptions.BadRequest) as info:
        subscriber.create_subscription(request={
            "name": f"projects/{P}/subscriptions/{unique('bad')}", "topic": topic,
            "filter": 'attributes.a = "x" AND attributes.b = "y" OR attributes.c = "z"'})
    assert "filter" in str(info.value).lower()
