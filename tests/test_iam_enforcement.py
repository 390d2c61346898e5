"""IAM enforcement (iam/enforce.py, iam/permissions.py), driving the service core directly as
the adapters do under --auth (`core.caller.current` set).

The full table: every RPC x role (none, viewer, publisher, subscriber, editor, admin) x level
(granted on the resources, or on the project) is allowed or PERMISSION_DENIED. The expected
outcome is computed from `GOOGLE` below, an independent statement of Google's "Access control
with IAM" table for Pub/Sub (written from Google's page, not from iam/permissions.py), and the
roles' permission sets (iam/roles.py): a slip in the implementation's table is caught here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from google.api_core import exceptions
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.pubsub_v1 import types as t

from pubsub_emulator.auth.keys import ServiceAccountKeys
from pubsub_emulator.core import caller
from pubsub_emulator.core.errors import ApiError, Status
from pubsub_emulator.core.service import PubSubService
from pubsub_emulator.iam import permissions
from pubsub_emulator.iam.roles import ROLES
from pubsub_emulator.store import Kind
from pubsub_emulator.store.sqlite import SqliteStore
from test_tls_auth import SecureEmulator, clients, make_key

NOT_AUTHORIZED = "User not authorized to perform this action."
P = "projects/p"
TOPIC = f"{P}/topics/topic"
DLT = f"{P}/topics/dead-letters"
SUB = f"{P}/subscriptions/sub"
SNAP = f"{P}/snapshots/snap"
SCHEMA = f"{P}/schemas/schema"
NEW_TOPIC, NEW_SUB, NEW_SNAP = f"{P}/topics/new-topic", f"{P}/subscriptions/new-sub", \
    f"{P}/snapshots/new-snap"
EMAIL = "someone@p.iam.gserviceaccount.com"
ME = caller.Caller(EMAIL)
ADMIN = caller.Caller("root@p.iam.gserviceaccount.com", admin=True)
AVRO = '{"type": "record", "name": "R", "fields": [{"name": "f", "type": "string"}]}'

# --- Google's table, stated independently -------------------------------------------------
# Targets: "project" (projects/p), or a resource of the fixture. Each row is one request
# (a method, or a method with a request shape that needs more: "CreateSubscription+dlq").
GOOGLE: dict[str, list[tuple[str, str]]] = {
    "CreateTopic": [("pubsub.topics.create", "project")],
    "CreateTopic+schema": [("pubsub.topics.create", "project"),
                           ("pubsub.schemas.attach", SCHEMA)],  # the emulator's addition
    "GetTopic": [("pubsub.topics.get", TOPIC)],
    "UpdateTopic": [("pubsub.topics.update", TOPIC)],
    "UpdateTopic+schema": [("pubsub.topics.update", TOPIC), ("pubsub.schemas.attach", SCHEMA)],
    "DeleteTopic": [("pubsub.topics.delete", TOPIC)],
    "Publish": [("pubsub.topics.publish", TOPIC)],
    "ListTopics": [("pubsub.topics.list", "project")],
    "ListTopicSubscriptions": [("pubsub.topics.get", TOPIC)],  # not on Google's page
    "ListTopicSnapshots": [("pubsub.topics.get", TOPIC)],  # not on Google's page
    "DetachSubscription": [("pubsub.topics.detachSubscription", TOPIC)],  # the sub's topic
    "CreateSubscription": [("pubsub.subscriptions.create", "project"),
                           ("pubsub.topics.attachSubscription", TOPIC)],
    "CreateSubscription+dlq": [("pubsub.subscriptions.create", "project"),
                               ("pubsub.topics.attachSubscription", TOPIC),
                               ("pubsub.topics.publish", DLT),
                               ("pubsub.subscriptions.consume", NEW_SUB)],
    "GetSubscription": [("pubsub.subscriptions.get", SUB)],
    "UpdateSubscription": [("pubsub.subscriptions.update", SUB)],
    "UpdateSubscription+dlq": [("pubsub.subscriptions.update", SUB),
                               ("pubsub.topics.publish", DLT),
                               ("pubsub.subscriptions.consume", SUB)],
    "DeleteSubscription": [("pubsub.subscriptions.delete", SUB)],
    "ListSubscriptions": [("pubsub.subscriptions.list", "project")],
    "ModifyPushConfig": [("pubsub.subscriptions.update", SUB)],
    "Pull": [("pubsub.subscriptions.consume", SUB)],
    "StreamingPull": [("pubsub.subscriptions.consume", SUB)],
    "Acknowledge": [("pubsub.subscriptions.consume", SUB)],
    "ModifyAckDeadline": [("pubsub.subscriptions.consume", SUB)],
    "Seek": [("pubsub.subscriptions.consume", SUB)],
    "Seek+snapshot": [("pubsub.subscriptions.consume", SUB), ("pubsub.snapshots.seek", SNAP)],
    "CreateSnapshot": [("pubsub.snapshots.create", "project"),
                       ("pubsub.subscriptions.consume", SUB)],
    "GetSnapshot": [("pubsub.snapshots.get", SNAP)],
    "UpdateSnapshot": [("pubsub.snapshots.update", SNAP)],
    "DeleteSnapshot": [("pubsub.snapshots.delete", SNAP)],
    "ListSnapshots": [("pubsub.snapshots.list", "project")],
    "CreateSchema": [("pubsub.schemas.create", "project")],
    "ListSchemas": [("pubsub.schemas.list", "project")],
    "GetSchema": [("pubsub.schemas.get", SCHEMA)],
    "ListSchemaRevisions": [("pubsub.schemas.listRevisions", SCHEMA)],
    "CommitSchema": [("pubsub.schemas.commit", SCHEMA)],
    "RollbackSchema": [("pubsub.schemas.rollback", SCHEMA)],
    "DeleteSchemaRevision": [("pubsub.schemas.delete", SCHEMA)],
    "DeleteSchema": [("pubsub.schemas.delete", SCHEMA)],
    "ValidateSchema": [("pubsub.schemas.validate", "project")],
    "ValidateMessage": [("pubsub.schemas.validate", "project")],
    "ValidateMessage+name": [("pubsub.schemas.validate", "project"),
                             ("pubsub.schemas.get", SCHEMA)],  # the emulator's addition
    "GetIamPolicy": [("pubsub.topics.getIamPolicy", TOPIC)],
    "GetIamPolicy+subscription": [("pubsub.subscriptions.getIamPolicy", SUB)],
    "GetIamPolicy+snapshot": [("pubsub.snapshots.getIamPolicy", SNAP)],
    "GetIamPolicy+schema": [("pubsub.schemas.getIamPolicy", SCHEMA)],
    "SetIamPolicy": [("pubsub.topics.setIamPolicy", TOPIC)],
    "SetIamPolicy+subscription": [("pubsub.subscriptions.setIamPolicy", SUB)],
    "TestIamPermissions": [],
}
EXISTING = (TOPIC, DLT, SUB, SNAP, SCHEMA)  # the fixture's (only these can have a policy)
ROLE_NAMES = {"none": None, "viewer": "roles/pubsub.viewer",
              "publisher": "roles/pubsub.publisher", "subscriber": "roles/pubsub.subscriber",
              "editor": "roles/pubsub.editor", "admin": "roles/pubsub.admin"}


def req(type_name: str, **fields: Any) -> Any:
    return getattr(t, type_name).pb()(**fields)


def mask(*paths: str) -> dict[str, list[str]]:
    return {"paths": list(paths)}


def requests_for(revision: str, ack_id: str = "") -> dict[str, tuple[str, Any]]:
    """Each row's (method, request); every request succeeds for an emulator administrator."""
    dlq = {"dead_letter_topic": DLT, "max_delivery_attempts": 5}
    schema_settings = {"schema": SCHEMA, "encoding": t.Encoding.JSON}
    iam_get = iam_policy_pb2.GetIamPolicyRequest
    return {
        "CreateTopic": ("CreateTopic", req("Topic", name=NEW_TOPIC)),
        "CreateTopic+schema": ("CreateTopic", req("Topic", name=NEW_TOPIC,
                                                  schema_settings=schema_settings)),
        "GetTopic": ("GetTopic", req("GetTopicRequest", topic=TOPIC)),
        "UpdateTopic": ("UpdateTopic", req("UpdateTopicRequest", topic={
            "name": TOPIC, "labels": {"a": "b"}}, update_mask=mask("labels"))),
        "UpdateTopic+schema": ("UpdateTopic", req("UpdateTopicRequest", topic={
            "name": TOPIC, "schema_settings": schema_settings},
            update_mask=mask("schema_settings"))),
        "DeleteTopic": ("DeleteTopic", req("DeleteTopicRequest", topic=TOPIC)),
        "Publish": ("Publish", req("PublishRequest", topic=TOPIC, messages=[{"data": b"x"}])),
        "ListTopics": ("ListTopics", req("ListTopicsRequest", project=P)),
        "ListTopicSubscriptions": ("ListTopicSubscriptions",
                                   req("ListTopicSubscriptionsRequest", topic=TOPIC)),
        "ListTopicSnapshots": ("ListTopicSnapshots",
                               req("ListTopicSnapshotsRequest", topic=TOPIC)),
        "DetachSubscription": ("DetachSubscription",
                               req("DetachSubscriptionRequest", subscription=SUB)),
        "CreateSubscription": ("CreateSubscription", req("Subscription", name=NEW_SUB,
                                                         topic=TOPIC)),
        "CreateSubscription+dlq": ("CreateSubscription", req(
            "Subscription", name=NEW_SUB, topic=TOPIC, dead_letter_policy=dlq)),
        "GetSubscription": ("GetSubscription", req("GetSubscriptionRequest", subscription=SUB)),
        "UpdateSubscription": ("UpdateSubscription", req(
            "UpdateSubscriptionRequest", subscription={"name": SUB, "labels": {"a": "b"}},
            update_mask=mask("labels"))),
        "UpdateSubscription+dlq": ("UpdateSubscription", req(
            "UpdateSubscriptionRequest", subscription={"name": SUB, "dead_letter_policy": dlq},
            update_mask=mask("dead_letter_policy"))),
        "DeleteSubscription": ("DeleteSubscription",
                               req("DeleteSubscriptionRequest", subscription=SUB)),
        "ListSubscriptions": ("ListSubscriptions", req("ListSubscriptionsRequest", project=P)),
        "ModifyPushConfig": ("ModifyPushConfig", req("ModifyPushConfigRequest",
                                                     subscription=SUB, push_config={})),
        "Pull": ("Pull", req("PullRequest", subscription=SUB, max_messages=1,
                             return_immediately=True)),
        "StreamingPull": ("StreamingPull", req("StreamingPullRequest", subscription=SUB,
                                               stream_ack_deadline_seconds=10)),
        "Acknowledge": ("Acknowledge", req("AcknowledgeRequest", subscription=SUB,
                                           ack_ids=[ack_id])),
        "ModifyAckDeadline": ("ModifyAckDeadline", req(
            "ModifyAckDeadlineRequest", subscription=SUB, ack_ids=[ack_id],
            ack_deadline_seconds=10)),
        "Seek": ("Seek", req("SeekRequest", subscription=SUB, time={"seconds": 1})),
        "Seek+snapshot": ("Seek", req("SeekRequest", subscription=SUB, snapshot=SNAP)),
        "CreateSnapshot": ("CreateSnapshot", req("CreateSnapshotRequest", name=NEW_SNAP,
                                                 subscription=SUB)),
        "GetSnapshot": ("GetSnapshot", req("GetSnapshotRequest", snapshot=SNAP)),
        "UpdateSnapshot": ("UpdateSnapshot", req(
            "UpdateSnapshotRequest", snapshot={"name": SNAP, "labels": {"a": "b"}},
            update_mask=mask("labels"))),
        "DeleteSnapshot": ("DeleteSnapshot", req("DeleteSnapshotRequest", snapshot=SNAP)),
        "ListSnapshots": ("ListSnapshots", req("ListSnapshotsRequest", project=P)),
        "CreateSchema": ("CreateSchema", req("CreateSchemaRequest", parent=P, schema_id="other",
                                             schema={"type_": t.Schema.Type.AVRO,
                                                     "definition": AVRO})),
        "ListSchemas": ("ListSchemas", req("ListSchemasRequest", parent=P)),
        "GetSchema": ("GetSchema", req("GetSchemaRequest", name=SCHEMA)),
        "ListSchemaRevisions": ("ListSchemaRevisions",
                                req("ListSchemaRevisionsRequest", name=SCHEMA)),
        "CommitSchema": ("CommitSchema", req("CommitSchemaRequest", name=SCHEMA, schema={
            "name": SCHEMA, "type_": t.Schema.Type.AVRO, "definition": AVRO})),
        "RollbackSchema": ("RollbackSchema", req("RollbackSchemaRequest", name=SCHEMA,
                                                 revision_id=revision)),
        "DeleteSchemaRevision": ("DeleteSchemaRevision", req(
            "DeleteSchemaRevisionRequest", name=f"{SCHEMA}@{revision}")),
        "DeleteSchema": ("DeleteSchema", req("DeleteSchemaRequest", name=SCHEMA)),
        "ValidateSchema": ("ValidateSchema", req("ValidateSchemaRequest", parent=P, schema={
            "type_": t.Schema.Type.AVRO, "definition": AVRO})),
        "ValidateMessage": ("ValidateMessage", req(
            "ValidateMessageRequest", parent=P, message=b'{"f": "x"}',
            encoding=t.Encoding.JSON, schema={"type_": t.Schema.Type.AVRO,
                                              "definition": AVRO})),
        "ValidateMessage+name": ("ValidateMessage", req(
            "ValidateMessageRequest", parent=P, name=SCHEMA, message=b'{"f": "x"}',
            encoding=t.Encoding.JSON)),
        "GetIamPolicy": ("GetIamPolicy", iam_get(resource=TOPIC)),
        "GetIamPolicy+subscription": ("GetIamPolicy", iam_get(resource=SUB)),
        "GetIamPolicy+snapshot": ("GetIamPolicy", iam_get(resource=SNAP)),
        "GetIamPolicy+schema": ("GetIamPolicy", iam_get(resource=SCHEMA)),
        "SetIamPolicy": ("SetIamPolicy", iam_policy_pb2.SetIamPolicyRequest(
            resource=TOPIC, policy=policy_pb2.Policy())),
        "SetIamPolicy+subscription": ("SetIamPolicy", iam_policy_pb2.SetIamPolicyRequest(
            resource=SUB, policy=policy_pb2.Policy())),
        "TestIamPermissions": ("TestIamPermissions", iam_policy_pb2.TestIamPermissionsRequest(
            resource=TOPIC, permissions=["pubsub.topics.get"])),
    }


