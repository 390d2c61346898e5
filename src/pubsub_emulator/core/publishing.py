"""The Publish RPC: validate, check schemas, leave out what filters reject, append, wake."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from google.pubsub_v1 import types as t

from ..schemas import SchemaRegistry
from ..store import Store
from .catalog import Catalog
from .delivery import DeliveryEngine
from .events import Events
from .observe import NO_OBSERVER, Observer
from .validation import check_publish_request


class Publishing:
    def __init__(self, store: Store, catalog: Catalog, events: Events,
                 schemas: SchemaRegistry, clock: Callable[[], int],
                 observer: Observer = NO_OBSERVER, engine: DeliveryEngine | None = None
                 ) -> None:
        self._log = store.messages
        self._engine = engine  # hands messages to open streams (DeliveryEngine.claim)
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
        size = sum(map(len, raws))
        retain = topic.HasField("message_retention_duration")
        # Streams open on the topic's subscriptions take the messages as they are stored,
        # leased in the same commit: no second commit and no read back per delivery (half the
        # store's work of a message delivered at once). Filters and ordering keys go the way
        # of every other message: stored, then read by whoever is woken.
        engine = self._engine
        claims = (engine.claim(request.topic, len(raws), size)
                  if engine is not None and not filters and not any(keys) else {})
        if engine is not None and claims:
            now = self._clock()
            ids, handed = await self._log.publish_leased(
                request.topic, raws, now, {name: now + call.lease_ms
                                           for name, call in claims.items()}, retain=retain)
            await engine.hand(claims, handed, now)
        else:
            handed = {}
            ids = await self._log.publish(request.topic, raws, self._clock(), skip,
                                          keys if any(keys) else None, retain=retain)
        self._observer.published(request.topic, len(raws), size)
        self._events.wake_topic(request.topic, served=handed)
        return t.PublishResponse.pb()(message_ids=ids)
