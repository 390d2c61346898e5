"""Typed access to the resource table: read a topic, subscription or snapshot or answer
NOT_FOUND; change one by compare-and-set; list a project's resources a page at a time."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from ..store import ANNOUNCED_KINDS, InvalidPageToken, Kind, Page, ResourceTable, Store
from . import limits, names
from .errors import aborted, failed_precondition, invalid_argument, not_found
from .events import Events
from .model import Snapshot, Subscription, Topic
from .policy import attribute_filter

Change = Callable[[Any], Awaitable[None] | None]
T = TypeVar("T")
# What the store keeps under a resource's own name, by the resource's kind: deleted with it.
ATTACHED: Mapping[Kind, tuple[Kind, ...]] = {
    Kind.TOPIC: (Kind.IAM_POLICY,),
    Kind.SUBSCRIPTION: (Kind.IAM_POLICY, Kind.PUSH_OWNER),  # (push/ownership.py)
    Kind.SNAPSHOT: (Kind.IAM_POLICY,),
    Kind.SCHEMA: (Kind.IAM_POLICY,),
}

# The first wait after a compare-and-set collision (at most; it doubles with each one).
REWRITE_BACKOFF_S = 0.001


def page_size(requested: int) -> int:
    """A list call's page size: Google's default when 0, at most its maximum."""
    if requested < 0:
        raise invalid_argument("page_size must not be negative.")
    return min(requested or limits.DEFAULT_PAGE_SIZE, limits.MAX_PAGE_SIZE)


async def compare_and_set(table: ResourceTable, kind: Kind, name: str, resource_id: str,
                          apply: Callable[[bytes], Awaitable[tuple[bytes, T]]],
                          topic: str | None = None) -> T:
    """Read-modify-write of a stored resource that loses no concurrent change.

    `apply(stored bytes)` returns the new bytes and a result (or refuses with an ApiError).
    The write is a compare-and-set on the bytes read: if another call or process changed the
    resource meanwhile, it is read again and `apply` runs on top, so neither change is lost.
    Writers that collide wait a random, growing moment before trying again, so they do not
    collide again in lockstep; after REWRITE_ATTEMPTS the caller gets ABORTED, as Google
    answers such conflicts.
    """
    for attempt in range(limits.REWRITE_ATTEMPTS):
        raw = await table.get(kind, name)
        if raw is None:
            raise not_found(resource_id)
        data, result = await apply(raw)
        if await table.update(kind, name, data, topic=topic, expected=raw):
            return result
        await asyncio.sleep(random.uniform(0, REWRITE_BACKOFF_S * 2 ** attempt))
    raise aborted(f"The resource was changed by other requests {limits.REWRITE_ATTEMPTS} "
                  f"times while this one applied; try again (resource={resource_id}).")


class Catalog:
    """Topics, subscriptions and snapshots as protos, over the store's resource table."""

    def __init__(self, store: Store, events: Events) -> None:
        self.table = store.resources
        self._events = events
        # topic -> {subscription: attribute predicate}, for subscriptions that have a filter
        self._filters: dict[str, dict[str, Callable[[Mapping[str, str]], bool]]] = {}
        events.on_change(self._changed)

    def _changed(self, kind: Kind, name: str) -> None:
        if kind in (Kind.SUBSCRIPTION, Kind.TOPIC):
            self._filters.clear()

    async def drop_attached(self, kind: Kind, name: str) -> None:
        """What is attached to a deleted resource of `kind` goes with it (ATTACHED): its IAM
        policy (one made again under the same name starts with none, here and, the kind being
        announced, on every process) and a subscription's push ownership record."""
        for attached in ATTACHED[kind]:
            await self.table.delete(attached, name)
            if attached in ANNOUNCED_KINDS:
                self._events.resource_changed(attached, name)

    async def load(self, kind: Kind, name: str, message_type: Any, resource_id: str) -> Any:
        raw = await self.table.get(kind, name)
        if raw is None:
            raise not_found(resource_id)
        return message_type.FromString(raw)

    async def topic(self, name: str) -> Any:
        return await self.load(Kind.TOPIC, name, Topic, names.topic(name).id)

    async def subscription(self, name: str) -> Any:
        return await self.load(Kind.SUBSCRIPTION, name, Subscription,
                               names.subscription(name).id)

    async def deliverable(self, name: str) -> Any:
        """A subscription that may deliver: it exists and is not detached."""
        sub = await self.subscription(name)
        if sub.detached:
            raise failed_precondition(f"Subscription {name} is detached.")
        return sub

    async def snapshot(self, name: str) -> Any:
        return await self.load(Kind.SNAPSHOT, name, Snapshot, names.snapshot(name).id)

    async def topic_of(self, subscription: str) -> str | None:
        """The topic a subscription is attached to, without validating the name (IAM asks
        before the handler does); None if there is no such subscription or its topic is gone."""
        raw = await self.table.get(Kind.SUBSCRIPTION, subscription)
        if raw is None:
            return None
        topic = Subscription.FromString(raw).topic
        return topic if topic != names.DELETED_TOPIC else None

    async def rewrite(self, kind: Kind, name: str, message_type: Any, resource_id: str,
                      change: Change, topic: str | None = None) -> Any:
        """Read a resource, apply `change` (which may refuse with an ApiError), write it back,
        as a compare-and-set (see compare_and_set)."""

        async def apply(raw: bytes) -> tuple[bytes, Any]:
            resource = message_type.FromString(raw)
            pending = change(resource)
            if pending is not None:
                await pending
            return resource.SerializeToString(), resource

        return await compare_and_set(self.table, kind, name, resource_id, apply, topic)

    async def list_project(self, kind: Kind, project_name: str, requested_size: int,
                           token: str, message_type: Any) -> tuple[list[Any], str]:
        """One page of a project's resources of a kind, and the next page's token."""
        project = names.parse_project(project_name)
        try:
            page = await self.table.list_prefixed(kind, f"projects/{project}/{kind.value}/",
                                                  page_size(requested_size), token)
        except InvalidPageToken:
            raise invalid_argument("The page_token is invalid.") from None
        return [message_type.FromString(item.data) for item in page.items], page.next_token

    async def list_topic(self, kind: Kind, topic: str, requested_size: int, token: str) -> Page:
        """One page of the subscriptions or snapshots of an existing topic."""
        await self.topic(topic)
        try:
            return await self.table.list_by_topic(kind, topic, page_size(requested_size), token)
        except InvalidPageToken:
            raise invalid_argument("The page_token is invalid.") from None

    async def all(self, kind: Kind) -> Page:
        """Every resource of a kind, in every project (the sweeper, the push dispatcher)."""
        return await self.table.list_prefixed(kind, "projects/", 0, "")

    async def topic_filters(self, topic: str) -> dict[str, Callable[[Mapping[str, str]], bool]]:
        """The filters of the topic's subscriptions that have one, by subscription."""
        cached = self._filters.get(topic)
        if cached is None:
            cached = {}
            for item in (await self.table.list_by_topic(Kind.SUBSCRIPTION, topic, 0, "")).items:
                sub = Subscription.FromString(item.data)
                if sub.filter:
                    cached[item.name] = attribute_filter(sub.filter)
            self._filters[topic] = cached
        return cached
