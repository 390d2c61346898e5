"""The worker's YAML configuration: typed dataclasses and validation.

Every problem raises :class:`ConfigError` whose message names the offending field, e.g.
``subscriptions[1].endpoint: required``.
"""

from __future__ import annotations

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

_TOP_KEYS = {"pubsub_endpoint", "subscriptions", "stats_interval", "metrics_port",
             "metrics_host"}
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
    """Validate an already-parsed YAML document (`base_dir` resolves relative token_file)."""
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
                  metrics_port=metrics_port, metrics_host=metrics_host)


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
