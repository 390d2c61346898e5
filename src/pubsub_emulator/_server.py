"""Putting the parts together: store, service core, gRPC and REST adapters, one public port."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from grpc import aio

from . import _grpc, _rest, _topology
from ._front import Front
from ._oidc import TokenIssuer
from ._push import PushDispatcher
from ._service import PubSubService
from ._sqlite_store import SqliteStore
from ._store import Store

log = logging.getLogger("pubsub_emulator")

DB_FILE = "pubsub.sqlite3"


async def open_store(data_dir: str | Path | None, in_memory: bool = False,
                     nats: str | None = None, nats_replicas: int = 1) -> Store:
    """The embedded SQLite store, or with `nats` ("nats://HOST:PORT[,nats://...]") JetStream.

    A NATS store lives on the event loop that opens it.
    """
    if nats:
        from ._nats_store import NatsStore

        return await NatsStore.open([url.strip() for url in nats.split(",") if url.strip()],
                                    replicas=nats_replicas)
    if in_memory or data_dir is None:
        return SqliteStore(None)
    path = Path(data_dir)
    path.mkdir(parents=True, exist_ok=True)
    return SqliteStore(path / DB_FILE)


@dataclass
class RunningServer:
    port: int
    grpc_port: int
    front: Front
    runner: web.AppRunner
    grpc_server: aio.Server | None
    closers: list[Callable[[], Awaitable[Any]]]

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting, let in-flight calls finish for up to `grace` seconds, release all."""
        await self.front.close()
        if self.grpc_server is not None:
            await self.grpc_server.stop(grace)
        await self.runner.cleanup()
        for close in self.closers:
            await close()


async def _serve_rest(call: _rest.Caller, grpc_host: str, grpc_port: int, host: str, port: int,
                      extra_routes: list[web.RouteDef] | None = None,
                      ) -> tuple[Front, web.AppRunner, int]:
    runner = web.AppRunner(_rest.create_app(call, extra_routes), access_log=None,
                           handle_signals=False)
    await runner.setup()
    http_server = runner.server
    assert http_server is not None
    front = Front(http_server, grpc_host, grpc_port)
    bound = await front.listen(host, port)
    return front, runner, bound


async def create_server(store: Store, host: str = "127.0.0.1", port: int = 0,
                        topology: dict[str, Any] | None = None,
                        grpc_only_port: int | None = None) -> RunningServer:
    """The emulator on one port (0: any free port); `.port` says which.

    `grpc_only_port` also serves gRPC directly on that port, skipping the one-port front.
    Push subscriptions are delivered by a PushDispatcher (see _push); the same port serves
    GET /debug/push and the OIDC discovery document and certificates (see _oidc).
    """
    service = PubSubService(store)
    if topology is not None:
        created = await _topology.apply(service, topology)
        log.info("topology applied: %d resources created", created)
    extra = [f"{host}:{grpc_only_port}"] if grpc_only_port is not None else []
    grpc_server, grpc_port = await _grpc.create_server(service, "127.0.0.1", 0, extra)

    async def call(name: str, request: Any) -> Any:
        return await service.unary[name](request)

    issuer = TokenIssuer(store)
    pusher = PushDispatcher(service, issuer)
    try:
        front, runner, bound = await _serve_rest(call, "127.0.0.1", grpc_port, host, port,
                                                 pusher.routes() + issuer.routes())
    except BaseException:
        await grpc_server.stop(None)
        raise
    await pusher.start()
    sweeper = asyncio.ensure_future(service.sweep_forever())

    async def stop_sweeper() -> None:
        sweeper.cancel()

    return RunningServer(bound, grpc_port, front, runner, grpc_server,
                         [stop_sweeper, pusher.stop, store.close])


async def create_gateway(upstream: str, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """The REST front alone, forwarding every call to a Pub/Sub gRPC endpoint."""
    client = _grpc.GrpcUpstream(upstream)
    upstream_host, _, upstream_port = upstream.rpartition(":")
    # gRPC clients that reach the gateway are spliced straight to the upstream.
    front, runner, bound = await _serve_rest(client.call, upstream_host, int(upstream_port),
                                             host, port)
    return RunningServer(bound, int(upstream_port), front, runner, None, [client.close])
