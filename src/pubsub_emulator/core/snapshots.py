"""Snapshots (create, get, list, update, delete) and Seek to a snapshot or a time."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from google.protobuf import empty_pb2
from google.pubsub_v1 import types as t

from ..store import Kind, Store
from . import limits, names
from .catalog import Catalog
from .delivery import DeliveryEngine
from .errors import already_exists, failed_precondition, invalid_argument, not_found
from .events import Events
from .model import Snapshot, Topic
from .policy import delivery_policy
from .validation import SNAPSHOT_MUTABLE, apply_mask, check_labels, check_mask


class Snapshots:
    def __init__(self, store: Store, catalog: Catalog, events: Events, engine: DeliveryEngine,
                 clock: Callable[[], int]) -> None:
        self._table = store.resources
        self._log = store.messages
        self._catalog = catalog
        self._events = events
        self._engine = engine
        self._clock = clock

    async def get_snapshot(self, request: Any) -> Any:
        return await self._catalog.snapshot(request.snapshot)

    async def list_snapshots(self, request: Any) -> Any:
        snapshots, token = await self._catalog.list_project(
            Kind.SNAPSHOT, request.project, request.page_size, request.page_token, Snapshot)
        return t.ListSnapshotsResponse.pb()(snapshots=snapshots, next_page_token=token)

    async def create_snapshot(self, request: Any) -> Any:
        sub = await self._catalog.subscription(request.subscription)
        if not request.name:  # Google assigns a name in the subscription's project
            project = names.subscription(sub.name).project
            request.name = f"projects/{project}/snapshots/snapshot-{uuid.uuid4().hex[:20]}"
        rn = names.snapshot(request.name)
        if sub.topic == names.DELETED_TOPIC or sub.detached:
            raise failed_precondition("The subscription's topic was deleted or it is detached.")
        check_labels(request.labels)
        snapshot = Snapshot(name=request.name, topic=sub.topic, labels=request.labels)
        snapshot.expire_time.FromMilliseconds(self._clock() + limits.SNAPSHOT_LIFETIME_S * 1000)
        if not await self._table.create(Kind.SNAPSHOT, snapshot.name,
                                        snapshot.SerializeToString(), topic=sub.topic):
            raise already_exists(rn.id)
        await self._log.save_snapshot(snapshot.name, sub.name)
        return snapshot

    async def update_snapshot(self, request: Any) -> Any:
        rn = names.snapshot(request.snapshot.name)

        def change(snapshot: Any) -> None:  # (after the read: NOT_FOUND before a bad mask)
            paths = check_mask(request.update_mask, snapshot, SNAPSHOT_MUTABLE, "Snapshot")
            check_labels(request.snapshot.labels)
            apply_mask(snapshot, request.snapshot, paths)

        return await self._catalog.rewrite(Kind.SNAPSHOT, request.snapshot.name, Snapshot,
                                           rn.id, change)

    async def delete_snapshot(self, request: Any) -> Any:
        rn = names.snapshot(request.snapshot)
        if not await self._table.delete(Kind.SNAPSHOT, request.snapshot):
            raise not_found(rn.id)
        await self._catalog.drop_attached(Kind.SNAPSHOT, request.snapshot)
        return empty_pb2.Empty()

    async def seek(self, request: Any) -> Any:
        sub = await self._engine.deliverable(request.subscription)
        target = request.WhichOneof("target")
        if target == "time":
            raw_topic = (await self._table.get(Kind.TOPIC, sub.topic)
                         if sub.topic != names.DELETED_TOPIC else None)
            from_topic = raw_topic is not None and Topic.FromString(raw_topic).HasField(
                "message_retention_duration")
            await self._log.seek_to_time(sub.name, request.time.ToMilliseconds(), self._clock(),
                                         delivery_policy(sub), from_topic)
        elif target == "snapshot":
            snapshot = await self._catalog.snapshot(request.snapshot)
            if snapshot.topic != sub.topic:
                raise failed_precondition(
                    "The snapshot's topic is not the subscription's topic.")
            await self._log.seek_to_snapshot(sub.name, snapshot.name, self._clock())
        else:
            raise invalid_argument("A seek target (time or snapshot) must be given.")
        self._engine.release_everything(sub.name)
        self._events.wake(sub.name)
        return t.SeekResponse.pb()()
