"""The worker's YAML configuration: typed dataclasses and validation.

Every problem raises :class:`ConfigError` whose message names the offending field, e.g.
``subscriptions[1].endpoint: required``.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from push_contract import BackoffPolicy

FORMATS = ("wrapped", "unwrapped")
DEFAULT_CONCURRENCY = 10
DEFAULT_TIMEOUT = 30.0
DEFAULT_STATS_INTERVAL = 30.0
DEFAULT_ACK_DEADLINE = 60

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~%+-]*$")
_HOSTPORT_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})$")

_TOP_KEYS = {"pubsub_endpoint", "credentials_file", "ca_file", "subscriptions",
             "stats_interval", "metrics_port", "metrics_host"}
# Members google-auth needs to sign with a service-account key file.
_KEY_MEMBERS = ("private_key", "client_email", "token_uri")
_SUB_KEYS = {"project_id", "subscription_id", "endpoint", "concurrency", "timeout", "token",
             "token_file", "format", "write_metadata", "backoff", "ack_deadline"}
_BACKOFF_KEYS = {"initial", "multiplier", "max"}


class ConfigError(ValueError):
    """The configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class SubscriptionConfig:
    project_id: str
    subscription_id: str
    endpoint: str
    concurrency: int = DEFAULT_CONCURRENCY
    timeout: float = DEFAULT_TIMEOUT
    token: str | None = field(default=None, repr=False)
    format: str = "wrapped"
    write_metadata: bool = False
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    ack_deadline: int = DEFAULT_ACK_DEADLINE

    @property
    def subscription_path(self) -> str:
        return f"projects/{self.project_id}/subscriptions/{self.subscription_id}"


@dataclass(frozen=True)
class Config:
    subscriptions: tuple[SubscriptionConfig, ...]
    pubsub_endpoint: str | None = None
    stats_interval: float = DEFAULT_STATS_INTERVAL
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # With credentials_file: TLS to pubsub_endpoint (or Google) with that service-account key,
    # the server checked against ca_file (a PEM bundle) or else gRPC's default roots.
    credentials_file: Path | None = None
    ca_file: Path | None = None

    @property
    def tokens(self) -> list[str]:
        return [s.token for s in self.subscriptions if s.token]


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return parse_config(raw, base_dir=path.parent)


def parse_config(raw: Any, base_dir: Path | None = None) -> Config:
    """Validate an already-parsed YAML document (`base_dir` resolves relative file paths)."""
    base_dir = base_dir or Path.cwd()
    if not isinstance(raw, Mapping):
        raise ConfigError("top level: must be a mapping with a 'subscriptions' list")
    _no_unknown(raw, _TOP_KEYS, "")

    endpoint = raw.get("pubsub_endpoint")
    if endpoint is not None:
        if not isinstance(endpoint, str) or not _HOSTPORT_RE.match(endpoint.strip()):
            raise ConfigError("pubsub_endpoint: must be host:port (e.g. 127.0.0.1:8085), "
                              "or null for real Cloud Pub/Sub")
        endpoint = endpoint.strip()
    credentials_file = _credentials_file(raw.get("credentials_file"), base_dir)
    ca_file = _ca_file(raw.get("ca_file"), base_dir)
    if ca_file is not None and credentials_file is None:
        raise ConfigError("ca_file: only valid with credentials_file (without credentials the "
                          "worker talks plain gRPC to the emulator, or to Google with ADC)")

    stats_interval = _number(raw, "stats_interval", "stats_interval", DEFAULT_STATS_INTERVAL)
    metrics_port = raw.get("metrics_port")
    if metrics_port is not None and (not _is_int(metrics_port) or not 0 <= metrics_port < 65536):
        raise ConfigError("metrics_port: must be an integer port 0-65535")
    metrics_host = raw.get("metrics_host", "127.0.0.1")
    if not isinstance(metrics_host, str) or not metrics_host:
        raise ConfigError("metrics_host: must be an address to bind, e.g. 0.0.0.0")

    subs_raw = raw.get("subscriptions")
    if subs_raw is None:
        raise ConfigError("subscriptions: required (a list of subscriptions to push)")
    if not isinstance(subs_raw, list) or not subs_raw:
        raise ConfigError("subscriptions: must be a non-empty list")
    subs = tuple(_subscription(item, f"subscriptions[{i}]", base_dir)
                 for i, item in enumerate(subs_raw))
    seen: dict[str, int] = {}
    for i, sub in enumerate(subs):
        if sub.subscription_path in seen:
            raise ConfigError(f"subscriptions[{i}]: duplicate of subscriptions"
                              f"[{seen[sub.subscription_path]}] ({sub.subscription_path})")
        seen[sub.subscription_path] = i
    return Config(subscriptions=subs, pubsub_endpoint=endpoint, stats_interval=stats_interval,
                  metrics_port=metrics_port, metrics_host=metrics_host,
                  credentials_file=credentials_file, ca_file=ca_file)


