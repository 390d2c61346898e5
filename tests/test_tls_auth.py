"""TLS and credentials on the one port, with Google's real clients (issue "Reachable from other
machines, safely"): an emulator started with --tls-self-signed --auth, keys made by the
`keys` command while it runs, google-cloud-pubsub over gRPC and REST with a key file and the
CA, the discovery client through the token endpoint.

The token logic (every way a JWT can be wrong) is auth's unit tests'; here each kind of bad
credential is sent once over each protocol, to prove the wiring. The clients must not see
PUBSUB_EMULATOR_HOST: with it they drop credentials and TLS.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httplib2
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.auth import crypt
from google.auth import jwt as google_jwt
from google.auth.credentials import AnonymousCredentials
from google.auth.transport.requests import Request
from google.cloud import pubsub_v1
from google.oauth2 import service_account
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport
from google.pubsub_v1.types import PubsubMessage, StreamingPullRequest
from google_auth_httplib2 import AuthorizedHttp
from googleapiclient.discovery import build_from_document

from clients import discovery_document, unique
from processes import TlsEmulatorProcess
from pubsub_emulator.tls import self_signed
from support import VENV_BIN, free_port, wait_for

PROJECT = "tls-proj"
ALICE = f"alice@{PROJECT}.iam.gserviceaccount.com"  # an administrator
BOB = f"bob@{PROJECT}.iam.gserviceaccount.com"  # creates topics and subscriptions: an editor
EDITOR = ("--role", "roles/pubsub.editor")  # (under --auth a key without a role may do nothing)
VIEWER = ("--role", "roles/pubsub.viewer")
SCOPES = ["https://www.googleapis.com/auth/pubsub"]
PUBSUB_AUD = "https://pubsub.googleapis.com/"


class SecureEmulator(TlsEmulatorProcess):
    """An emulator with TLS, addressed as localhost (a name its certificate holds)."""

    @property
    def host(self) -> str:
        return f"localhost:{self.port}"


def keys_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(VENV_BIN / "pubsub-emulator"), "keys", *args],
                          capture_output=True, text=True, timeout=60)


def make_key(emu: SecureEmulator, email: str, *extra: str) -> Path:
    out = Path(emu.data_dir) / f"{email.partition('@')[0]}-{unique('k')}.json"
    done = keys_cli("create", email, "--out", str(out), "--data-dir", emu.data_dir,
                    "--url", f"https://{emu.host}", *extra)
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def secure(tmp_path_factory) -> Iterator[Any]:
    data = tmp_path_factory.mktemp("secure")
    with SecureEmulator(data_dir=data, extra_args=["--tls-self-signed", "--auth",
                                                   "--log-level", "debug"]) as emu:
        emu.alice = make_key(emu, ALICE, "--admin")  # type: ignore[attr-defined]
        emu.bob = make_key(emu, BOB, *EDITOR)  # type: ignore[attr-defined]
        emu.tokens = []  # type: ignore[attr-defined]  # every token sent: none may be logged
        yield emu


@pytest.fixture(autouse=True)
def no_emulator_env(monkeypatch, secure) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(secure.ca))


class NoCredentials(AnonymousCredentials):
    """No credential at all. The REST transport refreshes its credentials after a 401 and
    retries: anonymous ones refuse to (InvalidOperation); these do nothing, so the 401 stands."""

    def refresh(self, request: Any) -> None:
        pass


def credentials(key_file: Path | None) -> Any:
    if key_file is None:
        return NoCredentials()
    return service_account.Credentials.from_service_account_file(str(key_file))


def clients(emu: SecureEmulator, transport: str, key_file: Path | None,
            ca: bytes | None = None) -> tuple[Any, Any]:
    """(PublisherClient, SubscriberClient) over TLS to `emu`, with a key file or none."""
    creds = credentials(key_file)
    if transport == "grpc":
        channel_creds = grpc.ssl_channel_credentials(ca or emu.ca.read_bytes())
        return (pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(
                    host=emu.host, credentials=creds, ssl_channel_credentials=channel_creds)),
                pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(
                    host=emu.host, credentials=creds, ssl_channel_credentials=channel_creds)))
    options = ClientOptions(api_endpoint=f"https://{emu.host}")
    return (pubsub_v1.PublisherClient(transport="rest", client_options=options, credentials=creds),
            pubsub_v1.SubscriberClient(transport="rest", client_options=options,
                                       credentials=creds))


def close(subscriber: Any, transport: str) -> None:
    if transport == "grpc":  # (close() knows gRPC channels only)
        subscriber.close()


def self_signed_token(emu: SecureEmulator, key_file: Path) -> str:
    """The JWT google-auth signs with a key file (no request is made)."""
    creds = service_account.Credentials.from_service_account_file(str(key_file), scopes=SCOPES)
    creds = creds.with_always_use_jwt_access(True)
    creds.refresh(Request())
    emu.tokens.append(creds.token)  # type: ignore[attr-defined]
    return creds.token


def topic_name() -> str:
    return f"projects/{PROJECT}/topics/{unique('t')}"


def sub_name() -> str:
    return f"projects/{PROJECT}/subscriptions/{unique('s')}"


def every_rpc_kind(publisher: Any, subscriber: Any, transport: str) -> list[str]:
    """Call one RPC of each kind; the names of those that were not UNAUTHENTICATED."""
    topic, sub = topic_name(), sub_name()
    calls = {
        "CreateTopic": lambda: publisher.create_topic(name=topic),
        "ListTopics": lambda: list(publisher.list_topics(project=f"projects/{PROJECT}")),
        "Publish": lambda: publisher.api.publish(topic=topic,
                                                 messages=[PubsubMessage(data=b"x")]),
        "CreateSubscription": lambda: subscriber.create_subscription(name=sub, topic=topic),
        "Pull": lambda: subscriber.pull(subscription=sub, max_messages=1),
        "Acknowledge": lambda: subscriber.acknowledge(subscription=sub, ack_ids=["a"]),
        "ModifyAckDeadline": lambda: subscriber.modify_ack_deadline(
            subscription=sub, ack_ids=["a"], ack_deadline_seconds=10),
        "DeleteTopic": lambda: publisher.delete_topic(topic=topic),
    }
    if transport == "grpc":
        calls["StreamingPull"] = lambda: list(subscriber.api.streaming_pull(requests=iter([
            StreamingPullRequest(subscription=sub, stream_ack_deadline_seconds=10)])))
    passed = []
    for name, call in calls.items():
        try:
            call()
            passed.append(name)
        except exceptions.Unauthorized:
            pass
    return passed


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_without_credentials_every_call_is_unauthenticated(secure, transport):
    publisher, subscriber = clients(secure, transport, None)
    assert every_rpc_kind(publisher, subscriber, transport) == []
    close(subscriber, transport)


def test_rest_401_is_googles(secure):
    answer = requests.get(f"https://{secure.host}/v1/projects/{PROJECT}/topics", timeout=10)
    assert answer.status_code == 401
    assert answer.json()["error"]["status"] == "UNAUTHENTICATED"
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    # Before routing: an unknown path does not tell a caller without credentials it is unknown.
    assert requests.get(f"https://{secure.host}/v1/nothing", timeout=10).status_code == 401


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_with_a_key_every_call_works(secure, transport):
    publisher, subscriber = clients(secure, transport, secure.bob)
    topic, sub = topic_name(), sub_name()
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    assert topic in [t.name for t in publisher.list_topics(project=f"projects/{PROJECT}")]
    ids = [publisher.publish(topic, f"m{i}".encode()).result(timeout=30) for i in range(3)]
    assert len(set(ids)) == 3
    got = subscriber.pull(subscription=sub, max_messages=1).received_messages
    wait_for(lambda: got or got.extend(subscriber.pull(
        subscription=sub, max_messages=1).received_messages), timeout=10)
    subscriber.modify_ack_deadline(subscription=sub, ack_ids=[got[0].ack_id],
                                   ack_deadline_seconds=30)
    subscriber.acknowledge(subscription=sub, ack_ids=[got[0].ack_id])
    if transport == "grpc":  # StreamingPull exists over gRPC only
        received: list[bytes] = []

        def callback(message: Any) -> None:
            received.append(message.data)
            message.ack()

        future = subscriber.subscribe(sub, callback)
        try:
            wait_for(lambda: len(received) >= 2, timeout=30, message="streamed messages")
        finally:
            future.cancel()
            future.result(timeout=30)
        assert set(received) | {got[0].message.data} == {b"m0", b"m1", b"m2"}
    subscriber.delete_subscription(subscription=sub)
    publisher.delete_topic(topic=topic)
    close(subscriber, transport)


def _bad_tokens(emu: SecureEmulator) -> dict[str, str]:
    info = json.loads(emu.bob.read_text())
    signer = crypt.RSASigner.from_service_account_info(info)
    now = int(time.time())
    claims = {"iss": BOB, "sub": BOB, "aud": PUBSUB_AUD, "iat": now, "exp": now + 600}
    good = google_jwt.encode(signer, claims).decode()
    expired = google_jwt.encode(signer, {**claims, "iat": now - 7200, "exp": now - 3600})
    head, payload, signature = good.split(".")
    forged = google_jwt.encode(signer, {**claims, "iss": ALICE, "sub": ALICE}).decode()
    tampered = ".".join([head, forged.split(".")[1], signature])  # alice's claims, bob's seal
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_pem = other.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
    wrong = google_jwt.encode(crypt.RSASigner.from_string(other_pem, info["private_key_id"]),
                              claims)
    tokens = {"good": good, "expired": expired.decode(), "tampered": tampered,
              "wrong key": wrong.decode(), "garbage": "not-a-jwt"}
    emu.tokens.extend(tokens.values())  # type: ignore[attr-defined]
    return tokens


def _grpc_call(emu: SecureEmulator, token: str) -> str:
    """ListTopics over TLS with `authorization: Bearer token`: the status code's name."""
    channel = grpc.secure_channel(emu.host, grpc.ssl_channel_credentials(emu.ca.read_bytes()))
    list_topics = channel.unary_unary("/google.pubsub.v1.Publisher/ListTopics",
                                    request_serializer=lambda r: r, response_deserializer=bytes)
    request = pubsub_v1.types.ListTopicsRequest(project=f"projects/{PROJECT}")
    try:
        list_topics(pubsub_v1.types.ListTopicsRequest.serialize(request), timeout=10,
                  metadata=[("authorization", f"Bearer {token}")])
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name
    finally:
        channel.close()


