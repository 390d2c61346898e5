"""deploy/: the systemd units, their environment files and the example configs an operator
installs on the service nodes (deploy/README.md).

Three kinds of checks:

- the files' syntax, by parsing them here (always runs): sections and `Key=value` lines,
  absolute `ExecStart`, an `EnvironmentFile=` under /etc/pubsub-emulator, every variable a
  command line (or the NATS config) uses defined by the unit or its example environment file,
  the hardening options present. This holds even where systemd's own tools are missing;
- `systemd-analyze verify` on each unit and `systemd-sysusers --dry-run` on the users file
  (skipped, with the reason, when the tools are not installed);
- the command lines for real: each unit's `ExecStart`, expanded as systemd expands it with the
  example environment file's values, installed paths moved to temporary directories and
  addresses to free loopback ports, is started, must serve (the emulator over HTTPS with
  `--auth`, the push worker delivering a message with a key made by `keys create`, three
  nats-server nodes forming the JetStream cluster an emulator then uses with 3 replicas), and
  must exit 0 on the signal `systemctl stop` sends it (KillSignal=: SIGTERM, SIGINT for NATS).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from processes import nats_server_path
from support import REPO, VENV_BIN, free_port, wait_for

# Each test ends in seconds (about 5 s for those starting processes); a hung one fails here.
pytestmark = pytest.mark.timeout(60)

DEPLOY = REPO / "deploy"
EMULATOR_UNIT = DEPLOY / "pubsub-emulator.service"
WORKER_UNIT = DEPLOY / "push-worker.service"
NATS_UNIT = DEPLOY / "nats" / "pubsub-nats.service"
UNITS = (EMULATOR_UNIT, WORKER_UNIT, NATS_UNIT)
# Each unit's EnvironmentFile as the repository ships an example of it (for NATS: one node's).
EXAMPLE_ENV = {EMULATOR_UNIT: DEPLOY / "pubsub-emulator.env",
               WORKER_UNIT: DEPLOY / "push-worker.env",
               NATS_UNIT: DEPLOY / "nats" / "node-a.env"}
NATS_NODES = ("a", "b", "c")
NATS_CONF = DEPLOY / "nats" / "nats-server.conf"

ETC = "/etc/pubsub-emulator"
INSTALL_BIN = "/opt/pubsub-anywhere/bin/"
HARDENING = ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices",
             "RestrictAddressFamilies", "CapabilityBoundingSet", "UMask")
SECTIONS = {"Unit", "Service", "Install"}
# What systemd gives a system service: a fixed PATH, no variables of whoever started it.
BASE_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_WORD_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


# --- reading the files -------------------------------------------------------------------


def parse_unit(path: Path) -> dict[str, list[tuple[str, str]]]:
    """A unit file's sections as (key, value) lists, in order (keys may repeat, as
    Environment= does, which is why configparser itself cannot read units).

    Follows systemd's syntax: `#`/`;` comment lines, a trailing backslash continues a line
    (comment lines inside a continuation are skipped), whitespace around `=` is dropped.
    """
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    pending = ""
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if line.startswith(("#", ";")) or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("["):
            assert line.endswith("]"), f"{path.name}:{n}: bad section header {line!r}"
            name = line[1:-1]
            assert name in SECTIONS, f"{path.name}:{n}: unexpected section [{name}]"
            assert name not in sections, f"{path.name}:{n}: [{name}] twice"
            current = sections[name] = []
            continue
        assert current is not None, f"{path.name}:{n}: {line!r} before any section"
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", key.strip()), \
            f"{path.name}:{n}: not Key=value: {line!r}"
        current.append((key.strip(), value.strip()))
    assert not pending, f"{path.name}: ends inside a continued line"
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def read_env_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile= as systemd reads it: VAR=value lines, `#`/`;` comments, optional
    quotes around a value."""
    env = {}
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key), \
            f"{path.name}:{n}: not VAR=value: {line!r}"
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key] = value
    return env


def unit_env(path: Path, env_file: Path | None = None) -> dict[str, str]:
    """The environment systemd gives the unit's process: Environment= first, then the
    EnvironmentFile (here: the repository's example of it), which overrides it."""
    unit = parse_unit(path)
    env: dict[str, str] = {}
    for assignment in values(unit, "Service", "Environment"):
        for word in shlex.split(assignment):
            key, _, value = word.partition("=")
            env[key] = value
    env.update(read_env_file(env_file or EXAMPLE_ENV[path]))
    return env