# --- driving the core -----------------------------------------------------------------------

@dataclass
class Core:
    service: PubSubService
    store: SqliteStore
    revision: str = ""
    ack_id: str = ""

    async def call(self, who: caller.Caller | None, method: str, request: Any) -> Any:
        token = caller.current.set(who)
        try:
            if method == "StreamingPull":
                return [r async for r in self.service.streaming_pull(one(request))]
            return await self.service.unary[method](request)
        finally:
            caller.current.reset(token)

    async def status(self, who: caller.Caller | None, method: str, request: Any
                     ) -> Status | None:
        try:
            await self.call(who, method, request)
        except ApiError as exc:
            if exc.status is Status.PERMISSION_DENIED:
                assert exc.message == NOT_AUTHORIZED, exc.message
            return exc.status
        return None

    async def grant(self, resource: str, role: str, member: str = f"serviceAccount:{EMAIL}"
                    ) -> None:
        await self.call(ADMIN, "SetIamPolicy", iam_policy_pb2.SetIamPolicyRequest(
            resource=resource, policy=policy_pb2.Policy(
                bindings=[policy_pb2.Binding(role=role, members=[member])])))

    async def revoke(self, resource: str) -> None:
        await self.call(ADMIN, "SetIamPolicy", iam_policy_pb2.SetIamPolicyRequest(
            resource=resource, policy=policy_pb2.Policy()))


