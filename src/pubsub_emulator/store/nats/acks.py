"""Ack ids and what is sent on them.

An ack id is the delivery's reply subject without `$JS.ACK.`, so any process can ack or nack
it; the lease of a delivery is set with `-NAK {"delay": ...}` on it.
"""

from __future__ import annotations

import re
import sys
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, NamedTuple

from ..base import InvalidAckId

_ACK_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")
ACK_PREFIX = "$JS.ACK."
ACK, NAK, TERM = b"+ACK", b"-NAK", b"+TERM"


def nak(delay_ms: int) -> bytes:
    """A nack: the message comes again after the delay (at once for 0)."""
    return f'-NAK {{"delay": {delay_ms * 10**6}}}'.encode() if delay_ms else NAK


class AckId:
    """A parsed ack id: a `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>...` subject's tail."""

    __slots__ = ("subject", "stream", "consumer", "delivered", "sseq")

    def __init__(self, ack_id: str) -> None:
        tokens = ack_id.split(".")
        if not all(_ACK_TOKEN.match(t) for t in tokens):
            raise InvalidAckId(ack_id)
        if len(tokens) == 7:  # v1: stream.consumer.delivered.sseq.cseq.ts.pending
            base = 0
        elif len(tokens) >= 10:  # v2: domain.account.stream.consumer.delivered.sseq...
            base = 2
        else:
            raise InvalidAckId(ack_id)
        try:
            self.delivered = int(tokens[base + 2])
            self.sseq = int(tokens[base + 3])
        except ValueError:
            raise InvalidAckId(ack_id) from None
        self.stream, self.consumer = tokens[base], tokens[base + 1]
        self.subject = ACK_PREFIX + ack_id


class Fetched(NamedTuple):
    """A message a pull fetched from its consumer, before it is handed out."""

    msg: Any  # the nats-py message (data, headers, reply subject)
    ack: AckId
    size: int  # bytes as published

    @property
    def headers(self) -> dict[str, str]:
        return self.msg.headers or {}


def parse_ack_ids(consumer: str, ack_ids: Sequence[str]) -> list[AckId]:
    """The ack ids of a consumer's deliveries; InvalidAckId for any other."""
    parsed = []
    for ack_id in ack_ids:
        ack = AckId(ack_id)
        if ack.consumer != consumer:
            raise InvalidAckId(ack_id)
        parsed.append(ack)
    return parsed


class DeliveredKeys:
    """The ordering keys of the latest deliveries this process handed out, by ack id.

    An ack or nack of an ordered message must find its key's record; an ack id handed out here
    names it without reading the message (others are read from the stream). At most `limit`
    are kept (some 200 bytes each), the oldest forgotten first.
    """

    def __init__(self, limit: int = 100_000) -> None:
        self._limit = limit
        self._keys: OrderedDict[str, str] = OrderedDict()

    def note(self, ack: AckId, key: str) -> None:
        self._keys[ack.subject] = sys.intern(key)
        if len(self._keys) > self._limit:
            self._keys.popitem(last=False)

    def get(self, ack: AckId) -> str | None:
        """The key of the delivery's message ("" for none), None if not known here."""
        return self._keys.get(ack.subject)
