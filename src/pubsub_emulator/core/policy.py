"""A subscription's delivery settings, in the form the store takes them (store.DeliveryPolicy)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from ..filter import compile_filter
from ..store import Accepts, DeliveryPolicy, RetryPolicy
from .model import PubsubMessage, duration_ms


@functools.lru_cache(maxsize=1024)
def attribute_filter(text: str) -> Callable[[Mapping[str, str]], bool]:
    """A filter's predicate over attributes, compiled once per filter text."""
    return compile_filter(text)


@functools.lru_cache(maxsize=1024)
def message_filter(text: str) -> Accepts:
    """A filter's verdict on a message as published (serialized), for the store."""
    predicate = attribute_filter(text)

    def accepts(message: bytes) -> bool:
        return predicate(PubsubMessage.FromString(message).attributes)

    return accepts


def delivery_policy(sub: Any) -> DeliveryPolicy:
    retry = None
    if sub.HasField("retry_policy"):
        policy = sub.retry_policy
        retry = RetryPolicy(duration_ms(policy.minimum_backoff),
                            duration_ms(policy.maximum_backoff))
    return DeliveryPolicy(retry=retry, ordered=sub.enable_message_ordering,
                          retain_acked=sub.retain_acked_messages,
                          exactly_once=sub.enable_exactly_once_delivery,
                          accepts=message_filter(sub.filter) if sub.filter else None)
