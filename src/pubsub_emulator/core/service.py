"""The Pub/Sub v1 service core: every Publisher, Subscriber and SchemaService RPC, protocol-free.

Adapters (gRPC, REST) hand in request protos and get response protos or an ApiError back, through
`unary[method name]` and `streaming_pull`. The core is split by concern; `PubSubService` only
puts the parts together:

    catalog        typed reads and compare-and-set writes of resources
    topics, subscriptions, snapshots    resource administration (snapshots also Seek)
    publishing     Publish
    engine         the delivery engine: leases, acks, modacks, dead letters
    pulls          Pull, Acknowledge, ModifyAckDeadline over the engine
    streaming      StreamingPull over the engine (service.streaming_pull answers store errors)
    schemas        SchemaService, and schema checks of topics and messages
    policies       IAM policies (iam/policies.py), served by iam_rpcs (iam/rpcs.py)
    sweeper        retention, expiration, reclaiming
    events         wake-ups and change notices (also the store's listener)
    reset          POST /reset: resources deleted through the Delete handlers
    observer       told of publishes, deliveries, acks... (observe.py; the server's metrics)

Until `admit_calls()`, after `hold_calls()`, every call waits (the server holds them while it
applies the topology file).

All calls run on one asyncio event loop, so the core needs no locks. Store calls are awaited:
the embedded store never suspends (each call is atomic), while a store that talks to a server
(NATS) lets the loop serve other calls meanwhile; what the core does across such a wait must
hold even if another call ran in between (as it must anyway with several processes on one
store).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

from ..iam.enforce import Authorizer
from ..iam.policies import PolicyBook
from ..iam.rpcs import IAM_METHODS, IamPolicyRpcs
from ..schemas import SCHEMA_METHODS, SchemaRegistry
from ..store import Kind, NotFound, PayloadTooLarge, Store, StoreError, StoreUnavailable
from .activity import Activity
from .catalog import Catalog
from .delivery import DeliveryEngine
from .errors import ApiError, Status, invalid_argument
from .events import Events
from .model import now_ms
from .observe import NO_OBSERVER, Observer
from .peek import PeekedMessage, Peeking
from .publishing import Publishing
from .pull import PullRpcs
from .push_config import ActAs, PushAccounts
from .reset import Reset
from .snapshots import Snapshots
from .streaming import StreamingPull
from .subscriptions import Subscriptions
from .sweeper import Sweeper
from .topics import Topics

UnaryHandler = Callable[[Any], Awaitable[Message]]
log = logging.getLogger("pubsub_emulator.service")

TOPIC_METHODS = ("CreateTopic", "UpdateTopic", "GetTopic", "ListTopics",
                 "ListTopicSubscriptions", "ListTopicSnapshots", "DeleteTopic")
SUBSCRIPTION_METHODS = ("CreateSubscription", "GetSubscription", "UpdateSubscription",
                        "ListSubscriptions", "DeleteSubscription", "ModifyPushConfig",
                        "DetachSubscription")
SNAPSHOT_METHODS = ("GetSnapshot", "ListSnapshots", "CreateSnapshot", "UpdateSnapshot",
                    "DeleteSnapshot", "Seek")
PULL_METHODS = ("Pull", "Acknowledge", "ModifyAckDeadline")


def store_error(exc: StoreError) -> ApiError:
    """What a client is told when the store fails a call: the one place store errors that
    are no caller's mistake become API errors (the core answers the others itself)."""
    if isinstance(exc, PayloadTooLarge):
        return invalid_argument(f"The message is too large for this emulator's store: {exc}. "
                                f"Raise the NATS server's max_payload (see docs/nats.md).")
    if isinstance(exc, NotFound):  # gone between the core's read and the store's call
        return ApiError(Status.NOT_FOUND, f"Resource not found (resource={exc}).")
    if isinstance(exc, StoreUnavailable):
        return ApiError(Status.UNAVAILABLE, "The service is currently unavailable (the "
                                            "emulator's store cannot be reached); try again.")
    return ApiError(Status.INTERNAL, "Internal error encountered.")


def logged_store_error(exc: StoreError) -> ApiError:
    """store_error(exc), with the failure logged unless it is one the store declares."""
    if not isinstance(exc, NotFound | PayloadTooLarge | StoreUnavailable):
        log.exception("the store failed a call")
    return store_error(exc)


def _store_errors_answered(handler: UnaryHandler) -> UnaryHandler:
    @functools.wraps(handler)
    async def answered(request: Any) -> Message:
        try:
            return await handler(request)
        except StoreError as exc:
            raise logged_store_error(exc) from None

    return answered


def _publish_answered(handler: UnaryHandler, observer: Observer) -> UnaryHandler:
    """Publish, each answer counted by topic and result (IAM refusals and store failures
    included: they are answered by the wrappers inside)."""

    @functools.wraps(handler)
    async def counted(request: Any) -> Message:
        try:
            response = await handler(request)
        except ApiError as exc:
            observer.publish_answered(request.topic, exc.status)
            raise
        observer.publish_answered(request.topic, None)
        return response

    return counted


def snake_case(method: str) -> str:
    """CreateTopic -> create_topic: the core's handler of an RPC has the RPC's name."""
    out = []
    for i, ch in enumerate(method):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


