"""What a policy may hold, checked as Google checks it on SetIamPolicy (INVALID_ARGUMENT).

- version: 0, 1 or 3 (0 is stored as 1, as Google answers); a binding with a condition needs 3;
- roles: only those of `roles.ROLES` ("Role R is not supported for this resource.");
- members: `user:`, `serviceAccount:`, `group:` with an email, `domain:` with a domain name,
  `allUsers`, `allAuthenticatedUsers`; at most MAX_MEMBERS over the whole policy;
- audit configs: refused (Pub/Sub resources take none);
- bindings are normalised: a member listed twice in a binding is kept once, and bindings of
  the same role and condition are merged, so the etag depends on what is granted only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from google.iam.v1 import policy_pb2

from ..core.errors import ApiError, invalid_argument
from . import roles

VALID_VERSIONS = (0, 1, 3)
CONDITIONS_VERSION = 3
# Google's limit on the principals of one allow policy.
MAX_MEMBERS = 1500
# A policy is stored in one resource record; Google bounds it (64 KB) for the same reason.
MAX_POLICY_BYTES = 64 * 1024

_EMAIL = re.compile(r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+")
_DOMAIN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]"
                     r"([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")
EMAIL_TYPES = ("user", "serviceAccount", "group")
EVERYONE = ("allUsers", "allAuthenticatedUsers")


def member_error(member: str) -> ApiError:
    # Google's wording (Resource Manager) for a principal it cannot read.
    return invalid_argument(f"The member {member} is of an unknown type. Please set a valid "
                            f"type prefix for the member.")


def check_member(member: str) -> str:
    """A principal as Google writes it, or INVALID_ARGUMENT."""
    if member in EVERYONE:
        return member
    kind, sep, value = member.partition(":")
    if not sep or len(member) > 320:
        raise member_error(member)
    if kind in EMAIL_TYPES and _EMAIL.fullmatch(value):
        return member
    if kind == "domain" and _DOMAIN.fullmatch(value):
        return member
    raise member_error(member)


def check_role(role: str) -> str:
    if role not in roles.ROLES:
        raise invalid_argument(f"Role {role} is not supported for this resource.")
    return role


def check_version(version: int, what: str = "policy version") -> int:
    if version not in VALID_VERSIONS:
        raise invalid_argument(f"Invalid {what} {version}: the version must be 0, 1 or 3.")
    return version


def _condition_key(binding: Any) -> bytes:
    return binding.condition.SerializeToString(deterministic=True) \
        if binding.HasField("condition") else b""


def normalised(policy: Any) -> policy_pb2.Policy:
    """The policy as it will be stored: checked, bindings merged, members de-duplicated,
    without etag (the store's etag is computed from this content)."""
    check_version(policy.version)
    if policy.audit_configs:
        raise invalid_argument("Audit configs are not supported for this resource.")
    merged: dict[tuple[str, bytes], tuple[Any, dict[str, None]]] = {}
    for binding in policy.bindings:
        check_role(binding.role)
        if binding.HasField("condition"):
            if policy.version != CONDITIONS_VERSION:
                raise invalid_argument(
                    f"Binding of role {binding.role} has a condition: a policy with "
                    f"conditions must set version {CONDITIONS_VERSION}.")
            if not binding.condition.expression.strip():
                raise invalid_argument(
                    f"The condition of the binding of role {binding.role} has no expression.")
        key = (binding.role, _condition_key(binding))
        entry = merged.setdefault(key, (binding.condition if binding.HasField("condition")
                                        else None, {}))
        for member in binding.members:
            entry[1][check_member(member)] = None
    out = policy_pb2.Policy(version=policy.version or 1)
    total = 0
    for (role, _), (condition, members) in merged.items():
        if not members:
            continue  # a role granted to nobody grants nothing (Google drops it too)
        total += len(members)
        binding = out.bindings.add(role=role, members=list(members))
        if condition is not None:
            binding.condition.CopyFrom(condition)
    if total > MAX_MEMBERS:
        raise invalid_argument(f"The number of members in the policy ({total}) is larger "
                               f"than the maximum allowed size {MAX_MEMBERS}.")
    if not out.bindings:
        out.version = 0  # nothing granted: the empty policy, as Google answers it
    if out.ByteSize() > MAX_POLICY_BYTES:
        raise invalid_argument(f"The policy is larger than {MAX_POLICY_BYTES} bytes.")
    return out


def check_permissions(permissions: Iterable[str]) -> list[str]:
    """TestIamPermissions' asked permissions, each once in the order asked; INVALID_ARGUMENT
    for one no role grants (wildcards included, as Google refuses them)."""
    asked: dict[str, None] = {}
    for permission in permissions:
        if permission not in roles.ALL_PERMISSIONS:
            raise invalid_argument(f"Permission {permission} is not valid for this resource.")
        asked[permission] = None
    return list(asked)
