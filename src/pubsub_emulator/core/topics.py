"""Topic administration: CreateTopic, UpdateTopic, GetTopic, the topic list calls, DeleteTopic."""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf import empty_pb2
from google.pubsub_v1 import types as t

from ..schemas import SchemaRegistry
from ..store import Kind, Store
from . import names
from .catalog import Catalog
from .errors import ApiError, Status, already_exists
from .events import Events
from .model import Subscription, Topic
from .validation import (
    TOPIC_MUTABLE,
    apply_mask,
    check_labels,
    check_mask,
    check_topic_retention,
    note_unhonoured,
)

log = logging.getLogger("pubsub_emulator.service")


class Topics:
    def __init__(self, store: Store, catalog: Catalog, events: Events,
                 schemas: SchemaRegistry) -> None:
        self._table = store.resources
        self._catalog = catalog
        self._events = events
        self._schemas = schemas

    async def _validate(self, topic: Any) -> None:
        check_labels(topic.labels)
        await self._schemas.check_topic_settings(topic)
        check_topic_retention(topic)

    async def create_topic(self, request: Any) -> Any:
        rn = names.topic(request.name)
        topic = Topic()
        topic.CopyFrom(request)
        await self._validate(topic)
        topic.state = t.Topic.State.ACTIVE
        if not await self._table.create(Kind.TOPIC, topic.name, topic.SerializeToString()):
            raise already_exists(rn.id)
        log.info("created topic %s", topic.name)
        note_unhonoured(topic)
        return topic

    async def update_topic(self, request: Any) -> Any:
        rn = names.topic(request.topic.name)

        async def change(topic: Any) -> None:  # (after the read: NOT_FOUND before a bad mask)
            paths = check_mask(request.update_mask, topic, TOPIC_MUTABLE, "Topic")
            apply_mask(topic, request.topic, paths)
            await self._validate(topic)  # the topic as it will be (a mask may be partial)

        current = await self._catalog.rewrite(Kind.TOPIC, request.topic.name, Topic, rn.id,
                                              change)
        note_unhonoured(current)
        return current

    async def get_topic(self, request: Any) -> Any:
        return await self._catalog.topic(request.topic)

    async def list_topics(self, request: Any) -> Any:
        topics, token = await self._catalog.list_project(Kind.TOPIC, request.project,
                                                         request.page_size, request.page_token,
                                                         Topic)
        return t.ListTopicsResponse.pb()(topics=topics, next_page_token=token)

    async def list_topic_subscriptions(self, request: Any) -> Any:
        page = await self._catalog.list_topic(Kind.SUBSCRIPTION, request.topic,
                                              request.page_size, request.page_token)
        return t.ListTopicSubscriptionsResponse.pb()(
            subscriptions=[item.name for item in page.items], next_page_token=page.next_token)

    async def list_topic_snapshots(self, request: Any) -> Any:
        page = await self._catalog.list_topic(Kind.SNAPSHOT, request.topic, request.page_size,
                                              request.page_token)
        return t.ListTopicSnapshotsResponse.pb()(
            snapshots=[item.name for item in page.items], next_page_token=page.next_token)

    async def delete_topic(self, request: Any) -> Any:
        await self._catalog.topic(request.topic)
        # Google keeps the topic's subscriptions, pointing at "_deleted-topic_".
        page = await self._table.list_by_topic(Kind.SUBSCRIPTION, request.topic, 0, "")

        def point_at_deleted_topic(sub: Any) -> None:
            sub.topic = names.DELETED_TOPIC

        for item in page.items:
            try:
                await self._catalog.rewrite(Kind.SUBSCRIPTION, item.name, Subscription,
                                            item.name, point_at_deleted_topic,
                                            topic=names.DELETED_TOPIC)
            except ApiError as exc:
                if exc.status is not Status.NOT_FOUND:
                    raise
                continue  # deleted meanwhile
            self._events.resource_changed(Kind.SUBSCRIPTION, item.name)
        await self._table.delete(Kind.TOPIC, request.topic)
        await self._catalog.drop_attached(Kind.TOPIC, request.topic)
        self._events.resource_changed(Kind.TOPIC, request.topic)
        log.info("deleted topic %s (%d subscriptions detached)", request.topic, len(page.items))
        return empty_pb2.Empty()
