"""`make run SECURE=1`: the whole stack with the emulator on TLS and `--auth`, for both push
modes. The sender publishes with its key to https://localhost:PORT/, the worker streams with its
key and the CA, and with `--push emulator` the receiver checks the emulator's OIDC tokens against
certificates it fetches over https. A body POSTed to the sender must reach the receiver's log,
and Ctrl-C (SIGINT) must stop everything (checked when the fixture ends: the ports by
`_start_stack`, then every process honcho started)."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from google.auth import jwt

from support import REPO, wait_for
from test_end_to_end import _post, _receiver_log, _sdk_dir, _start_stack

PUBSUB_AUDIENCE = "https://pubsub.googleapis.com/"


@pytest.fixture(scope="module", params=["worker", "emulator"])
def secure_stack(request, tmp_path_factory):
    """The stack as `make run SECURE=1 PUSH=<param>` starts it, with its own data dir and keys
    dir; afterwards the test's CA is taken out of dev_appserver's urlfetch CA file again (the
    file belongs to the SDK install, shared by every run)."""
    data = tmp_path_factory.mktemp("secure-data")
    keys = tmp_path_factory.mktemp("secure-keys")
    # `--data-dir` given again: argparse keeps the last one, so the CA's path is known before
    # the stack starts and can be untrusted even if the start fails.
    try:
        for ports, root in _start_stack(tmp_path_factory, "--secure", "--push", request.param,
                                        "--keys-dir", str(keys), "--data-dir", str(data)):
            yield ports, root, data, keys, request.param
        # _start_stack has sent SIGINT and seen the ports close; the worker has no port, so
        # every process honcho started must be gone as well.
        pids = [int(p) for p in re.findall(r"started \(pid=(\d+)\)",
                                           (root / "console.log").read_text(errors="replace"))]
        assert len(pids) == (5 if request.param == "worker" else 4)
        wait_for(lambda: not any(_alive(pid) for pid in pids), timeout=30,
                 message="every process of the secure stack to stop")
    finally:
        ca = data / "tls" / "ca.pem"
        if ca.exists():
            subprocess.run([str(REPO / "scripts" / "trust-ca-dev-appserver"), "--remove",
                            str(ca)], env={**os.environ, "SDK_DIR": _sdk_dir()},
                           check=True, capture_output=True)


def _alive(pid: int) -> bool:
    """Whether the process runs (a zombie, dead but not yet reaped, does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _get(url: str, ca: Path, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10,
                                    context=ssl.create_default_context(cafile=str(ca))) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _granted(url: str, ca: Path, token: str, permissions: list[str]) -> list[str]:
    """TestIamPermissions on the resource at `url` (it needs no permission of its own): the
    permissions of `permissions` the token's account holds there."""
    request = urllib.request.Request(f"{url}:testIamPermissions", method="POST",
                                     data=json.dumps({"permissions": permissions}).encode(),
                                     headers={"Authorization": f"Bearer {token}",
                                              "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10,
                                context=ssl.create_default_context(cafile=str(ca))) as r:
        assert r.status == 200
        return sorted(json.loads(r.read()).get("permissions", []))


def _jwt(key: Path) -> str:
    """A self-signed JWT from a key file, as google-cloud-pubsub makes them."""
    credentials = jwt.Credentials.from_service_account_file(str(key), audience=PUBSUB_AUDIENCE)
    credentials.refresh(None)  # no request is made: the JWT is signed locally with the key
    token = credentials.token
    return token.decode() if isinstance(token, bytes) else token


def test_secure_stack_is_configured_as_on_a_cluster(secure_stack):
    ports, root, data, keys, push = secure_stack
    procfile = (root / "state" / "Procfile").read_text()
    emulator_line = next(line for line in procfile.splitlines() if line.startswith("emulator:"))
    assert "--tls-self-signed --tls-hostname localhost,127.0.0.1 --auth" in emulator_line
    sender_line = next(line for line in procfile.splitlines() if line.startswith("sender:"))
    assert "PUBSUB_EMULATOR_HOST" not in sender_line  # it would drop credentials and TLS
    assert f"PUBSUB_API_ROOT=https://localhost:{ports['emulator']}/" in sender_line
    # The key is read from a staged app directory: dev_appserver's sandbox hides .cache/keys/.
    assert "GOOGLE_APPLICATION_CREDENTIALS=sender-key.json" in sender_line
    staged = root / "state" / "apps" / "pubsub-sender"
    assert str(staged) in sender_line
    assert (staged / "sender-key.json").resolve() == (keys / "sender.json").resolve()
    expected = {"sender", "worker", "admin"} | ({"push"} if push == "emulator" else set())
    assert {p.stem for p in keys.glob("*.json")} == expected
    for name in expected:
        key = json.loads((keys / f"{name}.json").read_text())
        assert key["token_uri"] == f"https://localhost:{ports['emulator']}/token"
        assert (keys / f"{name}.json").stat().st_mode & 0o077 == 0
    if push == "worker":
        worker = (root / "state" / "push-worker.yaml").read_text()
        assert f"pubsub_endpoint: localhost:{ports['emulator']}" in worker
        assert "credentials_file:" in worker and "ca_file:" in worker
    else:
        assert "worker:" not in procfile
        assert (f"PUBSUB_OIDC_CERTS_URL=https://localhost:{ports['emulator']}/oauth2/v1/certs"
                in procfile)
    # The "try this" line is the one of the plain stack: the sender is plain HTTP on loopback.
    console = (root / "console.log").read_text(errors="replace")
    assert f"curl --data 'Hello world!' http://127.0.0.1:{ports['sender']}/" in console


def test_emulator_requires_tls_and_credentials(secure_stack):
    ports, _, data, keys, _ = secure_stack
    ca = data / "tls" / "ca.pem"
    base = f"https://localhost:{ports['emulator']}"
    topics = f"{base}/v1/projects/my-project/topics"
    assert _get(f"{base}/healthz", ca) == 200
    assert _get(topics, ca) == 401
    # The sender's key is accepted, and may publish to the topic only (roles/pubsub.publisher
    # there): listing topics is PERMISSION_DENIED, not UNAUTHENTICATED; the admin key may.
    sender = _jwt(keys / "sender.json")
    assert _get(topics, ca, sender) == 403
    assert _get(topics, ca, _jwt(keys / "admin.json")) == 200
    asked = ["pubsub.topics.get", "pubsub.topics.list", "pubsub.topics.publish"]
    assert _granted(f"{topics}/my-topic", ca, sender, asked) == ["pubsub.topics.publish"]
    # The worker's may consume the subscription (roles/pubsub.subscriber there), nothing more.
    subscription = f"{base}/v1/projects/my-project/subscriptions/subscription-to-my-topic"
    asked = ["pubsub.subscriptions.consume", "pubsub.subscriptions.get",
             "pubsub.subscriptions.update"]
    assert _granted(subscription, ca, _jwt(keys / "worker.json"),
                    asked) == ["pubsub.subscriptions.consume"]
    # /debug/* is for the admin key only.
    assert _get(f"{base}/debug/push", ca, sender) == 403
    assert _get(f"{base}/debug/push", ca, _jwt(keys / "admin.json")) == 200
    with pytest.raises(OSError):  # plain http on the TLS port gets no HTTP answer
        urllib.request.urlopen(f"http://127.0.0.1:{ports['emulator']}/healthz", timeout=10)


def test_hello_world_reaches_the_receiver(secure_stack):
    ports, root, _, _, _ = secure_stack
    status, answer = _post(ports["sender"], b"Hello world!")
    assert status == 200 and b"messageId" in answer
    wait_for(lambda: "Received message: Hello world!" in _receiver_log(root), timeout=60,
             interval=0.2, message="'Received message: Hello world!' in the receiver log")
    assert "OIDC token check failed" not in _receiver_log(root)