def exec_start(path: Path, env: dict[str, str]) -> list[str]:
    """ExecStart as systemd runs it: `${VAR}` is replaced inside its word (always one
    argument), a word that is exactly `$VAR` becomes the value split at whitespace (zero or
    more arguments)."""
    (line,) = values(parse_unit(path), "Service", "ExecStart")
    argv: list[str] = []
    for word in shlex.split(line):
        whole = _WORD_VAR.fullmatch(word)
        if whole:
            argv += env[whole.group(1)].split()
        else:
            argv.append(_VAR.sub(lambda m: env[m.group(1)], word))
    return argv


def used_variables(path: Path) -> set[str]:
    text = " ".join(values(parse_unit(path), "Service", "ExecStart"))
    return set(_VAR.findall(text)) | set(_WORD_VAR.findall(text))


def commented_example(env_file: Path, key: str) -> str:
    """The value of a commented-out alternative (`#   KEY=value`) in an environment file."""
    for line in env_file.read_text(encoding="utf-8").splitlines():
        m = re.fullmatch(rf"#\s*{key}=(.+)", line.strip())
        if m:
            return m.group(1).strip()
    raise AssertionError(f"{env_file.name}: no commented example of {key}")


# --- syntax ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", UNITS, ids=lambda p: p.name)
def test_unit_syntax_and_settings(path: Path) -> None:
    unit = parse_unit(path)
    assert set(unit) == SECTIONS
    (start,) = values(unit, "Service", "ExecStart")
    assert start.startswith("/"), "ExecStart needs an absolute path"
    (env_file,) = values(unit, "Service", "EnvironmentFile")
    assert env_file.startswith(ETC + "/"), env_file
    keys = {k for k, _ in unit["Service"]}
    for key in HARDENING:
        assert key in keys, f"{path.name}: no {key}="
    assert values(unit, "Service", "Restart") == ["on-failure"]
    if path != WORKER_UNIT:  # the servers hold a descriptor (or three) per client connection
        assert values(unit, "Service", "LimitNOFILE"), f"{path.name}: no LimitNOFILE="
    user = values(unit, "Service", "User")
    assert user and user[0] != "root", "runs as an unprivileged user"
    # Every variable of the command line has a value: a missing one would be an empty argument.
    env = unit_env(path)
    missing = used_variables(path) - set(env)
    assert not missing, f"{path.name}: ExecStart uses undefined {sorted(missing)}"
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


def test_emulator_unit_is_durable_tls_and_auth() -> None:
    argv = exec_start(EMULATOR_UNIT, unit_env(EMULATOR_UNIT))
    assert argv[:2] == [INSTALL_BIN + "pubsub-emulator", "start"]
    assert "--auth" in argv and "--insecure" not in argv and "--in-memory" not in argv
    assert argv[argv.index("--data-dir") + 1] == "/var/lib/pubsub-emulator"
    assert values(parse_unit(EMULATOR_UNIT), "Service", "StateDirectory") == ["pubsub-emulator"]
    assert argv[argv.index("--host") + 1] not in ("0.0.0.0", "127.0.0.1", "")
    # Both TLS forms the environment file documents are complete flag sets.
    cert = commented_example(EXAMPLE_ENV[EMULATOR_UNIT], "PUBSUB_TLS").split()
    assert cert[0::2] == ["--tls-cert", "--tls-key"] and all(p.startswith(ETC) for p in cert[1::2])
    assert "--tls-self-signed" in argv


def test_nats_config_variables_are_set_on_every_node() -> None:
    text = NATS_CONF.read_text(encoding="utf-8")
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    used = set(re.findall(r"\$([A-Za-z_][A-Za-z0-9_]*)", code))
    assert used, "the per-node values come from the environment"
    names = set()
    for node in NATS_NODES:
        env = unit_env(NATS_UNIT, DEPLOY / "nats" / f"node-{node}.env")
        assert used <= set(env), f"node-{node}.env lacks {sorted(used - set(env))}"
        names.add(env["NATS_SERVER_NAME"])
    assert len(names) == len(NATS_NODES), "server names must differ"


def test_example_configs_parse(tmp_path: Path) -> None:
    from push_worker import parse_config

    topology = yaml.safe_load((DEPLOY / "topology.yaml").read_text(encoding="utf-8"))
    assert "subscription-to-my-topic" in topology["projects"]["my-project"]["topics"][
        "my-topic"]["subscriptions"]
    raw = yaml.safe_load((DEPLOY / "push-worker.yaml").read_text(encoding="utf-8"))
    # The key, CA and token are installed beside the config: relative names say so.
    token = raw["subscriptions"][0]["token_file"]
    for name in (raw.pop("credentials_file"), raw.pop("ca_file"), token):
        assert not Path(name).is_absolute(), name
    # Every other field as the worker validates it (the key and the CA need the emulator:
    # the test that starts the units uses them for real).
    (tmp_path / token).write_text("t\n")
    config = parse_config(raw, base_dir=tmp_path)
    assert config.pubsub_endpoint == "pubsub.internal:8085"


