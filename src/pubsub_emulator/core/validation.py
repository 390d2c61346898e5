"""Input checks of the core: labels, update masks, topic and subscription settings, messages.

Each check raises INVALID_ARGUMENT with Cloud Pub/Sub's wording, or fills in Google's default
for a setting left unset when a resource is created.
"""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf import field_mask_pb2
from google.protobuf.message import Message

from ..filter import FilterError, compile_filter
from . import limits, names
from .errors import invalid_argument
from .model import Subscription, duration_s
from .push_config import redact_url

log = logging.getLogger("pubsub_emulator.service")

# Fields UpdateTopic/UpdateSubscription/UpdateSnapshot may change (Google's update_mask paths).
TOPIC_MUTABLE = frozenset({"labels", "message_storage_policy", "kms_key_name", "schema_settings",
                           "message_retention_duration", "ingestion_data_source_settings",
                           "message_transforms"})
SUBSCRIPTION_MUTABLE = frozenset({"labels", "ack_deadline_seconds", "push_config",
                                  "bigquery_config", "cloud_storage_config",
                                  "retain_acked_messages", "message_retention_duration",
                                  "expiration_policy", "dead_letter_policy", "retry_policy",
                                  "enable_exactly_once_delivery", "message_transforms"})
SNAPSHOT_MUTABLE = frozenset({"labels", "expire_time"})


def check_labels(labels: Any) -> None:
    if len(labels) > 64:
        raise invalid_argument("A resource may have at most 64 labels.")
    for k, v in labels.items():
        if not k or len(k) > 63 or len(v) > 63:
            raise invalid_argument(f"Invalid label: {k}={v}")


def check_mask(mask: field_mask_pb2.FieldMask, resource: Message, mutable: frozenset[str],
               kind: str) -> list[list[str]]:
    """The update mask's paths as field names, each checked against what may change.

    Cloud Pub/Sub accepts paths in the proto (snake_case) and the JSON (camelCase) spelling,
    and nested paths into message fields (e.g. `retryPolicy.minimumBackoff`,
    `schemaSettings.firstRevisionId`); each path comes back as its snake_case segments.
    """
    if not mask.paths:
        raise invalid_argument("The update_mask in the request must be set and non-empty.")
    resolved = []
    for path in mask.paths:
        segments = _field_names(resource.DESCRIPTOR, path)
        if segments is None or segments[0] not in mutable:
            raise invalid_argument(f"Invalid update_mask provided in the Update{kind} request: "
                                   f"the '{path}' field cannot be updated.")
        resolved.append(segments)
    return resolved


def _field_names(descriptor: Any, path: str) -> list[str] | None:
    """`path`'s segments as proto field names, or None if a segment names no field (or goes
    into a repeated field or map, which masks cannot address piecewise)."""
    names: list[str] = []
    for segment in path.split("."):
        if descriptor is None:
            return None
        fd = descriptor.fields_by_name.get(segment) or descriptor.fields_by_camelcase_name.get(
            segment)
        if fd is None:
            return None
        names.append(fd.name)
        descriptor = None if fd.is_repeated else fd.message_type
    return names


def apply_mask(target: Message, source: Message, paths: list[list[str]]) -> None:
    """Copy each masked field from source to target (unset in source: cleared there)."""
    for segments in paths:
        *parents, leaf = segments
        src: Any = source
        dst: Any = target
        for name in parents:
            src, dst = getattr(src, name), getattr(dst, name)
        fd = src.DESCRIPTOR.fields_by_name[leaf]
        dst.ClearField(leaf)
        if fd.is_repeated:  # repeated fields and maps
            getattr(dst, leaf).MergeFrom(getattr(src, leaf))
        elif fd.message_type is not None:
            if src.HasField(leaf):
                getattr(dst, leaf).CopyFrom(getattr(src, leaf))
        else:
            setattr(dst, leaf, getattr(src, leaf))


def check_topic_retention(topic: Any) -> None:
    if topic.HasField("message_retention_duration"):
        s = duration_s(topic.message_retention_duration)
        if not limits.MIN_RETENTION_S <= s <= limits.MAX_TOPIC_RETENTION_S:
            raise invalid_argument(
                "The value for message_retention_duration must be between 10 minutes and "
                "31 days.")


def check_subscription(sub: Any, creating: bool) -> None:
    """Validate a subscription's settings; when creating, fill in Google's defaults."""
    if creating and sub.ack_deadline_seconds == 0:
        sub.ack_deadline_seconds = limits.DEFAULT_ACK_DEADLINE_S
    if not limits.MIN_ACK_DEADLINE_S <= sub.ack_deadline_seconds <= limits.MAX_ACK_DEADLINE_S:
        raise invalid_argument(
            f"Invalid ack_deadline_seconds: {sub.ack_deadline_seconds}. It must be between "
            f"{limits.MIN_ACK_DEADLINE_S} and {limits.MAX_ACK_DEADLINE_S} seconds.")
    check_labels(sub.labels)
    _check_retention_and_expiration(sub, creating)
    if sub.HasField("dead_letter_policy"):
        _check_dead_letter(sub.dead_letter_policy)
    if sub.HasField("retry_policy"):
        _check_retry(sub.retry_policy)
    if sub.filter:
        try:
            compile_filter(sub.filter)
        except FilterError as exc:
            raise invalid_argument(str(exc)) from None
    endpoint = sub.push_config.push_endpoint
    if endpoint and not endpoint.startswith(("http://", "https://")):
        # The adapters log errors they return: the endpoint's query may hold a token.
        raise invalid_argument(f"Invalid push_endpoint given: {redact_url(endpoint)}")
    with_present_fields(sub)


