"""The REST adapter: Google's JSON mapping of the API, routed by the protos' google.api.http rules.

Each rule like `post: "/v1/{topic=projects/*/topics/*}:publish" body: "*"` becomes a route:
path variables fill request fields, the body fills the request (or the named field), and query
parameters fill the remaining fields by their JSON or proto names. Unknown query parameters
(`alt=json`, `prettyPrint`, ...) are ignored, as Google ignores them.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from ..core.errors import ApiError, Status, invalid_argument
from . import protos
from .errors import HTTP_STATUS, rest_body

log = logging.getLogger("pubsub_emulator.rest")

Caller = Callable[[str, Any], Awaitable[Message]]

# JSON bodies carry base64 data: a 10 MB message is ~13.4 MB of JSON. Let those reach the
# service so it answers with Google's INVALID_ARGUMENT rather than a transport error.
MAX_BODY_BYTES = 64 * 1024 * 1024

_VARIABLE = re.compile(r"\{([a-z_.]+)(?:=([^}]*))?\}")


def _segment_regex(pattern: str) -> str:
    parts = []
    for segment in pattern.split("/"):
        if segment == "**":
            parts.append(".+")
        elif segment == "*":
            parts.append("[^/:]+")
        else:
            parts.append(re.escape(segment))
    return "/".join(parts)


@dataclass(frozen=True)
class Route:
    method: protos.Method
    verb: str
    regex: re.Pattern[str]
    fields: tuple[str, ...]  # request field path of each captured variable
    body: str


def compile_routes() -> list[Route]:
    routes = []
    for method in protos.methods().values():
        rule = method.http
        if rule is None:
            continue
        fields: list[str] = []
        pattern, pos = "", 0
        for m in _VARIABLE.finditer(rule.template):
            pattern += re.escape(rule.template[pos:m.start()])
            fields.append(m.group(1))
            pattern += f"({_segment_regex(m.group(2) or '*')})"
            pos = m.end()
        pattern += re.escape(rule.template[pos:])
        routes.append(Route(method, rule.verb.upper(), re.compile(f"^{pattern}$"),
                            tuple(fields), rule.body))
    return routes


def _set_path(request: Message, path: str, value: str) -> None:
    *parents, leaf = path.split(".")
    target = request
    for name in parents:
        target = getattr(target, name)
    setattr(target, leaf, value)


def _query_fields(request: Message, query: Any) -> None:
    """Fill top-level scalar fields from query parameters; ignore everything else."""
    by_name = {}
    for fd in request.DESCRIPTOR.fields:
        if fd.message_type is None and not fd.is_repeated:
            by_name[fd.name] = fd
            by_name[fd.json_name] = fd
    for key, value in query.items():
        fd = by_name.get(key)
        if fd is None:
            continue
        try:
            if fd.type in (fd.TYPE_INT32, fd.TYPE_INT64, fd.TYPE_UINT32, fd.TYPE_UINT64):
                setattr(request, fd.name, int(value))
            elif fd.type == fd.TYPE_BOOL:
                setattr(request, fd.name, value.lower() == "true")
            elif fd.type == fd.TYPE_STRING:
                setattr(request, fd.name, value)
            elif fd.type == fd.TYPE_ENUM:  # by name, as Google's JSON mapping writes them
                number = (int(value) if value.isdigit()
                          else fd.enum_type.values_by_name[value].number)
                setattr(request, fd.name, number)
        except (ValueError, KeyError):
            raise invalid_argument(
                f"Invalid value at '{fd.json_name}' ({value!r}).") from None


def _error_response(exc: ApiError) -> web.Response:
    return web.json_response(rest_body(exc), status=HTTP_STATUS[exc.status])


def build_request(route: Route, match: re.Match[str], body: bytes, query: Any) -> Message:
    request = route.method.request_type()
    if route.body:
        try:
            payload = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            raise invalid_argument(f"Invalid JSON payload received. {exc}") from None
        target = request if route.body == "*" else getattr(request, route.body)
        try:
            json_format.ParseDict(payload, target)
        except json_format.ParseError as exc:
            raise invalid_argument(f"Invalid JSON payload received. {exc}") from None
    for field_path, value in zip(route.fields, match.groups(), strict=True):
        _set_path(request, field_path, urllib.parse.unquote(value))
    _query_fields(request, query)
    return request


def create_app(call: Caller, extra_routes: list[web.RouteDef] | None = None) -> web.Application:
    """An aiohttp app serving the REST API through `call(method_name, request)`.

    `extra_routes` (e.g. the push dispatcher's /debug/push, the OIDC discovery document and
    certificates) are matched before the API's catch-all route.
    """
    routes = compile_routes()

    async def dispatch(http: web.Request) -> web.StreamResponse:
        path = http.raw_path.split("?", 1)[0]
        allowed = False
        for route in routes:
            match = route.regex.match(path)
            if match is None:
                continue
            if route.verb != http.method:
                allowed = True
                continue
            started = time.perf_counter()
            try:
                request = build_request(route, match, await http.read(), http.query)
                response = await call(route.method.name, request)
            except ApiError as exc:
                log.debug("%s %s -> %s: %s", http.method, path, exc.status.name, exc.message)
                return _error_response(exc)
            log.debug("%s %s OK in %.1f ms", http.method, path,
                      (time.perf_counter() - started) * 1000)
            return web.json_response(json_format.MessageToDict(response))
        if allowed:
            return _error_response(ApiError(Status.INVALID_ARGUMENT,
                                            f"Method {http.method} is not allowed for {path}."))
        return _error_response(ApiError(Status.NOT_FOUND, f"No API method at {path}."))

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_get("/healthz", healthz)
    if extra_routes:
        app.router.add_routes(extra_routes)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app
