"""protowire.py's encodings are what the generated protobuf classes make of the same values."""

from __future__ import annotations

import pytest
from google.pubsub_v1 import types as t

from pubsub_emulator import protowire
from pubsub_emulator.store.base import stamp

PubsubMessage = t.PubsubMessage.pb()
ReceivedMessage = t.ReceivedMessage.pb()
StreamingPullResponse = t.StreamingPullResponse.pb()


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16_383, 16_384, 2**31 - 1])
def test_varint_reads_back(value: int) -> None:
    encoded = b"\x18" + protowire.varint(value)  # ReceivedMessage.delivery_attempt (int32)
    assert ReceivedMessage.FromString(encoded).delivery_attempt == value
    assert len(protowire.varint(value)) == max(1, (value.bit_length() + 6) // 7)


@pytest.mark.parametrize("publish_ms", [0, 999, 1000, 1_795_000_000_123, 1_795_000_000_000])
@pytest.mark.parametrize("message_id", ["", "7", "123456789012345678901234567890"])
def test_stamp_is_the_merged_fields(publish_ms: int, message_id: str) -> None:
    published = PubsubMessage(data=b"x" * 200, attributes={"k": "v"}, ordering_key="key")
    expected = PubsubMessage()
    expected.CopyFrom(published)
    expected.message_id = message_id
    expected.publish_time.FromMilliseconds(publish_ms)
    raw = stamp(published.SerializeToString(), message_id, publish_ms)
    assert PubsubMessage.FromString(raw) == expected
    assert raw == published.SerializeToString() + PubsubMessage(
        message_id=message_id, publish_time=expected.publish_time).SerializeToString()


@pytest.mark.parametrize("attempt", [0, 1, 5, 300])
@pytest.mark.parametrize("size", [0, 100, 20_000])
def test_streaming_pull_response_is_the_protos(attempt: int, size: int) -> None:
    messages = [stamp(PubsubMessage(data=bytes([i]) * size).SerializeToString(), str(i), 1234)
                for i in range(3)]
    ack_ids = [f"{i}-{i * 1000}-{attempt}" for i in range(3)]
    properties = StreamingPullResponse.SubscriptionProperties(
        exactly_once_delivery_enabled=True)
    encoded = protowire.streaming_pull_response(
        [protowire.received_message(a, m, attempt) for a, m in zip(ack_ids, messages,
                                                                    strict=True)],
        properties.SerializeToString())
    expected = StreamingPullResponse(
        received_messages=[ReceivedMessage(ack_id=a, message=PubsubMessage.FromString(m),
                                           delivery_attempt=attempt)
                           for a, m in zip(ack_ids, messages, strict=True)],
        subscription_properties=properties)
    assert encoded == expected.SerializeToString()
