"""Google's push contract, shared by the emulator's native push and the push worker.

- envelope: what a push request carries (wrapped JSON envelope, or unwrapped data with
  metadata headers), and which statuses acknowledge a message (ACK_STATUSES);
- backoff: how long to wait before pushing again after failures, as pure functions.
"""

from .backoff import (
    BackoffPolicy,
    BackoffState,
    failures_at_maximum,
    record_ack,
    record_failure,
    record_nack,
    record_success,
    wait_time,
)
from .envelope import (
    ACK_STATUSES,
    CONTENT_TYPE_JSON,
    MessageFields,
    PushRequest,
    build_request,
    fields_from_message,
    format_timestamp,
    fraction_z,
    header_allowed,
    metadata_headers,
    wrapped_envelope,
)

__all__ = [
    "ACK_STATUSES", "CONTENT_TYPE_JSON", "BackoffPolicy", "BackoffState", "MessageFields",
    "PushRequest", "build_request", "failures_at_maximum", "fields_from_message",
    "format_timestamp", "fraction_z", "header_allowed", "metadata_headers", "record_ack",
    "record_failure", "record_nack", "record_success", "wait_time", "wrapped_envelope",
]
