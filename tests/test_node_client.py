"""Google's Node client (@google-cloud/pubsub), unchanged, against the emulator with TLS and
--auth: the same emulator as test_tls_auth's (--tls-self-signed --auth, a key file from
`pubsub-emulator keys create`), driven by tests/node/client.js over gRPC (the default) and
REST (`fallback: true`).

What the Node client needs (README, "TLS and credentials"): `emulatorMode: false` (without it a
non-googleapis.com endpoint means plaintext and no credentials), the CA in
GRPC_DEFAULT_SSL_ROOTS_FILE_PATH for gRPC (grpc-js ignores NODE_EXTRA_CA_CERTS) and in
NODE_EXTRA_CA_CERTS for REST, and no PUBSUB_EMULATOR_HOST. It sends self-signed JWTs with a
`scope` and no `aud`, and never uses the key file's token_uri.

The packages are pinned by tests/node/package-lock.json and installed (`npm ci`) into
tests/node/node_modules when missing or not the locked versions; without node, npm or the
npm registry the test fails and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from clients import unique
from support import REPO, wait_for
from test_tls_auth import SecureEmulator, keys_cli

NODE_DIR = REPO / "tests" / "node"
PROJECT = "test-project"
EMAIL = f"sa@{PROJECT}.iam.gserviceaccount.com"
INSTALL_TIMEOUT = 150  # a first `npm ci` from the registry; a few seconds from npm's cache
RUN_TIMEOUT = 60
# Nothing of the outer environment may point the client elsewhere or give it credentials.
DROPPED_ENV = ("PUBSUB_EMULATOR_HOST", "PUBSUB_PROJECT_ID", "GOOGLE_APPLICATION_CREDENTIALS",
               "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT", "NODE_OPTIONS", "NODE_EXTRA_CA_CERTS",
               "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH")


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: this test runs Google's Node client "
                    "(Node.js 18 or later with npm)")
    return path


def installed_as_locked() -> bool:
    """Every package of package-lock.json is in node_modules at its locked version."""
    lock = json.loads((NODE_DIR / "package-lock.json").read_text())
    for where, entry in lock["packages"].items():
        if not where:  # the project itself
            continue
        manifest = NODE_DIR / where / "package.json"
        try:
            if json.loads(manifest.read_text()).get("version") != entry.get("version"):
                return False
        except (OSError, ValueError):
            return False
    return True


@pytest.fixture(scope="module")
def node_client() -> list[str]:
    """`node client.js`, with the locked packages installed (`npm ci`) first if need be."""
    node, npm = tool("node"), tool("npm")
    if not installed_as_locked():
        try:
            done = subprocess.run(
                [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"],
                cwd=NODE_DIR, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`npm ci` in {NODE_DIR} did not finish in {INSTALL_TIMEOUT} s: is the "
                        "npm registry reachable (`npm view @google-cloud/pubsub version`)?")
        if done.returncode != 0:
            pytest.fail(f"`npm ci` in {NODE_DIR} failed (exit {done.returncode}); the npm "
                        f"registry must be reachable to install the pinned Node client:\n"
                        f"{done.stderr[-3000:]}")
        assert installed_as_locked(), "npm ci left node_modules unlike package-lock.json"
    return [node, str(NODE_DIR / "client.js")]


class Emulator(SecureEmulator):
    """test_tls_auth's TLS emulator, addressed by 127.0.0.1 (in the certificate by default)."""

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def emulator_tls(tmp_path_factory) -> Iterator[Any]:
    data = tmp_path_factory.mktemp("node-tls")
    with Emulator(data_dir=data, extra_args=["--tls-self-signed", "--auth"]) as emu:
        emu.key = data / "sa-key.json"
        done = keys_cli("create", EMAIL, "--out", str(emu.key), "--data-dir", str(data),
                        "--url", f"https://{emu.host}",
                        # client.js creates topics and subscriptions, publishes and pulls
                        "--role", "roles/pubsub.editor")
        assert done.returncode == 0, done.stderr
        yield emu


def run_node(node_client: list[str], emu: Any, checks: list[str], ca: Path | None) -> Any:
    """Run client.js with `checks`; its JSON. `ca`: the CA the client trusts (None: only the
    system's roots, which do not hold the emulator's)."""
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    if ca is not None:
        env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(ca)  # grpc-js, read at load
        env["NODE_EXTRA_CA_CERTS"] = str(ca)  # Node's https (REST), read at start
    config = {"endpoint": emu.host, "project": PROJECT, "keyFile": str(emu.key),
              "suffix": unique("n"), "checks": checks}
    done = subprocess.run([*node_client, json.dumps(config)], cwd=NODE_DIR, env=env,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, f"client.js failed:\n{done.stderr[-3000:]}"
    result = json.loads(done.stdout)
    for check in checks:
        assert "error" not in result[check], (
            f"{check}: {result[check]}\nemulator log:\n{emu.log_tail(3000)}")
    return result


def test_node_client_over_grpc_and_rest(node_client, emulator_tls):
    result = run_node(node_client, emulator_tls, ["grpc", "rest", "anonymous"], emulator_tls.ca)
    assert result["versions"]["@google-cloud/pubsub"] == json.loads(
        (NODE_DIR / "package.json").read_text())["dependencies"]["@google-cloud/pubsub"]

    # With the key file: topic, subscription, publish with an attribute, receive (streaming
    # pull over gRPC, Pull over REST), ack (then a nack of the same ack id finds nothing).
    for transport in ("grpc", "rest"):
        trip = result[transport]
        assert trip["topic"].startswith(f"projects/{PROJECT}/topics/node-{transport}-"), trip
        assert trip["received"] == trip["published"], transport
        assert trip["published"]["attributes"] == {"via": transport}
        assert trip["published"]["id"], transport
        assert trip["left"] == 0, f"{transport}: the acked message came back"

    # Without credentials: the server refuses every call, as Google does.
    anonymous = result["anonymous"]
    for call, err in anonymous["grpc"].items():
        assert err is not None, f"gRPC {call} succeeded without credentials"
        assert err["code"] == 16, err  # UNAUTHENTICATED
        assert "UNAUTHENTICATED" in err["message"], err
    for call, err in anonymous["rest"].items():
        assert err is not None, f"REST {call} succeeded without credentials"
        assert err["statusCode"] == 401, err
        assert json.loads(err["message"])["error"]["status"] == "UNAUTHENTICATED", err


def test_node_client_without_the_ca_fails_the_handshake(node_client, emulator_tls):
    result = run_node(node_client, emulator_tls, ["handshake"], None)["handshake"]
    for call, err in result["grpc"].items():
        assert err is not None, f"gRPC {call} succeeded without trusting the CA"
        assert err["code"] == 14, err  # UNAVAILABLE: no connection established
        assert "self-signed certificate" in err["message"], err
    for call, err in result["rest"].items():
        assert err is not None, f"REST {call} succeeded without trusting the CA"
        assert err["cause"] == "SELF_SIGNED_CERT_IN_CHAIN", err
    wait_for(lambda: "TLS handshake failed" in emulator_tls.log_tail(20000), timeout=10,
             message="the failed handshake in the emulator's log")
