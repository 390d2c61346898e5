"""The REST adapter: Google's JSON mapping of the API, routed by the protos' google.api.http rules.

Each rule like `post: "/v1/{topic=projects/*/topics/*}:publish" body: "*"` becomes a route:
path variables fill request fields, the body fills the request (or the named field), and query
parameters fill the remaining fields by their JSON or proto names. Unknown query parameters
(`alt=json`, `prettyPrint`, ...) are ignored, as Google ignores them.

Every error, including those the HTTP layer answers before any route runs (unknown route,
over-size body, bad framing or encoding), is Google's JSON error body with its HTTP status.

Under `--auth` (`Access`) a middleware authenticates the `Authorization` header of every request
before anything else runs, except on the routes named public (health, the token endpoint, OIDC
discovery and certificates): 401 with Google's body and `WWW-Authenticate`; `/debug/*` needs an
administrator (403 otherwise). The caller is `core.caller.current` while the request is served.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
import urllib.parse
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from google.protobuf import json_format
from google.protobuf.message import Message

from ..auth import Authenticate, AuthError
from ..core import caller
from ..core.errors import ApiError, Status, invalid_argument
from . import protos
from .calls import CallLog, CallRecorder
from .client_errors import ClientErrorLog, HttpServerLog, one_line
from .errors import HTTP_STATUS, internal_error, rest_body, status_from_http

log = logging.getLogger("pubsub_emulator.rest")
clients = ClientErrorLog(log)

Caller = Callable[[str, Any], Awaitable[Message]]

# The largest request body (as sent, and once inflated when it is gzip or deflate encoded).
# JSON bodies carry base64 data: a 10 MB message is ~13.4 MB of JSON. Those must reach the
# service so it answers with Google's INVALID_ARGUMENT; larger bodies are refused by this
# layer, with the same status, as Google's front end does. A body is held in memory while it
# is parsed, so this also bounds the memory one request can take.
MAX_BODY_BYTES = 16 * 1024 * 1024

_VARIABLE = re.compile(r"\{([a-z_.]+)(?:=([^}]*))?\}")
_JSON_WHITESPACE = b" \t\r\n"
# The first byte of a JSON value that is not an object: Google's "Root element must be a
# message"; any other byte is not JSON at all.
_JSON_NON_OBJECT_START = b'["-0123456789tfn'
_INFLATE_WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
                  "deflate": zlib.MAX_WBITS}


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


def _template_regex(template: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """The regex of a path template and the request field each of its groups fills."""
    fields: list[str] = []
    pattern, pos = "", 0
    for m in _VARIABLE.finditer(template):
        pattern += re.escape(template[pos:m.start()])
        fields.append(m.group(1))
        pattern += f"({_segment_regex(m.group(2) or '*')})"
        pos = m.end()
    pattern += re.escape(template[pos:])
    return re.compile(f"^{pattern}$", re.DOTALL), tuple(fields)


@dataclass(frozen=True)
class Route:
    method: protos.Method
    verb: str
    template: str  # the rule's path template, e.g. /v1/{topic=projects/*/topics/*}:publish
    regex: re.Pattern[str]
    fields: tuple[str, ...]  # request field path of each captured variable
    body: str


def compile_routes() -> list[Route]:
    """A route per google.api.http rule (the IAM methods have one per resource type)."""
    routes = []
    for method in protos.methods().values():
        for rule in method.http_rules:
            regex, fields = _template_regex(rule.template)
            routes.append(Route(method, rule.verb.upper(), rule.template, regex, fields,
                                rule.body))
    return routes


def _set_path(request: Message, path: str, value: str) -> None:
    *parents, leaf = path.split(".")
    target = request
    for name in parents:
        target = getattr(target, name)
    setattr(target, leaf, value)


def _query_field(request: Message, key: str) -> tuple[Message, Any] | None:
    """The message and scalar field a query parameter names, by JSON or proto names, through
    singular message fields for a dotted name (`options.requestedPolicyVersion`); None for
    anything else."""
    target: Message = request
    *parents, leaf = key.split(".")
    for name in parents:
        fd = _field_named(target, name)
        if fd is None or fd.message_type is None or fd.is_repeated:
            return None
        target = getattr(target, fd.name)
    fd = _field_named(target, leaf)
    if fd is None or fd.message_type is not None or fd.is_repeated:
        return None
    return target, fd


def _field_named(message: Message, name: str) -> Any:
    for fd in message.DESCRIPTOR.fields:
        if name in (fd.name, fd.json_name):
            return fd
    return None


def _query_fields(request: Message, query: Any) -> None:
    """Fill scalar fields (top-level or dotted) from query parameters; ignore everything else."""
    for key, value in query.items():
        found = _query_field(request, key)
        if found is None:
            continue
        target, fd = found
        try:
            if fd.type in (fd.TYPE_INT32, fd.TYPE_INT64, fd.TYPE_UINT32, fd.TYPE_UINT64):
                setattr(target, fd.name, int(value))
            elif fd.type == fd.TYPE_BOOL:
                setattr(target, fd.name, value.lower() == "true")
            elif fd.type == fd.TYPE_STRING:
                setattr(target, fd.name, value)
            elif fd.type == fd.TYPE_ENUM:  # by name, as Google's JSON mapping writes them
                number = (int(value) if value.isdigit()
                          else fd.enum_type.values_by_name[value].number)
                setattr(target, fd.name, number)
        except (ValueError, KeyError, TypeError):
            where = fd.json_name if "." not in key else one_line(key)
            raise invalid_argument(f"Invalid value at '{where}' ({one_line(value)!r}).") from None


def error_response(exc: ApiError) -> web.Response:
    return web.json_response(rest_body(exc), status=HTTP_STATUS[exc.status])


def _not_a_message() -> ApiError:
    return invalid_argument(
        'Invalid JSON payload received. Unknown name "": Root element must be a message.')


_FIELD_MASK = "google.protobuf.FieldMask"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"Unexpected token {name}.")  # NaN and Infinity are not JSON


def parse_json_object(body: bytes | bytearray) -> dict[str, Any]:
    """The JSON object of a request body ({} when empty), or Google's INVALID_ARGUMENT."""
    if not body.strip(_JSON_WHITESPACE):
        return {}
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except RecursionError:
        raise invalid_argument(
            "Invalid JSON payload received. Nesting is too deep.") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise invalid_argument(f"Invalid JSON payload received. {exc}") from None
    if not isinstance(payload, dict):
        raise _not_a_message()
    return payload


