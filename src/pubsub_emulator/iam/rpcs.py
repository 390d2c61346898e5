"""The google.iam.v1.IAMPolicy RPCs on Pub/Sub resources: SetIamPolicy, GetIamPolicy and
TestIamPermissions, on topics, subscriptions, snapshots and schemas as Google serves them, and
on `projects/P` (this emulator's project-level grants, docs/iam.md).

Set and Get answer NOT_FOUND for a resource that does not exist; TestIamPermissions answers
the empty set for it, as Google does. On `projects/P`, Set and Get need an administrator under
`--auth` (a project's policy grants on every resource in it). Whether a caller may set or read
a resource's policy (pubsub.*.setIamPolicy, getIamPolicy) is IAM enforcement's check, made
where every RPC is checked; TestIamPermissions asks enforcement which permissions a caller has.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Set
from typing import Any

from google.iam.v1 import iam_policy_pb2, policy_pb2

from ..core import caller, names
from ..core.errors import ApiError, Status, invalid_argument, invalid_name, not_found
from ..store import Kind, ResourceTable
from . import validation
from .policies import PolicyBook, as_version

IAM_METHODS = ("SetIamPolicy", "GetIamPolicy", "TestIamPermissions")

# Which of the permissions a caller holds on a resource: IAM enforcement's answer
# (iam/enforce.py, `Authorizer.held`).
Held = Callable[[caller.Caller, Iterable[str], str], Awaitable[Set[str]]]

_KINDS = {kind.value: kind for kind in (Kind.TOPIC, Kind.SUBSCRIPTION, Kind.SNAPSHOT,
                                        Kind.SCHEMA)}
# SetIamPolicy's update mask: Google's default when none is given is "bindings, etag".
DEFAULT_MASK = frozenset({"bindings", "etag"})
_MASKABLE = {"bindings": "bindings", "etag": "etag", "version": "version",
             "audit_configs": "audit_configs", "auditConfigs": "audit_configs"}


def resource_kind(resource: str) -> Kind | None:
    """The kind of a resource an IAM policy may guard; None for `projects/P`.
    INVALID_ARGUMENT for anything else."""
    parts = resource.split("/")
    if len(parts) == 2:
        names.parse_project(resource)
        return None
    kind = _KINDS.get(parts[2]) if len(parts) == 4 and parts[0] == "projects" else None
    if kind is None:
        raise invalid_name("resource", resource)
    if kind is Kind.SCHEMA:  # schema ids have their own rules (schemas/registry.py)
        names.parse_project("/".join(parts[:2]))
        if not parts[3]:
            raise invalid_name("resource", resource)
    else:
        names.parse(resource, kind)
    return kind


def _mask_paths(request: Any) -> frozenset[str]:
    if not request.HasField("update_mask"):
        return DEFAULT_MASK
    paths = set()
    for path in request.update_mask.paths:
        field = _MASKABLE.get(path)
        if field is None:
            raise invalid_argument(f"Invalid update_mask path: {path}. A policy's update mask "
                                   f"may name bindings, etag, version and audit_configs.")
        paths.add(field)
    return frozenset(paths)


def _require_admin(resource: str) -> None:
    who = caller.current.get()
    if who is not None and not who.admin:
        raise ApiError(Status.PERMISSION_DENIED,
                       f"The caller does not have permission: the policy of {resource} "
                       f"(project-level grants) is an administrator's ({who.email} is not).")


class IamPolicyRpcs:
    """SetIamPolicy, GetIamPolicy, TestIamPermissions over the policy book."""

    def __init__(self, policies: PolicyBook, table: ResourceTable,
                 held: Held | None = None) -> None:
        """`held`: enforcement's answer for a caller (under --auth); without it a caller who
        is no administrator is told it holds nothing (never more than enforcement grants)."""
        self._policies = policies
        self._table = table
        self._held = held

    async def _exists(self, kind: Kind | None, resource: str) -> bool:
        return kind is None or await self._table.get(kind, resource) is not None

    async def _existing(self, resource: str) -> Kind | None:
        """The resource's kind; NOT_FOUND if it does not exist; for a project, the
        administrator check."""
        kind = resource_kind(resource)
        if kind is None:
            _require_admin(resource)
        elif not await self._exists(kind, resource):
            raise not_found(resource.rsplit("/", 1)[-1])
        return kind

    async def set_iam_policy(self, request: Any) -> policy_pb2.Policy:
        kind = await self._existing(request.resource)
        paths = _mask_paths(request)
        etag = request.policy.etag if "etag" in paths and request.policy.etag else None
        policy = await self._policies.replace(request.resource, request.policy, etag, paths)
        if not await self._exists(kind, request.resource):
            # Deleted while this call wrote: its deletion may have missed the new policy.
            await self._policies.delete(request.resource)
            raise not_found(request.resource.rsplit("/", 1)[-1])
        return policy

    async def get_iam_policy(self, request: Any) -> policy_pb2.Policy:
        requested = validation.check_version(request.options.requested_policy_version,
                                             "requested policy version")
        await self._existing(request.resource)
        return as_version(await self._policies.get(request.resource), requested)

    async def test_iam_permissions(self, request: Any
                                   ) -> iam_policy_pb2.TestIamPermissionsResponse:
        asked = validation.check_permissions(request.permissions)
        kind = resource_kind(request.resource)
        if not asked or not await self._exists(kind, request.resource):
            return iam_policy_pb2.TestIamPermissionsResponse()
        who = caller.current.get()
        if who is None:  # no --auth: anyone may do anything
            return iam_policy_pb2.TestIamPermissionsResponse(permissions=asked)
        if self._held is not None:
            allowed: Set[str] = await self._held(who, asked, request.resource)
        else:
            allowed = set(asked) if who.admin else set()
        return iam_policy_pb2.TestIamPermissionsResponse(
            permissions=[p for p in asked if p in allowed])