# --- systemd's own checks ------------------------------------------------------------------


def render_for_verify(path: Path, out_dir: Path) -> Path:
    """A copy whose executables exist here (verify refuses a unit whose ExecStart binary is
    missing) and which runs as root (the pubsub users exist only on the servers; this verify
    does not look users up, but another systemd version might)."""
    text = path.read_text(encoding="utf-8")
    text = text.replace(INSTALL_BIN, f"{VENV_BIN}/")
    text = text.replace("/usr/sbin/nats-server", nats_server_path() or "/bin/true")
    text = re.sub(r"^(User|Group)=.*$", r"\1=root", text, flags=re.M)
    out = out_dir / path.name
    out.write_text(text, encoding="utf-8")
    return out


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    """What counts as a failure: a non-zero exit, or any line naming one of our units.

    `verify` reports most mistakes (unknown keys, values it cannot parse) as warnings and
    still exits 0, prefixing them with `FILE:LINE:` or `UNIT:`; so every such line fails the
    test. Lines naming no unit of ours are about the machine (no systemd running in a
    sandbox, units of the host) and are ignored. `--recursive-errors=no` keeps dependencies
    that exist only on the servers (pubsub-nats.service, network-online.target) out of it.
    """
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed: the unit syntax is checked by parsing")
    rendered = [render_for_verify(p, tmp_path) for p in UNITS]
    r = subprocess.run([tool, "verify", "--man=no", "--generators=no",
                        "--recursive-errors=no", *map(str, rendered)],
                       capture_output=True, text=True, timeout=60)
    ours = [line for line in (r.stdout + r.stderr).splitlines()
            if any(p.name in line for p in rendered)]
    assert r.returncode == 0 and not ours, r.stdout + r.stderr
    # systemd's own score of the hardening options (0-100 here, shown as 0-10): every unit at
    # most 2.5, "OK" on its scale, so dropping a protection is noticed.
    for unit in rendered:
        r = subprocess.run([tool, "security", "--offline=yes", "--threshold=25", str(unit)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{unit.name}: exposure over 2.5:\n{r.stdout[-3000:]}"


def test_sysusers_file(tmp_path: Path) -> None:
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        pytest.skip("systemd-sysusers is not installed")
    # An empty root: the users are created from nothing, the host's files are not read.
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    r = subprocess.run([tool, "--dry-run", f"--root={root}", str(DEPLOY / "sysusers.conf")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    for unit in (EMULATOR_UNIT, WORKER_UNIT):
        (user,) = values(parse_unit(unit), "Service", "User")
        assert f"Creating user '{user}'" in r.stdout + r.stderr


# --- the command lines, for real -------------------------------------------------------------


class Service:
    """A unit's ExecStart in a subprocess, with the unit's environment and cwd `/` as systemd
    would run it; stop() sends the unit's KillSignal= as `systemctl stop` does and returns the
    exit status."""

    def __init__(self, unit: Path, argv: list[str], env: dict[str, str], log: Path,
                 name: str = "") -> None:
        self.name, self.argv, self.log = name or unit.stem, argv, log
        (kill,) = values(parse_unit(unit), "Service", "KillSignal") or ["SIGTERM"]
        self.kill_signal = signal.Signals[kill]
        self._out = open(log, "wb")
        self.proc = subprocess.Popen(argv, env={**BASE_ENV, **env}, cwd="/",
                                     stdout=self._out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.argv}\n"
                                 f"{self.text()[-3000:]}")
        return True

    def wait_log(self, needle: str, timeout: float = 20) -> None:
        wait_for(lambda: self.alive() and needle in self.text(), timeout=timeout,
                 message=f"{needle!r} in the log of {self.name}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(self.kill_signal)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._out.close()
        return self.proc.returncode


@contextmanager
def services() -> Iterator[list[Service]]:
    """Started services, stopped in reverse order even when the test fails."""
    started: list[Service] = []
    try:
        yield started
    finally:
        for s in reversed(started):
            s.stop()


def localize(argv: list[str], dirs: dict[str, Path]) -> list[str]:
    """Installed paths to the test's: the venv's scripts, the real nats-server, and each
    directory prefix in `dirs` to its temporary stand-in."""
    out = []
    for arg in argv:
        if arg.startswith(INSTALL_BIN):
            arg = f"{VENV_BIN}/{arg[len(INSTALL_BIN):]}"
        elif arg == "/usr/sbin/nats-server":
            arg = nats_server_path() or arg
        for prefix, local in dirs.items():
            arg = arg.replace(prefix, str(local))
        out.append(arg)
    return out


def https_get(url: str, ca: Path, headers: dict[str, str] | None = None) -> int:
    ctx = ssl.create_default_context(cafile=str(ca))
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def https_post(url: str, ca: Path, key: Path, body: dict[str, object]) -> dict[str, object]:
    """A REST call signed as Google's clients sign it: a self-signed JWT from the key."""
    from google.auth import jwt

    creds = jwt.Credentials.from_service_account_file(
        str(key), audience="https://pubsub.googleapis.com/")
    creds.refresh(None)
    token = creds.token.decode() if isinstance(creds.token, bytes) else creds.token
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Authorization": f"Bearer {token}",
                                          "Content-Type": "application/json"})
    ctx = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(req, context=ctx, timeout=30) as r:
        return json.loads(r.read())


def start_emulator(started: list[Service], tmp: Path, env: dict[str, str]) -> tuple[int, Path]:
    """pubsub-emulator.service's command line on a free loopback port: the example
    environment file's values, the node address 10.0.0.11 turned into 127.0.0.1 (so
    --tls-hostname covers the address the test connects to), the data dir and /etc in `tmp`.
    The port and the CA certificate the clients must trust."""
    port = free_port()
    env = {k: v.replace("10.0.0.11", "127.0.0.1") for k, v in env.items()}
    env.update(PUBSUB_HOST="127.0.0.1", PUBSUB_PORT=str(port))
    state, etc = tmp / "var-lib-pubsub-emulator", tmp / "etc"
    etc.mkdir(exist_ok=True)
    shutil.copy(DEPLOY / "topology.yaml", etc / "topology.yaml")
    argv = localize(exec_start(EMULATOR_UNIT, env),
                    {"/var/lib/pubsub-emulator": state, ETC: etc})
    started.append(emu := Service(EMULATOR_UNIT, argv, env, tmp / "emulator.log"))
    ca = state / "tls" / "ca.pem"  # where --tls-self-signed puts the CA clients trust

    def healthy() -> bool:
        emu.alive()
        return ca.exists() and https_get(f"https://127.0.0.1:{port}/healthz", ca) == 200

    wait_for(healthy, timeout=30, message=f"emulator /healthz: {emu.text()[-1500:]}")
    return port, ca


def keys_create(email: str, out: Path, port: int, store_args: list[str], role: str) -> None:
    """`keys create` as deploy/README.md runs it: the key and its one role (`--role`)."""
    r = subprocess.run([f"{VENV_BIN}/pubsub-emulator", "keys", "create", email,
                        "--out", str(out), "--url", f"https://127.0.0.1:{port}", *store_args,
                        "--role", role],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# The roles deploy/README.md grants: the sender publishes to its topic, the worker consumes
# its subscription.
SENDER_ROLE = "roles/pubsub.publisher@projects/my-project/topics/my-topic"
WORKER_ROLE = "roles/pubsub.subscriber@projects/my-project/subscriptions/subscription-to-my-topic"


class _Receiver(BaseHTTPRequestHandler):
    """The receiver app's part: records each push and answers 204 (ack)."""

    pushes: list[tuple[str, dict[str, object]]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.pushes.append((self.path, json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass  # the test asserts on what arrived; no access log on stderr


def test_emulator_and_push_worker_units_serve(tmp_path: Path) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    _Receiver.pushes = []
    try:
        with services() as started:
            port, ca = start_emulator(started, tmp_path, unit_env(EMULATOR_UNIT))
            base = f"https://127.0.0.1:{port}/v1/projects/my-project"
            # --auth is on: no credentials, no answer.
            assert https_get(f"{base}/topics/my-topic", ca) == 401

            # First start as deploy/README.md describes it: a key per caller, the CA copied
            # beside the worker's config, the push token.
            state, etc = tmp_path / "var-lib-pubsub-emulator", tmp_path / "etc"
            raw = yaml.safe_load((DEPLOY / "push-worker.yaml").read_text(encoding="utf-8"))
            keys_create("push-worker@my-project.iam.gserviceaccount.com",
                        etc / raw["credentials_file"], port, ["--data-dir", str(state)],
                        WORKER_ROLE)
            keys_create("sender@my-project.iam.gserviceaccount.com", tmp_path / "sender.json",
                        port, ["--data-dir", str(state)], SENDER_ROLE)
            shutil.copy(ca, etc / raw["ca_file"])
            sub = raw["subscriptions"][0]
            (etc / sub["token_file"]).write_text("deploy-test-token\n")
            raw["pubsub_endpoint"] = f"127.0.0.1:{port}"
            sub["endpoint"] = f"http://127.0.0.1:{receiver.server_port}/pubsub/push"
            (etc / "push-worker.yaml").write_text(yaml.safe_dump(raw))

            env = unit_env(WORKER_UNIT)
            argv = localize(exec_start(WORKER_UNIT, env), {ETC: etc})
            started.append(worker := Service(WORKER_UNIT, argv, env, tmp_path / "worker.log"))
            worker.wait_log("pulling projects/my-project/subscriptions/subscription-to-my-topic")

            published = https_post(f"{base}/topics/my-topic:publish", ca, tmp_path / "sender.json",
                                   {"messages": [{"data": base64.b64encode(b"hi").decode()}]})
            wait_for(lambda: worker.alive() and _Receiver.pushes, timeout=30,
                     message=f"the push; worker log: {worker.text()[-2000:]}")
            path, envelope = _Receiver.pushes[0]
            assert path == "/pubsub/push?token=deploy-test-token"
            assert envelope["message"]["messageId"] == published["messageIds"][0]
            assert base64.b64decode(envelope["message"]["data"]) == b"hi"
            assert "ERROR" not in worker.text(), worker.text()

            for s in reversed(started):
                assert s.stop() == 0, f"{s.name} on {s.kill_signal.name}: {s.text()[-2000:]}"
            started.clear()
            assert "delivered=1 retried=0 failed=0" in worker.text()
    finally:
        receiver.shutdown()


def test_nats_cluster_units_and_emulator_on_them(tmp_path: Path) -> None:
    if nats_server_path() is None:
        pytest.skip("nats-server is not installed (apt-get install nats-server)")
    # Each node's addresses in the example files (10.0.0.11-13, ports 4222/6222) to a free
    # loopback port each, applied to every node's file alike so routes still meet.
    ports: dict[str, str] = {}
    for i, _ in enumerate(NATS_NODES):
        for nats_port in ("4222", "6222"):
            ports[f"10.0.0.1{i + 1}:{nats_port}"] = f"127.0.0.1:{free_port()}"

    def local(value: str) -> str:
        for address, loop in ports.items():
            value = value.replace(address, loop)
        return value

    with services() as started:
        monitors = []
        for node in NATS_NODES:
            env = {k: local(v) for k, v in
                   unit_env(NATS_UNIT, DEPLOY / "nats" / f"node-{node}.env").items()}
            monitor = free_port()
            env["NATS_MONITOR"] = f"127.0.0.1:{monitor}"
            etc, store = tmp_path / f"etc-{node}", tmp_path / f"nats-{node}"
            etc.mkdir()
            conf = NATS_CONF.read_text(encoding="utf-8")
            (etc / NATS_CONF.name).write_text(conf.replace("/var/lib/pubsub-nats", str(store)))
            argv = localize(exec_start(NATS_UNIT, env), {ETC: etc})
            started.append(Service(NATS_UNIT, argv, env, tmp_path / f"nats-{node}.log",
                                   name=f"nats {node}"))
            monitors.append(monitor)
        # /healthz answers 200 once JetStream is up and the cluster has its meta leader.
        for node, monitor in zip(started, monitors, strict=True):
            wait_for(lambda n=node, m=monitor: n.alive() and _http_ok(m), timeout=30,
                     message=f"{node.name} healthy: {node.text()[-1500:]}")

        # An emulator with the store line the emulator's environment file documents.
        env = unit_env(EMULATOR_UNIT)
        env["PUBSUB_STORE"] = local(commented_example(EXAMPLE_ENV[EMULATOR_UNIT], "PUBSUB_STORE"))
        port, ca = start_emulator(started, tmp_path, env)
        key = tmp_path / "sender.json"
        keys_create("sender@my-project.iam.gserviceaccount.com", key, port,
                    env["PUBSUB_STORE"].split(), SENDER_ROLE)
        # A 2 MiB message: over NATS' default max_payload, under the config's (stored whole).
        data = base64.b64encode(os.urandom(2 << 20)).decode()
        published = https_post(f"https://127.0.0.1:{port}/v1/projects/my-project/topics/"
                               "my-topic:publish", ca, key, {"messages": [{"data": data}]})
        assert published["messageIds"]

        for s in reversed(started):
            assert s.stop() == 0, f"{s.name} on {s.kill_signal.name}: {s.text()[-2000:]}"
        started.clear()


def _http_ok(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
            return r.status == 200
    except OSError:
        return False

