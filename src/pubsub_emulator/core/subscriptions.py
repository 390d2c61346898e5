"""Subscription administration: create, get, update, list, delete, ModifyPushConfig, detach.

A push config that names an OIDC service account is checked by `PushAccounts` (push_config.py)
whenever a request writes a push config: on create, on ModifyPushConfig, and on an update whose
mask touches `push_config` (even only its endpoint: redirecting tokens signed as an account is
acting as it). Log lines never show an endpoint's query values (push_config.redact_url).
"""

from __future__ import annotations

import logging
from typing import Any

from google.protobuf import empty_pb2
from google.pubsub_v1 import types as t

from ..store import Kind, Store
from . import names
from .activity import Activity
from .catalog import Catalog
from .errors import already_exists, invalid_argument, not_found
from .events import Events
from .model import Subscription
from .push_config import PushAccounts
from .validation import (
    SUBSCRIPTION_MUTABLE,
    apply_mask,
    check_mask,
    check_subscription,
    note_unhonoured,
    with_present_fields,
)

log = logging.getLogger("pubsub_emulator.service")


class Subscriptions:
    def __init__(self, store: Store, catalog: Catalog, events: Events,
                 activity: Activity, push_accounts: PushAccounts | None = None) -> None:
        self._table = store.resources
        self._push_accounts = push_accounts or PushAccounts(store.resources)
        self._log = store.messages
        self._catalog = catalog
        self._events = events
        self._activity = activity

    def _changed(self, name: str) -> None:
        self._events.resource_changed(Kind.SUBSCRIPTION, name)

    async def create_subscription(self, request: Any) -> Any:
        rn = names.subscription(request.name)
        sub = Subscription()
        sub.CopyFrom(request)
        if not sub.topic:
            raise invalid_argument("The topic of the subscription must be set.")
        if sub.topic != names.DELETED_TOPIC:
            topic_rn = names.topic(sub.topic)
            if await self._table.get(Kind.TOPIC, sub.topic) is None:
                raise not_found(topic_rn.id)
        check_subscription(sub, creating=True)
        await self._push_accounts.check(sub.push_config)
        sub.state = t.Subscription.State.ACTIVE
        if not await self._table.create(Kind.SUBSCRIPTION, sub.name, sub.SerializeToString(),
                                        topic=sub.topic):
            raise already_exists(rn.id)
        self._changed(sub.name)
        log.info("created subscription %s on %s", sub.name, sub.topic)
        note_unhonoured(sub)
        return sub

    async def get_subscription(self, request: Any) -> Any:
        return with_present_fields(await self._catalog.subscription(request.subscription))

    async def update_subscription(self, request: Any) -> Any:
        rn = names.subscription(request.subscription.name)

        async def change(sub: Any) -> None:  # (after the read: NOT_FOUND before a bad mask)
            paths = check_mask(request.update_mask, sub, SUBSCRIPTION_MUTABLE,
                               "Subscription")
            apply_mask(sub, request.subscription, paths)
            check_subscription(sub, creating=False)
            # The resulting config is checked, not the request's: a mask of only
            # `push_config.push_endpoint` keeps the stored account and sends its tokens elsewhere.
            if any(path[0] == "push_config" for path in paths):
                await self._push_accounts.check(sub.push_config)

        updated = await self._catalog.rewrite(Kind.SUBSCRIPTION, request.subscription.name,
                                              Subscription, rn.id, change)
        self._changed(updated.name)
        note_unhonoured(updated)
        return updated

    async def list_subscriptions(self, request: Any) -> Any:
        subscriptions, token = await self._catalog.list_project(
            Kind.SUBSCRIPTION, request.project, request.page_size, request.page_token,
            Subscription)
        return t.ListSubscriptionsResponse.pb()(subscriptions=[with_present_fields(sub) for sub
                                                               in subscriptions],
                                                next_page_token=token)

    async def delete_subscription(self, request: Any) -> Any:
        rn = names.subscription(request.subscription)
        if not await self._table.delete(Kind.SUBSCRIPTION, request.subscription):
            raise not_found(rn.id)
        await self._catalog.drop_attached(Kind.SUBSCRIPTION, request.subscription)
        await self._activity.forget(request.subscription)
        self._events.wake(request.subscription)
        self._changed(request.subscription)
        log.info("deleted subscription %s", request.subscription)
        return empty_pb2.Empty()

    async def modify_push_config(self, request: Any) -> Any:
        rn = names.subscription(request.subscription)

        async def change(sub: Any) -> None:
            sub.push_config.CopyFrom(request.push_config)
            check_subscription(sub, creating=False)
            await self._push_accounts.check(sub.push_config)

        await self._catalog.rewrite(Kind.SUBSCRIPTION, request.subscription, Subscription,
                                    rn.id, change)
        self._changed(request.subscription)
        return empty_pb2.Empty()

    async def detach_subscription(self, request: Any) -> Any:
        rn = names.subscription(request.subscription)

        def detach(sub: Any) -> None:
            sub.detached = True

        sub = await self._catalog.rewrite(Kind.SUBSCRIPTION, request.subscription, Subscription,
                                          rn.id, detach, topic="")
        await self._log.purge(sub.name)
        self._events.wake(sub.name)
        self._changed(sub.name)
        log.info("detached subscription %s", sub.name)
        return t.DetachSubscriptionResponse.pb()()