def with_present_fields(sub: Any) -> Any:
    """The subscription with the fields Google always returns, empty or not: a pull
    subscription has an empty `pushConfig` ({} in JSON), which clients read without a check."""
    sub.push_config.SetInParent()
    return sub


def _check_retention_and_expiration(sub: Any, creating: bool) -> None:
    if creating and not sub.HasField("message_retention_duration"):
        sub.message_retention_duration.seconds = limits.DEFAULT_SUBSCRIPTION_RETENTION_S
    retention = duration_s(sub.message_retention_duration)
    if not limits.MIN_RETENTION_S <= retention <= limits.MAX_SUBSCRIPTION_RETENTION_S:
        raise invalid_argument("The value for message_retention_duration must be between "
                               "10 minutes and 31 days.")
    if creating and not sub.HasField("expiration_policy"):
        sub.expiration_policy.ttl.seconds = limits.DEFAULT_EXPIRATION_TTL_S
    if sub.expiration_policy.HasField("ttl"):
        if duration_s(sub.expiration_policy.ttl) < limits.MIN_EXPIRATION_TTL_S:
            raise invalid_argument("The minimum allowed value for expiration_policy.ttl is "
                                   "1 day.")


def _check_dead_letter(policy: Any) -> None:
    if policy.max_delivery_attempts == 0:
        policy.max_delivery_attempts = limits.DEFAULT_DELIVERY_ATTEMPTS
    if not (limits.MIN_DELIVERY_ATTEMPTS <= policy.max_delivery_attempts
            <= limits.MAX_DELIVERY_ATTEMPTS):
        raise invalid_argument("max_delivery_attempts must be between 5 and 100.")
    if policy.dead_letter_topic:
        names.topic(policy.dead_letter_topic)


def _check_retry(policy: Any) -> None:
    if not policy.HasField("minimum_backoff"):
        policy.minimum_backoff.seconds = limits.DEFAULT_MIN_RETRY_BACKOFF_S
    if not policy.HasField("maximum_backoff"):
        policy.maximum_backoff.seconds = limits.DEFAULT_MAX_RETRY_BACKOFF_S
    low, high = duration_s(policy.minimum_backoff), duration_s(policy.maximum_backoff)
    if not 0 <= low <= high <= limits.MAX_RETRY_BACKOFF_S:
        raise invalid_argument("The retry_policy backoffs must satisfy 0 <= "
                               "minimum_backoff <= maximum_backoff <= 600s.")


def check_publish_request(request: Any) -> None:
    """A Publish request within Google's limits, every message non-empty and well formed."""
    if not request.messages:
        raise invalid_argument("The request contains no messages.")
    if len(request.messages) > limits.MAX_MESSAGES_PER_PUBLISH:
        raise invalid_argument(
            f"The number of messages in the request exceeds the maximum allowed "
            f"({limits.MAX_MESSAGES_PER_PUBLISH}).")
    if request.ByteSize() > limits.MAX_REQUEST_BYTES:
        raise invalid_argument(
            f"The value for request_size is too large. You passed {request.ByteSize()} "
            f"bytes in the request, but the maximum value is {limits.MAX_REQUEST_BYTES}.")
    for message in request.messages:
        check_message(message)


def check_message(message: Any) -> None:
    if not message.data and not message.attributes:
        raise invalid_argument(
            "Some messages are empty. A message must contain data or at least one "
            "attribute.")
    if len(message.attributes) > limits.MAX_ATTRIBUTES:
        raise invalid_argument(
            f"The message has {len(message.attributes)} attributes, more than the "
            f"maximum of {limits.MAX_ATTRIBUTES}.")
    for key, value in message.attributes.items():
        if not key or len(key.encode()) > limits.MAX_ATTRIBUTE_KEY_BYTES:
            raise invalid_argument(
                f"The attribute key is empty or longer than "
                f"{limits.MAX_ATTRIBUTE_KEY_BYTES} bytes: {key[:64]!r}.")
        if key.startswith("goog"):
            raise invalid_argument(
                f"The attribute key {key!r} is reserved (it starts with 'goog').")
        if len(value.encode()) > limits.MAX_ATTRIBUTE_VALUE_BYTES:
            raise invalid_argument(
                f"The value of attribute {key!r} is longer than "
                f"{limits.MAX_ATTRIBUTE_VALUE_BYTES} bytes.")
    if len(message.ordering_key.encode()) > limits.MAX_ORDERING_KEY_BYTES:
        raise invalid_argument(
            f"The ordering key is longer than {limits.MAX_ORDERING_KEY_BYTES} bytes.")


def unhonoured_settings(resource: Message) -> list[str]:
    """Settings of a topic or subscription that are stored but not acted on (README lists them).

    Each is named in the log when set, so nobody mistakes "accepted" for "honoured".
    """
    if isinstance(resource, Subscription):
        checks = {"bigquery_config": resource.HasField("bigquery_config"),
                  "cloud_storage_config": resource.HasField("cloud_storage_config")}
    else:
        checks = {"kms_key_name": bool(resource.kms_key_name),
                  "ingestion_data_source_settings":
                      resource.HasField("ingestion_data_source_settings")}
    return [name for name, is_set in checks.items() if is_set]


def note_unhonoured(resource: Message) -> None:
    settings = unhonoured_settings(resource)
    if settings:
        log.warning("%s: stored but not yet honoured by this emulator: %s (see README)",
                    resource.name, ", ".join(settings))
