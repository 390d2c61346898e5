"""IAM policies as resources: stored, read, replaced by compare-and-set, deleted with their
resource.

A policy is a resource of kind `IAM_POLICY` named by the resource it guards (a topic,
subscription, snapshot or schema name, or `projects/P` for the project-level grants this
emulator adds), stored as a serialized `google.iam.v1.Policy` without its etag: the etag is
computed from the content, so every process sharing the store gives the same etag for the
same policy, and a policy that was never set, or set empty, has Google's empty etag "ACAB".
The kind is announced, so processes sharing a NATS store drop what they cached at once.

`PolicyBook` is the one interface to them; IAM enforcement (iam/enforce.py) reads grants
through `get`, `bindings_for` and `group_members`; `changed` is an `Events.on_change` listener.
Bindings with a condition are stored and returned, never granted (docs/iam.md).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import random
from collections.abc import Callable, Iterable, Mapping

from google.iam.v1 import policy_pb2

from ..core import limits
from ..core.errors import aborted
from ..store import Kind, ResourceTable
from . import validation

KIND = Kind.IAM_POLICY
# Google's etag of a policy with no bindings (base64 "ACAB").
EMPTY_ETAG = base64.b64decode("ACAB")
# The first byte of Google's etags of set policies ("BwU..."); the rest is a content hash.
_ETAG_PREFIX = b"\x07"
_PARSED_CACHE_MAX = 4096
_BACKOFF_S = 0.001

Change = Callable[[policy_pb2.Policy], policy_pb2.Policy]


def etag_of(content: policy_pb2.Policy) -> bytes:
    """The etag of a stored (etag-less, normalised) policy."""
    if not content.bindings:
        return EMPTY_ETAG
    digest = hashlib.sha256(content.SerializeToString(deterministic=True)).digest()
    return _ETAG_PREFIX + digest[:7]


def with_etag(content: policy_pb2.Policy) -> policy_pb2.Policy:
    policy = policy_pb2.Policy()
    policy.CopyFrom(content)
    policy.etag = etag_of(content)
    return policy


def as_version(policy: policy_pb2.Policy, requested: int) -> policy_pb2.Policy:
    """The policy as a client asking for `requested` may see it: below version 3 a
    conditional binding's role gets Google's `_withcond_` suffix and loses its condition."""
    if requested >= validation.CONDITIONS_VERSION or not any(
            b.HasField("condition") for b in policy.bindings):
        return policy
    out = policy_pb2.Policy(version=1, etag=policy.etag)
    for binding in policy.bindings:
        role = binding.role
        if binding.HasField("condition"):
            digest = hashlib.sha256(binding.condition.SerializeToString(deterministic=True))
            role = f"{role}_withcond_{digest.hexdigest()[:20]}"
        out.bindings.add(role=role, members=list(binding.members))
    return out


def _flatten(groups: Mapping[str, Iterable[str]]) -> dict[str, frozenset[str]]:
    """Each group's members, nested groups expanded (a cycle simply stops)."""
    flat: dict[str, frozenset[str]] = {}

    def expand(group: str, seen: frozenset[str]) -> set[str]:
        out: set[str] = set()
        for member in groups.get(group, ()):
            if member.startswith("group:") and member in groups:
                if member not in seen:
                    out |= expand(member, seen | {member})
            else:
                out.add(member)
        return out

    for group in groups:
        flat[group] = frozenset(expand(group, frozenset({group})))
    return flat


