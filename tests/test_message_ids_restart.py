"""Message ids never repeat across restarts of a real emulator process, on either store.

The emulator is stopped with SIGKILL (a crash: nothing runs on the way out) or SIGTERM (a clean
stop), restarted on the same data directory (SQLite) or the same nats-server (JetStream), and
published to again through Google's client. A topic without subscriptions is the case that
once repeated ids: a publish there stores no message, so nothing used to record its ids.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from clients import make_clients, unique
from support import EmulatorProcess

ROUNDS = 3  # two restarts
PER_ROUND = 5


@pytest.fixture(params=["sqlite", "nats"])
def store_args(request) -> list[str]:
    if request.param == "nats":
        return ["--store", request.getfixturevalue("nats_server").url]
    return []


def _publish(publisher, topic: str, count: int) -> list[str]:
    futures = [publisher.publish(topic, b"message %d" % i) for i in range(count)]
    return [future.result(timeout=30) for future in futures]


def _pull_ids(subscriber, subscription: str, count: int) -> list[str]:
    """Ids of `count` messages pulled from the subscription (acked as they come)."""
    ids: list[str] = []
    for _ in range(50):
        response = subscriber.pull(subscription=subscription, max_messages=100, timeout=30)
        ids += [m.message.message_id for m in response.received_messages]
        if response.received_messages:
            subscriber.acknowledge(subscription=subscription,
                                   ack_ids=[m.ack_id for m in response.received_messages])
        if len(ids) >= count:
            break
    return ids


@pytest.mark.parametrize("stop", ["sigkill", "sigterm"])
def test_message_ids_never_repeat_across_restarts(store_args: list[str], stop: str,
                                                   tmp_path: Path) -> None:
    project = unique("ids")
    lonely = f"projects/{project}/topics/lonely"  # no subscription: nothing is stored
    fed = f"projects/{project}/topics/fed"
    subscription = f"projects/{project}/subscriptions/sub"
    ids: dict[str, list[str]] = {lonely: [], fed: []}
    delivered: list[str] = []
    for round_ in range(ROUNDS):
        emulator = EmulatorProcess(data_dir=tmp_path / "data", extra_args=store_args).start()
        publisher, subscriber = make_clients(emulator.host, "grpc")
        try:
            if round_ == 0:
                publisher.create_topic(name=lonely)
                publisher.create_topic(name=fed)
                subscriber.create_subscription(name=subscription, topic=fed)
            # The lonely topic first and last: the last ids before a restart are ones nothing
            # stored, and the first after it go to the same topic.
            for topic in (lonely, fed, lonely):
                ids[topic] += _publish(publisher, topic, PER_ROUND)
            if round_ == ROUNDS - 1:  # what was published before the restarts is still there
                delivered = _pull_ids(subscriber, subscription, len(ids[fed]))
        finally:
            publisher.stop()
            subscriber.close()
            if stop == "sigkill":
                emulator.kill()
            emulator.stop()
    for topic, got in ids.items():
        assert len(got) == ROUNDS * PER_ROUND * (2 if topic == lonely else 1)
        assert len(set(got)) == len(got), f"ids repeated on {topic}: {got}"
    assert sorted(delivered) == sorted(ids[fed])
