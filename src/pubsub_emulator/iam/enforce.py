"""IAM enforcement: may the calling identity do what an RPC asks, under the policies in force?

Under `--auth` every RPC is checked before its handler runs (`Authorizer.guard`, wrapped around
each handler of `PubSubService.unary`; StreamingPull's requests through `guard_stream`), against
iam/permissions.py's table: the permissions each method needs, on the resources its request
names. Without `--auth` (no caller) nothing is checked, as on any emulator. An emulator
administrator (`keys create --admin`) may do everything.

A permission is held on a resource when a binding of the resource's own policy, or of its
project's (`projects/P`: roles there apply to every resource in the project), grants a role
that carries it (iam/roles.py) to a member that matches the caller:

    serviceAccount:EMAIL, user:EMAIL   the caller's email (callers are service accounts; a
                                       `user:` member with the same email matches too)
    group:NAME                         the caller is one of the group's members
    domain:DOMAIN                      the caller's email is in that domain
    allUsers, allAuthenticatedUsers    anyone (under --auth every call is authenticated)

Permission is checked before existence: a caller who may not see a resource is told
PERMISSION_DENIED whether it exists or not (a policy of a resource that does not exist grants
nothing, so only project-level grants can reach the handler's NOT_FOUND). List calls need the
project-level `.list` permission and return the whole list, as Google's do.

Decisions are cached per (caller, permission, resource) and the whole cache is dropped on any
change notice of a policy (or of a resource, which takes its policy with it when deleted):
`changed` is an `Events` listener, so a revocation made in another process sharing the store
stops working at the next call here too. A decision made while a change arrived is not kept.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol

from google.protobuf.message import Message

from ..core.caller import Caller, current
from ..core.errors import ApiError, Status
from ..store import Kind
from .permissions import METHODS, Need, project_of
from .roles import ACT_AS, ROLES

NOT_AUTHORIZED = "User not authorized to perform this action."
MAX_CACHED = 50_000  # decisions kept before the cache starts afresh
# A decision is also forgotten after this long: a backstop for a policy written where no change
# notice reaches this process (another program writing the SQLite file); announced changes,
# the normal case, take effect at the next call.
CACHE_TTL_S = 5.0
# Changes that cannot alter a decision (they are frequent or unrelated to policies).
_UNRELATED = frozenset({Kind.ACTIVITY, Kind.SIGNING_KEY, Kind.SERVICE_ACCOUNT_KEY})
_SA_DOMAIN = ".iam.gserviceaccount.com"

Handler = Callable[[Any], Awaitable[Message]]
TopicOf = Callable[[str], Awaitable[str | None]]
"""The topic a subscription is attached to; None if it does not exist or its topic is gone."""


class PolicySource(Protocol):
    """What enforcement reads of the policies (iam/policies.py's PolicyBook)."""

    async def bindings_for(self, resource: str) -> list[tuple[str, frozenset[str]]]:
        """(role, members) of the resource's policy (a project's too: `projects/P`)."""
        ...

    def group_members(self, group: str) -> frozenset[str]:
        """The members of a group, named as a member is (`group:EMAIL`), nested groups
        expanded."""
        ...


def permission_denied() -> ApiError:
    return ApiError(Status.PERMISSION_DENIED, NOT_AUTHORIZED)


def service_account_project(email: str) -> str:
    """projects/P for NAME@P.iam.gserviceaccount.com, "" for any other email."""
    name, _, domain = email.partition("@")
    if name and domain.endswith(_SA_DOMAIN) and len(domain) > len(_SA_DOMAIN):
        return f"projects/{domain[:-len(_SA_DOMAIN)]}"
    return ""


class Authorizer:
    """Checks calls against the policies; caches decisions until a policy changes."""

    def __init__(self, policies: PolicySource, topic_of: TopicOf) -> None:
        self._policies = policies
        self._topic_of = topic_of
        self._decisions: dict[tuple[str, str, str], tuple[bool, float]] = {}  # -> verdict, until
        self._generation = 0  # bumped by every change: decisions begun before it are stale

    # --- decisions ------------------------------------------------------------------------
    async def allowed(self, caller: Caller, permission: str, resource: str) -> bool:
        """Whether `caller` holds `permission` on `resource` (directly or on its project)."""
        if caller.admin:
            return True
        key = (caller.email, permission, resource)
        now = time.monotonic()
        cached = self._decisions.get(key)
        if cached is not None and cached[1] > now:
            return cached[0]
        generation = self._generation
        verdict = await self._decide(caller, permission, resource)
        if generation == self._generation:  # else a policy changed meanwhile: not cached
            if len(self._decisions) >= MAX_CACHED:
                self._decisions.clear()
            self._decisions[key] = (verdict, now + CACHE_TTL_S)
        return verdict

    async def held(self, caller: Caller, permissions: Iterable[str], resource: str
                   ) -> frozenset[str]:
        """Which of `permissions` the caller holds on `resource` (TestIamPermissions)."""
        return frozenset([p for p in permissions if await self.allowed(caller, p, resource)])

    async def _decide(self, caller: Caller, permission: str, resource: str) -> bool:
        project = project_of(resource)
        if not project:  # not a name under a project: nothing can grant anything on it
            return False
        for scope in dict.fromkeys((project, resource)):  # the project's grants first
            for role, members in await self._policies.bindings_for(scope):
                if permission in ROLES.get(role, ()) and self._matches(caller, members):
                    return True
        return False

    def _matches(self, caller: Caller, members: frozenset[str]) -> bool:
        email = caller.email
        if {"allUsers", "allAuthenticatedUsers", f"serviceAccount:{email}",
                f"user:{email}", f"domain:{email.rpartition('@')[2]}"} & members:
            return True
        return any(member.startswith("group:") and self._in_group(email, member)
                   for member in members)

    def _in_group(self, email: str, group: str) -> bool:
        # A group lists its members as emails or as members (`serviceAccount:EMAIL`).
        return bool({email, f"serviceAccount:{email}", f"user:{email}"}
                    & self._policies.group_members(group))

    def changed(self, kind: Kind, name: str) -> None:
        """Events listener: a policy (or a resource) changed here or in another process."""
        if kind not in _UNRELATED:
            self._generation += 1
            self._decisions.clear()

    # --- checks ---------------------------------------------------------------------------
    async def check(self, method: str, request: Any) -> None:
        """PERMISSION_DENIED unless the caller holds what `method` needs for `request`."""
        caller = current.get()
        if caller is None or caller.admin:
            return
        needs = METHODS.get(method)
        if needs is None:  # a method the table does not know: refused, never let through
            raise permission_denied()
        for need in needs:
            resource = await self._resource(need, request)
            if resource and not await self.allowed(caller, need.permission_on(resource),
                                                   resource):
                raise permission_denied()

    async def _resource(self, need: Need, request: Any) -> str:
        named = need.resource(request)
        if not (need.on_attached_topic and named):
            return named
        # DetachSubscription: the subscription's topic. When there is none to ask (no such
        # subscription, or its topic was deleted), only a project-level grant lets the handler
        # answer, so whether the subscription exists does not leak.
        topic = await self._topic_of(named)
        if topic and project_of(topic):
            return topic
        return project_of(named) or named

    def guard(self, method: str, handler: Handler) -> Handler:
        """`handler`, run only once the caller passed `method`'s check."""
        @functools.wraps(handler)
        async def guarded(request: Any) -> Message:
            await self.check(method, request)
            response = await handler(request)
            if method == "SetIamPolicy":  # this process's own write: forget at once
                self.changed(Kind.IAM_POLICY, request.resource)
            return response

        return guarded

    async def guard_stream(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """StreamingPull's requests, each checked: the first names the subscription, later
        ones (acks, modacks) are checked against it again, so a revoked grant ends the call
        at the caller's next request (an idle open call keeps receiving until then)."""
        first = None
        async for request in requests:
            first = first if first is not None else request
            await self.check("StreamingPull", first)
            yield request

    async def act_as(self, caller: Caller, email: str) -> bool:
        """May `caller` name the service account `email` in a push config's OIDC token?
        An administrator, the account itself (as before IAM: the emulator's own rule), or a
        holder of `iam.serviceAccounts.actAs` on the account's project
        (roles/iam.serviceAccountUser, roles/owner, roles/editor there)."""
        if caller.admin or caller.email == email:
            return True
        project = service_account_project(email)
        return bool(project) and await self.allowed(caller, ACT_AS, project)