async def one(request: Any) -> AsyncIterator[Any]:
    yield request


async def fixture(store: SqliteStore | None = None) -> Core:
    """A topic, a dead-letter topic, a subscription, a snapshot of it and a schema."""
    store = store or SqliteStore(None)
    core = Core(PubSubService(store), store)
    s = core.service
    await s.topics.create_topic(req("Topic", name=TOPIC))
    await s.topics.create_topic(req("Topic", name=DLT))
    await s.subscriptions.create_subscription(req("Subscription", name=SUB, topic=TOPIC))
    await s.publishing.publish(req("PublishRequest", topic=TOPIC, messages=[{"data": b"m"}]))
    pulled = await s.pulls.pull(req("PullRequest", subscription=SUB, max_messages=1,
                                    return_immediately=True))
    core.ack_id = pulled.received_messages[0].ack_id
    await s.snapshots.create_snapshot(req("CreateSnapshotRequest", name=SNAP, subscription=SUB))
    schema = await s.schemas.create_schema(req("CreateSchemaRequest", parent=P,
                                               schema_id="schema", schema={
                                                   "type_": t.Schema.Type.AVRO,
                                                   "definition": AVRO}))
    core.revision = schema.revision_id  # (a second revision: the first may be deleted)
    await s.schemas.commit_schema(req("CommitSchemaRequest", name=SCHEMA, schema={
        "name": SCHEMA, "type_": t.Schema.Type.AVRO, "definition": AVRO}))
    return core