def build_request(route: Route, match: re.Match[str], body: bytes | bytearray, query: Any
                  ) -> Message:
    request = route.method.request_type()
    if route.body:
        payload = parse_json_object(body)
        target = request if route.body == "*" else getattr(request, route.body)
        _camel_case_masks(payload, target.DESCRIPTOR)
        try:
            json_format.ParseDict(payload, target)
        except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
            # ValueError, TypeError: the JSON mapping's well-known types on odd values
            raise invalid_argument(f"Invalid JSON payload received. {exc}") from None
    for field_path, value in zip(route.fields, match.groups(), strict=True):
        _set_path(request, field_path, urllib.parse.unquote(value))
    _query_fields(request, query)
    return request


def _camel_case_masks(payload: dict[str, Any], descriptor: Any) -> None:
    """Field masks written with the protos' field names ("dead_letter_policy"), as Google's
    Node client sends them over REST, read as their JSON spelling ("deadLetterPolicy"):
    json_format accepts only the latter, and a mask means the same fields either way."""
    for field in descriptor.fields:
        if field.message_type is None or field.message_type.full_name != _FIELD_MASK:
            continue
        for key in (field.json_name, field.name):
            value = payload.get(key)
            if isinstance(value, str) and "_" in value:
                payload[key] = ",".join(".".join(_camel(part) for part in path.split("."))
                                        for path in value.split(","))


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


def payload_too_large(limit: int) -> ApiError:
    return invalid_argument(f"Request payload size exceeds the limit: {limit} bytes.")


class _Inflater:
    """Inflates a gzip or deflate body a piece at a time (`STEP` bytes of output at most), so
    that a small body that inflates to gigabytes costs no more memory than the limit, and one
    that cannot be a request is refused on its first inflated bytes."""

    STEP = 256 * 1024

    def __init__(self, encoding: str) -> None:
        wbits = _INFLATE_WBITS.get(encoding)
        if wbits is None:
            raise invalid_argument(f"Unsupported Content-Encoding: {one_line(encoding)!r}.")
        self._zlib = zlib.decompressobj(wbits)
        self.fed = False

    def pieces(self, chunk: bytes) -> Iterator[bytes]:
        self.fed = True
        try:
            piece = self._zlib.decompress(chunk, self.STEP)
            while piece:
                yield piece
                piece = self._zlib.decompress(self._zlib.unconsumed_tail, self.STEP)
        except zlib.error:
            raise self._bad() from None

    def finish(self) -> None:
        if self.fed and (not self._zlib.eof or self._zlib.unused_data):
            raise self._bad()

    def _bad(self) -> ApiError:
        return invalid_argument("The request body does not match its Content-Encoding.")


