"""`make run`: the whole system on one machine, under one process runner (honcho).

Starts the emulator (with config/topology.yaml), the sender and the receiver under the App Engine
SDK's dev_appserver (Python 2.7), and the push worker delivering `subscription-to-my-topic` to the
receiver. Each app's log goes to the console, prefixed by honcho, and to
logs/app___<service>_default_v1.log (AppScale's file names). Ctrl-C (or SIGTERM) stops all of it.

With --secure the emulator serves TLS (its own CA, for localhost and 127.0.0.1) and requires
credentials (--auth), as it would when reachable from other machines: before anything starts,
keys are made for the sender, the worker and an admin (and for the push account, with
--push emulator) in the emulator's store, and the CA is added to dev_appserver's urlfetch CA file
(scripts/trust-ca-dev-appserver). Under --auth a key may do only what IAM grants it
(docs/iam-enforcement.md): the topology the emulator starts with grants the sender
roles/pubsub.publisher on the topic and the worker roles/pubsub.subscriber on the subscription
(applied at every start, so keys kept from an earlier run get them too); the admin key is
--admin; the push account needs no role. The sender and the receiver themselves stay plain HTTP
on loopback.

    python scripts/stack.py --python27 PY27 --sdk-dir SDK [--emulator-port 8085] [--secure] ...
    python scripts/stack.py wait-healthy [--ca CA.pem] URL [URL ...]   (used inside the Procfile)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PROJECT, TOPIC, SUBSCRIPTION = "my-project", "my-topic", "subscription-to-my-topic"
PUSH_ACCOUNT = f"push@{PROJECT}.iam.gserviceaccount.com"
# --secure: the accounts that get a key (file name in --keys-dir -> email, admin?)
ACCOUNTS = {
    "sender": (f"sender@{PROJECT}.iam.gserviceaccount.com", False),
    "worker": (f"worker@{PROJECT}.iam.gserviceaccount.com", False),
    "admin": (f"admin@{PROJECT}.iam.gserviceaccount.com", True),
    # Only registered (nobody signs with it): under --auth the emulator signs push tokens only
    # as an account that has a key.
    "push": (PUSH_ACCOUNT, False),
}
# The names the sender, the receiver and the worker reach the emulator by. The apps must use
# `localhost`: urlfetch and httplib2 match DNS names only, never IP addresses.
TLS_HOSTNAMES = ["localhost", "127.0.0.1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(urls: list[str], timeout: float = 120.0) -> int:
    """Exit 0 once every URL answers (any HTTP status), 1 after `timeout` seconds.
    `--ca FILE` first: https URLs are checked against that CA (the emulator's own)."""
    context = None
    if urls[:1] == ["--ca"]:
        context = ssl.create_default_context(cafile=urls[1])
        urls = urls[2:]
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending:
        url = pending[0]
        try:
            urllib.request.urlopen(url, timeout=2, context=context).close()
            pending.pop(0)
            continue
        except urllib.error.HTTPError:
            pending.pop(0)  # it answered: it is up
            continue
        except OSError:
            pass
        if time.monotonic() > deadline:
            print(f"not up after {timeout:.0f}s: {url}", file=sys.stderr)
            return 1
        time.sleep(0.2)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python27", required=True, help="the Python 2.7 interpreter")
    p.add_argument("--sdk-dir", required=True, help="directory holding dev_appserver.py")
    p.add_argument("--emulator-port", type=int, default=8085)
    p.add_argument("--sender-port", type=int, default=8080)
    p.add_argument("--receiver-port", type=int, default=8081)
    p.add_argument("--logs-dir", default=str(REPO / "logs"))
    p.add_argument("--data-dir", default=str(REPO / "data" / "pubsub"),
                   help="the emulator's store (durable across runs)")
    p.add_argument("--state-dir", default=str(REPO / ".cache" / "stack"),
                   help="generated Procfile, worker config and dev_appserver storage")
    p.add_argument("--token-file", default=str(REPO / ".cache" / "verification-token"))
    p.add_argument("--push", choices=["worker", "emulator"], default="worker",
                   help="who pushes the subscription to the receiver: the push worker "
                        "(default), or the emulator itself (a push subscription)")
    p.add_argument("--secure", action="store_true",
                   help="the emulator with TLS (self-signed, for localhost) and --auth; "
                        "keys for the sender, the worker and an admin in --keys-dir")
    p.add_argument("--keys-dir", default=str(REPO / ".cache" / "keys"),
                   help="--secure: where the key files go (NAME.json)")
    return p


def _emulator_cli(args: argparse.Namespace, *cmd: str) -> str:
    done = subprocess.run([str(VENV_BIN / "pubsub-emulator"), *cmd, "--data-dir", args.data_dir],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pubsub-emulator {' '.join(cmd[:2])} failed: "
                         f"{(done.stderr or done.stdout).strip()}")
    return done.stdout


def _key_usable(path: Path, email: str, token_uri: str, registered: set[str]) -> bool:
    """A key file from an earlier run is kept if the store still holds its key and it points
    at this port (its token_uri)."""
    try:
        key = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return (key.get("client_email") == email and key.get("token_uri") == token_uri
            and key.get("private_key_id") in registered)


def prepare_secure(args: argparse.Namespace) -> tuple[Path, dict[str, Path]]:
    """Before anything starts: the emulator's CA and server certificate (made by the function
    `start --tls-self-signed` calls, for the same names, so the emulator reuses them), trusted
    by dev_appserver's urlfetch, and a key per account in the emulator's store. Idempotent: a
    second `make run SECURE=1` reuses the CA and every key that is still registered."""
    from pubsub_emulator import tls  # the venv this script runs in has the emulator installed

    Path(args.data_dir).mkdir(parents=True, exist_ok=True)
    ca = tls.self_signed(args.data_dir, TLS_HOSTNAMES).ca
    assert ca is not None
    trust = subprocess.run([str(REPO / "scripts" / "trust-ca-dev-appserver"), str(ca)],
                           env={**os.environ, "SDK_DIR": args.sdk_dir},
                           capture_output=True, text=True)
    if trust.returncode != 0:
        raise SystemExit(trust.stderr.strip() or "scripts/trust-ca-dev-appserver failed")
    url = f"https://localhost:{args.emulator_port}"
    keys_dir = Path(args.keys_dir)
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    # `keys list` prints "KEY_ID  EMAIL  admin|-  TIME" per registered key: {key id: email}.
    registered = dict(line.split()[:2] for line in
                      _emulator_cli(args, "keys", "list").splitlines() if line.strip())
    names = [n for n in ACCOUNTS if n != "push" or args.push == "emulator"]
    keys = {}
    for name in names:
        email, admin = ACCOUNTS[name]
        path = keys_dir / f"{name}.json"
        if not _key_usable(path, email, f"{url}/token", set(registered)):
            if email in registered.values():
                # One key per account: drop what an earlier run registered (its file is gone
                # or names another port).
                _emulator_cli(args, "keys", "delete", email)
            _emulator_cli(args, "keys", "create", email, "--out", str(path), "--url", url,
                          *(["--admin"] if admin else []))
        keys[name] = path
    return ca, keys


def stage_app(name: str, dest: Path, files: dict[str, Path]) -> Path:
    """The app directory as dev_appserver should see it, plus `files` (name -> file) in it.

    dev_appserver's sandbox lets an app open files under its own directory only (symlinks
    there are followed), so the sender cannot read a key in .cache/keys/. The key is not put
    in pubsub-sender/ either, which `appscale deploy` ships whole: `dest` is a directory of
    symlinks to each entry of the app's, and to the files."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for entry in (REPO / name).iterdir():
        if entry.name not in files:
            (dest / entry.name).symlink_to(entry)
    for file_name, target in files.items():
        (dest / file_name).symlink_to(Path(target).resolve())
    return dest


def _grant(role: str, account: str) -> str:
    """A topology `iam` block granting `role` to the account of ACCOUNTS[account]."""
    return (f"{{bindings: [{{role: {role}, "
            f"members: ['serviceAccount:{ACCOUNTS[account][0]}']}}]}}")


def generated_topology(args: argparse.Namespace, receiver_push: str) -> str:
    """config/topology.yaml's topic and subscription, with --push emulator made a push
    subscription to the receiver, and with --secure the IAM grants the apps' keys need (under
    --auth a key without a role may do nothing): the sender publishes to the topic
    (roles/pubsub.publisher), the worker pulls and acks the subscription
    (roles/pubsub.subscriber). Grants are applied at every start (idempotently), so a key kept
    from an earlier run has them as well."""
    lines = ["# generated by scripts/stack.py from config/topology.yaml",
             "projects:", f"  {PROJECT}:", "    topics:", f"      {TOPIC}:"]
    if args.secure:
        lines.append(f"        iam: {_grant('roles/pubsub.publisher', 'sender')}")
    lines += ["        subscriptions:", f"          {SUBSCRIPTION}:",
              "            ackDeadlineSeconds: 10"]
    if args.push == "emulator":
        token = Path(args.token_file).read_text().strip()
        lines += ["            pushConfig:",
                  f"              pushEndpoint: '{receiver_push}?token={token}'",
                  f"              oidcToken: {{serviceAccountEmail: '{PUSH_ACCOUNT}', "
                  f"audience: '{receiver_push}'}}"]
    if args.secure:
        lines.append(f"            iam: {_grant('roles/pubsub.subscriber', 'worker')}")
    return "".join(f"{line}\n" for line in lines)


def build_procfile(args: argparse.Namespace) -> str:
    state, logs = Path(args.state_dir), Path(args.logs_dir)
    state.mkdir(parents=True, exist_ok=True)
    logs.mkdir(parents=True, exist_ok=True)
    emulator = f"127.0.0.1:{args.emulator_port}"
    base_url = f"http://{emulator}"
    worker_config = state / "push-worker.yaml"
    receiver_push = f"http://127.0.0.1:{args.receiver_port}/pubsub/push"
    q = shlex.quote
    wait = f"{q(sys.executable)} {q(__file__)} wait-healthy"
    # Plain: the sender without credentials. Secure: the same code path as for Cloud Pub/Sub
    # (a key file, a token from its token_uri) aimed at the emulator, PUBSUB_EMULATOR_HOST unset.
    sender_env = {"PUBSUB_EMULATOR_HOST": emulator}
    secure_flags, worker_security, secure_note = "", "", ""
    sender_dir = REPO / "pubsub-sender"
    if args.secure:
        ca, keys = prepare_secure(args)
        # `localhost`, not 127.0.0.1: the apps' https clients match DNS names only.
        base_url = f"https://localhost:{args.emulator_port}"
        secure_flags = f" --tls-self-signed --tls-hostname {','.join(TLS_HOSTNAMES)} --auth"
        worker_security = (f"credentials_file: {json.dumps(str(keys['worker']))}\n"
                           f"ca_file: {json.dumps(str(ca))}\n")
        wait += f" --ca {q(str(ca))}"
        sender_env = {"PUBSUB_API_ROOT": f"{base_url}/",
                      "GOOGLE_APPLICATION_CREDENTIALS": "sender-key.json"}
        sender_dir = stage_app("pubsub-sender", state / "apps" / "pubsub-sender",
                               {"sender-key.json": keys["sender"]})
        secure_note = "echo " + q(f"Emulator: {base_url} (TLS, --auth); its CA: {ca}; keys in "
                                  f"{args.keys_dir} (admin.json may read /debug/*)") + " && "
    worker_config.write_text(
        "# generated by scripts/stack.py for `make run`\n"
        f"pubsub_endpoint: {'localhost' if args.secure else '127.0.0.1'}:{args.emulator_port}\n"
        f"{worker_security}"
        "subscriptions:\n"
        f"  - project_id: {PROJECT}\n"
        f"    subscription_id: {SUBSCRIPTION}\n"
        f"    endpoint: {receiver_push}\n"
        f"    token_file: {args.token_file}\n")
    topology = REPO / "config" / "topology.yaml"
    if args.push == "emulator" or args.secure:
        topology = state / "topology.yaml"
        topology.write_text(generated_topology(args, receiver_push))
    run_app = REPO / "scripts" / "run-app"

    def app(name: str, port: int, env: dict[str, str], app_dir: Path | None = None) -> str:
        env_args = " ".join(q(f"{k}={v}") for k, v in env.items())
        log = logs / f"app___{name}_default_v1.log"
        storage = state / name
        directory = app_dir or REPO / name
        # dev_appserver's admin and API ports: free ones, so nothing clashes.
        return (f"PY27={q(args.python27)} SDK_DIR={q(args.sdk_dir)} STORAGE_DIR={q(str(storage))} "
                f"{q(str(run_app))} {q(str(directory))} {port} {free_port()} {free_port()} "
                f"{env_args} 2>&1 | tee -a {q(str(log))}")

    emulator_health = f"{base_url}/healthz"
    lines = {
        "emulator": (f"exec {q(str(VENV_BIN / 'pubsub-emulator'))} start --host 127.0.0.1 "
                     f"--port {args.emulator_port} --data-dir {q(args.data_dir)} "
                     f"--config {q(str(topology))}{secure_flags}"),
        "sender": app("pubsub-sender", args.sender_port, {
            **sender_env, "PUBSUB_PROJECT": PROJECT, "PUBSUB_TOPIC": TOPIC}, sender_dir),
        # With the emulator pushing, the receiver also checks its OIDC tokens, as it would
        # Google's (against the emulator's certificates, over https with --secure).
        "receiver": app("pubsub-receiver", args.receiver_port, {} if args.push == "worker" else {
            "PUBSUB_OIDC_AUDIENCE": receiver_push, "PUBSUB_OIDC_EMAIL": PUSH_ACCOUNT,
            "PUBSUB_OIDC_CERTS_URL": f"{base_url}/oauth2/v1/certs"}),
        "worker": (f"{wait} {emulator_health} && exec {q(str(VENV_BIN / 'push-worker'))} "
                   f"{q(str(worker_config))}"),
        "ready": (f"{wait} {emulator_health} http://127.0.0.1:{args.sender_port}/ "
                  f"http://127.0.0.1:{args.receiver_port}/ && "
                  f"echo 'Everything is up. Try:' && "
                  f"echo \"  curl --data 'Hello world!' http://127.0.0.1:{args.sender_port}/\" && "
                  f"echo 'and watch the receiver log: Received message: Hello world!' && "
                  f"{secure_note}exec tail -f /dev/null"),
    }
    if args.push == "emulator":
        del lines["worker"]
    procfile = state / "Procfile"
    procfile.write_text("".join(f"{name}: {cmd}\n" for name, cmd in lines.items()))
    return str(procfile)


def main(argv: list[str]) -> int:
    if argv[:1] == ["wait-healthy"]:
        return wait_healthy(argv[1:])
    args = _parser().parse_args(argv)
    if not Path(args.token_file).exists():
        print(f"missing {args.token_file}: run `make token` (make run does it)", file=sys.stderr)
        return 2
    procfile = build_procfile(args)
    honcho = str(VENV_BIN / "honcho")
    os.execv(honcho, [honcho, "start", "--no-colour", "-f", procfile, "-d", str(REPO)])
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