def run(scenario: Callable[[Core], Awaitable[None]]) -> None:
    async def main() -> None:
        core = await fixture()
        try:
            await scenario(core)
        finally:
            await core.store.close()

    asyncio.run(main())


def granted_on(row: str, level: str) -> list[str]:
    """Where the role is granted: the project, or each resource the row's needs name (only
    those: a check made on another resource than Google's is then refused)."""
    if level == "project":
        return [P]
    return sorted({target for _, target in GOOGLE[row] if target in EXISTING})


def expected(row: str, role: str | None, level: str) -> bool:
    held = ROLES[role] if role else frozenset()
    return all(permission in held and (level == "project" or target in granted_on(row, level))
               for permission, target in GOOGLE[row])


# --- the full table -------------------------------------------------------------------------

def test_both_tables_name_every_rpc():
    service = PubSubService(SqliteStore(None))
    served = set(service.unary) | {"StreamingPull"}
    assert set(permissions.METHODS) == served
    assert {row.partition("+")[0] for row in GOOGLE} == served
    assert set(requests_for("")) == set(GOOGLE)


@pytest.mark.parametrize("row", sorted(GOOGLE))
def test_each_rpc_by_role_and_level(row: str):
    wrong = []

    async def main() -> None:
        for name, role in ROLE_NAMES.items():
            for level in ("resource", "project"):
                core = await fixture()
                try:
                    if role:
                        for resource in granted_on(row, level):
                            await core.grant(resource, role)
                    method, request = requests_for(core.revision, core.ack_id)[row]
                    status = await core.status(ME, method, request)
                finally:
                    await core.store.close()
                allowed = status is not Status.PERMISSION_DENIED
                if allowed != expected(row, role, level):
                    wrong.append(f"{name} on {level}: {status}")

    asyncio.run(main())
    assert not wrong, f"{row}: {wrong}"


