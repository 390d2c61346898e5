"""Push worker: streaming pull from Pub/Sub, POST each message to an HTTP endpoint.

Public API::

    from push_worker import load_config, Worker
    worker = Worker(load_config("push-worker.yaml"))
    worker.run()          # blocks until worker.stop() (e.g. from a signal handler)
"""

from push_contract import (
    ACK_STATUSES,
    BackoffPolicy,
    BackoffState,
    MessageFields,
    PushRequest,
    build_request,
    format_timestamp,
    record_failure,
    record_success,
    wait_time,
)

from ._config import Config, ConfigError, SubscriptionConfig, load_config, parse_config
from ._delivery import PERMANENT_STATUSES, Outcome, classify, url_with_token
from ._worker import Worker

__all__ = [
    "ACK_STATUSES",
    "PERMANENT_STATUSES",
    "BackoffPolicy",
    "BackoffState",
    "Config",
    "ConfigError",
    "MessageFields",
    "Outcome",
    "PushRequest",
    "SubscriptionConfig",
    "Worker",
    "build_request",
    "classify",
    "format_timestamp",
    "load_config",
    "parse_config",
    "record_failure",
    "record_success",
    "url_with_token",
    "wait_time",
]
