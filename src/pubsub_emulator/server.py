"""Putting the parts together: store, service core, gRPC and REST adapters, one public port.

`Security` is how the port may be reached from other machines: TLS on the front (and the
`--grpc-port`), credentials on every call (`auth.Auth`: gRPC handlers and a REST middleware
check them; keys deleted by any process sharing the store stop working at once, through the
store's change notices), and where push may POST (`push_allow`, enforced by push/).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc as grpc_lib
from aiohttp import web
from grpc import aio

from . import tls as tls_files
from . import topology as topologies
from .api import grpc_server, rest
from .api.calls import CallRecorder
from .api.front import ConnectionLimits, Front
from .api.upstream import GrpcUpstream
from .auth import Auth
from .console import Console
from .core.service import PubSubService
from .core.streaming import FIRST_REQUEST_TIMEOUT_S
from .metrics import Metrics
from .ops import METRICS_PATH, READY_PATH, RESET_PATH, Ops
from .push import MAX_WINDOW, PushDispatcher, TokenIssuer
from .store import Store

log = logging.getLogger("pubsub_emulator")


@dataclass(frozen=True)
class Limits(ConnectionLimits):
    """The front's connection limits and the StreamingPull first-request timeout (seconds).

    `idle_timeout` reaches all three owners of an idle connection: the front (nothing sent
    yet), aiohttp (keep-alive between HTTP/1.1 requests) and the gRPC server (an HTTP/2
    connection without calls).
    """

    first_request_timeout: float = FIRST_REQUEST_TIMEOUT_S


@dataclass(frozen=True)
class Security:
    """TLS, credentials and push destinations (README "TLS and credentials").

    `tls_cert`/`tls_key`: PEM files; TLS on the one port (and `--grpc-port`) when given.
    `auth`: every call needs credentials (`auth/`). `hostnames`: the names clients reach this
    server by; with the bound port they make the URLs self-signed JWTs may name as audience.
    `push_allow`: where push may POST (None: push/'s default). `metrics_open`: GET /metrics
    needs no credential under `auth` (otherwise an administrator's, as /debug/*).
    """

    tls_cert: Path | None = None
    tls_key: Path | None = None
    auth: bool = False
    hostnames: tuple[str, ...] = ()
    push_allow: list[str] | None = None
    metrics_open: bool = False

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None and self.tls_key is not None

    def own_urls(self, port: int) -> list[str]:
        scheme = "https" if self.tls else "http"
        return [f"{scheme}://{_url_host(name)}:{port}" for name in self.hostnames]


def _url_host(name: str) -> str:
    try:
        return f"[{name}]" if ipaddress.ip_address(name).version == 6 else name
    except ValueError:
        return name


@dataclass
class RunningServer:
    port: int
    grpc_port: int
    front: Front
    runner: web.AppRunner
    grpc_server: aio.Server | None
    closers: list[Callable[[], Awaitable[Any]]]
    metrics: Metrics | None = None  # the server's Prometheus registry (GET /metrics)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight calls finish for up to `grace` seconds, release all."""
        await self.front.close()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace)
        await self.runner.cleanup()
        for close in self.closers:
            await close()


async def _serve_rest(call: rest.Caller, grpc_host: str, grpc_port: int, host: str, port: int,
                      limits: ConnectionLimits,
                      extra_routes: list[web.RouteDef] | None = None,
                      access: rest.Access | None = None, tls: ssl.SSLContext | None = None,
                      recorder: CallRecorder | None = None,
                      ) -> tuple[Front, web.AppRunner, int]:
    # keepalive_timeout: aiohttp closes an HTTP/1.1 connection idle between requests.
    app = rest.create_app(call, extra_routes, access=access, recorder=recorder)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           keepalive_timeout=limits.idle_timeout)
    await runner.setup()
    http_server = runner.server
    assert http_server is not None
    front = Front(http_server, grpc_host, grpc_port, limits, tls)
    bound = await front.listen(host, port)
    return front, runner, bound


def _grpc_options(limits: Limits) -> list[tuple[str, int]]:
    """The idle timeout as gRPC's max_connection_idle (its "never" is INT_MAX)."""
    idle = int(limits.idle_timeout * 1000) if limits.idle_timeout > 0 else 2**31 - 1
    return [("grpc.max_connection_idle_ms", idle)]


def _tls_context(security: Security) -> ssl.SSLContext | None:
    if security.tls_cert is None or security.tls_key is None:
        return None
    return tls_files.server_context(security.tls_cert, security.tls_key)


def _grpc_credentials(security: Security) -> grpc_lib.ServerCredentials | None:
    if security.tls_cert is None or security.tls_key is None:
        return None
    return grpc_lib.ssl_server_credentials(
        [(security.tls_key.read_bytes(), security.tls_cert.read_bytes())])


