"""What a push request carries: Google's push body (wrapped) or the raw data (unwrapped).

Pure functions over :class:`MessageFields`; :func:`fields_from_message` adapts a
``google.cloud.pubsub_v1`` subscriber message.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CONTENT_TYPE_JSON = "application/json"
#: Statuses a push endpoint answers to acknowledge a message; anything else is a nack.
ACK_STATUSES = frozenset({102, 200, 201, 202, 204})
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")  # an HTTP header name (RFC 9110 token)

log = logging.getLogger("push_contract.envelope")


@dataclass(frozen=True)
class MessageFields:
    """The parts of a received Pub/Sub message that go into a push request."""

    data: bytes
    message_id: str
    publish_seconds: int
    publish_nanos: int = 0
    attributes: Mapping[str, str] = field(default_factory=dict)
    ordering_key: str = ""
    delivery_attempt: int | None = None


@dataclass(frozen=True)
class PushRequest:
    body: bytes
    headers: dict[str, str]


def format_timestamp(seconds: int, nanos: int = 0) -> str:
    """RFC 3339 UTC with a ``Z``, fractional digits as protobuf's JSON mapping writes them.

    0, 3, 6 or 9 digits: ``2021-02-26T19:13:55.749Z``, ``2021-02-26T19:13:55Z``.
    """
    base = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return base + fraction_z(nanos)


def fraction_z(nanos: int) -> str:
    """The end of a timestamp after its seconds: ``Z``, ``.749Z``, ``.749001Z``..."""
    if nanos == 0:
        return "Z"
    if nanos % 1_000_000 == 0:
        return f".{nanos // 1_000_000:03d}Z"
    if nanos % 1_000 == 0:
        return f".{nanos // 1_000:06d}Z"
    return f".{nanos:09d}Z"


def wrapped_envelope(msg: MessageFields, subscription: str) -> dict[str, Any]:
    """Google's push body as a dict (docs/push-worker.md: optional fields only when set).

    Attributes are sorted by name, so a message always makes the same bytes.
    """
    publish_time = format_timestamp(msg.publish_seconds, msg.publish_nanos)
    message: dict[str, Any] = {"data": base64.b64encode(msg.data).decode("ascii")}
    if msg.attributes:
        message["attributes"] = dict(sorted(msg.attributes.items()))
    message["messageId"] = msg.message_id
    message["message_id"] = msg.message_id
    message["publishTime"] = publish_time
    message["publish_time"] = publish_time
    if msg.ordering_key:
        message["orderingKey"] = msg.ordering_key
    envelope: dict[str, Any] = {"message": message, "subscription": subscription}
    if msg.delivery_attempt is not None:
        envelope["deliveryAttempt"] = msg.delivery_attempt
    return envelope


def header_allowed(name: str, value: str) -> bool:
    """Whether an attribute can be an HTTP header: a token (RFC 9110) with a one-line latin-1
    value."""
    if not _TOKEN.match(name) or "\r" in value or "\n" in value:
        return False
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def metadata_headers(msg: MessageFields, subscription: str) -> dict[str, str]:
    """Unwrapped with write_metadata: ``x-goog-pubsub-*`` headers, then attributes as headers.

    Google: "When true, writes the Pub/Sub message metadata to x-goog-pubsub-<KEY>:<VAL>
    headers of the HTTP request. Writes the Pub/Sub message attributes to <KEY>:<VAL> headers
    of the HTTP request." (PushConfig.NoWrapper.write_metadata, google/pubsub/v1/pubsub.proto;
    the example in https://cloud.google.com/pubsub/docs/payload-unwrapping shows
    x-goog-pubsub-subscription-name, x-goog-pubsub-message-id, x-goog-pubsub-publish-time and
    x-goog-pubsub-ordering-key). Attributes that cannot be HTTP headers (see header_allowed)
    are left out, so the message is still delivered.
    """
    headers = {
        "x-goog-pubsub-subscription-name": subscription,
        "x-goog-pubsub-message-id": msg.message_id,
        "x-goog-pubsub-publish-time": format_timestamp(msg.publish_seconds, msg.publish_nanos),
    }
    if msg.ordering_key:
        headers["x-goog-pubsub-ordering-key"] = msg.ordering_key
    for key, value in sorted(msg.attributes.items()):
        if header_allowed(key, value):
            headers[key] = value
        else:
            log.debug("%s: attribute %r cannot be an HTTP header; not written", subscription,
                      key)
    return headers


def build_request(msg: MessageFields, subscription: str, fmt: str = "wrapped",
                  write_metadata: bool = False) -> PushRequest:
    """Body and headers of the POST for `msg` on `subscription` (full name)."""
    if fmt == "wrapped":
        body = json.dumps(wrapped_envelope(msg, subscription), separators=(",", ":"))
        return PushRequest(body.encode("utf-8"), {"Content-Type": CONTENT_TYPE_JSON})
    if fmt == "unwrapped":
        headers = metadata_headers(msg, subscription) if write_metadata else {}
        return PushRequest(bytes(msg.data), headers)
    raise ValueError(f"unknown format {fmt!r}")


def fields_from_message(message: Any) -> MessageFields:
    """Adapt a ``google.cloud.pubsub_v1.subscriber.message.Message``.

    Reads the raw protobuf timestamp when available (exact nanoseconds); falls back to the
    public ``publish_time`` datetime.
    """
    raw = getattr(message, "_message", None)
    ts = getattr(raw, "publish_time", None)
    if ts is not None and hasattr(ts, "seconds"):
        seconds, nanos = int(ts.seconds), int(ts.nanos)
    else:
        when: dt.datetime = message.publish_time
        micros = round(when.timestamp() * 1_000_000)
        seconds, nanos = divmod(micros, 1_000_000)
        nanos *= 1_000
    return MessageFields(
        data=bytes(message.data),
        message_id=str(message.message_id),
        publish_seconds=seconds,
        publish_nanos=nanos,
        attributes=dict(message.attributes),
        ordering_key=message.ordering_key or "",
        delivery_attempt=message.delivery_attempt,
    )