def _read_file(value: Any, key: str, base_dir: Path, what: str) -> tuple[Path, bytes]:
    """The path (relative to the config file) and the bytes of a file-valued field."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{key}: must be the path of {what}")
    p = Path(value.strip()).expanduser()
    if not p.is_absolute():
        p = base_dir / p
    try:
        return p, p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {p}: {e.strerror or e}") from e


def _credentials_file(value: Any, base_dir: Path) -> Path | None:
    """A service-account key file (as Google or `pubsub-emulator keys create` writes them),
    checked now so that a wrong file stops the worker at start, not at its first pull."""
    if value is None:
        return None
    path, data = _read_file(value, "credentials_file", base_dir, "a service-account key file")
    try:
        info = json.loads(data)
    except ValueError as e:
        raise ConfigError(f"credentials_file: {path} is not JSON: {e}") from e
    if not isinstance(info, dict) or info.get("type") != "service_account":
        kind = info.get("type") if isinstance(info, dict) else type(info).__name__
        raise ConfigError(f"credentials_file: {path} is not a service-account key file "
                          f"(type {kind!r}, expected 'service_account')")
    missing = [m for m in _KEY_MEMBERS if not info.get(m)]
    if missing:
        raise ConfigError(f"credentials_file: {path} lacks {', '.join(missing)}")
    from google.oauth2 import service_account

    try:
        service_account.Credentials.from_service_account_info(info)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"credentials_file: {path}: unusable key: {e}") from e
    return path


def _ca_file(value: Any, base_dir: Path) -> Path | None:
    if value is None:
        return None
    path, data = _read_file(value, "ca_file", base_dir, "a PEM CA bundle")
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise ConfigError(f"ca_file: {path} holds no PEM certificate")
    return path


def _subscription(raw: Any, where: str, base_dir: Path) -> SubscriptionConfig:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping with project_id, subscription_id, endpoint")
    _no_unknown(raw, _SUB_KEYS, where + ".")
    project_id = _required_id(raw, "project_id", where)
    subscription_id = _required_id(raw, "subscription_id", where)

    endpoint = raw.get("endpoint")
    if endpoint is None:
        raise ConfigError(f"{where}.endpoint: required")
    if not isinstance(endpoint, str):
        raise ConfigError(f"{where}.endpoint: must be an http(s) URL string")
    parts = urlsplit(endpoint.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{where}.endpoint: must be an http:// or https:// URL")
    if "token=" in parts.query:
        raise ConfigError(f"{where}.endpoint: put the token in 'token' or 'token_file', "
                          "not in the URL")

    concurrency = raw.get("concurrency", DEFAULT_CONCURRENCY)
    if not _is_int(concurrency) or concurrency < 1:
        raise ConfigError(f"{where}.concurrency: must be an integer >= 1")
    timeout = _number(raw, "timeout", f"{where}.timeout", DEFAULT_TIMEOUT)

    token = _token(raw, where, base_dir)

    fmt = raw.get("format", "wrapped")
    if fmt not in FORMATS:
        raise ConfigError(f"{where}.format: must be one of {', '.join(FORMATS)}")
    write_metadata = raw.get("write_metadata", False)
    if not isinstance(write_metadata, bool):
        raise ConfigError(f"{where}.write_metadata: must be true or false")
    if write_metadata and fmt != "unwrapped":
        raise ConfigError(f"{where}.write_metadata: only valid with format: unwrapped")

    backoff = _backoff(raw.get("backoff"), f"{where}.backoff")
    ack_deadline = raw.get("ack_deadline", DEFAULT_ACK_DEADLINE)
    if not _is_int(ack_deadline) or not 10 <= ack_deadline <= 600:
        raise ConfigError(f"{where}.ack_deadline: must be an integer number of seconds, 10-600")
    return SubscriptionConfig(project_id=project_id, subscription_id=subscription_id,
                              endpoint=endpoint.strip(), concurrency=concurrency,
                              timeout=timeout, token=token, format=fmt,
                              write_metadata=write_metadata, backoff=backoff,
                              ack_deadline=ack_deadline)


def _token(raw: Mapping[str, Any], where: str, base_dir: Path) -> str | None:
    """The verification token, given inline (`token`) or in a file (`token_file`)."""
    token = raw.get("token")
    token_file = raw.get("token_file")
    if token is not None and token_file is not None:
        raise ConfigError(f"{where}.token_file: give either token or token_file, not both")
    if token is not None and (not isinstance(token, str) or not token):
        raise ConfigError(f"{where}.token: must be a non-empty string")
    if token_file is not None:
        if not isinstance(token_file, str) or not token_file:
            raise ConfigError(f"{where}.token_file: must be a file path")
        p = Path(token_file).expanduser()
        if not p.is_absolute():
            p = base_dir / p
        try:
            token = p.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"{where}.token_file: cannot read {p}: {e.strerror or e}") from e
        if not token:
            raise ConfigError(f"{where}.token_file: {p} is empty")
    return token


def _backoff(raw: Any, where: str) -> BackoffPolicy:
    if raw is None:
        return BackoffPolicy()
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: must be a mapping with initial, multiplier, max")
    _no_unknown(raw, _BACKOFF_KEYS, where + ".")
    default = BackoffPolicy()
    initial = _number(raw, "initial", f"{where}.initial", default.initial)
    maximum = _number(raw, "max", f"{where}.max", default.maximum)
    multiplier = _number(raw, "multiplier", f"{where}.multiplier", default.multiplier,
                         "a number >= 1")
    if multiplier < 1:
        raise ConfigError(f"{where}.multiplier: must be >= 1")
    if maximum < initial:
        raise ConfigError(f"{where}.max: must be >= initial ({initial})")
    return BackoffPolicy(initial=initial, multiplier=multiplier, maximum=maximum)


def _no_unknown(raw: Mapping[Any, Any], allowed: set[str], prefix: str) -> None:
    for key in raw:
        if key not in allowed:
            raise ConfigError(f"{prefix}{key}: unknown field (allowed: "
                              f"{', '.join(sorted(allowed))})")


def _required_id(raw: Mapping[str, Any], key: str, where: str) -> str:
    value = raw.get(key)
    if value is None:
        raise ConfigError(f"{where}.{key}: required")
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ConfigError(f"{where}.{key}: must be a plain resource id (no slashes), "
                          f"got {value!r}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(raw: Mapping[str, Any], key: str, where: str, default: float,
            what: str = "a positive number of seconds") -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value <= 0:
        raise ConfigError(f"{where}: must be {what}")
    return float(value)