def _check_start(chunk: bytes) -> bool:
    """Whether the first JSON byte is in `chunk` (the body before it was all whitespace), and
    is `{`: a body (or a bomb) that cannot be a request is refused on its first bytes."""
    stripped = chunk.lstrip(_JSON_WHITESPACE)
    if not stripped:
        return False
    if stripped[0] != ord("{"):
        if stripped[0] in _JSON_NON_OBJECT_START:
            raise _not_a_message()
        raise invalid_argument("Invalid JSON payload received. Unexpected token.")
    return True


async def read_body(http: web.BaseRequest, limit: int) -> bytearray:
    """The request body, inflated if gzip or deflate encoded, refused past `limit` bytes
    (sent or inflated) or as soon as it cannot be a JSON object."""
    encoding = http.headers.get(hdrs.CONTENT_ENCODING, "identity").strip().lower()
    inflater = None if encoding in ("", "identity") else _Inflater(encoding)
    body = bytearray()
    started = False
    try:
        async for chunk in http.content.iter_any():
            for piece in (inflater.pieces(chunk) if inflater else (chunk,)):
                started = started or _check_start(piece)
                if len(body) + len(piece) > limit:
                    raise payload_too_large(limit)
                body += piece
    except web.RequestPayloadError as exc:  # bad chunked framing, body shorter than declared
        raise invalid_argument(f"The request body is malformed: {one_line(str(exc))}") from None
    if inflater is not None:
        inflater.finish()
    return body


def _http_error(exc: web.HTTPException) -> ApiError:
    status = status_from_http(exc.status)
    if exc.status == 413:
        return payload_too_large(getattr(exc, "max_size", MAX_BODY_BYTES))
    return ApiError(status, one_line(exc.text or exc.reason or status.name))


def google_errors(max_body_bytes: int) -> Any:
    """A middleware: a body declared over the limit is refused before it is read, and every
    error a routed request meets is Google's JSON error body."""

    @web.middleware
    async def middleware(http: web.Request, handler: Any) -> web.StreamResponse:
        if http.content_length is not None and http.content_length > max_body_bytes:
            error = payload_too_large(max_body_bytes)
            clients.record("REST INVALID_ARGUMENT", error.message)
            return error_response(error)
        return await _answer_errors(http, handler)

    return middleware


async def _answer_errors(http: web.Request, handler: Any) -> web.StreamResponse:
    try:
        return await handler(http)
    except ApiError as exc:
        return error_response(exc)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like are answers, not errors
            raise
        error = _http_error(exc)
        clients.record(f"HTTP {HTTP_STATUS[error.status]}", error.message)
        return error_response(error)
    except Exception:  # a bug: its traceback goes to the log, the client gets INTERNAL
        log.exception("%s %s failed", http.method, one_line(http.raw_path))
        return error_response(internal_error())


class GoogleErrorRequest(web.Request):
    """A request whose error responses are Google's JSON error body, whoever made them.

    aiohttp answers what it cannot parse (bad request line, unsupported method, header too
    long, bad chunked framing) in plain text before any handler or middleware runs. Such a
    response still passes through its request's prepare hook, the one place the app sees it,
    just before its status line and headers are written: it is rewritten there.
    """

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        if (isinstance(response, web.Response) and response.status >= 400
                and response.content_type != "application/json"):
            _rewrite_as_google_error(response)
        await super()._prepare_hook(response)


def _rewrite_as_google_error(response: web.Response) -> None:
    status = status_from_http(response.status)
    if status is Status.INTERNAL:  # aiohttp's text for it may hold a traceback
        error = internal_error()
    else:
        body = response.body if isinstance(response.body, bytes) else b""
        error = ApiError(status, one_line(body.decode("utf-8", "replace").strip()
                                          or response.reason or status.name))
    payload = json.dumps(rest_body(error)).encode()
    # Headers are not written yet, but set_status refuses once preparing has begun.
    response._set_status(HTTP_STATUS[status], None)
    response.body = payload
    response.headers[hdrs.CONTENT_TYPE] = "application/json; charset=utf-8"
    response.headers[hdrs.CONTENT_LENGTH] = str(len(payload))


ADMIN_PREFIX = "/debug/"
HEALTH_PATH = "/healthz"


