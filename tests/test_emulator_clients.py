"""The emulator through Google's own client libraries: google-cloud-pubsub over gRPC and over its
REST transport, and google-api-python-client's discovery client (what the App Engine apps use)."""

from __future__ import annotations

import base64
import datetime
import os
import threading
import time

import pytest
from google.api_core import exceptions
from google.cloud import pubsub_v1
from google.protobuf import field_mask_pb2

from clients import TRANSPORTS, discovery_client, gapic_clients, make_clients, unique
from support import wait_for

PROJECT = "test-project"


@pytest.fixture(params=TRANSPORTS)
def clients(request, emulator):
    publisher, subscriber = make_clients(emulator.host, request.param)
    yield publisher, subscriber
    if request.param == "grpc":  # the REST transport has no channel to close
        subscriber.close()


def _topic(publisher, **kwargs):
    name = publisher.topic_path(PROJECT, unique("topic"))
    return publisher.create_topic(request={"name": name, **kwargs})


def _subscription(subscriber, topic, **kwargs):
    name = subscriber.subscription_path(PROJECT, unique("sub"))
    return subscriber.create_subscription(request={"name": name, "topic": topic, **kwargs})


def test_topic_lifecycle(clients):
    publisher, _ = clients
    project = unique("proj")
    names = sorted(publisher.topic_path(project, f"topic-{i}") for i in range(3))
    for name in names:
        created = publisher.create_topic(request={"name": name, "labels": {"team": "a"}})
        assert created.name == name and created.labels["team"] == "a"
    assert publisher.get_topic(topic=names[0]).name == names[0]

    pages = publisher.list_topics(request={"project": f"projects/{project}", "page_size": 2})
    assert [t.name for t in pages] == names  # the pager follows next_page_token
    first = next(iter(publisher.list_topics(
        request={"project": f"projects/{project}", "page_size": 2}).pages))
    assert len(first.topics) == 2 and first.next_page_token

    updated = publisher.update_topic(request={
        "topic": {"name": names[0], "labels": {"team": "b"}},
        "update_mask": field_mask_pb2.FieldMask(paths=["labels"])})
    assert dict(updated.labels) == {"team": "b"}
    assert dict(publisher.get_topic(topic=names[0]).labels) == {"team": "b"}

    with pytest.raises(exceptions.Conflict):
        publisher.create_topic(name=names[0])
    publisher.delete_topic(topic=names[0])
    with pytest.raises(exceptions.NotFound):
        publisher.get_topic(topic=names[0])


def test_subscription_lifecycle(clients):
    publisher, subscriber = clients
    topic = _topic(publisher).name
    sub = _subscription(subscriber, topic)
    assert sub.ack_deadline_seconds == 10  # Google's default
    assert sub.message_retention_duration.total_seconds() == 7 * 24 * 3600
    assert subscriber.get_subscription(subscription=sub.name).topic == topic

    others = [_subscription(subscriber, topic).name for _ in range(2)]
    listed = list(publisher.list_topic_subscriptions(request={"topic": topic, "page_size": 1}))
    assert listed == sorted([sub.name, *others])
    in_project = [s.name for s in subscriber.list_subscriptions(
        request={"project": f"projects/{PROJECT}", "page_size": 2})]
    assert {sub.name, *others} <= set(in_project)

    updated = subscriber.update_subscription(request={
        "subscription": {"name": sub.name, "ack_deadline_seconds": 42},
        "update_mask": field_mask_pb2.FieldMask(paths=["ack_deadline_seconds"])})
    assert updated.ack_deadline_seconds == 42
    subscriber.modify_push_config(request={
        "subscription": sub.name, "push_config": {"push_endpoint": "http://127.0.0.1:9/push"}})
    assert subscriber.get_subscription(
        subscription=sub.name).push_config.push_endpoint == "http://127.0.0.1:9/push"

    publisher.detach_subscription(request={"subscription": others[0]})
    assert subscriber.get_subscription(subscription=others[0]).detached
    with pytest.raises(exceptions.BadRequest):
        subscriber.pull(subscription=others[0], max_messages=1, return_immediately=True)

    publisher.delete_topic(topic=topic)
    assert subscriber.get_subscription(subscription=sub.name).topic == "_deleted-topic_"
    subscriber.delete_subscription(subscription=sub.name)
    with pytest.raises(exceptions.NotFound):
        subscriber.get_subscription(subscription=sub.name)


