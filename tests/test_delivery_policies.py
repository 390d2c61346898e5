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


def _ordered_publisher(host):
    import os

    from google.cloud import pubsub_v1

    os.environ["PUBSUB_EMULATOR_HOST"] = host
    return pubsub_v1.PublisherClient(
        publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True))


def test_ordering_key_waits_for_earlier_and_nack_redelivers_in_order(clients):
    publisher, subscriber = clients
    topic = publisher.create_topic(name=f"projects/{P}/topics/{unique('t')}").name
    sub = subscriber.create_subscription(request={
        "name": f"projects/{P}/subscriptions/{unique('s')}", "topic": topic,
        "enable_message_ordering": True}).name
    publisher.api.publish(topic=topic, messages=[
        {"data": b"a1", "ordering_key": "a"}, {"data": b"a2", "ordering_key": "a"},
        {"data": b"b1", "ordering_key": "b"}])
    first = subscriber.pull(subscription=sub, max_messages=1).received_messages
    assert [m.message.data for m in first] == [b"a1"]
    # a2 waits while a1 is outstanding; b1 does not.
    [b1] = _pull(subscriber, sub)
    assert b1.message.data == b"b1"
    assert _pull(subscriber, sub) == []
    subscriber.acknowledge(subscription=sub, ack_ids=[first[0].ack_id])
    [a2] = wait_for(lambda: _pull(subscriber, sub), timeout=15, message="a2 after a1's ack")
    assert a2.message.data == b"a2" and a2.message.ordering_key == "a"

    publisher.api.publish(topic=topic, messages=[
        {"data": b"c1", "ordering_key": "c"}, {"data": b"c2", "ordering_key": "c"},
        {"data": b"c3", "ordering_key": "c"}])
    batch = wait_for(lambda: [m for m in _pull(subscriber, sub) if m.message.ordering_key == "c"],
                     timeout=15, message="the c messages")
    assert [m.message.data for m in batch] == [b"c1", b"c2", b"c3"]
    # Nacking c1 brings c2 and c3 back with it, in order.
    subscriber.modify_ack_deadline(subscription=sub, ack_ids=[batch[0].ack_id],
                                   ack_deadline_seconds=0)
    again = wait_for(lambda: _pull(subscriber, sub), timeout=15, message="the redelivery")
    assert [m.message.data for m in again] == [b"c1", b"c2", b"c3"]


def test_ordered_publishing_and_streaming_receive_keep_order_per_key(emulator):
    import threading

    publisher = _ordered_publisher(emulator.host)
    _, subscriber = make_clients(emulator.host, "grpc")
    topic = publisher.create_topic(name=f"projects/{P}/topics/{unique('t')}").name
    sub = subscriber.create_subscription(request={
        "name": f"projects/{P}/subscriptions/{unique('s')}", "topic": topic,
        "enable_message_ordering": True}).name
    keys = ("k1", "k2", "k3")
    futures = [publisher.publish(topic, f"{key}:{i}".encode(), ordering_key=key)
               for i in range(60) for key in keys]
    for f in futures:
        f.result()
    received: dict[str, list[int]] = {key: [] for key in keys}
    lock = threading.Lock()

    def callback(message):
        key, index = message.data.decode().split(":")
        with lock:
            received[key].append(int(index))
        message.ack()

    future = subscriber.subscribe(sub, callback)
    try:
        wait_for(lambda: all(len(v) >= 60 for v in received.values()), timeout=30,
                 message="every message")
    finally:
        future.cancel()
    for key in keys:
        assert received[key] == list(range(60)), key


def test_ordered_publisher_resumes_after_an_error(emulator):
    from google.api_core import exceptions
    from google.cloud.pubsub_v1.publisher import exceptions as publish_errors

    publisher = _ordered_publisher(emulator.host)
    topic = f"projects/{P}/topics/{unique('later')}"
    with pytest.raises(exceptions.NotFound):
        publisher.publish(topic, b"too early", ordering_key="k").result(timeout=30)
    # The key is paused after the failure, as Google's client does...
    with pytest.raises(publish_errors.PublishToPausedOrderingKeyException):
        publisher.publish(topic, b"still paused", ordering_key="k").result(timeout=30)
    publisher.create_topic(name=topic)
    publisher.resume_publish(topic, "k")  # ...until the application resumes it.
    assert publisher.publish(topic, b"resumed", ordering_key="k").result(timeout=30)


def _eod_subscription(publisher, subscriber):
    topic = publisher.create_topic(name=f"projects/{P}/topics/{unique('t')}").name
    sub = subscriber.create_subscription(request={
        "name": f"projects/{P}/subscriptions/{unique('s')}", "topic": topic,
        "enable_exactly_once_delivery": True}).name
    return topic, sub