@dataclass(frozen=True)
class Access:
    """Who may call what (--auth): `authenticate` checks a credential; the routes whose paths
    are in `public` need none; paths under ADMIN_PREFIX, and those in `admin`, need an
    administrator."""

    authenticate: Authenticate
    public: frozenset[str]
    admin: frozenset[str] = frozenset()


def _unauthenticated(exc: AuthError) -> web.Response:
    response = error_response(exc)
    response.headers[hdrs.WWW_AUTHENTICATE] = exc.www_authenticate
    return response


def require_credentials(access: Access) -> Any:
    """The middleware of `Access`; outermost, so nothing is parsed or answered for a caller
    without credentials (no 404 tells them which resources exist)."""

    @web.middleware
    async def middleware(http: web.Request, handler: Any) -> web.StreamResponse:
        route = http.match_info.route.resource
        path = route.canonical if route is not None else ""
        if path in access.public:
            return await handler(http)
        try:
            who = await access.authenticate(http.headers.get(hdrs.AUTHORIZATION), http.host)
        except AuthError as exc:
            return _unauthenticated(exc)
        if (http.path.startswith(ADMIN_PREFIX) or path.startswith(ADMIN_PREFIX)
                or path in access.admin) and not who.admin:
            return error_response(ApiError(
                Status.PERMISSION_DENIED,
                f"The caller does not have permission: {who.email} is not an administrator."))
        token = caller.current.set(who)
        try:
            return await handler(http)
        finally:
            caller.current.reset(token)

    return middleware


def _find(routes: list[Route], verb: str, path: str) -> tuple[Route, re.Match[str]] | ApiError:
    """The route serving `verb path`, or the error to answer."""
    allowed = False
    for route in routes:
        match = route.regex.match(path)
        if match is not None:
            if route.verb == verb:
                return route, match
            allowed = True
    if allowed:
        return invalid_argument(f"Method {one_line(verb)} is not allowed for {one_line(path)}.")
    return ApiError(Status.NOT_FOUND, f"No API method at {one_line(path)}.")


def create_app(call: Caller, extra_routes: list[web.RouteDef] | None = None,
               max_body_bytes: int = MAX_BODY_BYTES, access: Access | None = None,
               recorder: CallRecorder | None = None) -> web.Application:
    """An aiohttp app serving the REST API through `call(method_name, request)`.

    `extra_routes` (e.g. the push dispatcher's /debug/push, the OIDC discovery document and
    certificates) are matched before the API's catch-all route. `max_body_bytes` bounds a
    request body, as sent and once inflated. `access`: credentials required (--auth).
    `recorder` counts the calls answered (metrics.py).
    """
    routes = compile_routes()
    calls = CallLog(log, "rest", recorder)

    async def dispatch(http: web.Request) -> web.StreamResponse:
        path = http.raw_path.split("?", 1)[0]
        found = _find(routes, http.method, path)
        if isinstance(found, ApiError):
            clients.record(f"REST {found.status.name}", found.message)
            calls.answered("unknown", None, found.status.name, 0.0, found.message)
            return error_response(found)
        route, match = found
        started = time.perf_counter()
        request = None
        try:
            body = await read_body(http, max_body_bytes) if route.body else b""
            request = build_request(route, match, body, http.query)
            response = await call(route.method.name, request)
        except ApiError as exc:
            calls.answered(route.method.name, request, exc.status.name,
                           time.perf_counter() - started, exc.message)
            return error_response(exc)
        calls.answered(route.method.name, request, "OK", time.perf_counter() - started)
        return web.json_response(json_format.MessageToDict(response))

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    middlewares = [google_errors(max_body_bytes)]
    if access is not None:
        middlewares.insert(0, require_credentials(access))
    app = web.Application(
        client_max_size=max_body_bytes, middlewares=middlewares,
        # Bodies are inflated by read_body, within the limit; aiohttp would inflate them whole.
        handler_args={"auto_decompress": False, "logger": HttpServerLog(log, clients)})
    # The request factory is the only hook on what aiohttp answers before routing (see
    # GoogleErrorRequest); `_cls` is the parameter aiohttp gives it for that.
    app._make_request = functools.partial(  # type: ignore[method-assign]
        app._make_request, _cls=GoogleErrorRequest)
    app.router.add_get(HEALTH_PATH, healthz)
    if extra_routes:
        app.router.add_routes(extra_routes)
    # Any path at all, newlines included, so that dispatch answers it
    app.router.add_route("*", r"/{tail:[\s\S]*}", dispatch)
    return app