def test_publish_with_attributes_pull_and_ack(clients):
    publisher, subscriber = clients
    topic = _topic(publisher).name
    sub = _subscription(subscriber, topic).name
    message_id = publisher.publish(topic, b"\x00binary\xff", origin="test", n="1").result()
    response = subscriber.pull(subscription=sub, max_messages=10)
    [received] = response.received_messages
    assert received.message.data == b"\x00binary\xff"
    assert dict(received.message.attributes) == {"origin": "test", "n": "1"}
    assert received.message.message_id == message_id
    assert received.message.publish_time.timestamp() > 0
    subscriber.acknowledge(subscription=sub, ack_ids=[received.ack_id])
    assert not subscriber.pull(subscription=sub, max_messages=10,
                               return_immediately=True).received_messages


def test_pull_honours_max_messages(clients):
    publisher, subscriber = clients
    topic = _topic(publisher).name
    sub = _subscription(subscriber, topic).name
    for f in [publisher.publish(topic, f"m{i}".encode()) for i in range(7)]:
        f.result()
    got = subscriber.pull(subscription=sub, max_messages=3).received_messages
    assert len(got) == 3


def test_nack_redelivers_at_once_and_modack_extends(clients):
    publisher, subscriber = clients
    topic = _topic(publisher).name
    sub = _subscription(subscriber, topic).name
    publisher.publish(topic, b"again").result()
    first = subscriber.pull(subscription=sub, max_messages=1).received_messages[0]
    # Leased: not available to another pull.
    assert not subscriber.pull(subscription=sub, max_messages=1,
                               return_immediately=True).received_messages
    subscriber.modify_ack_deadline(subscription=sub, ack_ids=[first.ack_id],
                                   ack_deadline_seconds=0)
    second = subscriber.pull(subscription=sub, max_messages=1).received_messages[0]
    assert second.message.message_id == first.message.message_id
    assert second.ack_id != first.ack_id

    # A short modack makes the lease run out soon: the message comes back once it does.
    subscriber.modify_ack_deadline(subscription=sub, ack_ids=[second.ack_id],
                                   ack_deadline_seconds=1)
    started = time.monotonic()
    third = wait_for(lambda: subscriber.pull(subscription=sub, max_messages=1,
                                             return_immediately=True).received_messages,
                     timeout=15, message="redelivery after the modacked deadline")[0]
    assert third.message.message_id == first.message.message_id
    assert time.monotonic() - started >= 0.5


def test_redelivery_after_ack_deadline_expiry(emulator):
    publisher, subscriber = make_clients(emulator.host, "grpc")
    topic = _topic(publisher).name
    sub = _subscription(subscriber, topic, ack_deadline_seconds=10).name
    publisher.publish(topic, b"expire me").result()
    first = subscriber.pull(subscription=sub, max_messages=1).received_messages[0]
    again = wait_for(lambda: subscriber.pull(subscription=sub, max_messages=1,
                                             return_immediately=True).received_messages,
                     timeout=30, interval=0.5, message="redelivery after 10 s")[0]
    assert again.message.message_id == first.message.message_id


def test_streaming_pull_subscribe_with_callback(emulator):
    publisher, subscriber = make_clients(emulator.host, "grpc")
    topic = _topic(publisher).name
    sub = _subscription(subscriber, topic).name
    sent = {f"msg-{i}".encode() for i in range(300)}
    for f in [publisher.publish(topic, data) for data in sent]:
        f.result()
    received: set[bytes] = set()
    lock = threading.Lock()

    def callback(message):
        with lock:
            received.add(message.data)
        message.ack()

    future = subscriber.subscribe(sub, callback)
    try:
        wait_for(lambda: received == sent, timeout=30, message="all 300 messages")
        # Messages published while the stream is open arrive on it too.
        publisher.publish(topic, b"late").result()
        wait_for(lambda: b"late" in received, timeout=15, message="a message on the open stream")
    finally:
        future.cancel()
        future.result(timeout=10) if not future.cancelled() else None
    # Everything was acked: nothing is left to pull (acks are sent asynchronously: wait).
    wait_for(lambda: not subscriber.pull(subscription=sub, max_messages=10,
                                         return_immediately=True).received_messages,
             timeout=15, message="the backlog to drain")


def test_streaming_pull_flow_control(emulator):
    """The server sends no more than max_outstanding_messages until some are acked."""
    from google.pubsub_v1 import types

    publisher, subscriber = make_clients(emulator.host, "grpc")
    topic = _topic(publisher).name
    sub = _subscription(subscriber, topic).name
    for f in [publisher.publish(topic, f"m{i}".encode()) for i in range(20)]:
        f.result()
    acks: list[list[str]] = []
    ready = threading.Event()
    stop = threading.Event()

    def requests():
        yield types.StreamingPullRequest(subscription=sub, stream_ack_deadline_seconds=60,
                                         max_outstanding_messages=5)
        while not stop.is_set():
            if ready.wait(0.05):
                ready.clear()
                yield types.StreamingPullRequest(ack_ids=acks.pop())

    stream = subscriber.api.streaming_pull(requests=requests())
    try:
        first = next(stream)
        assert len(first.received_messages) == 5
        acks.append([m.ack_id for m in first.received_messages[:2]])
        ready.set()
        second = next(stream)
        assert len(second.received_messages) == 2
    finally:
        stop.set()
        stream.cancel()


