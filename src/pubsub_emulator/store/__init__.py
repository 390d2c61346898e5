"""Storage: the interface (base), the embedded SQLite store, and NATS JetStream (nats/).

`open_store` picks a backend from the command line's choices.
"""

from __future__ import annotations

from pathlib import Path

from .base import (
    ANNOUNCED_KINDS,
    DEFAULT_POLICY,
    Accepts,
    Delivery,
    DeliveryPolicy,
    InvalidAckId,
    InvalidPageToken,
    Kind,
    MessageLog,
    NotFound,
    Page,
    PayloadTooLarge,
    Pending,
    Resource,
    ResourceTable,
    RetentionRules,
    RetryPolicy,
    Store,
    StoreError,
    StoreListener,
    StoreUnavailable,
    SubscriptionStats,
)

DB_FILE = "pubsub.sqlite3"


async def open_store(data_dir: str | Path | None, in_memory: bool = False,
                     nats: str | None = None, nats_replicas: int = 1) -> Store:
    """The embedded SQLite store, or with `nats` ("nats://HOST:PORT[,nats://...]") JetStream.

    A NATS store lives on the event loop that opens it.
    """
    if nats:
        from .nats import NatsStore  # nats-py is imported only when asked for

        return await NatsStore.open([url.strip() for url in nats.split(",") if url.strip()],
                                    replicas=nats_replicas)
    from .sqlite import SqliteStore

    if in_memory or data_dir is None:
        return SqliteStore(None)
    path = Path(data_dir)
    path.mkdir(parents=True, exist_ok=True)
    return SqliteStore(path / DB_FILE)


__all__ = [
    "ANNOUNCED_KINDS", "DEFAULT_POLICY", "Accepts", "Delivery", "DeliveryPolicy",
    "InvalidAckId", "InvalidPageToken", "Kind", "MessageLog", "NotFound", "Page",
    "PayloadTooLarge", "Pending", "Resource",
    "ResourceTable", "RetentionRules", "RetryPolicy", "Store", "StoreError", "StoreListener",
    "StoreUnavailable", "SubscriptionStats", "open_store",
]
