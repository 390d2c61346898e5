"""Cloud Pub/Sub's predefined and basic roles, as the permissions they grant (data).

From Google's "Access control with IAM" page for Pub/Sub and Google's published role
definitions (docs/iam.md lists the sources); only the `pubsub.*` permissions, and
`iam.serviceAccounts.actAs` for roles/iam.serviceAccountUser. A policy may only bind these
roles: anything else is INVALID_ARGUMENT, as Google answers for a role that does not exist.
"""

from __future__ import annotations

from collections.abc import Iterable

RESOURCE_TYPES = ("topics", "subscriptions", "snapshots", "schemas")


def _perms(*names: str) -> frozenset[str]:
    return frozenset(f"pubsub.{name}" for name in names)


def _each(types: Iterable[str], *verbs: str) -> frozenset[str]:
    return frozenset(f"pubsub.{t}.{verb}" for t in types for verb in verbs)


PUBLISHER = _perms("topics.publish")
SUBSCRIBER = _perms("snapshots.seek", "subscriptions.consume", "topics.attachSubscription")
VIEWER = (_perms("messageTransforms.validate", "schemas.get", "schemas.list",
                 "schemas.listRevisions", "schemas.validate")
          | _each(("snapshots", "subscriptions", "topics"), "get", "list",
                  "listEffectiveTags", "listTagBindings"))
_TAG_BINDINGS = _each(("snapshots", "subscriptions", "topics"), "createTagBinding",
                      "deleteTagBinding")
EDITOR = (VIEWER
          | _perms("schemas.attach", "schemas.commit", "schemas.create", "schemas.delete",
                   "schemas.rollback",
                   "snapshots.create", "snapshots.delete", "snapshots.seek", "snapshots.update",
                   "subscriptions.consume", "subscriptions.create", "subscriptions.delete",
                   "subscriptions.update",
                   "topics.attachSubscription", "topics.create", "topics.delete",
                   "topics.detachSubscription", "topics.publish", "topics.update",
                   "topics.updateTag")
          | _TAG_BINDINGS)
ADMIN = EDITOR | _each(RESOURCE_TYPES, "getIamPolicy", "setIamPolicy")

ACT_AS = "iam.serviceAccounts.actAs"

ROLES: dict[str, frozenset[str]] = {
    "roles/pubsub.publisher": PUBLISHER,
    "roles/pubsub.subscriber": SUBSCRIBER,
    "roles/pubsub.viewer": VIEWER,
    "roles/pubsub.editor": EDITOR,
    "roles/pubsub.admin": ADMIN,
    # Basic roles, as far as Pub/Sub goes.
    "roles/owner": ADMIN | frozenset({ACT_AS}),
    "roles/editor": (EDITOR - _TAG_BINDINGS) | _perms("schemas.getIamPolicy")
    | frozenset({ACT_AS}),
    "roles/viewer": VIEWER | _perms("schemas.attach", "schemas.getIamPolicy", "snapshots.seek"),
    # Who may name a service account in a push subscription's OIDC token.
    "roles/iam.serviceAccountUser": frozenset({ACT_AS}),
}

# Every permission some role grants: TestIamPermissions answers from these.
ALL_PERMISSIONS = frozenset().union(*ROLES.values())


def permissions_of(role: str) -> frozenset[str]:
    """The permissions a role grants; KeyError for a role that does not exist."""
    return ROLES[role]