def _access(auth: Auth, public_routes: list[web.RouteDef], metrics_open: bool) -> rest.Access:
    """Credentials on every route but health and readiness, the token endpoint and OIDC
    discovery and certificates (a push endpoint fetches those to verify tokens, with no
    credential); /reset and (unless `metrics_open`) /metrics are an administrator's."""
    public = {rest.HEALTH_PATH, READY_PATH, *(route.path for route in public_routes)}
    admin = {RESET_PATH}
    (public if metrics_open else admin).add(METRICS_PATH)
    return rest.Access(auth.caller, frozenset(public), frozenset(admin))


async def _open(server: RunningServer, service: PubSubService, ops: Ops,
                topology: dict[str, Any] | None) -> None:
    """Apply the topology with calls held (GET /readyz says 503 meanwhile), then serve."""
    try:
        if topology is not None:
            created = await topologies.apply(service, topology)
            log.info("topology applied: %d resources created", created)
    except BaseException:
        await server.stop(0)  # (the store is the caller's to close)
        raise
    service.admit_calls()
    ops.set_ready()


async def create_server(store: Store, host: str = "127.0.0.1", port: int = 0,
                        topology: dict[str, Any] | None = None,
                        grpc_only_port: int | None = None,
                        limits: Limits | None = None,
                        security: Security | None = None,
                        push_max_outstanding: int = MAX_WINDOW) -> RunningServer:
    """The emulator on one port (0: any free port); `.port` says which.

    `grpc_only_port` also serves gRPC directly on that port, skipping the one-port front.
    `limits`: connections and timeouts (Limits() by default; README "Limits").
    `security`: TLS, credentials, push destinations (none by default: a local emulator).
    `push_max_outstanding`: POSTs outstanding per push subscription at most, across every
    process sharing the store (one of them pushes it at a time: push/ownership.py).
    Push subscriptions are delivered by a PushDispatcher (see push/); the same port serves
    GET /debug/push, the OIDC discovery document and certificates (see push/oidc.py), the
    token endpoint of service account keys (auth/tokens.py), GET /metrics, GET /readyz and
    POST /reset (ops.py) and the web console at /console/ (console/). The port listens before
    the topology is applied; calls made meanwhile wait for it.
    """
    limits, security = limits or Limits(), security or Security()
    metrics = Metrics()
    service = PubSubService(store, observer=metrics)
    metrics.watch(service)
    service.streaming.first_request_timeout = limits.first_request_timeout
    service.hold_calls()  # until the topology is applied: calls wait, GET /readyz says 503
    # Served with or without --auth: key files then work against either.
    auth = Auth(store.resources, own_urls=security.own_urls(port) if port else [])
    service.events.on_change(auth.authenticator.changed)
    authenticate = auth.caller if security.auth else None
    extra = [f"{host}:{grpc_only_port}"] if grpc_only_port is not None else []
    grpc, grpc_port = await grpc_server.create_server(
        service, "127.0.0.1", 0, extra, _grpc_options(limits), authenticate,
        _grpc_credentials(security), recorder=metrics)

    async def call(name: str, request: Any) -> Any:
        return await service.unary[name](request)

    issuer = TokenIssuer(store.resources)
    pusher = PushDispatcher(service, issuer, allow=security.push_allow,
                            auth_required=security.auth, max_outstanding=push_max_outstanding)
    ops = Ops(service, metrics)
    console = Console(service, metrics, lambda: pusher.stats()["subscriptions"], security.auth)
    public = issuer.routes() + auth.endpoint.routes() + console.public_routes()
    access = _access(auth, public, security.metrics_open) if security.auth else None
    try:
        front, runner, bound = await _serve_rest(call, "127.0.0.1", grpc_port, host, port,
                                                 limits, pusher.routes() + public + ops.routes()
                                                 + console.routes(),
                                                 access, _tls_context(security), metrics)
    except BaseException:
        await grpc.stop(None)
        raise
    if not port:  # the URLs clients use name the port just bound
        auth.authenticator.add_own_urls(security.own_urls(bound))
    server = RunningServer(bound, grpc_port, front, runner, grpc, [], metrics)
    await _open(server, service, ops, topology)
    await _run_in_background(server, service, pusher)
    return server


async def _run_in_background(server: RunningServer, service: PubSubService,
                             pusher: PushDispatcher) -> None:
    """Push and the sweeper run until the server stops, then the store closes."""
    await pusher.start()
    sweeper = asyncio.ensure_future(service.sweeper.run_forever())

    async def stop_sweeper() -> None:
        sweeper.cancel()

    server.closers.extend([stop_sweeper, pusher.stop, service.store.close])


async def create_gateway(upstream: str, host: str = "127.0.0.1", port: int = 0,
                         limits: ConnectionLimits | None = None) -> RunningServer:
    """The REST front alone, forwarding every call to a Pub/Sub gRPC endpoint."""
    client = GrpcUpstream(upstream)
    upstream_host, _, upstream_port = upstream.rpartition(":")
    # gRPC clients that reach the gateway are spliced straight to the upstream.
    front, runner, bound = await _serve_rest(client.call, upstream_host, int(upstream_port),
                                             host, port, limits or ConnectionLimits())
    return RunningServer(bound, int(upstream_port), front, runner, None, [client.close])
