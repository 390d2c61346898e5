"""What an adapter tells of each call it answered: one log line and the call's metrics.

Both adapters call `CallLog.answered` once per call, in one place each (the gRPC handler
wrapper, the REST dispatcher): the line is written at debug level (`--log-level debug`: one
line per RPC) with `method`, `resource`, `status` and `duration` (seconds) as fields of the
record, which `--log-format json` writes as keys of its JSON object (logs.py); the counters go
to a `CallRecorder` (metrics.py), if any. The status is google.rpc's name: OK or the error's.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from .client_errors import one_line

# Request fields that name what a call acts on, in the order they are looked at: `name` of a
# create (Topic, Subscription, CreateSnapshotRequest, DeleteSchemaRequest...) before the topic
# a Subscription names; a field holding a resource (UpdateTopicRequest.topic) gives its name.
_RESOURCE_FIELDS = ("name", "topic", "subscription", "snapshot", "resource", "project",
                    "parent")


class CallRecorder(Protocol):
    """Counts answered calls (metrics.Metrics)."""

    def call_answered(self, protocol: str, method: str, status: str, seconds: float) -> None:
        ...


def resource_of(request: Any) -> str:
    """The resource a request names ("" if none)."""
    for field in _RESOURCE_FIELDS:
        value = getattr(request, field, None)
        if isinstance(value, str):
            if value:
                return one_line(value)
        elif value is not None and isinstance(getattr(value, "name", None), str) and value.name:
            return one_line(value.name)
    return ""


class CallLog:
    """An adapter's call log: `protocol` ("grpc", "rest") names it in metrics."""

    def __init__(self, logger: logging.Logger, protocol: str,
                 recorder: CallRecorder | None = None) -> None:
        self._log = logger
        self._protocol = protocol
        self._recorder = recorder

    def answered(self, method: str, request: Any, status: str, seconds: float,
                 detail: str = "") -> None:
        """A call ended with `status` after `seconds`; `detail`: the error's message."""
        if self._recorder is not None:
            self._recorder.call_answered(self._protocol, method, status, seconds)
        if not self._log.isEnabledFor(logging.DEBUG):
            return
        resource = resource_of(request)
        self._log.debug("%s %s -> %s in %.1f ms%s", method, resource or "-", status,
                        seconds * 1000, f": {detail}" if detail else "",
                        extra={"method": method, "resource": resource, "status": status,
                               "duration": round(seconds, 6), "protocol": self._protocol})
