"""GET /readyz and POST /reset.

- /readyz answers 503 while the topology file is being applied (the test holds the store's
  topic creation until it has seen that, and a held API call), 200 once it is; /healthz is
  200 throughout; a call made meanwhile is served after, and finds the topology's resources.
- /reset (one project, then all) leaves an empty server that Google's Python clients, over gRPC
  and REST, keep using without reconnecting; on NATS a reset through one process empties what
  another process serves.
- Under --auth, /reset (and /metrics unless --metrics-open) is an administrator's; /readyz is
  open.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from google.api_core import exceptions

from clients import create_key, make_clients, self_signed_token, unique
from processes import nats_server_path
from pubsub_emulator.server import create_server
from pubsub_emulator.store import Kind
from pubsub_emulator.store.sqlite import SqliteStore
from support import NATS_MISSING, EmulatorProcess, NatsServer, free_port, wait_for

TOPOLOGY = {"projects": {"ready-proj": {"topics": {"ready-topic": {
    "subscriptions": {"ready-sub": {"ackDeadlineSeconds": 20}}}}}}}


async def _until(condition: Any) -> Any:
    """Let the event loop run until `condition()` (an async check) holds."""
    for _ in range(10_000):
        found = await condition()
        if found:
            return found
        await asyncio.sleep(0.001)
    raise AssertionError("condition never held")


async def _readiness_scenario() -> None:
    store = SqliteStore(None)
    applying, go_on = asyncio.Event(), asyncio.Event()
    create = store.resources.create

    async def gated_create(kind: Kind, name: str, data: bytes, topic: str = "") -> bool:
        if kind is Kind.TOPIC:  # the topology's first step waits for the test
            applying.set()
            await go_on.wait()
        return await create(kind, name, data, topic)

    store.resources.create = gated_create  # type: ignore[method-assign]
    port = free_port()
    starting = asyncio.ensure_future(create_server(store, port=port, topology=TOPOLOGY))
    await applying.wait()  # the port listens; the topology is not applied yet
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/readyz") as answer:
            assert answer.status == 503
            assert (await answer.json())["ready"] is False
        async with http.get(f"{base}/healthz") as answer:
            assert answer.status == 200  # liveness: up
        early = asyncio.ensure_future(http.get(f"{base}/v1/projects/ready-proj/subscriptions/"
                                               "ready-sub"))

        async def held() -> bool:
            async with http.get(f"{base}/readyz") as answer:
                return (await answer.json()).get("held_calls") == 1

        await _until(held)  # the early call reached the server and waits
        assert not early.done()
        go_on.set()
        server = await starting
        try:
            async with http.get(f"{base}/readyz") as answer:
                assert answer.status == 200 and (await answer.json())["ready"] is True
            async with await early as answer:  # served after the topology: it exists
                assert answer.status == 200, await answer.text()
                assert (await answer.json())["ackDeadlineSeconds"] == 20
            async with http.get(f"{base}/metrics") as answer:
                assert "pubsub_emulator_ready 1.0" in await answer.text()
        finally:
            await server.stop(0)


def test_readyz_says_503_until_the_topology_is_applied():
    asyncio.run(_readiness_scenario())


def _reset(host: str, project: str | None = None, token: str | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    params = {"project": project} if project is not None else {}
    return requests.post(f"http://{host}/reset", params=params, headers=headers, timeout=30)


def _fill(publisher: Any, subscriber: Any, project: str, ids: tuple[str, str]) -> tuple[str, str]:
    topic, sub = f"projects/{project}/topics/{ids[0]}", f"projects/{project}/subscriptions/{ids[1]}"
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    publisher.publish(topic, b"before").result(timeout=30)
    return topic, sub


def _names(publisher: Any, subscriber: Any, project: str) -> list[str]:
    return ([t.name for t in publisher.list_topics(project=f"projects/{project}")]
            + [s.name for s in subscriber.list_subscriptions(project=f"projects/{project}")])


def _used_again(publisher: Any, subscriber: Any, topic: str, sub: str) -> list[bytes]:
    """The same clients create the same names again, publish and pull: only the new message."""
    publisher.create_topic(name=topic)
    subscriber.create_subscription(name=sub, topic=topic)
    publisher.publish(topic, b"after").result(timeout=30)
    got: list[bytes] = []
    while not got:
        got = [m.message.data for m in subscriber.pull(subscription=sub, max_messages=10,
                                                       timeout=30).received_messages]
    return got


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_reset_leaves_an_empty_server_the_clients_keep_using(transport):
    with EmulatorProcess(extra_args=["--config", str(_topology_file())]) as emu:
        assert requests.get(f"http://{emu.host}/readyz", timeout=10).json() == {"ready": True}
        publisher, subscriber = make_clients(emu.host, transport)
        one, two = unique("proj-a"), unique("proj-b")
        topic, sub = _fill(publisher, subscriber, one, (unique("t"), unique("s")))
        kept = _fill(publisher, subscriber, two, (unique("t"), unique("s")))
        subscriber.create_snapshot(name=f"projects/{one}/snapshots/{unique('snap')}",
                                   subscription=sub)
        answer = _reset(emu.host, one)
        assert answer.status_code == 200, answer.text
        assert answer.json()["deleted"] == {"subscriptions": 1, "snapshots": 1, "topics": 1,
                                            "schemas": 0}
        assert _names(publisher, subscriber, one) == []
        assert sorted(_names(publisher, subscriber, two)) == sorted(kept)
        with pytest.raises(exceptions.NotFound):
            publisher.get_topic(topic=topic)
        assert _used_again(publisher, subscriber, topic, sub) == [b"after"]
        assert _reset(emu.host).status_code == 200  # every project
        assert _names(publisher, subscriber, one) == _names(publisher, subscriber, two) == []
        assert _names(publisher, subscriber, "ready-proj") == []  # the topology's too
        assert _used_again(publisher, subscriber, *kept) == [b"after"]
        assert _reset(emu.host, "").status_code == 400  # no project named: nothing reset


def _topology_file() -> Path:
    import json
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="topology-")) / "topology.json"
    path.write_text(json.dumps(TOPOLOGY))  # JSON is YAML
    return path


@pytest.mark.skipif(nats_server_path() is None, reason=NATS_MISSING)
def test_reset_through_one_process_empties_the_others_on_nats(tmp_path):
    nats = NatsServer(tmp_path / "js").start()
    try:
        with EmulatorProcess(extra_args=["--store", nats.url]) as one, \
                EmulatorProcess(extra_args=["--store", nats.url]) as two:
            project = unique("proj-n")
            publisher, subscriber = make_clients(one.host, "grpc")
            topic, sub = _fill(publisher, subscriber, project, (unique("t"), unique("s")))
            assert _reset(two.host, project).status_code == 200
            assert _names(publisher, subscriber, project) == []

            def gone_on_one() -> bool:  # (the other process hears of it a moment later)
                try:
                    publisher.get_topic(topic=topic)
                except exceptions.NotFound:
                    return True
                return False

            wait_for(gone_on_one, timeout=30, message="the reset heard by the other process")
            assert _used_again(publisher, subscriber, topic, sub) == [b"after"]
    finally:
        nats.stop()


@pytest.fixture(scope="module")
def keyed_data_dir(tmp_path_factory) -> tuple[Path, str, str]:
    """A data dir whose store holds an administrator's key and an editor's; their tokens."""
    data = tmp_path_factory.mktemp("auth") / "data"
    data.mkdir()
    admin = self_signed_token(create_key(data, "admin@auth-proj.iam.gserviceaccount.com",
                                         "--admin"))
    user = self_signed_token(create_key(data, "user@auth-proj.iam.gserviceaccount.com",
                                        "--role", "roles/pubsub.editor"))
    return data, admin, user


@pytest.mark.parametrize("metrics_open", [False, True])
def test_under_auth_reset_and_metrics_are_an_administrators(keyed_data_dir, metrics_open):
    data, admin, user = keyed_data_dir
    extra = ["--auth", *(["--metrics-open"] if metrics_open else [])]
    with EmulatorProcess(data_dir=data, extra_args=extra) as emu:
        base = f"http://{emu.host}"
        assert requests.get(f"{base}/readyz", timeout=10).status_code == 200
        assert _reset(emu.host).status_code == 401
        assert _reset(emu.host, token=user).status_code == 403
        assert _reset(emu.host, token=admin).status_code == 200

        def metrics(token: str | None) -> int:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            return requests.get(f"{base}/metrics", headers=headers, timeout=10).status_code

        assert metrics(admin) == 200
        assert metrics(None) == (200 if metrics_open else 401)
        assert metrics(user) == (200 if metrics_open else 403)
