"""The Publish RPC: validate, check schemas, leave out what filters reject, append, wake."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.pubsub_v1 import types as t

from ..schemas import SchemaRegistry
from ..store import Store
from .catalog import Catalog
from .events import Events
from .observe import NO_OBSERVER, Observer
from .validation import check_publish_request


class Publishing:
    def __init__(self, store: Store, catalog: Catalog, events: Events,
                 schemas: SchemaRegistry, clock: Callable[[], int],
                 observer: Observer = NO_OBSERVER) -> None:
        self._log = store.messages
        self._observer = observer
        self._catalog = catalog
        self._events = events
        self._schemas = schemas
        self._clock = clock

    async def publish(self, request: Any) -> Any:
        topic = await self._catalog.topic(request.topic)
        check_publish_request(request)
        raws = [message.SerializeToString() for message in request.messages]
        if topic.HasField("schema_settings"):
            raws = await self._schemas.validate_messages(topic, request.messages) or raws
        skip = None
        filters = await self._catalog.topic_filters(request.topic)
        if filters:
            skip = {sub: {i for i, m in enumerate(request.messages) if not accepts(m.attributes)}
                    for sub, accepts in filters.items()}
        keys = [m.ordering_key for m in request.messages]
        ids = await self._log.publish(request.topic, raws, self._clock(), skip,
                                      keys if any(keys) else None,
                                      retain=topic.HasField("message_retention_duration"))
        self._observer.published(request.topic, len(raws), sum(map(len, raws)))
        self._events.wake_topic(request.topic)
        return t.PublishResponse.pb()(message_ids=ids)
