"""Reset (`POST /reset`): every topic, subscription, snapshot and schema deleted, with their
messages, in one project or in all, for test suites that want a clean slate.

Each resource is deleted by the handler of its Delete RPC, so everything that follows a delete
follows a reset too, on this process and on every other sharing the store: caches, open
StreamingPulls (they end with NOT_FOUND), push deliveries, IAM policies of the deleted
resources, push ownership records. Subscriptions go first (their backlogs with them), then
snapshots, topics and schemas; then a sweep drops the messages topics retained. Project-level
IAM grants and service account keys are not resources of a project's API surface and stay.
Clients need not reconnect: the server itself is not restarted.
"""

from __future__ import annotations

import logging
from typing import Any

from google.pubsub_v1 import types as t

from ..schemas import SchemaRegistry
from ..store import Kind
from . import names
from .catalog import Catalog
from .errors import ApiError, Status
from .snapshots import Snapshots
from .subscriptions import Subscriptions
from .sweeper import Sweeper
from .topics import Topics

log = logging.getLogger("pubsub_emulator.service")


class Reset:
    """Deletes what a project (or every project) holds, through the RPCs' own paths."""

    def __init__(self, catalog: Catalog, topics: Topics, subscriptions: Subscriptions,
                 snapshots: Snapshots, schemas: SchemaRegistry, sweeper: Sweeper) -> None:
        self._table = catalog.table
        self._sweeper = sweeper
        self._steps: list[tuple[Kind, Any]] = [
            (Kind.SUBSCRIPTION, lambda name: subscriptions.delete_subscription(
                t.DeleteSubscriptionRequest.pb()(subscription=name))),
            (Kind.SNAPSHOT, lambda name: snapshots.delete_snapshot(
                t.DeleteSnapshotRequest.pb()(snapshot=name))),
            (Kind.TOPIC, lambda name: topics.delete_topic(t.DeleteTopicRequest.pb()(topic=name))),
            (Kind.SCHEMA, lambda name: schemas.delete_schema(
                t.DeleteSchemaRequest.pb()(name=name))),
        ]

    async def __call__(self, project: str | None = None) -> dict[str, int]:
        """Delete everything of `project` (None: of every project); how many of each kind went.

        INVALID_ARGUMENT for a malformed project id. What another call deletes meanwhile is
        not counted; what one creates meanwhile may stay."""
        prefix = f"projects/{names.parse_project(f'projects/{project}')}/" if project is not None \
            else "projects/"
        deleted: dict[str, int] = {}
        for kind, delete in self._steps:
            page = await self._table.list_prefixed(kind, prefix, 0, "")
            count = 0
            for item in page.items:
                try:
                    await delete(item.name)
                except ApiError as exc:
                    if exc.status is not Status.NOT_FOUND:
                        raise
                    continue  # deleted meanwhile
                count += 1
            deleted[kind.value] = count
        await self._sweeper.sweep()  # messages only topic retention kept go now
        log.info("reset %s: deleted %s", f"project {project}" if project else "every project",
                 ", ".join(f"{n} {kind}" for kind, n in deleted.items()))
        return deleted
