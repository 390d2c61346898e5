"""The console's JSON API under /console/api/: only what Google's REST API (which the page uses
for everything else) cannot give.

    GET /console/api/session                      {"auth", "email", "admin"}: who is asking
    GET /console/api/projects                     the projects holding resources one may see
    GET /console/api/projects/P/overview          topics and subscriptions with their figures
    GET /console/api/projects/P/subscriptions/S:peek?maxMessages=N
                                                  pending messages, delivery unchanged

Under `--auth` every one needs a credential (the REST middleware answers 401 before a handler
runs, as for the API) and sets the caller; the overview leaves out what the caller may not get
(overview.py) and peek needs `pubsub.subscriptions.consume` on the subscription, checked before
its existence, as iam/enforce.py checks Pull. Errors are Google's JSON error body.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from ..api.rest import error_response
from ..core import caller, names
from ..core.errors import ApiError, invalid_argument
from ..core.service import PubSubService, store_error
from ..iam.enforce import permission_denied
from ..metrics import Metrics
from ..store import StoreError
from .assets import secured
from .overview import Overview, PushStats

API_PATH = "/console/api"
DEFAULT_PEEK = 10
MAX_PEEK = 100
Handler = Callable[[web.Request], Awaitable[dict[str, Any]]]


def _answered(handler: Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The handler's dict as JSON, or its ApiError (a store failure too) as Google's body;
    either with the console's security headers."""

    @functools.wraps(handler)
    async def answer(http: web.Request) -> web.StreamResponse:
        try:
            try:
                body = await handler(http)
            except StoreError as exc:
                raise store_error(exc) from None
        except ApiError as exc:
            return secured(error_response(exc))
        return secured(web.json_response(body))

    return answer


def _peek_count(http: web.Request) -> int:
    raw = http.query.get("maxMessages", str(DEFAULT_PEEK))
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_PEEK:
        raise invalid_argument(f"maxMessages must be between 1 and {MAX_PEEK}.")
    return count


def _pb(message: Any) -> Message:
    """The protobuf message of a PubsubMessage, whether raw or a proto-plus wrapper."""
    return message if isinstance(message, Message) else type(message).pb(message)


class ConsoleApi:
    """The handlers of the console's JSON API."""

    def __init__(self, service: PubSubService, metrics: Metrics | None, push_stats: PushStats,
                 auth: bool) -> None:
        self._service = service
        self._auth = auth
        self.overview = Overview(service, metrics, push_stats)

    def routes(self) -> list[web.RouteDef]:
        project = f"{API_PATH}/projects/{{project}}"
        return [web.get(f"{API_PATH}/session", _answered(self.session)),
                web.get(f"{API_PATH}/projects", _answered(self.projects)),
                web.get(f"{project}/overview", _answered(self.project)),
                web.get(f"{project}/subscriptions/{{subscription:[^/:]+}}:peek",
                        _answered(self.peek))]

    async def session(self, _: web.Request) -> dict[str, Any]:
        who = caller.current.get()
        return {"auth": self._auth, "email": who.email if who else "",
                "admin": bool(who and who.admin)}

    async def projects(self, _: web.Request) -> dict[str, Any]:
        return {"projects": await self.overview.projects(caller.current.get())}

    async def project(self, http: web.Request) -> dict[str, Any]:
        project = names.parse_project(f"projects/{http.match_info['project']}")
        return await self.overview.project(caller.current.get(), project)

    async def peek(self, http: web.Request) -> dict[str, Any]:
        name = (f"projects/{http.match_info['project']}/subscriptions/"
                f"{http.match_info['subscription']}")
        count = _peek_count(http)
        if not await self.overview.may(caller.current.get(), "pubsub.subscriptions.consume",
                                       name):
            raise permission_denied()
        peeked = await self._service.peek(name, count)
        return {"messages": [{"message": json_format.MessageToDict(_pb(found.message)),
                              "deliveryAttempt": found.delivery_attempt,
                              "leasedUntilMs": found.leased_until_ms}
                             for found in peeked]}