def _rest_call(emu: SecureEmulator, token: str) -> int:
    return requests.get(f"https://{emu.host}/v1/projects/{PROJECT}/topics", timeout=10,
                        headers={"Authorization": f"Bearer {token}"}).status_code


def test_bad_tokens_are_refused_on_both_protocols(secure):
    tokens = _bad_tokens(secure)
    assert _grpc_call(secure, tokens.pop("good")) == "OK"
    for kind, token in tokens.items():
        assert _grpc_call(secure, token) == "UNAUTHENTICATED", kind
        assert _rest_call(secure, token) == 401, kind
    assert _rest_call(secure, self_signed_token(secure, secure.bob)) == 200


def test_a_key_made_or_deleted_while_running_counts_at_the_next_call(secure):
    carol = f"carol-{unique('c')[-6:]}@{PROJECT}.iam.gserviceaccount.com"
    key = make_key(secure, carol, *VIEWER)  # (lists topics)
    token = self_signed_token(secure, key)
    publisher, _ = clients(secure, "grpc", key)
    rest_publisher, _ = clients(secure, "rest", key)
    project = f"projects/{PROJECT}"
    list(publisher.list_topics(project=project))
    list(rest_publisher.list_topics(project=project))
    assert _grpc_call(secure, token) == "OK" and _rest_call(secure, token) == 200
    key_id = json.loads(key.read_text())["private_key_id"]
    listed = keys_cli("list", "--data-dir", secure.data_dir)
    assert listed.returncode == 0 and key_id in listed.stdout and carol in listed.stdout
    deleted = keys_cli("delete", key_id, "--data-dir", secure.data_dir)
    assert deleted.returncode == 0, deleted.stderr
    assert _grpc_call(secure, token) == "UNAUTHENTICATED" and _rest_call(secure, token) == 401
    for client in (publisher, rest_publisher):
        with pytest.raises(exceptions.Unauthorized):
            list(client.list_topics(project=project))