@pytest.mark.parametrize("row", sorted(GOOGLE))
def test_each_rpc_asks_for_what_googles_table_says(row: str):
    """The exact (permission, resource) pairs a call is checked for: roles that carry two
    permissions together (topics.get and topics.list) cannot tell them apart above."""
    asked: set[tuple[str, str]] = set()

    async def scenario(core: Core) -> None:
        authorizer = core.service.authorizer
        check = authorizer.check
        checking = []  # (TestIamPermissions' handler asks too: only the checks count)

        async def record(who: caller.Caller, permission: str, resource: str) -> bool:
            if checking:
                asked.add((permission, resource))
            return True

        async def recorded_check(method: str, request: Any) -> None:
            checking.append(method)
            try:
                await check(method, request)
            finally:
                checking.pop()

        authorizer.allowed = record  # type: ignore[method-assign]
        authorizer.check = recorded_check  # type: ignore[method-assign]
        method, request = requests_for(core.revision, core.ack_id)[row]
        assert await core.status(ME, method, request) is None

    run(scenario)
    assert asked == {(permission, P if target == "project" else target)
                     for permission, target in GOOGLE[row]}


@pytest.mark.parametrize("row", sorted(GOOGLE))
def test_an_administrator_and_a_call_without_auth_may_do_everything(row: str):
    async def main() -> None:
        for who in (ADMIN, None):
            core = await fixture()
            try:
                method, request = requests_for(core.revision, core.ack_id)[row]
                # Every request is a valid one: what the table allows reaches a handler that
                # does it (so "allowed" above means the handler ran).
                assert await core.status(who, method, request) is None
            finally:
                await core.store.close()

    asyncio.run(main())


