"""IAM across processes (issue "IAM: policies served and enforced": "revocation takes effect on
the next call, also across two processes on NATS"): two real emulator processes with
`--tls-self-signed --auth` on one real nats-server, Google's Python client (gRPC and REST)
talking to both with keys made by `keys create --store nats://...` (keys live in the store, so
both processes know them).

A policy written through one process reaches the other as the store's change notice of the
policy kind, which drops the other's cached decisions (iam/enforce.py): asynchronously, so the
tests wait for the first call that shows the change, with a deadline (`HEARD_WITHIN`), then
require every following call to agree (no flip-back). Each wait is also bounded by the decision
cache's lifetime (CACHE_TTL_S, the backstop for changes no notice reports): the change shows
while the cached decision it replaces was still valid, so the notice did it, not the expiry.
Observed (loaded 2-core machine, several runs): the notice always crossed before the write's
reply and the next call to the other process did, so that first call already showed the change
(one poll; 5-130 ms from the write's reply to that call's answer), far inside both bounds.

Process one and process two each make their own local CA in their data dir (DATA_DIR/tls/
ca.pem); the gRPC clients trust the CA of the process they talk to, the REST clients (requests)
a bundle of both (REQUESTS_CA_BUNDLE).

Needs `nats-server` (apt-get install nats-server), as tests/test_nats_backend.py: without it
these tests fail, saying so (the session's `nats_server` fixture).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.pubsub_v1.types import StreamingPullRequest

from clients import unique
from pubsub_emulator.iam.enforce import CACHE_TTL_S
from support import wait_for
from test_tls_auth import SecureEmulator, clients, close, keys_cli

P = "revoke-proj"
ADMIN = f"admin@{P}.iam.gserviceaccount.com"  # keys create --admin: IAM not consulted
MEMBER = f"member@{P}.iam.gserviceaccount.com"  # no role: publishes once granted on a topic
READER = f"reader@{P}.iam.gserviceaccount.com"  # no role: pulls once granted on a subscription
NOT_AUTHORIZED = "User not authorized to perform this action."
HEARD_WITHIN = 30.0  # seconds a change may take to reach the other process before we fail
CONSUME = "pubsub.subscriptions.consume"


@dataclass
class Pair:
    """Two --auth emulator processes on one NATS store, and the key files of the callers."""

    one: SecureEmulator
    two: SecureEmulator
    keys: dict[str, Path]  # by email
    bundle: Path  # both processes' CAs, for REST


@pytest.fixture(scope="module")
def pair(nats_server, tmp_path_factory) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("iam-revocation")
    store = ["--store", nats_server.url]
    args = [*store, "--tls-self-signed", "--auth"]
    with SecureEmulator(data_dir=base / "one", extra_args=args) as one, \
            SecureEmulator(data_dir=base / "two", extra_args=args) as two:
        keys = {}
        for email, extra in ((ADMIN, ["--admin"]), (MEMBER, []), (READER, [])):
            out = base / f"{email.partition('@')[0]}.json"
            done = keys_cli("create", email, "--out", str(out), *store,
                            "--url", f"https://{one.host}", *extra)
            assert done.returncode == 0, done.stderr
            keys[email] = out
        bundle = base / "both-cas.pem"
        bundle.write_bytes(one.ca.read_bytes() + two.ca.read_bytes())
        yield Pair(one, two, keys, bundle)


@pytest.fixture(autouse=True)
def tls_env(monkeypatch, pair) -> None:
    """The clients must not see PUBSUB_EMULATOR_HOST (they would drop TLS and credentials);
    REST's requests trusts both processes' CAs."""
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pair.bundle))


def refused(call: Callable[[], object], transport: str = "grpc") -> bool:
    """True if `call` is refused as PERMISSION_DENIED (REST: 403, of which PermissionDenied is
    the gRPC kind), False if it succeeds; any other error fails the test."""
    try:
        call()
    except exceptions.Forbidden as e:
        if transport == "grpc":
            assert isinstance(e, exceptions.PermissionDenied), repr(e)
        assert e.message.endswith(NOT_AUTHORIZED), e.message
        return True
    return False


def heard(condition: Callable[[], bool], what: str) -> float:
    """Poll `condition` (a call to the other process) until it holds; the seconds it took."""
    started = time.monotonic()
    wait_for(condition, timeout=HEARD_WITHIN, interval=0.01, message=what)
    return time.monotonic() - started


def policy(role: str | None = None, member: str = "") -> dict[str, Any]:
    bindings = [{"role": role, "members": [f"serviceAccount:{member}"]}] if role else []
    return {"bindings": bindings}


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_a_grant_and_its_revocation_reach_the_other_process(pair, transport):
    admin_one, _ = clients(pair.one, transport, pair.keys[ADMIN])
    admin_two, _ = clients(pair.two, transport, pair.keys[ADMIN])
    member_one, _ = clients(pair.one, transport, pair.keys[MEMBER])
    member_two, _ = clients(pair.two, transport, pair.keys[MEMBER])
    topic = f"projects/{P}/topics/{unique('t')}"
    admin_one.create_topic(name=topic)

    def publish_one() -> object:
        return member_one.publish(topic, b"one").result(timeout=30)

    def publish_two() -> object:
        return member_two.publish(topic, b"two").result(timeout=30)

    assert refused(publish_one, transport)
    denied_since = time.monotonic()  # TWO's cached refusal, made below, is valid until TTL
    assert refused(publish_two, transport)

    # A grant through ONE: ONE applies it at once, TWO once it hears of it.
    admin_one.set_iam_policy(request={"resource": topic, "policy": policy(
        "roles/pubsub.publisher", MEMBER)})
    granted_at = time.monotonic()  # ONE's cached decisions from here on are valid until TTL
    assert not refused(publish_one, transport)
    grant_took = heard(lambda: not refused(publish_two, transport),
                       "process two to hear the grant made through process one")
    assert time.monotonic() - denied_since < CACHE_TTL_S, "the grant showed by cache expiry"

    # A revocation through TWO: TWO applies it at once, ONE once it hears of it; no flip-back.
    admin_two.set_iam_policy(request={"resource": topic, "policy": policy()})
    assert refused(publish_two, transport)
    revoke_took = heard(lambda: refused(publish_one, transport),
                        "process one to hear the revocation made through process two")
    assert time.monotonic() - granted_at < CACHE_TTL_S, "the revocation showed by cache expiry"
    for _ in range(20):
        assert refused(publish_one, transport)
        assert refused(publish_two, transport)
    print(f"{transport}: grant heard in {grant_took * 1e3:.0f} ms, "
          f"revocation in {revoke_took * 1e3:.0f} ms")


class Stream:
    """A StreamingPull of Google's generated client whose requests the test sends one by one
    (the high-level subscriber sends acks and modacks as unary calls, and on its stream only a
    heartbeat every 30 s: too rare to test with). Responses are read by a thread; the error
    that ends the stream is kept."""

    def __init__(self, subscriber: Any, subscription: str) -> None:
        self.requests: queue.Queue[StreamingPullRequest | None] = queue.Queue()
        self.ack_ids: list[str] = []
        self.error: BaseException | None = None
        self.ended = threading.Event()
        first = StreamingPullRequest(subscription=subscription, stream_ack_deadline_seconds=60)
        self.responses = subscriber.api.streaming_pull(requests=self._send(first))
        threading.Thread(target=self._read, daemon=True).start()

    def _send(self, first: StreamingPullRequest) -> Iterator[StreamingPullRequest]:
        yield first
        while (request := self.requests.get()) is not None:
            yield request

    def _read(self) -> None:
        try:
            for response in self.responses:
                self.ack_ids += [m.ack_id for m in response.received_messages]
        except BaseException as e:  # noqa: BLE001 - what ended the stream, for the test
            self.error = e
        finally:
            self.ended.set()

    def close(self) -> None:
        self.requests.put(None)
        self.responses.cancel()


def test_a_streaming_pull_ends_at_its_next_request_after_a_revocation_elsewhere(pair):
    admin, admin_sub = clients(pair.one, "grpc", pair.keys[ADMIN])
    _, reader_two = clients(pair.two, "grpc", pair.keys[READER])
    topic, sub = f"projects/{P}/topics/{unique('t')}", f"projects/{P}/subscriptions/{unique('s')}"
    admin.create_topic(name=topic)
    admin_sub.create_subscription(name=sub, topic=topic)

    def holds_consume() -> bool:  # what process two decides for the reader (no state changed)
        return list(reader_two.test_iam_permissions(
            request={"resource": sub, "permissions": [CONSUME]}).permissions) == [CONSUME]

    admin_sub.set_iam_policy(request={"resource": sub, "policy": policy(
        "roles/pubsub.subscriber", READER)})
    heard(holds_consume, "process two to hear the grant on the subscription")
    stream = Stream(reader_two, sub)
    try:
        admin.publish(topic, b"provokes traffic").result(timeout=30)
        wait_for(lambda: stream.ack_ids or stream.ended.is_set(), timeout=30,
                 message="the message on the stream")
        assert stream.ack_ids, f"the stream ended: {stream.error!r}"

        admin_sub.set_iam_policy(request={"resource": sub, "policy": policy()})
        took = heard(lambda: not holds_consume(), "process two to hear the revocation")
        # A stream is checked at each request it sends, not cut by the revocation itself.
        assert not stream.ended.is_set(), f"ended before its next request: {stream.error!r}"
        stream.requests.put(StreamingPullRequest(modify_deadline_ack_ids=stream.ack_ids[:1],
                                                 modify_deadline_seconds=[10]))
        assert stream.ended.wait(10), "the stream outlived its next request"
        assert isinstance(stream.error, exceptions.PermissionDenied), repr(stream.error)
        assert stream.error.message.endswith(NOT_AUTHORIZED)
        print(f"streaming pull: revocation heard in {took * 1e3:.0f} ms")
    finally:
        stream.close()
        close(reader_two, "grpc")
        close(admin_sub, "grpc")