def test_a_client_trusting_another_ca_fails_the_handshake(secure, tmp_path):
    other = self_signed(tmp_path, ["localhost"])
    publisher, _ = clients(secure, "grpc", secure.bob, ca=other.ca.read_bytes())
    with pytest.raises(exceptions.ServiceUnavailable):
        publisher.get_topic(topic=topic_name(), retry=None, timeout=10)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"https://{secure.host}/healthz", verify=str(other.ca), timeout=10)
    with pytest.raises(requests.exceptions.ConnectionError):  # nor is plaintext served
        requests.get(f"http://{secure.host}/healthz", timeout=10)
    log = secure.log_path.read_text()
    assert "TLS handshake failed" in log and "UNKNOWN_CA" in log.upper()


@pytest.mark.parametrize("offered, chosen", [(["h2", "http/1.1"], "h2"),
                                             (["http/1.1"], "http/1.1")])
def test_one_tls_port_offers_both_protocols(secure, offered, chosen):
    context = ssl.create_default_context(cafile=str(secure.ca))
    context.set_alpn_protocols(offered)
    with socket.create_connection(("127.0.0.1", secure.port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() == chosen


def test_health_token_endpoint_and_oidc_need_no_credentials(secure):
    base = f"https://{secure.host}"
    assert requests.get(f"{base}/healthz", timeout=10).text == "ok\n"
    discovery = requests.get(f"{base}/.well-known/openid-configuration", timeout=10)
    assert discovery.status_code == 200 and "jwks_uri" in discovery.json()
    assert requests.get(f"{base}/oauth2/v3/certs", timeout=10).status_code == 200
    refused = requests.post(f"{base}/token", data={"grant_type": "x"}, timeout=10)
    assert refused.status_code == 400 and refused.json()["error"] == "unsupported_grant_type"


def test_debug_needs_an_administrator(secure):
    url = f"https://{secure.host}/debug/push"
    assert requests.get(url, timeout=10).status_code == 401
    bob = requests.get(url, timeout=10, headers={
        "Authorization": f"Bearer {self_signed_token(secure, secure.bob)}"})
    assert bob.status_code == 403 and bob.json()["error"]["status"] == "PERMISSION_DENIED"
    alice = requests.get(url, timeout=10, headers={
        "Authorization": f"Bearer {self_signed_token(secure, secure.alice)}"})
    assert alice.status_code == 200 and "subscriptions" in alice.json()


def test_discovery_client_through_the_token_endpoint(secure):
    """google-api-python-client with a key file: an access token from the token endpoint
    (the key file's token_uri), over TLS with the CA."""
    creds = service_account.Credentials.from_service_account_file(str(secure.bob),
                                                                  scopes=SCOPES)
    http = AuthorizedHttp(creds, http=httplib2.Http(ca_certs=str(secure.ca), timeout=30))
    doc = discovery_document()
    doc["rootUrl"] = doc["baseUrl"] = f"https://{secure.host}/"
    service = build_from_document(doc, http=http)
    topic = topic_name()
    service.projects().topics().create(name=topic, body={}).execute()
    listed = service.projects().topics().list(project=f"projects/{PROJECT}").execute()
    assert topic in [t["name"] for t in listed["topics"]]
    secure.tokens.append(creds.token)
    assert creds.token and creds.token.count(".") == 2  # the emulator's access token


def test_handshake_is_bounded_by_the_header_timeout(tmp_path):
    with SecureEmulator(data_dir=tmp_path, extra_args=["--tls-self-signed",
                                                       "--header-timeout", "1"]) as emu:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", emu.port), timeout=10) as silent:
            assert silent.recv(1) == b""  # no ClientHello: closed by the header timeout
        assert time.monotonic() - started < 5


def test_a_given_certificate_and_the_grpc_port(tmp_path):
    """--tls-cert/--tls-key on the one port, and --grpc-port (no front) with TLS and --auth."""
    files = self_signed(tmp_path / "own", ["localhost", "127.0.0.1"])
    grpc_port = free_port()
    emu = SecureEmulator(data_dir=tmp_path / "data", extra_args=[
        "--tls-cert", str(files.cert), "--tls-key", str(files.key), "--auth",
        "--grpc-port", str(grpc_port)])
    emu.ca_path = files.ca
    with emu:
        key = make_key(emu, BOB, *VIEWER)  # (lists topics)
        for port in (emu.port, grpc_port):
            emu.port = port  # (the clients' host)
            publisher, _ = clients(emu, "grpc", key)
            list(publisher.list_topics(project=f"projects/{PROJECT}"))
            anonymous, _ = clients(emu, "grpc", None)
            with pytest.raises(exceptions.Unauthorized):
                list(anonymous.list_topics(project=f"projects/{PROJECT}"))


def test_no_token_or_key_in_the_debug_log(secure):
    """Last in the module: everything above has run against this emulator at debug level."""
    log = secure.log_path.read_text()
    assert "DEBUG" in log  # the level really was debug
    assert "PRIVATE KEY" not in log
    for key_file in (secure.alice, secure.bob):
        private = json.loads(key_file.read_text())["private_key"]
        body = [line for line in private.splitlines() if "PRIVATE KEY" not in line]
        assert not any(line in log for line in body)
    assert secure.tokens
    for token in secure.tokens:
        for segment in token.split(".")[1:]:  # the header alone is no secret
            assert len(segment) < 20 or segment not in log
