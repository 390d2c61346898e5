"""A gRPC client of any Pub/Sub endpoint (ours or Google's), called the way the REST adapter
calls the core: the REST-only gateway (`pubsub-emulator gateway`) is the REST adapter over it."""

from __future__ import annotations

from typing import Any

from grpc import aio

from ..core.errors import ApiError
from . import protos
from .errors import status_from_grpc
from .grpc_server import CHANNEL_OPTIONS


class GrpcUpstream:
    """Forwards unary calls by method name; gRPC errors come back as ApiErrors."""

    def __init__(self, target: str) -> None:
        self.channel = aio.insecure_channel(target, options=CHANNEL_OPTIONS)
        self._stubs: dict[str, Any] = {}
        for method in protos.methods().values():
            if method.client_streaming or method.server_streaming:
                continue
            self._stubs[method.name] = self.channel.unary_unary(
                method.path, request_serializer=method.request_type.SerializeToString,
                response_deserializer=method.response_type.FromString)

    async def call(self, name: str, request: Any) -> Any:
        try:
            return await self._stubs[name](request)
        except aio.AioRpcError as exc:
            raise ApiError(status_from_grpc(exc.code()), exc.details() or "") from None

    async def close(self) -> None:
        await self.channel.close()