class PolicyBook:
    """Every IAM policy, over the store's resource table."""

    def __init__(self, table: ResourceTable) -> None:
        self._table = table
        # name -> (stored bytes, policy with etag): parsing is reused while the bytes match.
        self._parsed: dict[str, tuple[bytes, policy_pb2.Policy]] = {}
        self._groups: dict[str, frozenset[str]] = {}

    # --- the interface IAM enforcement uses --------------------------------------------------
    async def get(self, resource: str) -> policy_pb2.Policy:
        """The resource's policy, etag set; the empty policy (etag "ACAB") if none. The
        caller must not change it (it is shared)."""
        raw = await self._table.get(KIND, resource)
        if raw is None:
            self._parsed.pop(resource, None)
            return policy_pb2.Policy(etag=EMPTY_ETAG)
        cached = self._parsed.get(resource)
        if cached is not None and cached[0] == raw:
            return cached[1]
        policy = with_etag(policy_pb2.Policy.FromString(raw))
        if len(self._parsed) >= _PARSED_CACHE_MAX:
            self._parsed.clear()
        self._parsed[resource] = (raw, policy)
        return policy

    def changed(self, kind: Kind, name: str) -> None:
        """An `Events.on_change` listener: a policy changed here or in another process."""
        if kind is KIND:
            self._parsed.pop(name, None)

    async def bindings_for(self, resource: str) -> list[tuple[str, frozenset[str]]]:
        """(role, members) of the resource's own policy (`projects/P`: the project's), the
        bindings with a condition left out: conditions are not evaluated, so they grant
        nothing."""
        policy = await self.get(resource)
        return [(b.role, frozenset(b.members)) for b in policy.bindings
                if not b.HasField("condition")]

    def group_members(self, group: str) -> frozenset[str]:
        """The members of a `group:EMAIL` the topology file defines, nested groups expanded;
        empty for a group it does not define."""
        return self._groups.get(group, frozenset())

    # --- administration ----------------------------------------------------------------------
    def set_groups(self, groups: Mapping[str, Iterable[str]]) -> None:
        """The groups of the topology file (`group:EMAIL` -> members); replaces the known ones."""
        self._groups = _flatten(groups)

    async def replace(self, resource: str, policy: policy_pb2.Policy, etag: bytes | None,
                      paths: frozenset[str]) -> policy_pb2.Policy:
        """SetIamPolicy's write: the fields in `paths` ("bindings", "version") of `policy`
        replace the stored ones. With `etag`, only if the stored policy still has it
        (ABORTED otherwise, as Google answers a stale etag)."""

        def change(current: policy_pb2.Policy) -> policy_pb2.Policy:
            if etag is not None and etag != etag_of(current):
                # Google's answer to a stale etag.
                raise aborted("There were concurrent policy changes. Please retry the whole "
                              "read-modify-write with exponential backoff.")
            new = policy_pb2.Policy()
            new.CopyFrom(current)
            new.version = policy.version
            if "bindings" in paths:
                del new.bindings[:]
                new.bindings.extend(policy.bindings)
            new.audit_configs.extend(policy.audit_configs)  # refused by the checks
            return validation.normalised(new)

        return await self._rewrite(resource, change)

    async def grant(self, resource: str, role: str, members: Iterable[str]
                    ) -> policy_pb2.Policy:
        """Add members to the unconditional binding of `role` (made if missing); what is
        already granted stays: applying the same grant again changes nothing."""
        validation.check_role(role)
        wanted = [validation.check_member(member) for member in members]

        def change(current: policy_pb2.Policy) -> policy_pb2.Policy:
            new = policy_pb2.Policy()
            new.CopyFrom(current)
            new.bindings.add(role=role, members=wanted)  # merged by normalised
            if new.version == 0:
                new.version = 1
            return validation.normalised(new)

        return await self._rewrite(resource, change)

    async def delete(self, resource: str) -> None:
        """Forget the resource's policy (the resource was deleted)."""
        self._parsed.pop(resource, None)
        await self._table.delete(KIND, resource)

    async def _rewrite(self, resource: str, change: Change) -> policy_pb2.Policy:
        """Read-modify-write by compare-and-set (a concurrent change is read again and
        `change` re-applied); the new policy, etag set."""
        for attempt in range(limits.REWRITE_ATTEMPTS):
            raw = await self._table.get(KIND, resource)
            current = policy_pb2.Policy.FromString(raw) if raw is not None \
                else policy_pb2.Policy()
            new = change(current)
            data = new.SerializeToString(deterministic=True)
            written = (await self._table.create(KIND, resource, data) if raw is None
                       else await self._table.update(KIND, resource, data, expected=raw))
            if written:
                self._parsed.pop(resource, None)
                return with_etag(new)
            await asyncio.sleep(random.uniform(0, _BACKOFF_S * 2 ** attempt))
        raise aborted(f"The policy was changed by other requests {limits.REWRITE_ATTEMPTS} "
                      f"times while this one applied; try again (resource={resource}).")
