"""--auth in the adapters, in-process: the core sees who calls (`core.caller.current`) on gRPC
unary calls, StreamingPull and REST, and nothing of a call without credentials."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
from aiohttp import web
from google.oauth2 import service_account
from google.pubsub_v1 import types
from grpc import aio

from pubsub_emulator.api import grpc_server, rest
from pubsub_emulator.auth import Auth
from pubsub_emulator.core import caller
from pubsub_emulator.core.service import PubSubService
from pubsub_emulator.store.sqlite import SqliteStore

ALICE = "alice@wiring-proj.iam.gserviceaccount.com"
BOB = "bob@wiring-proj.iam.gserviceaccount.com"


def _token(key_file: dict[str, str]) -> str:
    creds = service_account.Credentials.from_service_account_info(
        key_file, scopes=["https://www.googleapis.com/auth/pubsub"])
    creds = creds.with_always_use_jwt_access(True)
    creds.refresh(None)  # self-signed: no request is made
    return creds.token


class Recorder:
    """Stands in for the core: records `caller.current` as each call sees it."""

    def __init__(self, service: PubSubService) -> None:
        self.seen: list[caller.Caller | None] = []
        service.unary["ListTopics"] = self.list_topics
        service.streaming_pull = self.streaming_pull  # type: ignore[assignment,method-assign]

    async def list_topics(self, request: Any) -> Any:
        await asyncio.sleep(0)
        self.seen.append(caller.current.get())
        return types.ListTopicsResponse.pb()()  # the core answers with protobuf messages

    async def streaming_pull(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async def later() -> caller.Caller | None:  # a task the stream starts inherits it
            return caller.current.get()

        self.seen.append(await asyncio.ensure_future(later()))
        async for _ in requests:
            yield types.StreamingPullResponse.pb()()
            return


async def _grpc_calls(port: int, token: str | None) -> list[str]:
    metadata = [("authorization", f"Bearer {token}")] if token else []
    codes = []
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        unary = channel.unary_unary(
            "/google.pubsub.v1.Publisher/ListTopics",
            request_serializer=types.ListTopicsRequest.serialize,
            response_deserializer=types.ListTopicsResponse.deserialize)
        stream = channel.stream_stream(
            "/google.pubsub.v1.Subscriber/StreamingPull",
            request_serializer=types.StreamingPullRequest.serialize,
            response_deserializer=types.StreamingPullResponse.deserialize)
        for call in (lambda: unary(types.ListTopicsRequest(project="projects/p"),
                                   metadata=metadata),
                     lambda: _first(stream(iter([types.StreamingPullRequest(
                         subscription="projects/p/subscriptions/s")]), metadata=metadata))):
            try:
                await call()
                codes.append("OK")
            except grpc.RpcError as exc:
                codes.append(exc.code().name)
    return codes


async def _first(call: Any) -> Any:
    async for response in call:
        call.cancel()
        return response
    return None


async def _rest_calls(port: int, token: str | None) -> list[int]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    statuses = []
    async with aiohttp.ClientSession() as session:
        for path in ("/v1/projects/p/topics", "/debug/push", "/healthz"):
            async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as answer:
                statuses.append(answer.status)
    return statuses


async def _scenario() -> None:
    store = SqliteStore(None)
    auth = Auth(store.resources, own_urls=["http://127.0.0.1:8085"])
    alice = _token((await auth.keys.create(ALICE, "http://127.0.0.1:8085", admin=True)).key_file)
    bob = _token((await auth.keys.create(BOB, "http://127.0.0.1:8085")).key_file)
    service = PubSubService(store)
    recorder = Recorder(service)
    server, grpc_port = await grpc_server.create_server(service, authenticate=auth.caller)

    async def call(name: str, request: Any) -> Any:
        return await service.unary[name](request)

    async def debug(_: web.Request) -> web.Response:
        return web.json_response({"seen": str(caller.current.get())})

    app = rest.create_app(call, [web.get("/debug/push", debug)],
                          access=rest.Access(auth.caller, frozenset({rest.HEALTH_PATH})))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rest_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        assert await _grpc_calls(grpc_port, None) == ["UNAUTHENTICATED"] * 2
        assert await _rest_calls(rest_port, None) == [401, 401, 200]
        assert recorder.seen == []  # the core never saw a call without credentials
        assert await _grpc_calls(grpc_port, bob) == ["OK", "OK"]
        assert await _rest_calls(rest_port, bob) == [200, 403, 200]
        assert await _rest_calls(rest_port, alice) == [200, 200, 200]
        bob_caller, alice_caller = caller.Caller(BOB, False), caller.Caller(ALICE, True)
        assert recorder.seen == [bob_caller, bob_caller, bob_caller, alice_caller]
        assert caller.current.get() is None
    finally:
        await runner.cleanup()
        await server.stop(None)
        await store.close()


def test_the_core_sees_the_authenticated_caller_on_every_path():
    asyncio.run(_scenario())