def test_streaming_pull_flow_control_by_bytes(emulator):
    from google.pubsub_v1 import types

    publisher, subscriber = make_clients(emulator.host, "grpc")
    topic = _topic(publisher).name
    sub = _subscription(subscriber, topic).name
    for f in [publisher.publish(topic, b"x" * 1000) for _ in range(10)]:
        f.result()

    read = threading.Event()

    def requests():
        yield types.StreamingPullRequest(subscription=sub, stream_ack_deadline_seconds=60,
                                         max_outstanding_bytes=3500)
        read.wait(30)  # keep the stream open until the first response is read

    stream = subscriber.api.streaming_pull(requests=requests())
    try:
        first = next(stream)
        assert 1 <= len(first.received_messages) <= 4
    finally:
        read.set()
        stream.cancel()


def test_a_backlog_of_large_messages_streams_to_the_plain_client(emulator):
    """Under PUBSUB_EMULATOR_HOST the client's channel keeps gRPC's 4 MiB receive limit, and
    its default flow control allows 100 MiB outstanding: responses are cut under 4 MiB (a
    message larger than that goes alone), so a backlog of large messages arrives."""
    publisher, subscriber = make_clients(emulator.host, "grpc")
    topic = _topic(publisher).name
    sub = _subscription(subscriber, topic).name
    sizes = [900_000 + i for i in range(12)]  # 10.8 MB, each message under 4 MiB
    for f in [publisher.publish(topic, bytes([i % 251]) * size) for i, size in enumerate(sizes)]:
        f.result(timeout=60)
    got: dict[int, bytes] = {}
    lock = threading.Lock()

    def callback(message) -> None:
        with lock:
            got[len(message.data)] = message.data[:1]
        message.ack()

    future = subscriber.subscribe(sub, callback)
    try:
        wait_for(lambda: len(got) == len(sizes), timeout=90,
                 message="every large message by streaming pull")
    finally:
        future.cancel()
        subscriber.close()
    assert sorted(got) == sorted(sizes)


def test_snapshots_and_seek(clients):
    publisher, subscriber = clients
    topic = _topic(publisher).name
    sub = _subscription(subscriber, topic).name
    publisher.publish(topic, b"before").result()
    snap_name = subscriber.snapshot_path(PROJECT, unique("snap"))
    snapshot = subscriber.create_snapshot(request={"name": snap_name, "subscription": sub,
                                                   "labels": {"k": "v"}})
    assert snapshot.topic == topic and snapshot.expire_time.timestamp() > time.time()
    assert subscriber.get_snapshot(snapshot=snap_name).name == snap_name
    assert snap_name in [s.name for s in subscriber.list_snapshots(
        request={"project": f"projects/{PROJECT}"})]
    assert list(publisher.list_topic_snapshots(request={"topic": topic})) == [snap_name]
    updated = subscriber.update_snapshot(request={
        "snapshot": {"name": snap_name, "labels": {"k": "w"}},
        "update_mask": field_mask_pb2.FieldMask(paths=["labels"])})
    assert dict(updated.labels) == {"k": "w"}

    [msg] = subscriber.pull(subscription=sub, max_messages=5).received_messages
    subscriber.acknowledge(subscription=sub, ack_ids=[msg.ack_id])
    # Seeking to the snapshot restores its ack state: the message acked since is back.
    subscriber.seek(request={"subscription": sub, "snapshot": snap_name})
    [again] = subscriber.pull(subscription=sub, max_messages=5).received_messages
    assert again.message.data == b"before"
    # Seeking to a time after the publish marks it acknowledged.
    later = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=1)
    subscriber.seek(request={"subscription": sub, "time": later})
    assert not subscriber.pull(subscription=sub, max_messages=5,
                               return_immediately=True).received_messages
    subscriber.delete_snapshot(snapshot=snap_name)
    with pytest.raises(exceptions.NotFound):
        subscriber.get_snapshot(snapshot=snap_name)


