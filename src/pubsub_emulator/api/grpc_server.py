"""The gRPC adapter: Google's method paths and message types, mapped onto the service core.

Under `--auth` every call is authenticated here, from its `authorization` metadata, before its
request is looked at (UNAUTHENTICATED otherwise), and the caller is `core.caller.current` while
the core serves it. Here rather than in the front: the private plaintext port the front splices
to is reachable by any local process, and a call through `--grpc-port` never meets the front.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from grpc import aio

from ..auth import Authenticate
from ..core import caller
from ..core.errors import ApiError, invalid_argument
from ..core.service import PubSubService
from . import protos
from .calls import CallLog, CallRecorder
from .client_errors import ClientErrorLog
from .errors import GRPC_CODE, internal_error, rpc_status

log = logging.getLogger("pubsub_emulator.grpc")
clients = ClientErrorLog(log)

# Requests up to 10 MB must reach the service so it can answer with Google's INVALID_ARGUMENT
# rather than gRPC's own RESOURCE_EXHAUSTED; allow generous headroom over the limit.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Idle StreamingPull streams stay open: accept the client's keepalive pings.
    # Google's subscriber client pings every 30 s (grpc.keepalive_time_ms): accept that rate
    # on idle StreamingPull connections.
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # A connection without calls is closed (GOAWAY: clients reconnect on their next call) after
    # 5 minutes; one with an open call, such as an idle StreamingPull, is never idle. The
    # server's `--idle-timeout` replaces this default (server.py).
    ("grpc.max_connection_idle_ms", 300_000),
    # Ping every connection every 2 minutes and close it when no answer comes within 20 s: a
    # client that vanished without closing does not hold a StreamingPull open forever.
    ("grpc.keepalive_time_ms", 120_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # Calls gRPC holds until the application takes them: past 1,000 it cancels new ones at
    # random, past 3,000 all (CANCELLED, or INTERNAL "Internal error from Core" on the client's
    # first write), before any handler runs. The asyncio server takes one call per turn of the
    # event loop, so thousands of StreamingPulls opened at once queue behind a busy loop (on
    # NATS from ~2,000). Let them queue: gRPC still cancels a call not taken within 30 s
    # (grpc.server_max_unrequested_time_in_server), and --max-connections bounds the clients.
    ("grpc.server.max_pending_requests", 100_000),
    ("grpc.server.max_pending_requests_hard_limit", 100_000),
]


async def _abort(context: aio.ServicerContext, exc: ApiError) -> None:
    metadata: tuple[tuple[str, bytes], ...] = ()
    if exc.details:  # Google sends them in the google.rpc.Status trailer
        metadata = (("grpc-status-details-bin", rpc_status(exc).SerializeToString()),)
    await context.abort(GRPC_CODE[exc.status], exc.message, trailing_metadata=metadata)


class Undecodable:
    """What the request deserializer gives for bytes that are not the request message.

    A deserializer that raises makes gRPC answer UNKNOWN (naming a Python exception) and log a
    traceback for every such call; this stands in for the request instead, and the handler
    answers INVALID_ARGUMENT.
    """

    __slots__ = ("method", "error")

    def __init__(self, method: str, error: ApiError) -> None:
        self.method = method
        self.error = error

    def refuse(self) -> ApiError:
        clients.record(f"gRPC {self.method} {self.error.status.name}", self.error.message)
        return self.error


def request_decoder(method: protos.Method) -> Callable[[bytes], Any]:
    """The request deserializer of `method`: never raises into gRPC."""
    parse = method.request_type.FromString
    message = (f"Invalid request: the bytes received are not a valid "
               f"{method.request_type.DESCRIPTOR.full_name}.")

    def decode(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # DecodeError, or anything else the client's bytes provoke
            return Undecodable(method.name, invalid_argument(message))

    return decode


def _metadata(context: aio.ServicerContext, key: str) -> str | None:
    for item in context.invocation_metadata() or ():
        if item[0] == key:
            value = item[1]
            return value.decode("latin-1") if isinstance(value, bytes) else value
    return None


async def _identify(authenticate: Authenticate | None, context: aio.ServicerContext
                    ) -> contextvars.Token[caller.Caller | None] | None:
    """Under --auth: the caller of this call becomes `caller.current` (the token resets it);
    AuthError (UNAUTHENTICATED) when its credential is missing or does not hold."""
    if authenticate is None:
        return None
    # gRPC Python does not show the :authority a call came to: a JWT's audience must name one
    # of the emulator's own URLs (--tls-hostname) or Google's.
    who = await authenticate(_metadata(context, "authorization"), None)
    return caller.current.set(who)


def _forget(token: contextvars.Token[caller.Caller | None] | None) -> None:
    if token is None:
        return
    try:
        caller.current.reset(token)
    except ValueError:  # a stream closed from another task (its context ends with it anyway)
        pass


def _unary(service: PubSubService, method: protos.Method,
           authenticate: Authenticate | None, calls: CallLog) -> Callable[..., Any]:
    call = service.unary[method.name]

    async def handler(request: Any, context: aio.ServicerContext) -> Any:
        started = time.perf_counter()
        token = None
        try:
            token = await _identify(authenticate, context)
            if isinstance(request, Undecodable):
                raise request.refuse()
            response = await call(request)
        except ApiError as exc:
            error = exc
        except Exception:  # a bug: its traceback goes to the log, the client gets INTERNAL
            log.exception("%s failed", method.name)
            error = internal_error()
        else:
            calls.answered(method.name, request, "OK", time.perf_counter() - started)
            return response
        finally:
            _forget(token)
        calls.answered(method.name, request, error.status.name, time.perf_counter() - started,
                       error.message)
        await _abort(context, error)  # outside the try: abort raises

    return handler


async def _decoded(requests: AsyncIterator[Any], first: list[Any]) -> AsyncIterator[Any]:
    """The stream's requests (the first kept in `first`, for the call's log line); an
    undecodable one ends the call with INVALID_ARGUMENT."""
    async for request in requests:
        if isinstance(request, Undecodable):
            raise request.refuse()
        if not first:
            first.append(request)
        yield request


def _streaming_pull(service: PubSubService, authenticate: Authenticate | None,
                    calls: CallLog) -> Callable[..., Any]:
    async def handler(requests: AsyncIterator[Any], context: aio.ServicerContext
                      ) -> AsyncIterator[Any]:
        token = None
        started, first = time.perf_counter(), []
        status, error = "CANCELLED", None  # (the client went away, or the server stops)
        try:
            # Before the stream opens, so that the tasks it starts inherit the caller.
            token = await _identify(authenticate, context)
            async for response in service.streaming_pull(_decoded(requests.__aiter__(), first)):
                yield response
            status = "OK"
            return
        except ApiError as exc:
            error = exc
        except Exception:  # a bug: its traceback goes to the log, the client gets INTERNAL
            log.exception("StreamingPull failed")
            error = internal_error()
        finally:
            _forget(token)
            if error is not None:
                status = error.status.name
            calls.answered("StreamingPull", first[0] if first else None, status,
                           time.perf_counter() - started, error.message if error else "")
        await _abort(context, error)

    return handler


def _encoded_or(serialize: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """A response serializer that sends a response the core already encoded (bytes: the
    StreamingPull's messages, core/streaming.py) as it is."""

    def encode(response: Any) -> bytes:
        return response if type(response) is bytes else serialize(response)

    return encode


def generic_handlers(service: PubSubService, authenticate: Authenticate | None = None,
                     recorder: CallRecorder | None = None) -> list[grpc.GenericRpcHandler]:
    """Every method's handler; with `authenticate` (--auth) each call must be authenticated;
    `recorder` counts the calls answered (metrics)."""
    calls = CallLog(log, "grpc", recorder)
    by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
    for method in protos.methods().values():
        decode = request_decoder(method)
        encode = method.response_type.SerializeToString
        if method.client_streaming and method.server_streaming:
            handler = grpc.stream_stream_rpc_method_handler(
                _streaming_pull(service, authenticate, calls), request_deserializer=decode,
                response_serializer=_encoded_or(encode))
        else:
            handler = grpc.unary_unary_rpc_method_handler(
                _unary(service, method, authenticate, calls), request_deserializer=decode,
                response_serializer=encode)
        # google.pubsub.v1.Publisher, ..., and google.iam.v1.IAMPolicy on the same host
        by_service.setdefault(method.full_service, {})[method.name] = handler
    return [grpc.method_handlers_generic_handler(name, handlers)
            for name, handlers in by_service.items()]


async def create_server(service: PubSubService, host: str = "127.0.0.1", port: int = 0,
                        extra: list[str] | None = None,
                        options: list[tuple[str, Any]] | None = None,
                        authenticate: Authenticate | None = None,
                        extra_credentials: grpc.ServerCredentials | None = None,
                        recorder: CallRecorder | None = None) -> tuple[aio.Server, int]:
    """A started gRPC server for the service; returns it and the port it bound.

    `extra` addresses ("host:port") are served too, e.g. a public gRPC-only port, with TLS when
    `extra_credentials` are given. `options` replace the CHANNEL_OPTIONS of the same names.
    `authenticate`: every call must carry a credential it accepts (--auth). `recorder` counts
    the calls answered (metrics.py).
    """
    given = dict(options or [])
    merged = [o for o in CHANNEL_OPTIONS if o[0] not in given] + list(given.items())
    server = aio.server(options=merged)
    server.add_generic_rpc_handlers(generic_handlers(service, authenticate, recorder))
    bound = server.add_insecure_port(f"{host}:{port}")
    for address in extra or []:
        added = (server.add_secure_port(address, extra_credentials) if extra_credentials
                 else server.add_insecure_port(address))
        if added == 0:
            raise OSError(f"cannot bind gRPC port {address}")
    await server.start()
    return server, bound