# --- decisions over time, existence, members ------------------------------------------------

def publish(topic: str = TOPIC) -> tuple[str, Any]:
    return "Publish", req("PublishRequest", topic=topic, messages=[{"data": b"x"}])


def test_a_revoked_grant_stops_working_at_the_next_call():
    async def scenario(core: Core) -> None:
        await core.grant(P, "roles/pubsub.publisher")
        assert await core.status(ME, *publish()) is None
        assert await core.status(ME, *publish()) is None  # (now from the cache)
        await core.revoke(P)
        assert await core.status(ME, *publish()) is Status.PERMISSION_DENIED
        await core.grant(TOPIC, "roles/pubsub.publisher")
        assert await core.status(ME, *publish()) is None
        await core.revoke(TOPIC)
        assert await core.status(ME, *publish()) is Status.PERMISSION_DENIED

    run(scenario)


def test_a_revocation_by_another_process_is_heard_through_the_store_listener():
    """Two services on one store stand for two processes: what one writes reaches the other
    as the store's change notice of the policy kind (announced across NATS processes)."""
    async def scenario(core: Core) -> None:
        other = Core(PubSubService(core.store), core.store)
        await other.grant(P, "roles/pubsub.publisher")
        core.service.events.changed(Kind.IAM_POLICY, P)
        assert await core.status(ME, *publish()) is None
        await other.revoke(P)
        assert await core.status(ME, *publish()) is None  # not heard yet: still cached
        core.service.events.changed(Kind.IAM_POLICY, P)  # what the store's listener reports
        assert await core.status(ME, *publish()) is Status.PERMISSION_DENIED

    run(scenario)


def test_decisions_are_cached_until_a_change():
    async def scenario(core: Core) -> None:
        book = core.service.policies
        reads: list[str] = []
        bindings_for = book.bindings_for

        async def counted(resource: str) -> list[tuple[str, frozenset[str]]]:
            reads.append(resource)
            return await bindings_for(resource)

        book.bindings_for = counted  # type: ignore[method-assign]
        await core.grant(TOPIC, "roles/pubsub.publisher")
        for _ in range(3):
            assert await core.status(ME, *publish()) is None
        assert reads == [P, TOPIC]  # the project's grants, then the topic's, once
        core.service.events.resource_changed(Kind.TOPIC, TOPIC)  # any change starts afresh
        assert await core.status(ME, *publish()) is None
        assert reads == [P, TOPIC, P, TOPIC]

    run(scenario)


def test_existence_does_not_leak():
    missing_topic = f"{P}/topics/missing"
    missing_sub = f"{P}/subscriptions/missing"

    def get(topic: str) -> tuple[str, Any]:
        return "GetTopic", req("GetTopicRequest", topic=topic)

    def detach(sub: str) -> tuple[str, Any]:
        return "DetachSubscription", req("DetachSubscriptionRequest", subscription=sub)

    async def scenario(core: Core) -> None:
        # Without grants: the same answer whether the resource exists or not.
        assert await core.status(ME, *get(TOPIC)) is Status.PERMISSION_DENIED
        assert await core.status(ME, *get(missing_topic)) is Status.PERMISSION_DENIED
        assert await core.status(ME, *detach(missing_sub)) is Status.PERMISSION_DENIED
        # A grant on one topic says nothing about others.
        await core.grant(TOPIC, "roles/pubsub.editor")
        assert await core.status(ME, *get(TOPIC)) is None
        assert await core.status(ME, *get(missing_topic)) is Status.PERMISSION_DENIED
        assert await core.status(ME, *detach(missing_sub)) is Status.PERMISSION_DENIED
        # Who may see the whole project learns what does not exist.
        await core.grant(P, "roles/pubsub.editor")
        assert await core.status(ME, *get(missing_topic)) is Status.NOT_FOUND
        assert await core.status(ME, *detach(missing_sub)) is Status.NOT_FOUND

    run(scenario)


