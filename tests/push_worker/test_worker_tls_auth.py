"""credentials_file and ca_file: their validation, the TLS channel they build (checked against a
fake Subscriber service over TLS that records what arrives), the worker pulling through it, and
the worker against the emulator started with TLS and --auth."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from tls_helpers import FakeSubscriber, TlsFiles, make_key_file, make_tls, verified_jwt_claims

from push_endpoint import Receiver
from push_worker import ConfigError, Worker, load_config, parse_config
from push_worker._subscriber import make_subscriber
from support import VENV_BIN, wait_for

EMAIL = "worker@push-worker-test.iam.gserviceaccount.com"
SUBS = [{"project_id": "p", "subscription_id": "s", "endpoint": "http://127.0.0.1:9/push"}]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tls(tmp_path_factory.mktemp("other-tls"), "b").ca


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, rsa.RSAPublicKey]:
    path = tmp_path / "key.json"
    return path, make_key_file(path, EMAIL)


@pytest.fixture
def fake(tls: TlsFiles) -> Iterator[FakeSubscriber]:
    server = FakeSubscriber(tls).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _no_emulator_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # make_subscriber sets or pops it (process-wide): keep other tests' value out, and have
    # monkeypatch restore the value from before (setenv records it, even when it was unset).
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "unset-by-the-test")
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST")


# -- configuration ---------------------------------------------------------------------------

def test_files_are_relative_to_the_config_file(tmp_path: Path, tls: TlsFiles,
                                               key: tuple[Path, Any]) -> None:
    (tmp_path / "ca.pem").write_bytes(tls.ca.read_bytes())
    cfg = tmp_path / "c.yaml"
    cfg.write_text("pubsub_endpoint: pubsub.internal:8085\ncredentials_file: key.json\n"
                   "ca_file: ca.pem\nsubscriptions:\n- {project_id: p, subscription_id: s, "
                   "endpoint: 'http://h/x'}\n")
    config = load_config(cfg)
    assert config.credentials_file == key[0] and config.ca_file == tmp_path / "ca.pem"
    plain = parse_config({"subscriptions": SUBS})
    assert plain.credentials_file is None and plain.ca_file is None


def test_credentials_file_without_ca_file_is_fine(key: tuple[Path, Any]) -> None:
    config = parse_config({"credentials_file": str(key[0]), "subscriptions": SUBS})
    assert config.pubsub_endpoint is None and config.ca_file is None


def _bad_files(tmp: Path) -> dict[str, Path]:
    files = {"not-json": "{oops", "list": "[1]", "user": '{"type": "authorized_user"}',
             "no-key": '{"type": "service_account", "client_email": "a@b", "token_uri": "t"}',
             "bad-key": '{"type": "service_account", "client_email": "a@b", "token_uri": "t", '
                        '"private_key": "-----BEGIN PRIVATE KEY-----\\nAAAA\\n'
                        '-----END PRIVATE KEY-----\\n"}',
             "not-pem": "just text\n"}
    paths = {}
    for name, text in files.items():
        paths[name] = tmp / name
        paths[name].write_text(text)
    paths["dir"] = tmp / "a-directory"
    paths["dir"].mkdir()
    return paths


@pytest.mark.parametrize(("fields", "message"), [
    ({"credentials_file": "missing.json"}, "credentials_file: cannot read"),
    ({"credentials_file": "dir"}, "credentials_file: cannot read"),  # unreadable as a file
    ({"credentials_file": 5}, "credentials_file: must be the path"),
    ({"credentials_file": ""}, "credentials_file: must be the path"),
    ({"credentials_file": "not-json"}, "credentials_file: "),
    ({"credentials_file": "list"}, "not a service-account key file"),
    ({"credentials_file": "user"}, "not a service-account key file (type 'authorized_user'"),
    ({"credentials_file": "no-key"}, "lacks private_key"),
    ({"credentials_file": "bad-key"}, "unusable key"),
    ({"ca_file": "ca"}, "ca_file: only valid with credentials_file"),
    ({"credentials_file": "key", "ca_file": "missing.pem"}, "ca_file: cannot read"),
    ({"credentials_file": "key", "ca_file": "dir"}, "ca_file: cannot read"),
    ({"credentials_file": "key", "ca_file": ["a.pem"]}, "ca_file: must be the path"),
    ({"credentials_file": "key", "ca_file": "not-pem"}, "ca_file: "),
])
def test_bad_file_fields(tmp_path: Path, tls: TlsFiles, key: tuple[Path, Any],
                         fields: dict[str, Any], message: str) -> None:
    paths = {**_bad_files(tmp_path), "key": key[0], "ca": tls.ca}
    raw: dict[str, Any] = {"pubsub_endpoint": "127.0.0.1:8085", "subscriptions": SUBS}
    for name, value in fields.items():
        raw[name] = str(paths[value]) if isinstance(value, str) and value in paths else value
    with pytest.raises(ConfigError) as e:
        parse_config(raw, base_dir=tmp_path)
    field = "ca_file" if "ca_file" in message else "credentials_file"
    assert str(e.value).startswith(field + ":"), str(e.value)
    assert message in str(e.value), str(e.value)


def test_cli_refuses_a_bad_credentials_file_with_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("credentials_file: nowhere.json\nsubscriptions:\n- {project_id: p, "
                   "subscription_id: s, endpoint: 'http://h/x'}\n")
    proc = subprocess.run([str(VENV_BIN / "push-worker"), str(cfg)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "credentials_file: cannot read" in proc.stderr


def test_cli_help_names_the_fields() -> None:
    proc = subprocess.run([str(VENV_BIN / "push-worker"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert "credentials_file" in proc.stdout and "ca_file" in proc.stdout


# -- the channel -----------------------------------------------------------------------------

def _config(fake: FakeSubscriber, key_path: Path, ca: Path | None) -> Any:
    raw: dict[str, Any] = {"pubsub_endpoint": fake.host, "credentials_file": str(key_path),
                           "subscriptions": SUBS}
    if ca is not None:
        raw["ca_file"] = str(ca)
    return parse_config(raw)


def _get_subscription(subscriber: Any) -> Any:
    try:
        return subscriber.get_subscription(
            request={"subscription": "projects/p/subscriptions/s"}, retry=None, timeout=10)
    finally:
        subscriber.close()


def test_the_key_signs_every_call_over_tls_with_the_ca(
        fake: FakeSubscriber, tls: TlsFiles, key: tuple[Path, rsa.RSAPublicKey],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A leftover PUBSUB_EMULATOR_HOST must not turn the channel into plain, anonymous gRPC.
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", "127.0.0.1:1")
    subscriber = make_subscriber(_config(fake, key[0], tls.ca))
    assert "PUBSUB_EMULATOR_HOST" not in os.environ
    assert _get_subscription(subscriber).name == "projects/p/subscriptions/s"
    (method, metadata), = fake.calls
    assert method == "GetSubscription"
    claims = verified_jwt_claims(metadata["authorization"], key[1])
    # A self-signed JWT (no token exchange), as google-auth makes them for Google's APIs.
    assert claims["iss"] == claims["sub"] == EMAIL
    assert claims["aud"] == "https://pubsub.googleapis.com/"
    assert claims["exp"] > claims["iat"]
    encoded = metadata["authorization"].split()[1].split(".")[0]
    header = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    assert header["kid"] == "c" * 40  # the key file's private_key_id


@pytest.mark.parametrize("which", ["another CA", "default roots"])
def test_a_server_the_ca_did_not_sign_gets_nothing(
        fake: FakeSubscriber, other_ca: Path, key: tuple[Path, Any], which: str) -> None:
    from google.api_core import exceptions

    subscriber = make_subscriber(_config(fake, key[0], other_ca if which == "another CA"
                                         else None))
    with pytest.raises(exceptions.ServiceUnavailable):
        _get_subscription(subscriber)
    assert fake.calls == []


def test_without_credentials_file_the_emulator_is_plain_grpc_as_before() -> None:
    subscriber = make_subscriber(parse_config({"pubsub_endpoint": "127.0.0.1:8085",
                                               "subscriptions": SUBS}))
    try:
        assert os.environ["PUBSUB_EMULATOR_HOST"] == "127.0.0.1:8085"
        # The library made its own insecure channel, so the transport holds no credentials.
        assert subscriber._transport._credentials is None
    finally:
        subscriber.close()


def test_the_worker_pulls_and_acks_through_the_tls_channel(
        fake: FakeSubscriber, tls: TlsFiles, key: tuple[Path, rsa.RSAPublicKey],
        endpoint: Receiver) -> None:
    fake.messages = [b"over TLS"]
    config = parse_config({"pubsub_endpoint": fake.host, "credentials_file": str(key[0]),
                           "ca_file": str(tls.ca), "subscriptions": [
                               {**SUBS[0], "endpoint": endpoint.url()}]})
    worker = Worker(config)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: endpoint.snapshot(), timeout=30, message="the push")
        wait_for(lambda: "ack-0" in fake.acked, timeout=30, message="the ack")
    finally:
        worker.stop()
        thread.join(60)
    assert endpoint.snapshot()[0].data == b"over TLS"
    pulls = [m for name, m in fake.calls if name == "StreamingPull"]
    assert pulls, fake.calls
    for _name, metadata in fake.calls:  # the pull, the ack, the lease extensions alike
        assert verified_jwt_claims(metadata["authorization"], key[1])["iss"] == EMAIL


# -- the emulator with TLS and --auth ----------------------------------------------------------

def _emulator_has_tls_and_auth() -> bool:
    proc = subprocess.run([str(VENV_BIN / "pubsub-emulator"), "start", "--help"],
                          capture_output=True, text=True, timeout=60)
    return "--auth" in proc.stdout and "--tls-self-signed" in proc.stdout


@pytest.mark.skipif(not _emulator_has_tls_and_auth(),
                    reason="pending: pubsub-emulator start has no --auth/--tls-self-signed yet")
def test_the_worker_against_the_emulator_with_tls_and_auth(
        tmp_path: Path, endpoint: Receiver) -> None:
    from emulator_tls import auth_emulator, publish_one, run_worker

    with auth_emulator(tmp_path) as emu:
        # The test's own key makes the topic and subscription and publishes (an editor); the
        # worker's key may only consume (streaming pull, ack, modack): a subscriber.
        setup_key = emu.key_file("setup@push-worker-test.iam.gserviceaccount.com",
                                 "roles/pubsub.editor")
        key_path = emu.key_file("worker@push-worker-test.iam.gserviceaccount.com",
                                "roles/pubsub.subscriber")
        subscription = publish_one(emu, setup_key, b"through the emulator")
        log = run_worker(tmp_path, {
            "pubsub_endpoint": emu.host, "credentials_file": str(key_path),
            "ca_file": str(emu.ca), "subscriptions": [
                {"project_id": "push-worker-test", "subscription_id": subscription,
                 "endpoint": endpoint.url()}]},
            until=lambda: bool(endpoint.snapshot()))
    assert [g.data for g in endpoint.snapshot()] == [b"through the emulator"], log


@pytest.mark.skipif(not _emulator_has_tls_and_auth(),
                    reason="pending: pubsub-emulator start has no --auth/--tls-self-signed yet")
def test_the_emulator_refuses_a_key_it_did_not_make(tmp_path: Path) -> None:
    from emulator_tls import auth_emulator
    from google.api_core import exceptions

    stranger = tmp_path / "stranger.json"
    make_key_file(stranger, "worker@push-worker-test.iam.gserviceaccount.com")
    with auth_emulator(tmp_path) as emu:
        config = parse_config({"pubsub_endpoint": emu.host, "credentials_file": str(stranger),
                               "ca_file": str(emu.ca), "subscriptions": SUBS})
        with pytest.raises((exceptions.Unauthenticated, exceptions.PermissionDenied)):
            _get_subscription(make_subscriber(config))