class PubSubService:
    """Google's Publisher, Subscriber, SchemaService and IAMPolicy over a Store."""

    def __init__(self, store: Store, clock: Callable[[], int] = now_ms,
                 act_as: ActAs | None = None, observer: Observer | None = None) -> None:
        """`clock` gives the time in milliseconds (tests move it to exercise retention);
        `act_as` decides under --auth whether a caller may name a service account in a push
        config's OIDC token (push_config.py; default: IAM's actAs, iam/enforce.py);
        `observer` hears of publishes, deliveries, acks... (observe.py; metrics.py)."""
        self.store = store
        self.clock = clock
        self.observer = observer or NO_OBSERVER
        self._gate: asyncio.Event | None = None  # while there is one, calls wait for it
        self.held = 0  # calls waiting at the gate now
        self.events = Events()
        store.set_listener(self.events)
        self.catalog = Catalog(store, self.events)
        activity = Activity(store.resources, clock)
        self.schemas = SchemaRegistry(store.resources, clock,
                                      functools.partial(self.catalog.drop_attached, Kind.SCHEMA))
        self.events.on_change(self._schema_changed)
        self.policies = PolicyBook(store.resources)
        self.events.on_change(self.policies.changed)
        # Under --auth every RPC is checked against the policies before its handler runs.
        self.authorizer = Authorizer(self.policies, self.catalog.topic_of)
        self.events.on_change(self.authorizer.changed)
        # TestIamPermissions answers a caller from enforcement's decisions.
        self.iam_rpcs = IamPolicyRpcs(self.policies, store.resources, self.authorizer.held)
        self.topics = Topics(store, self.catalog, self.events, self.schemas)
        self.subscriptions = Subscriptions(store, self.catalog, self.events, activity,
                                           PushAccounts(store.resources,
                                                        act_as or self.authorizer.act_as))
        self.engine = DeliveryEngine(store, self.catalog, self.events, activity, clock,
                                     self.observer)
        self.publishing = Publishing(store, self.catalog, self.events, self.schemas, clock,
                                     self.observer, self.engine)
        self.pulls = PullRpcs(self.engine, self.catalog, self.events, clock)
        self.snapshots = Snapshots(store, self.catalog, self.events, self.engine, clock)
        self.streaming = StreamingPull(self.engine, self.events, clock)
        self.sweeper = Sweeper(store, self.catalog, activity, self.engine, self.subscriptions,
                               clock, self.events)
        self.peeking = Peeking(store, self.catalog, clock)  # (the console's browsing)
        handlers: list[tuple[object, tuple[str, ...]]] = [
            (self.topics, TOPIC_METHODS), (self.subscriptions, SUBSCRIPTION_METHODS),
            (self.snapshots, SNAPSHOT_METHODS), (self.pulls, PULL_METHODS),
            (self.publishing, ("Publish",)), (self.schemas, SCHEMA_METHODS),
            (self.iam_rpcs, IAM_METHODS)]
        self.unary: dict[str, UnaryHandler] = {
            method: self._admitted(_store_errors_answered(
                self.authorizer.guard(method, getattr(component, snake_case(method)))))
            for component, methods in handlers for method in methods}
        self.unary["Publish"] = _publish_answered(self.unary["Publish"], self.observer)
        # POST /reset: every resource gone, through the paths the RPCs take.
        self.reset = Reset(self.catalog, self.topics, self.subscriptions, self.snapshots,
                           self.schemas, self.sweeper)

    # --- holding calls until the server is ready ----------------------------------------------
    def hold_calls(self) -> None:
        """Calls wait from now until `admit_calls()` (while the topology file is applied, so
        that no client sees the emulator without the resources it declares)."""
        if self._gate is None:
            self._gate = asyncio.Event()

    def admit_calls(self) -> None:
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.set()

    async def _wait_until_admitted(self) -> None:
        if self._gate is not None:
            self.held += 1
            try:
                await self._gate.wait()
            finally:
                self.held -= 1

    def _admitted(self, handler: UnaryHandler) -> UnaryHandler:
        @functools.wraps(handler)
        async def admitted(request: Any) -> Message:
            if self._gate is not None:
                await self._wait_until_admitted()
            return await handler(request)

        return admitted

    async def streaming_pull(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """The StreamingPull RPC (core/streaming.py), its requests checked by IAM, store
        failures answered as API errors."""
        if self._gate is not None:
            await self._wait_until_admitted()
        try:
            async for response in self.streaming(self.authorizer.guard_stream(requests)):
                yield response
        except StoreError as exc:
            raise logged_store_error(exc) from None

    async def peek(self, subscription: str, max_messages: int = 10) -> list[PeekedMessage]:
        """A subscription's unacknowledged messages, oldest first, without changing their
        delivery (core/peek.py); store failures answered as API errors."""
        if self._gate is not None:
            await self._wait_until_admitted()
        try:
            return await self.peeking.peek(subscription, max_messages)
        except StoreError as exc:
            raise logged_store_error(exc) from None

    def _schema_changed(self, kind: Kind, name: str) -> None:
        if kind is Kind.SCHEMA:
            self.schemas.forget(name)