def test_members_groups_domains_and_everyone():
    team = "group:team@example.com"

    async def scenario(core: Core) -> None:
        await core.grant(TOPIC, "roles/pubsub.publisher", team)
        assert await core.status(ME, *publish()) is Status.PERMISSION_DENIED
        core.service.policies.set_groups({team: [f"serviceAccount:{EMAIL}"]})
        core.service.events.resource_changed(Kind.IAM_POLICY, TOPIC)
        assert await core.status(ME, *publish()) is None
        for member, allowed in ((f"user:{EMAIL}", True), ("domain:p.iam.gserviceaccount.com", True),
                                ("domain:example.com", False), ("allUsers", True),
                                ("allAuthenticatedUsers", True),
                                ("serviceAccount:other@p.iam.gserviceaccount.com", False)):
            await core.grant(DLT, "roles/pubsub.publisher", member)
            status = await core.status(ME, *publish(DLT))
            assert (status is None) == allowed, (member, status)

    run(scenario)


def test_an_unknown_method_is_refused_and_test_iam_permissions_answers_from_grants():
    async def scenario(core: Core) -> None:
        token = caller.current.set(ME)
        try:
            with pytest.raises(ApiError) as refused:
                await core.service.authorizer.check("SomeNewRpc", None)
            assert refused.value.status is Status.PERMISSION_DENIED
        finally:
            caller.current.reset(token)
        await core.grant(P, "roles/pubsub.viewer")
        asked = ["pubsub.topics.get", "pubsub.topics.publish", "pubsub.topics.list"]
        answer = await core.call(ME, "TestIamPermissions",
                                 iam_policy_pb2.TestIamPermissionsRequest(resource=TOPIC,
                                                                          permissions=asked))
        assert sorted(answer.permissions) == ["pubsub.topics.get", "pubsub.topics.list"]

    run(scenario)


def test_a_streaming_pull_whose_grant_is_revoked_ends_at_its_next_request():
    async def scenario(core: Core) -> None:
        await core.grant(SUB, "roles/pubsub.subscriber")
        later: asyncio.Queue[Any] = asyncio.Queue()

        async def requests() -> AsyncIterator[Any]:
            yield req("StreamingPullRequest", subscription=SUB, stream_ack_deadline_seconds=10)
            while (request := await later.get()) is not None:
                yield request

        async def stream() -> None:
            token = caller.current.set(ME)
            try:
                async for _ in core.service.streaming_pull(requests()):
                    pass
            finally:
                caller.current.reset(token)

        call = asyncio.ensure_future(stream())
        await asyncio.sleep(0.05)
        assert not call.done()  # opened: the grant holds
        await core.revoke(SUB)
        await later.put(req("StreamingPullRequest", modify_deadline_seconds=[10],
                            modify_deadline_ack_ids=[core.ack_id]))
        with pytest.raises(ApiError) as ended:
            await asyncio.wait_for(call, 5)
        assert ended.value.status is Status.PERMISSION_DENIED

    run(scenario)


# --- actAs: who may name a service account in a push config's OIDC token --------------------

def test_act_as_for_oidc_push_follows_the_grants():
    account = "pusher@p.iam.gserviceaccount.com"

    def create(name: str) -> tuple[str, Any]:
        return "CreateSubscription", req("Subscription", name=f"{P}/subscriptions/push-{name}",
                                         topic=TOPIC, push_config={
                                             "push_endpoint": "https://h/push",
                                             "oidc_token": {"service_account_email": account}})

    async def scenario(core: Core) -> None:
        await ServiceAccountKeys(core.store.resources).create(account, "http://127.0.0.1:1")
        await core.grant(P, "roles/pubsub.editor")
        # Editing subscriptions is not acting as an account.
        assert await core.status(ME, *create("a")) is Status.PERMISSION_DENIED
        # roles/iam.serviceAccountUser on the account's project is (on another project: not).
        await core.call(ADMIN, "SetIamPolicy", iam_policy_pb2.SetIamPolicyRequest(
            resource=P, policy=policy_pb2.Policy(bindings=[
                policy_pb2.Binding(role="roles/pubsub.editor",
                                   members=[f"serviceAccount:{EMAIL}"]),
                policy_pb2.Binding(role="roles/iam.serviceAccountUser",
                                   members=[f"serviceAccount:{EMAIL}"])])))
        assert await core.status(ME, *create("b")) is None
        other_project = core.service.authorizer
        assert not await other_project.act_as(ME, "pusher@q.iam.gserviceaccount.com")
        assert not await other_project.act_as(ME, "someone@example.com")  # no project to ask
        # The basic roles/editor carries actAs too; the account itself and an administrator
        # may always name it.
        await core.grant(P, "roles/editor")
        assert await core.status(ME, *create("c")) is None
        assert await core.service.authorizer.act_as(caller.Caller(account), account)
        assert await core.service.authorizer.act_as(ADMIN, "pusher@q.iam.gserviceaccount.com")

    run(scenario)


