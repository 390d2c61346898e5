"""Which permission each RPC needs, on which resource (data, read by iam/enforce.py).

From Google's "Access control with IAM" page for Pub/Sub. Where the page is silent the
emulator decides, and says so here and in docs/iam-enforcement.md:

- ListTopicSubscriptions and ListTopicSnapshots need `pubsub.topics.get` on the topic.
- A dead-letter policy (CreateSubscription, or UpdateSubscription whose mask touches it): Google
  asks that its service agent may publish to the dead-letter topic and consume the source
  subscription. Here the emulator is the service, so the caller must hold both itself:
  `pubsub.topics.publish` on the dead-letter topic and `pubsub.subscriptions.consume` on the
  subscription; otherwise anyone who may create a subscription could route a topic's messages
  into a topic they may not publish to.
- A topic's schema (CreateTopic, or UpdateTopic whose mask touches `schema_settings`) needs
  `pubsub.schemas.attach` on the schema, the permission Google's roles carry for it.
- ValidateMessage that names a stored schema also needs `pubsub.schemas.get` on it, so a
  project's schemas cannot be probed through another project's `schemas.validate`.
- Get/SetIamPolicy on `projects/P` (not a Pub/Sub resource: Resource Manager's permission, which
  no role here grants) is an emulator administrator's only.
- TestIamPermissions needs nothing, as on Google (it answers what the caller holds).

A resource is named by a function of the request; an empty name means "not needed by this
request" (no dead-letter topic, no snapshot to seek to) or a request the handler rejects as
INVALID_ARGUMENT anyway (a missing name). `on_attached_topic` marks the one check that needs the
store: DetachSubscription's permission is on the topic the subscription is attached to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .roles import RESOURCE_TYPES

NameOf = Callable[[Any], str]


@dataclass(frozen=True)
class Need:
    """`permission` on the resource `resource(request)` names ("{type}": that resource's type)."""

    permission: str
    resource: NameOf
    on_attached_topic: bool = False  # on the topic the named subscription is attached to

    def permission_on(self, name: str) -> str:
        if "{type}" not in self.permission:
            return self.permission
        kind = resource_type(name)
        if kind is None:  # a project, or a name Pub/Sub has no policy for
            return self.permission.replace("pubsub.{type}", "resourcemanager.projects")
        return self.permission.format(type=kind)


def resource_type(name: str) -> str | None:
    """topics / subscriptions / snapshots / schemas for a Pub/Sub resource name, else None."""
    parts = name.split("/")
    if len(parts) == 4 and parts[0] == "projects" and parts[2] in RESOURCE_TYPES:
        return parts[2]
    return None


def project_of(name: str) -> str:
    """projects/P for any name under projects/P ("" when the name is not under a project)."""
    parts = name.split("/")
    if len(parts) >= 2 and parts[0] == "projects" and parts[1]:
        return f"projects/{parts[1]}"
    return ""


# --- where a request names its resource ---------------------------------------------------

def field(path: str) -> NameOf:
    """The request's field at a dotted path (`topic.name`)."""
    def name(request: Any) -> str:
        value = request
        for part in path.split("."):
            value = getattr(value, part)
        return str(value)

    return name


def project(path: str) -> NameOf:
    """The project of the name at a dotted path (`name` of CreateTopic: projects/P/topics/T).
    A name under no project stays as it is, so the check refuses it rather than skipping it."""
    of = field(path)

    def name(request: Any) -> str:
        named = of(request)
        return project_of(named) or named

    return name


def schema(path: str) -> NameOf:
    """A schema's name without its `@revision`."""
    of = field(path)
    return lambda request: of(request).partition("@")[0]


def if_masked(prefix: str, path: str) -> NameOf:
    """The name at `path` when the update mask touches `prefix` (`dead_letter_policy`)."""
    of = field(path)

    def name(request: Any) -> str:
        touched = any(p == prefix or p.startswith(prefix + ".")
                      for p in request.update_mask.paths)
        return of(request) if touched else ""

    return name


def dead_letter_source(request: Any) -> str:
    """CreateSubscription: the new subscription, when it gets a dead-letter topic."""
    return request.name if request.dead_letter_policy.dead_letter_topic else ""


def snapshot_project(request: Any) -> str:
    """CreateSnapshot: the snapshot's project; Google names an unnamed one in the
    subscription's project."""
    named = request.name or request.subscription
    return project_of(named) or named


# --- the table ------------------------------------------------------------------------------

CONSUME = "pubsub.subscriptions.consume"
_DEAD_LETTER = "dead_letter_policy.dead_letter_topic"

METHODS: dict[str, tuple[Need, ...]] = {
    # Publisher
    "CreateTopic": (Need("pubsub.topics.create", project("name")),
                    Need("pubsub.schemas.attach", field("schema_settings.schema"))),
    "UpdateTopic": (Need("pubsub.topics.update", field("topic.name")),
                    Need("pubsub.schemas.attach",
                         if_masked("schema_settings", "topic.schema_settings.schema"))),
    "GetTopic": (Need("pubsub.topics.get", field("topic")),),
    "DeleteTopic": (Need("pubsub.topics.delete", field("topic")),),
    "Publish": (Need("pubsub.topics.publish", field("topic")),),
    "ListTopics": (Need("pubsub.topics.list", field("project")),),
    "ListTopicSubscriptions": (Need("pubsub.topics.get", field("topic")),),
    "ListTopicSnapshots": (Need("pubsub.topics.get", field("topic")),),
    "DetachSubscription": (Need("pubsub.topics.detachSubscription", field("subscription"),
                                on_attached_topic=True),),
    # Subscriber: subscriptions
    "CreateSubscription": (Need("pubsub.subscriptions.create", project("name")),
                           Need("pubsub.topics.attachSubscription", field("topic")),
                           Need("pubsub.topics.publish", field(_DEAD_LETTER)),
                           Need(CONSUME, dead_letter_source)),
    "GetSubscription": (Need("pubsub.subscriptions.get", field("subscription")),),
    "UpdateSubscription": (Need("pubsub.subscriptions.update", field("subscription.name")),
                           Need("pubsub.topics.publish",
                                if_masked("dead_letter_policy", f"subscription.{_DEAD_LETTER}")),
                           Need(CONSUME, if_masked("dead_letter_policy", "subscription.name"))),
    "DeleteSubscription": (Need("pubsub.subscriptions.delete", field("subscription")),),
    "ListSubscriptions": (Need("pubsub.subscriptions.list", field("project")),),
    "ModifyPushConfig": (Need("pubsub.subscriptions.update", field("subscription")),),
    # Subscriber: delivery
    "Pull": (Need(CONSUME, field("subscription")),),
    "StreamingPull": (Need(CONSUME, field("subscription")),),
    "Acknowledge": (Need(CONSUME, field("subscription")),),
    "ModifyAckDeadline": (Need(CONSUME, field("subscription")),),
    # Subscriber: snapshots and Seek
    "Seek": (Need(CONSUME, field("subscription")),
             Need("pubsub.snapshots.seek", field("snapshot"))),
    "CreateSnapshot": (Need("pubsub.snapshots.create", snapshot_project),
                       Need(CONSUME, field("subscription"))),
    "GetSnapshot": (Need("pubsub.snapshots.get", field("snapshot")),),
    "UpdateSnapshot": (Need("pubsub.snapshots.update", field("snapshot.name")),),
    "DeleteSnapshot": (Need("pubsub.snapshots.delete", field("snapshot")),),
    "ListSnapshots": (Need("pubsub.snapshots.list", field("project")),),
    # SchemaService
    "CreateSchema": (Need("pubsub.schemas.create", field("parent")),),
    "ListSchemas": (Need("pubsub.schemas.list", field("parent")),),
    "GetSchema": (Need("pubsub.schemas.get", schema("name")),),
    "ListSchemaRevisions": (Need("pubsub.schemas.listRevisions", schema("name")),),
    "CommitSchema": (Need("pubsub.schemas.commit", schema("name")),),
    "RollbackSchema": (Need("pubsub.schemas.rollback", schema("name")),),
    "DeleteSchemaRevision": (Need("pubsub.schemas.delete", schema("name")),),
    "DeleteSchema": (Need("pubsub.schemas.delete", schema("name")),),
    "ValidateSchema": (Need("pubsub.schemas.validate", field("parent")),),
    "ValidateMessage": (Need("pubsub.schemas.validate", field("parent")),
                        Need("pubsub.schemas.get", schema("name"))),
    # IAMPolicy
    "GetIamPolicy": (Need("pubsub.{type}.getIamPolicy", field("resource")),),
    "SetIamPolicy": (Need("pubsub.{type}.setIamPolicy", field("resource")),),
    "TestIamPermissions": (),
}
