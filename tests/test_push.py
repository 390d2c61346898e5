"""Native push delivery: the emulator POSTs to `pushConfig.pushEndpoint` as Cloud Pub/Sub does.

Receivers are real HTTP servers in threads; subscriptions are made and messages published with
Google's clients against the session's emulator process.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from clients import gapic_clients, unique
from push_endpoint import Got, Receiver
from support import free_port, wait_for

P = "push-project"
JSON_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")


@pytest.fixture
def receivers():
    started: list[Receiver] = []

    def make(answer: Callable[[Got, int], int] | None = None, port: int = 0) -> Receiver:
        r = Receiver(answer or (lambda _g, _i: 200), port).start()
        started.append(r)
        return r

    yield make
    for r in started:
        r.stop()


@pytest.fixture
def api(emulator):
    return gapic_clients(emulator.host, "grpc")


def _topic(publisher) -> str:
    return publisher.create_topic(name=f"projects/{P}/topics/{unique('t')}").name


def _sub(subscriber, topic: str, **fields: Any) -> str:
    return subscriber.create_subscription(request={
        "name": f"projects/{P}/subscriptions/{unique('s')}", "topic": topic, **fields}).name


def _publish(publisher, topic: str, *messages: dict[str, Any]) -> list[str]:
    return list(publisher.publish(topic=topic, messages=list(messages)).message_ids)


def _debug(emulator) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{emulator.host}/debug/push", timeout=5) as r:
        return json.load(r)["subscriptions"]


def test_wrapped_envelope_byte_for_byte(api, receivers, emulator):
    publisher, subscriber = api
    receiver = receivers()
    topic = _topic(publisher)
    sub = _sub(subscriber, topic, push_config={
        "push_endpoint": receiver.url("/push?token=abc"),
        "attributes": {"x-goog-version": "v1"}})
    [full_id] = _publish(publisher, topic, {"data": b"hello push", "attributes": {"a": "1",
                                             "b": "two"}, "ordering_key": "k1"})
    wait_for(receiver.snapshot, timeout=15, message="the first push")
    [bare_id] = _publish(publisher, topic, {"data": b"\x00\xffraw"})
    wait_for(lambda: len(receiver.snapshot()) >= 2, timeout=15, message="the second push")
    full, bare = receiver.snapshot()
    assert full.path == "/push?token=abc"
    assert full.header("Content-Type") == "application/json"
    assert full.header("Authorization") is None
    publish_time = full.envelope["message"]["publishTime"]
    assert JSON_TIME.match(publish_time), publish_time
    expected = ('{"message":{"data":"aGVsbG8gcHVzaA==","attributes":{"a":"1","b":"two"},'
                f'"messageId":"{full_id}","message_id":"{full_id}",'
                f'"publishTime":"{publish_time}","publish_time":"{publish_time}",'
                f'"orderingKey":"k1"}},"subscription":"{sub}"}}')
    assert full.body == expected.encode()
    # No attributes, no ordering key, no dead-letter policy: those fields are absent.
    bare_time = bare.envelope["message"]["publishTime"]
    expected = ('{"message":{"data":"AP9yYXc=",'
                f'"messageId":"{bare_id}","message_id":"{bare_id}",'
                f'"publishTime":"{bare_time}","publish_time":"{bare_time}"}},'
                f'"subscription":"{sub}"}}')
    assert bare.body == expected.encode()
    # Both acked: nothing comes again and the counters say so.
    stats = wait_for(lambda: _debug(emulator)[sub]["delivered"] == 2 and _debug(emulator)[sub],
                     timeout=10, message="counters")
    # /debug/push hides query values: a verification token is a secret (the receiver got it).
    assert stats["nacked"] == 0 and stats["endpoint"] == receiver.url("/push?token=…")


def test_delivery_attempt_only_with_dead_letter_policy(api, receivers):
    publisher, subscriber = api
    receiver = receivers(lambda _g, i: 500 if i == 0 else 200)
    topic = _topic(publisher)
    dlt = _topic(publisher)
    _sub(subscriber, topic, push_config={"push_endpoint": receiver.url()},
         dead_letter_policy={"dead_letter_topic": dlt, "max_delivery_attempts": 5})
    _publish(publisher, topic, {"data": b"counted"})
    first, second = wait_for(lambda: len(receiver.snapshot()) >= 2 and receiver.snapshot(),
                             timeout=15, message="a redelivery")
    assert first.envelope["deliveryAttempt"] == 1
    assert second.envelope["deliveryAttempt"] == 2
    assert list(second.envelope) == ["message", "subscription", "deliveryAttempt"]
    assert first.envelope["message"]["messageId"] == second.envelope["message"]["messageId"]


def test_unwrapped_with_and_without_metadata(api, receivers):
    publisher, subscriber = api
    plain, meta = receivers(), receivers()
    topic = _topic(publisher)
    plain_sub = _sub(subscriber, topic, push_config={"push_endpoint": plain.url(),
                                                     "no_wrapper": {}})
    meta_sub = _sub(subscriber, topic, push_config={"push_endpoint": meta.url(),
                                                    "no_wrapper": {"write_metadata": True}})
    [mid] = _publish(publisher, topic, {"data": b'{"status": "Hello there"}',
                                        "attributes": {"Content-Type": "application/json",
                                                       "color": "red"},
                                        "ordering_key": "some-key"})
    [p] = wait_for(plain.snapshot, timeout=15, message="the unwrapped push")
    [m] = wait_for(meta.snapshot, timeout=15, message="the push with metadata")
    assert p.body == m.body == b'{"status": "Hello there"}'
    assert not [k for k, _ in p.headers if k.lower().startswith("x-goog")]
    assert p.header("color") is None and p.header("Content-Type") is None
    assert m.header("x-goog-pubsub-subscription-name") == meta_sub
    assert m.header("x-goog-pubsub-message-id") == mid
    assert JSON_TIME.match(m.header("x-goog-pubsub-publish-time") or "")
    assert m.header("x-goog-pubsub-ordering-key") == "some-key"
    assert m.header("color") == "red"
    assert m.header("Content-Type") == "application/json"
    assert plain_sub != meta_sub


def test_nack_statuses_redeliver_with_growing_gaps(api, receivers, emulator):
    publisher, subscriber = api
    statuses = [500, 404, 429, 503, 302, 200]
    receiver = receivers(lambda _g, i: statuses[min(i, len(statuses) - 1)])
    topic = _topic(publisher)
    sub = _sub(subscriber, topic, push_config={"push_endpoint": receiver.url()})
    _publish(publisher, topic, {"data": b"again"})
    got = wait_for(lambda: len(receiver.snapshot()) >= len(statuses) and receiver.snapshot(),
                   timeout=20, message="redeliveries until a 200")
    assert {g.data for g in got} == {b"again"}
    gaps = [b.arrived - a.arrived for a, b in zip(got, got[1:], strict=False)]
    # Push backoff: 100 ms after the first nack, doubling with each nack after it.
    for i, gap in enumerate(gaps):
        assert gap >= 0.09 * 2 ** i, gaps
    stats = wait_for(lambda: _debug(emulator)[sub]["delivered"] == 1 and _debug(emulator)[sub],
                     timeout=10, message="the ack counted")
    assert stats["nacked"] == len(statuses) - 1
    assert stats["last_status"] == 200 and not stats["in_backoff"]
    assert len(receiver.snapshot()) == len(statuses)  # acked: not delivered again


def test_endpoint_down_for_20s_loses_nothing(api, receivers, emulator):
    publisher, subscriber = api
    port = free_port()  # nothing listens here yet
    topic = _topic(publisher)
    sub = _sub(subscriber, topic, push_config={"push_endpoint": f"http://127.0.0.1:{port}/p"})
    sent = {f"m{i}".encode() for i in range(5)}
    _publish(publisher, topic, *[{"data": d} for d in sorted(sent)])
    down_until = time.monotonic() + 20
    seen_backoff = False
    while time.monotonic() < down_until:  # the outage itself, watched through the counters
        stats = _debug(emulator).get(sub, {})
        seen_backoff = seen_backoff or (stats.get("in_backoff") and stats.get("nacked", 0) > 3)
        time.sleep(0.5)
    stats = _debug(emulator)[sub]
    assert seen_backoff and stats["delivered"] == 0 and stats["backoff_ms"] >= 3200, stats
    receiver = receivers(port=port)
    wait_for(lambda: {g.data for g in receiver.snapshot()} == sent, timeout=70,
             message="every message once the endpoint is back")
    wait_for(lambda: _debug(emulator)[sub]["delivered"] == 5, timeout=10, message="5 acks")


def test_slow_endpoint_does_not_slow_another_subscription(api, receivers, emulator):
    publisher, subscriber = api
    release = threading.Event()

    def slow(_g: Got, _i: int) -> int:
        release.wait(5)
        return 200

    slow_rx, fast_rx = receivers(slow), receivers()
    topic = _topic(publisher)
    slow_sub = _sub(subscriber, topic, push_config={"push_endpoint": slow_rx.url()})
    fast_sub = _sub(subscriber, topic, push_config={"push_endpoint": fast_rx.url()})
    try:
        started = time.monotonic()
        _publish(publisher, topic, *[{"data": f"x{i}".encode()} for i in range(20)])
        wait_for(lambda: len(fast_rx.snapshot()) >= 20, timeout=4,
                 message="the fast subscription's 20 messages while the other one crawls")
        assert time.monotonic() - started < 4
        assert 1 <= len(slow_rx.snapshot()) <= 2  # slow start: one POST at a time, still going
        assert _debug(emulator)[slow_sub]["delivered"] == 0
    finally:
        release.set()
        subscriber.delete_subscription(subscription=slow_sub)
    assert fast_sub


def test_oidc_token_verifies_with_google_auth(api, receivers, emulator):
    import google.auth.transport.requests
    from google.oauth2 import id_token

    publisher, subscriber = api
    receiver = receivers()
    topic = _topic(publisher)
    email = "pusher@push-project.iam.gserviceaccount.com"
    _sub(subscriber, topic, push_config={
        "push_endpoint": receiver.url("/with-aud"),
        "oidc_token": {"service_account_email": email, "audience": "https://example.com/app"}})
    _sub(subscriber, topic, push_config={
        "push_endpoint": receiver.url("/default-aud"),
        "oidc_token": {"service_account_email": email}})
    _publish(publisher, topic, {"data": b"signed"})
    got = wait_for(lambda: len(receiver.snapshot()) >= 2 and receiver.snapshot(), timeout=15,
                   message="two authenticated pushes")
    by_path = {g.path: g for g in got}
    request = google.auth.transport.requests.Request()
    certs = f"http://{emulator.host}/oauth2/v1/certs"
    tokens = {}
    for path, audience in [("/with-aud", "https://example.com/app"),
                           ("/default-aud", receiver.url("/default-aud"))]:
        auth = by_path[path].header("Authorization") or ""
        assert auth.startswith("Bearer ")
        token = tokens[path] = auth.removeprefix("Bearer ")
        claims = id_token.verify_token(token, request, audience=audience, certs_url=certs)
        assert claims["iss"] == "https://accounts.google.com"
        assert claims["aud"] == audience
        assert claims["email"] == email and claims["email_verified"] is True
        assert claims["sub"].isdigit() and claims["exp"] == claims["iat"] + 3600
        with pytest.raises(ValueError):
            id_token.verify_token(token, request, audience="https://wrong.example.com",
                                  certs_url=certs)
    # The discovery document and the JWK set, as Google serves them.
    with urllib.request.urlopen(f"http://{emulator.host}/.well-known/openid-configuration") as r:
        discovery = json.load(r)
    assert discovery["issuer"] == "https://accounts.google.com"
    assert discovery["jwks_uri"] == f"http://{emulator.host}/oauth2/v3/certs"
    with urllib.request.urlopen(discovery["jwks_uri"]) as r:
        [jwk] = json.load(r)["keys"]
    from google.auth import jwt

    assert jwk["kid"] == jwt.decode_header(tokens["/with-aud"])["kid"]
    assert jwk["kty"] == "RSA" and jwk["alg"] == "RS256" and jwk["use"] == "sig"
    try:
        import jwt as pyjwt  # noqa: F401 - google-auth reads JWK sets through PyJWT
    except ImportError:
        return
    claims = id_token.verify_token(tokens["/with-aud"], request,
                                   audience="https://example.com/app",
                                   certs_url=discovery["jwks_uri"])
    assert claims["email"] == email


def test_switching_push_pull_push_loses_nothing(api, receivers, emulator):
    from google.protobuf import field_mask_pb2

    publisher, subscriber = api
    receiver = receivers(lambda _g, _i: (time.sleep(0.2), 200)[1])
    topic = _topic(publisher)
    sub = _sub(subscriber, topic, push_config={"push_endpoint": receiver.url()})
    pulled: set[bytes] = set()

    def pushed() -> set[bytes]:
        return {g.data for g in receiver.snapshot()}

    def pull_some() -> set[bytes]:
        response = subscriber.pull(subscription=sub, max_messages=50, return_immediately=True)
        if response.received_messages:
            subscriber.acknowledge(subscription=sub,
                                   ack_ids=[m.ack_id for m in response.received_messages])
        pulled.update(m.message.data for m in response.received_messages)
        return pulled

    batch1 = {f"a{i}".encode() for i in range(30)}
    _publish(publisher, topic, *[{"data": d} for d in sorted(batch1)])
    wait_for(lambda: len(pushed()) >= 3, timeout=15, message="push under way")
    # Push -> pull while POSTs are in flight: those finish; the rest is left for pullers.
    subscriber.modify_push_config(subscription=sub, push_config={})
    batch2 = {f"b{i}".encode() for i in range(10)}
    _publish(publisher, topic, *[{"data": d} for d in sorted(batch2)])
    wait_for(lambda: (pushed() | pull_some()) >= batch1 | batch2, timeout=20,
             message="batches 1 and 2 through push or pull")
    pushed_while_pull = len(receiver.snapshot())
    assert not batch2 & pushed()  # published after the switch: pull only
    assert pulled & batch1  # the switch came mid-batch: pullers got the rest
    # POSTs in flight at the switch finished normally (acked), so pullers never saw them.
    wait_for(lambda: _debug(emulator)[sub]["in_flight"] == 0, timeout=10, message="POSTs done")
    assert not pushed() & pull_some()
    # Pull -> push, this time by UpdateSubscription.
    subscriber.update_subscription(request={
        "subscription": {"name": sub, "push_config": {"push_endpoint": receiver.url()}},
        "update_mask": field_mask_pb2.FieldMask(paths=["push_config"])})
    batch3 = {f"c{i}".encode() for i in range(10)}
    _publish(publisher, topic, *[{"data": d} for d in sorted(batch3)])
    wait_for(lambda: pushed() >= batch3, timeout=20, message="batch 3 pushed")
    assert not pull_some() & batch3
    assert pushed() | pulled >= batch1 | batch2 | batch3
    assert len(receiver.snapshot()) >= pushed_while_pull
    wait_for(lambda: _debug(emulator)[sub]["in_flight"] == 0, timeout=10, message="idle")


def test_restart_resumes_push_and_keeps_the_signing_key(receivers, tmp_path):
    from support import EmulatorProcess

    release = threading.Event()

    def hold_the_first(_g: Got, index: int) -> int:
        if index == 0:
            release.wait(20)
        return 200

    receiver = receivers(hold_the_first)
    emu = EmulatorProcess(data_dir=str(tmp_path / "data"), extra_args=["--log-level", "debug"])
    with emu:
        publisher, subscriber = gapic_clients(emu.host, "grpc")
        topic = _topic(publisher)
        sub = _sub(subscriber, topic, push_config={
            "push_endpoint": receiver.url(),
            "oidc_token": {"service_account_email": "a@b.iam.gserviceaccount.com"}})
        [mid] = _publish(publisher, topic, {"data": b"survives"})
        wait_for(receiver.snapshot, timeout=15, message="the first POST (held open)")
        with urllib.request.urlopen(f"http://{emu.host}/oauth2/v1/certs") as r:
            kids = set(json.load(r))
        stopping = time.monotonic()
        assert emu.stop() == 0  # a POST is in flight: abandoned and nacked, not waited for
        assert time.monotonic() - stopping < 8
        release.set()
        emu.start()
        # The nacked message goes out again at once (not after its 15 s lease).
        first, again = wait_for(lambda: len(receiver.snapshot()) >= 2 and receiver.snapshot(),
                                timeout=5, message="the redelivery after the restart")
        assert first.envelope["message"]["messageId"] == again.envelope["message"]["messageId"]
        assert again.envelope["message"]["messageId"] == mid
        with urllib.request.urlopen(f"http://{emu.host}/oauth2/v1/certs") as r:
            assert set(json.load(r)) == kids
        from google.auth import jwt

        token = (again.header("Authorization") or "").removeprefix("Bearer ")
        assert jwt.decode_header(token)["kid"] in kids
        wait_for(lambda: _debug(emu)[sub]["delivered"] == 1, timeout=10, message="the ack")
    log = emu.log_path.read_text()
    assert f"push {sub} message {mid}" in log  # one debug line per attempt


def test_no_answer_within_the_ack_deadline_is_a_nack(api, receivers, emulator):
    publisher, subscriber = api
    release = threading.Event()

    def hang_first(_g: Got, index: int) -> int:
        if index == 0:
            release.wait(15)
        return 200

    receiver = receivers(hang_first)
    topic = _topic(publisher)
    sub = _sub(subscriber, topic, ack_deadline_seconds=10,
               push_config={"push_endpoint": receiver.url()})
    try:
        _publish(publisher, topic, {"data": b"too slow"})
        first, again = wait_for(lambda: len(receiver.snapshot()) >= 2 and receiver.snapshot(),
                                timeout=20, message="the redelivery after the deadline")
    finally:
        release.set()
    assert 9.5 <= again.arrived - first.arrived < 14
    assert again.data == b"too slow"
    stats = wait_for(lambda: _debug(emulator)[sub]["delivered"] == 1 and _debug(emulator)[sub],
                     timeout=10, message="the ack of the redelivery")
    assert stats["nacked"] == 1


def test_retry_policy_delay_wins_over_a_shorter_push_backoff(api, receivers):
    publisher, subscriber = api
    receiver = receivers(lambda _g, i: 503 if i == 0 else 200)
    topic = _topic(publisher)
    _sub(subscriber, topic, push_config={"push_endpoint": receiver.url()},
         retry_policy={"minimum_backoff": {"seconds": 1}, "maximum_backoff": {"seconds": 5}})
    _publish(publisher, topic, {"data": b"patience"})
    first, again = wait_for(lambda: len(receiver.snapshot()) >= 2 and receiver.snapshot(),
                            timeout=15, message="the redelivery")
    # Push backoff alone would resend after 100 ms; the retry policy holds it for 1 s.
    assert again.arrived - first.arrived >= 0.95


def test_endpoint_tokens_stay_out_of_the_log_and_debug_push(api, receivers, emulator):
    publisher, subscriber = api
    receiver = receivers()
    secret = unique("secret")
    topic = _topic(publisher)
    sub = _sub(subscriber, topic, push_config={
        "push_endpoint": receiver.url(f"/push?token={secret}&x=1")})
    _publish(publisher, topic, {"data": b"tell no one"})
    stats = wait_for(lambda: _debug(emulator).get(sub, {}).get("delivered") and _debug(
        emulator)[sub], timeout=15, message="the push")
    assert receiver.snapshot()[0].query["token"] == [secret]  # the endpoint gets it...
    assert stats["endpoint"] == receiver.url("/push?token=…&x=…")  # ...nobody else
    # GetSubscription returns the endpoint as stored: that is Google's API.
    got = subscriber.get_subscription(subscription=sub)
    assert got.push_config.push_endpoint.endswith(f"token={secret}&x=1")
    logged = emulator.log_path.read_text(errors="replace")
    assert f"{sub}: pushing to " in logged and secret not in logged
