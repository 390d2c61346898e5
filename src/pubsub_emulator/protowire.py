"""Protobuf wire encoding of the few messages built on every delivered or published message.

A StreamingPullResponse of 1,000 messages built as protos (a ReceivedMessage each, its
PubsubMessage parsed from the stored bytes) and serialized again cost about 8 µs per message;
written here from the stored bytes, about 2 (a third of the server's CPU under receive + ack).
The encodings are those of google/pubsub/v1/pubsub.proto; tests/test_protowire.py checks each
against the generated classes.

Protobuf fields are (number << 3 | wire type); length-delimited fields (type 2) are the tag,
the length as a varint, then the bytes. Encodings of a message concatenate as a merge, which
is how `stamp` adds the message id and publish time to a message as published.
"""

from __future__ import annotations

from collections.abc import Sequence

# PubsubMessage: message_id = 3, publish_time = 4 (google.protobuf.Timestamp: seconds = 1,
# nanos = 2).
_MESSAGE_ID = b"\x1a"
_PUBLISH_TIME = b"\x22"
# ReceivedMessage: ack_id = 1, message = 2, delivery_attempt = 3 (a varint).
_ACK_ID = b"\x0a"
_MESSAGE = b"\x12"
_DELIVERY_ATTEMPT = b"\x18"
# StreamingPullResponse: received_messages = 1, subscription_properties = 4.
_RECEIVED_MESSAGES = b"\x0a"
_SUBSCRIPTION_PROPERTIES = b"\x22"
# Lengths below 128 take one byte: kept ready (most ack ids and message ids are that short).
_SHORT = [bytes((n,)) for n in range(128)]


def varint(value: int) -> bytes:
    """An unsigned integer as a base-128 varint."""
    if value < 128:
        return _SHORT[value]
    out = bytearray()
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, data: bytes) -> bytes:
    return tag + varint(len(data)) + data


def publish_stamp(publish_ms: int) -> bytes:
    """The publish_time field of a PubsubMessage published at `publish_ms` (the same for
    every message of a Publish: built once per call)."""
    seconds, millis = divmod(publish_ms, 1000)
    timestamp = b""
    if seconds:
        timestamp += b"\x08" + varint(seconds)
    if millis:
        timestamp += b"\x10" + varint(millis * 1_000_000)
    return _field(_PUBLISH_TIME, timestamp)


def stamped(message: bytes, message_id: str, time_field: bytes) -> bytes:
    """A published message with the id (none when "") and publish time (`publish_stamp`) the
    store gave it."""
    if not message_id:
        return message + time_field
    return message + _field(_MESSAGE_ID, message_id.encode()) + time_field


def received_message(ack_id: str, message: bytes, delivery_attempt: int = 0) -> bytes:
    """An encoded ReceivedMessage (delivery_attempt left out when 0, as Google does when the
    subscription has no dead-letter policy)."""
    body = _field(_ACK_ID, ack_id.encode()) + _field(_MESSAGE, message)
    if delivery_attempt:
        body += _DELIVERY_ATTEMPT + varint(delivery_attempt)
    return body


def streaming_pull_response(received: Sequence[bytes], properties: bytes) -> bytes:
    """An encoded StreamingPullResponse of encoded ReceivedMessages (`received_message`) and
    encoded SubscriptionProperties."""
    parts = [_field(_RECEIVED_MESSAGES, item) for item in received]
    parts.append(_field(_SUBSCRIPTION_PROPERTIES, properties))
    return b"".join(parts)