def test_discovery_client_end_to_end(emulator):
    api = discovery_client(emulator.host)
    topic = f"projects/{PROJECT}/topics/{unique('disc')}"
    sub = f"projects/{PROJECT}/subscriptions/{unique('disc')}"
    assert api.projects().topics().create(name=topic, body={}).execute()["name"] == topic
    assert api.projects().topics().get(topic=topic).execute()["name"] == topic
    listed = api.projects().topics().list(project=f"projects/{PROJECT}").execute()
    assert topic in [t["name"] for t in listed["topics"]]
    api.projects().subscriptions().create(name=sub, body={"topic": topic}).execute()
    data = base64.b64encode("héllo".encode()).decode()
    ids = api.projects().topics().publish(topic=topic, body={"messages": [
        {"data": data, "attributes": {"a": "1"}}]}).execute()["messageIds"]
    pulled = api.projects().subscriptions().pull(subscription=sub,
                                                 body={"maxMessages": 5}).execute()
    [received] = pulled["receivedMessages"]
    assert received["message"]["messageId"] == ids[0]
    assert base64.b64decode(received["message"]["data"]).decode() == "héllo"
    assert received["message"]["attributes"] == {"a": "1"}
    api.projects().subscriptions().modifyAckDeadline(
        subscription=sub, body={"ackIds": [received["ackId"]], "ackDeadlineSeconds": 30}).execute()
    api.projects().subscriptions().acknowledge(
        subscription=sub, body={"ackIds": [received["ackId"]]}).execute()
    empty = api.projects().subscriptions().pull(
        subscription=sub, body={"maxMessages": 5, "returnImmediately": True}).execute()
    assert empty.get("receivedMessages", []) == []
    api.projects().subscriptions().delete(subscription=sub).execute()
    api.projects().topics().delete(topic=topic).execute()


def test_publisher_client_batches_many_messages(clients):
    publisher, subscriber = clients
    topic = _topic(publisher).name
    sub = _subscription(subscriber, topic).name
    ids = [f.result() for f in [publisher.publish(topic, b"%d" % i) for i in range(500)]]
    assert len(set(ids)) == 500
    seen: set[str] = set()

    def drain():
        for m in subscriber.pull(subscription=sub, max_messages=1000,
                                 return_immediately=True).received_messages:
            seen.add(m.message.message_id)
            subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id])
        return seen == set(ids)

    wait_for(drain, timeout=30, message="all 500 messages pulled")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_messages_and_publish_requests_up_to_10_mb(emulator, transport):
    """Pub/Sub's limits: a 10 MB message, and a 10 MB request of several, pulled whole (on NATS
    too, whose default max_payload is 1 MB). The generated clients, with a gRPC channel that
    takes such responses (the library's own emulator channel stops at 4 MB)."""
    publisher, subscriber = gapic_clients(emulator.host, transport)
    topic = _topic(publisher).name
    sub = _subscription(subscriber, topic).name
    big = os.urandom(9_990_000)
    publisher.publish(topic=topic, messages=[{"data": big, "attributes": {"k": "v"}}])
    several = [os.urandom(1_990_000) for _ in range(5)]
    publisher.publish(topic=topic, messages=[{"data": d} for d in several])
    got: list = []

    def pulled() -> bool:
        got.extend(subscriber.pull(subscription=sub, max_messages=10).received_messages)
        return len(got) >= 6

    wait_for(pulled, timeout=60, message="six large messages")
    assert sorted(m.message.data for m in got) == sorted([big, *several])
    assert [m.message.attributes["k"] for m in got if m.message.data == big] == ["v"]
    subscriber.acknowledge(subscription=sub, ack_ids=[m.ack_id for m in got])


_ = pubsub_v1  # the import documents which library is under test


IDLE_S = 65


def test_idle_streaming_pull_stays_open(emulator):
    """One StreamingPull, silent through several of the client channel's 30 s keepalive
    pings, still delivers what is published afterwards (a closed stream would raise: the
    raw stream below does not reconnect)."""
    from google.pubsub_v1 import types

    publisher, subscriber = make_clients(emulator.host, "grpc")
    topic = _topic(publisher).name
    sub = _subscription(subscriber, topic).name
    stop = threading.Event()

    def requests():
        yield types.StreamingPullRequest(subscription=sub, stream_ack_deadline_seconds=60)
        stop.wait(IDLE_S + 60)  # no heartbeats: the connection stays up on keepalive pings alone

    stream = subscriber.api.streaming_pull(requests=requests())
    result: list = []
    reader = threading.Thread(target=lambda: result.append(next(stream)), daemon=True)
    started = time.monotonic()
    try:
        reader.start()
        # Idle past two keepalive pings of the client channel (every 30 s) and two rounds of
        # the server's own idle wait (30 s).
        wait_for(lambda: time.monotonic() - started > IDLE_S, timeout=IDLE_S + 10,
                 interval=0.5, message=f"{IDLE_S} idle seconds")
        assert not result, "the stream ended or delivered while idle"
        publisher.publish(topic, b"after the lull").result()
        wait_for(lambda: result, timeout=15, message="the message on the idle stream")
        assert [m.message.data for m in result[0].received_messages] == [b"after the lull"]
    finally:
        stop.set()
        stream.cancel()