def test_exactly_once_ack_ids_expire_with_their_lease(clients):
    from google.api_core import exceptions

    publisher, subscriber = clients
    topic, sub = _eod_subscription(publisher, subscriber)
    publisher.publish(topic, b"once").result()
    [first] = wait_for(lambda: _pull(subscriber, sub), timeout=15, message="a delivery")
    subscriber.modify_ack_deadline(subscription=sub, ack_ids=[first.ack_id],
                                   ack_deadline_seconds=0)
    [second] = wait_for(lambda: _pull(subscriber, sub), timeout=15, message="the redelivery")
    with pytest.raises(exceptions.BadRequest) as info:
        subscriber.acknowledge(subscription=sub, ack_ids=[first.ack_id])
    assert info.value.reason == "EXACTLY_ONCE_ACKID_FAILURE"
    assert info.value.metadata == {first.ack_id: "PERMANENT_FAILURE_INVALID_ACK_ID"}
    subscriber.acknowledge(subscription=sub, ack_ids=[second.ack_id])
    # Acked is final: a second ack of the same id fails, and nothing comes back.
    with pytest.raises(exceptions.BadRequest):
        subscriber.acknowledge(subscription=sub, ack_ids=[second.ack_id])
    with pytest.raises(exceptions.BadRequest):
        subscriber.modify_ack_deadline(subscription=sub, ack_ids=[second.ack_id],
                                       ack_deadline_seconds=30)
    assert _pull(subscriber, sub) == []


def test_exactly_once_ack_with_response_through_the_client(emulator):
    import threading

    from google.cloud.pubsub_v1.subscriber import exceptions as sub_errors

    publisher, subscriber = make_clients(emulator.host, "grpc")
    topic, sub = _eod_subscription(publisher, subscriber)
    publisher.publish(topic, b"exactly once").result()
    seen: list = []
    outcome: dict[str, object] = {}
    done = threading.Event()

    def callback(message):
        seen.append(message)
        if len(seen) == 1:
            message.nack()  # comes back with a new ack id; this one is then stale
            return
        try:
            seen[0].ack_with_response().result(timeout=30)
        except sub_errors.AcknowledgeError as exc:
            outcome["stale"] = exc.error_code
        outcome["current"] = message.ack_with_response().result(timeout=30)
        done.set()

    future = subscriber.subscribe(sub, callback)
    try:
        assert done.wait(30), "no redelivery after the nack"
    finally:
        future.cancel()
    assert outcome["stale"] == sub_errors.AcknowledgeStatus.INVALID_ACK_ID
    assert outcome["current"] == sub_errors.AcknowledgeStatus.SUCCESS
    assert _pull(subscriber, sub) == []


def test_exactly_once_streaming_pull_confirms_acks(emulator):
    import queue
    import threading

    from google.pubsub_v1 import types

    publisher, subscriber = make_clients(emulator.host, "grpc")
    topic, sub = _eod_subscription(publisher, subscriber)
    publisher.publish(topic, b"confirm me").result()
    outbox: queue.Queue = queue.Queue()
    stop = threading.Event()

    def requests():
        yield types.StreamingPullRequest(subscription=sub, stream_ack_deadline_seconds=60)
        while not stop.is_set():
            try:
                yield outbox.get(timeout=0.05)
            except queue.Empty:
                continue

    stream = subscriber.api.streaming_pull(requests=requests())
    try:
        first = next(stream)
        assert first.subscription_properties.exactly_once_delivery_enabled
        [m] = first.received_messages
        outbox.put(types.StreamingPullRequest(ack_ids=[m.ack_id, "1-1-1"]))
        confirmation = next(stream)
        assert list(confirmation.acknowledge_confirmation.ack_ids) == [m.ack_id]
        assert list(confirmation.acknowledge_confirmation.invalid_ack_ids) == ["1-1-1"]
    finally:
        stop.set()
        stream.cancel()


def test_retained_acked_messages_replay_on_seek_to_time(clients):
    import datetime

    publisher, subscriber = clients
    topic = publisher.create_topic(name=f"projects/{P}/topics/{unique('t')}").name
    sub = subscriber.create_subscription(request={
        "name": f"projects/{P}/subscriptions/{unique('s')}", "topic": topic,
        "retain_acked_messages": True}).name
    before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    publisher.publish(topic, b"kept after ack").result()
    [m] = wait_for(lambda: _pull(subscriber, sub), timeout=15, message="a delivery")
    subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id])
    assert _pull(subscriber, sub) == []
    subscriber.seek(request={"subscription": sub, "time": before})
    [again] = wait_for(lambda: _pull(subscriber, sub), timeout=15, message="the replay")
    assert again.message.data == b"kept after ack"


def test_topic_retention_lets_a_new_subscription_seek_back(clients):
    import datetime

    publisher, subscriber = clients
    topic = publisher.create_topic(request={
        "name": f"projects/{P}/topics/{unique('t')}",
        "message_retention_duration": {"seconds": 600}}).name
    before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    publisher.publish(topic, b"from before the subscription").result()
    sub = subscriber.create_subscription(name=f"projects/{P}/subscriptions/{unique('s')}",
                                         topic=topic).name
    assert _pull(subscriber, sub) == []  # it starts at its creation...
    subscriber.seek(request={"subscription": sub, "time": before})  # ...the topic kept more
    [m] = wait_for(lambda: _pull(subscriber, sub), timeout=15, message="the retained message")
    assert m.message.data == b"from before the subscription"