# --- through a real emulator with --auth and Google's client ---------------------------------

@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_google_client_against_an_emulator_with_auth(tmp_path, monkeypatch, transport):
    """An administrator grants and revokes on a topic with the client's own IAM calls; the
    other account's calls follow at once, as PERMISSION_DENIED (gRPC) or 403 (REST: Forbidden,
    of which PermissionDenied is the gRPC kind)."""
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    project = "iam-proj"
    with SecureEmulator(data_dir=tmp_path, extra_args=["--tls-self-signed", "--auth"]) as emu:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(emu.ca))
        admin, _ = clients(emu, transport, make_key(
            emu, f"admin@{project}.iam.gserviceaccount.com", "--admin"))
        member = f"serviceAccount:sender@{project}.iam.gserviceaccount.com"
        sender, _ = clients(emu, transport, make_key(emu, member.partition(":")[2]))
        topic = f"projects/{project}/topics/guarded"
        with pytest.raises(exceptions.Forbidden) as refused:
            sender.create_topic(name=topic)
        assert refused.value.message.endswith(NOT_AUTHORIZED)  # (REST: after the URL)
        admin.create_topic(name=topic)
        with pytest.raises(exceptions.Forbidden):
            sender.publish(topic, b"x").result(timeout=30)
        admin.set_iam_policy(request={"resource": topic, "policy": {"bindings": [
            {"role": "roles/pubsub.publisher", "members": [member]}]}})
        assert sender.publish(topic, b"x").result(timeout=30)
        with pytest.raises(exceptions.Forbidden):  # a publisher may not read the topic
            sender.get_topic(topic=topic)
        assert sender.test_iam_permissions(request={
            "resource": topic, "permissions": ["pubsub.topics.publish", "pubsub.topics.get"]
        }).permissions == ["pubsub.topics.publish"]
        admin.set_iam_policy(request={"resource": topic, "policy": {"bindings": []}})
        with pytest.raises(exceptions.Forbidden):
            sender.publish(topic, b"x").result(timeout=30)


def test_a_deleted_resources_grants_do_not_outlive_it():
    """A schema (or topic) made again under a deleted one's name starts without its grants,
    at once: the deletion drops the policy and the decisions cached from it."""
    get_schema = ("GetSchema", req("GetSchemaRequest", name=SCHEMA))
    get_topic = ("GetTopic", req("GetTopicRequest", topic=DLT))

    async def scenario(core: Core) -> None:
        await core.grant(SCHEMA, "roles/pubsub.viewer")
        await core.grant(DLT, "roles/pubsub.viewer")
        assert await core.status(ME, *get_schema) is None  # (now cached)
        assert await core.status(ME, *get_topic) is None
        await core.call(ADMIN, "DeleteSchema", req("DeleteSchemaRequest", name=SCHEMA))
        await core.call(ADMIN, "DeleteTopic", req("DeleteTopicRequest", topic=DLT))
        await core.call(ADMIN, "CreateSchema", req(
            "CreateSchemaRequest", parent=P, schema_id="schema",
            schema={"type_": t.Schema.Type.AVRO, "definition": AVRO}))
        await core.call(ADMIN, "CreateTopic", req("Topic", name=DLT))
        assert await core.status(ME, *get_schema) is Status.PERMISSION_DENIED
        assert await core.status(ME, *get_topic) is Status.PERMISSION_DENIED

    run(scenario)
