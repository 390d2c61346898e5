"""IAM policies served (issue "IAM: policies served and enforced", the policy half): Set, Get
and TestIamPermissions on topics, subscriptions, snapshots, schemas and projects, over gRPC and
REST, through Google's real clients, without and with --auth; validation, etags, NOT_FOUND,
deletion with the resource, durability, the topology file's grants and groups, and
`keys create --role`. Enforcement itself (who may call what) is tests/test_iam_enforce*'s.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from google.api_core import exceptions
from google.auth import jwt as google_jwt
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.type import expr_pb2

from clients import make_clients, unique
from processes import nats_server_path, wait_for
from pubsub_emulator import topology
from pubsub_emulator.core.service import PubSubService
from pubsub_emulator.iam.policies import EMPTY_ETAG
from pubsub_emulator.store import open_store
from push_endpoint import Receiver
from support import NATS_MISSING, EmulatorProcess
from test_tls_auth import SecureEmulator, clients, keys_cli

P = "iam-proj"
SA = f"writer@{P}.iam.gserviceaccount.com"
TRANSPORTS = ("grpc", "rest")


@pytest.fixture(scope="module")
def emu() -> Iterator[EmulatorProcess]:
    with EmulatorProcess() as process:
        yield process


def _topic(publisher: Any) -> str:
    name = f"projects/{P}/topics/{unique('t')}"
    publisher.create_topic(name=name)
    return name


def _policy(*bindings: tuple[str, list[str]], version: int = 1, etag: bytes = b""
            ) -> policy_pb2.Policy:
    return policy_pb2.Policy(version=version, etag=etag, bindings=[
        policy_pb2.Binding(role=role, members=members) for role, members in bindings])


# --- Google's clients, no --auth -----------------------------------------------------------
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_fresh_topic_has_the_empty_policy(emu, transport):
    publisher, _ = make_clients(emu.host, transport)
    policy = publisher.get_iam_policy(request={"resource": _topic(publisher)})
    assert policy.etag == EMPTY_ETAG == base64.b64decode("ACAB")
    assert not policy.bindings and policy.version == 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_set_then_get_round_trips(emu, transport):
    publisher, _ = make_clients(emu.host, transport)
    topic = _topic(publisher)
    wanted = _policy(("roles/pubsub.publisher", [f"serviceAccount:{SA}", "group:g@example.com"]),
                     ("roles/pubsub.viewer", ["domain:example.com", "allUsers"]))
    set_ = publisher.set_iam_policy(request={"resource": topic, "policy": wanted})
    got = publisher.get_iam_policy(request={"resource": topic})
    assert got == set_
    assert got.version == 1 and got.etag not in (b"", EMPTY_ETAG)
    assert [(b.role, list(b.members)) for b in got.bindings] == [
        (b.role, list(b.members)) for b in wanted.bindings]
    # The same content has the same etag (it is computed from the content).
    again = publisher.set_iam_policy(request={"resource": topic, "policy": wanted})
    assert again.etag == got.etag


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_stale_etag_is_aborted(emu, transport):
    publisher, _ = make_clients(emu.host, transport)
    topic = _topic(publisher)
    first = publisher.get_iam_policy(request={"resource": topic})
    publisher.set_iam_policy(request={"resource": topic, "policy": _policy(
        ("roles/pubsub.publisher", [f"serviceAccount:{SA}"]), etag=first.etag)})
    with pytest.raises(exceptions.Conflict) as info:  # Aborted is gRPC's, 409 REST's
        publisher.set_iam_policy(request={"resource": topic, "policy": _policy(
            ("roles/pubsub.viewer", ["allUsers"]), etag=first.etag)}, retry=None)
    assert "concurrent policy changes" in str(info.value)
    current = publisher.get_iam_policy(request={"resource": topic})
    assert [b.role for b in current.bindings] == ["roles/pubsub.publisher"]
    # Without an etag the write is blind.
    publisher.set_iam_policy(request={"resource": topic, "policy": _policy(
        ("roles/pubsub.viewer", ["allUsers"]))})


BAD_POLICIES = {
    "unknown role": (_policy(("roles/storage.admin", ["allUsers"])),
                     "Role roles/storage.admin is not supported for this resource."),
    "bad member": (_policy(("roles/pubsub.viewer", ["bob@example.com"])), "unknown type"),
    "bad email": (_policy(("roles/pubsub.viewer", ["user:nobody"])), "unknown type"),
    "bad version": (_policy(("roles/pubsub.viewer", ["allUsers"]), version=2),
                    "version must be 0, 1 or 3"),
    "condition below v3": (policy_pb2.Policy(version=1, bindings=[policy_pb2.Binding(
        role="roles/pubsub.viewer", members=["allUsers"],
        condition=expr_pb2.Expr(expression="true"))]), "version 3"),
    "audit configs": (policy_pb2.Policy(audit_configs=[policy_pb2.AuditConfig(
        service="allServices")]), "Audit configs"),
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("case", sorted(BAD_POLICIES))
def test_invalid_policies_are_invalid_argument(emu, transport, case):
    publisher, _ = make_clients(emu.host, transport)
    topic = _topic(publisher)
    policy, message = BAD_POLICIES[case]
    with pytest.raises(exceptions.BadRequest) as info:
        publisher.set_iam_policy(request={"resource": topic, "policy": policy})
    assert message in str(info.value)
    assert publisher.get_iam_policy(request={"resource": topic}).etag == EMPTY_ETAG


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_bad_requested_version_is_invalid_argument(emu, transport):
    publisher, _ = make_clients(emu.host, transport)
    with pytest.raises(exceptions.BadRequest):
        publisher.get_iam_policy(request={"resource": _topic(publisher),
                                          "options": {"requested_policy_version": 2}})


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_missing_resources(emu, transport):
    publisher, subscriber = make_clients(emu.host, transport)
    for client, name in ((publisher, f"projects/{P}/topics/{unique('gone')}"),
                         (subscriber, f"projects/{P}/subscriptions/{unique('gone')}")):
        with pytest.raises(exceptions.NotFound):
            client.get_iam_policy(request={"resource": name})
        with pytest.raises(exceptions.NotFound):
            client.set_iam_policy(request={"resource": name, "policy": _policy(
                ("roles/pubsub.viewer", ["allUsers"]))})
        answer = client.test_iam_permissions(request={
            "resource": name, "permissions": ["pubsub.topics.get"]})
        assert list(answer.permissions) == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_test_iam_permissions_without_auth_answers_every_valid_one(emu, transport):
    publisher, _ = make_clients(emu.host, transport)
    topic = _topic(publisher)
    asked = ["pubsub.topics.attachSubscription", "pubsub.topics.publish", "pubsub.topics.update"]
    answer = publisher.test_iam_permissions(request={"resource": topic, "permissions": asked})
    assert list(answer.permissions) == asked
    for bad in ("pubsub.topics.*", "storage.buckets.get", "nonsense"):
        with pytest.raises(exceptions.BadRequest) as info:
            publisher.test_iam_permissions(request={"resource": topic, "permissions": [bad]})
        assert f"Permission {bad} is not valid for this resource." in str(info.value)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_deleting_a_topic_deletes_its_policy(emu, transport):
    publisher, _ = make_clients(emu.host, transport)
    topic = _topic(publisher)
    publisher.set_iam_policy(request={"resource": topic, "policy": _policy(
        ("roles/pubsub.publisher", [f"serviceAccount:{SA}"]))})
    publisher.delete_topic(topic=topic)
    publisher.create_topic(name=topic)
    assert publisher.get_iam_policy(request={"resource": topic}).etag == EMPTY_ETAG


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_googles_iam_samples_on_topics_and_subscriptions(emu, transport):
    """What Google's Pub/Sub IAM samples do: get, add a binding, set, test."""
    publisher, subscriber = make_clients(emu.host, transport)
    topic = _topic(publisher)
    sub = f"projects/{P}/subscriptions/{unique('s')}"
    subscriber.create_subscription(name=sub, topic=topic)
    for client, resource, role, perms in (
            (publisher, topic, "roles/pubsub.publisher",
             ["pubsub.topics.publish", "pubsub.topics.update"]),
            (subscriber, sub, "roles/pubsub.subscriber",
             ["pubsub.subscriptions.consume", "pubsub.subscriptions.update"])):
        policy = client.get_iam_policy(request={"resource": resource})
        policy.bindings.add(role=role, members=["domain:google.com"])
        policy.bindings.add(role="roles/pubsub.viewer", members=["group:cloud-logs@google.com"])
        policy = client.set_iam_policy(request={"resource": resource, "policy": policy})
        assert {b.role for b in policy.bindings} == {role, "roles/pubsub.viewer"}
        answer = client.test_iam_permissions(request={"resource": resource,
                                                      "permissions": perms})
        assert list(answer.permissions) == perms
    subscriber.delete_subscription(subscription=sub)
    subscriber.create_subscription(name=sub, topic=topic)
    assert subscriber.get_iam_policy(request={"resource": sub}).etag == EMPTY_ETAG


# --- REST and gRPC by hand: snapshots, schemas, projects, conditions ----------------------
def _rest(emu: Any, verb: str, path: str, body: dict[str, Any] | None = None) -> Any:
    return requests.request(verb, f"http://{emu.host}/v1/{path}", json=body, timeout=10)


def test_snapshots_and_schemas_over_rest(emu):
    topic, sub, snap = (f"projects/{P}/topics/{unique('t')}",
                        f"projects/{P}/subscriptions/{unique('s')}",
                        f"projects/{P}/snapshots/{unique('n')}")
    assert _rest(emu, "PUT", topic, {}).status_code == 200
    assert _rest(emu, "PUT", sub, {"topic": topic}).status_code == 200
    assert _rest(emu, "PUT", snap, {"subscription": sub}).status_code == 200
    schema_id = unique("sc")
    created = _rest(emu, "POST", f"projects/{P}/schemas?schemaId={schema_id}", {
        "type": "AVRO", "definition": '{"type": "record", "name": "R", "fields": []}'})
    assert created.status_code == 200, created.text
    for name in (snap, f"projects/{P}/schemas/{schema_id}"):
        assert _rest(emu, "GET", f"{name}:getIamPolicy").json() == {"etag": "ACAB"}
        body = {"policy": {"bindings": [{"role": "roles/pubsub.viewer",
                                         "members": ["allAuthenticatedUsers"]}]}}
        set_ = _rest(emu, "POST", f"{name}:setIamPolicy", body).json()
        assert set_["version"] == 1 and set_["bindings"] == body["policy"]["bindings"]
        assert _rest(emu, "GET", f"{name}:getIamPolicy").json() == set_
        tested = _rest(emu, "POST", f"{name}:testIamPermissions",
                       {"permissions": ["pubsub.snapshots.get"]}).json()
        assert tested == {"permissions": ["pubsub.snapshots.get"]}
        assert _rest(emu, "DELETE", name).status_code == 200
        assert _rest(emu, "GET", f"{name}:getIamPolicy").status_code == 404


def test_conditions_need_version_3_and_are_hidden_below_it(emu):
    topic = f"projects/{P}/topics/{unique('t')}"
    assert _rest(emu, "PUT", topic, {}).status_code == 200
    binding = {"role": "roles/pubsub.publisher", "members": [f"serviceAccount:{SA}"],
               "condition": {"title": "until 2030",
                             "expression": 'request.time < timestamp("2030-01-01T00:00:00Z")'}}
    set_ = _rest(emu, "POST", f"{topic}:setIamPolicy",
                 {"policy": {"version": 3, "bindings": [binding]}}).json()
    assert set_["version"] == 3 and set_["bindings"] == [binding]
    v3 = _rest(emu, "GET", f"{topic}:getIamPolicy?options.requestedPolicyVersion=3").json()
    assert v3 == set_
    v1 = _rest(emu, "GET", f"{topic}:getIamPolicy").json()
    assert v1["version"] == 1 and "condition" not in v1["bindings"][0]
    assert v1["bindings"][0]["role"].startswith("roles/pubsub.publisher_withcond_")


def test_project_level_policies(emu):
    project = f"projects/{unique('proj')}"
    assert _rest(emu, "GET", f"{project}:getIamPolicy").json() == {"etag": "ACAB"}
    body = {"policy": {"bindings": [{"role": "roles/pubsub.admin",
                                     "members": [f"serviceAccount:{SA}"]}]}}
    set_ = _rest(emu, "POST", f"{project}:setIamPolicy", body).json()
    assert set_["bindings"] == body["policy"]["bindings"]
    with grpc.insecure_channel(emu.host) as channel:
        get = channel.unary_unary("/google.iam.v1.IAMPolicy/GetIamPolicy",
                                  request_serializer=iam_policy_pb2.GetIamPolicyRequest
                                  .SerializeToString,
                                  response_deserializer=policy_pb2.Policy.FromString)
        got = get(iam_policy_pb2.GetIamPolicyRequest(resource=project), timeout=10)
    assert base64.b64encode(got.etag).decode() == set_["etag"]
    assert [b.role for b in got.bindings] == ["roles/pubsub.admin"]


def test_policies_survive_a_restart(tmp_path):
    topic = f"projects/{P}/topics/{unique('t')}"
    with EmulatorProcess(data_dir=tmp_path) as first:
        assert _rest(first, "PUT", topic, {}).status_code == 200
        set_ = _rest(first, "POST", f"{topic}:setIamPolicy", {"policy": {"bindings": [
            {"role": "roles/pubsub.viewer", "members": ["allUsers"]}]}}).json()
    with EmulatorProcess(data_dir=tmp_path) as second:
        assert _rest(second, "GET", f"{topic}:getIamPolicy").json() == set_


# --- the topology file: project grants, resource grants, groups ---------------------------
def test_topology_grants_and_groups():
    spec = {
        "groups": {"team@example.com": [f"serviceAccount:{SA}", "group:inner@example.com"],
                   "group:inner@example.com": ["user:dev@example.com"]},
        "projects": {P: {
            "iam": {"bindings": [{"role": "roles/pubsub.editor",
                                  "members": ["group:team@example.com"]}]},
            "topics": {"orders": {
                "iam": {"bindings": [{"role": "roles/pubsub.publisher",
                                      "members": [f"serviceAccount:{SA}"]}]},
                "subscriptions": {"orders-sub": {"ackDeadlineSeconds": 20, "iam": {
                    "bindings": [{"role": "roles/pubsub.subscriber",
                                  "members": ["allAuthenticatedUsers"]}]}}}}}}}}

    async def run() -> None:
        store = await open_store("", True, None, 1)
        service = PubSubService(store)
        assert await topology.apply(service, spec) == 2
        assert await topology.apply(service, spec) == 0  # idempotent, grants included
        policies = service.policies
        assert await policies.bindings_for(f"projects/{P}") == [
            ("roles/pubsub.editor", frozenset({"group:team@example.com"}))]
        assert await policies.bindings_for(f"projects/{P}/topics/orders") == [
            ("roles/pubsub.publisher", frozenset({f"serviceAccount:{SA}"}))]
        sub = await policies.get(f"projects/{P}/subscriptions/orders-sub")
        assert [b.role for b in sub.bindings] == ["roles/pubsub.subscriber"]
        assert policies.group_members("group:team@example.com") == {
            f"serviceAccount:{SA}", "user:dev@example.com"}
        assert policies.group_members("group:nobody@example.com") == frozenset()
        await store.close()

    asyncio.run(run())


@pytest.mark.parametrize("bad", [
    {"projects": {P: {"iam": {"bindings": [{"role": "roles/nope", "members": ["allUsers"]}]}}}},
    {"groups": {"g@example.com": ["nobody"]}, "projects": {}},
])
def test_topology_refuses_bad_grants(bad):
    async def run() -> None:
        store = await open_store("", True, None, 1)
        try:
            with pytest.raises(topology.TopologyError):
                await topology.apply(PubSubService(store), bad)
        finally:
            await store.close()

    asyncio.run(run())


# --- --auth: keys made with --admin and --role --------------------------------------------
@pytest.fixture(scope="module")
def secure(tmp_path_factory) -> Iterator[Any]:
    data = tmp_path_factory.mktemp("iam-secure")
    with SecureEmulator(data_dir=data, extra_args=["--tls-self-signed", "--auth"]) as emu:
        emu.keys = {}  # type: ignore[attr-defined]
        for who, extra in (("alice", ["--admin"]), ("carol", ["--role", "roles/pubsub.admin"]),
                           ("bob", [])):
            email = f"{who}@{P}.iam.gserviceaccount.com"
            out = Path(emu.data_dir) / f"{who}.json"
            done = keys_cli("create", email, "--out", str(out), "--data-dir", emu.data_dir,
                            "--url", f"https://{emu.host}", *extra)
            assert done.returncode == 0, done.stderr
            emu.keys[who] = out  # type: ignore[attr-defined]
        yield emu


@pytest.fixture
def tls_env(monkeypatch, secure) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(secure.ca))


def test_keys_create_role_grants_on_the_project(secure):
    out = Path(secure.data_dir) / "dave.json"
    done = keys_cli("create", f"dave@{P}.iam.gserviceaccount.com", "--out", str(out),
                    "--data-dir", secure.data_dir, "--role", "roles/pubsub.viewer",
                    "--role", "roles/pubsub.publisher@projects/other-proj")
    assert done.returncode == 0, done.stderr
    assert f"granted roles/pubsub.viewer on projects/{P}" in done.stdout
    assert "granted roles/pubsub.publisher on projects/other-proj" in done.stdout
    for bad in ("roles/nope", f"roles/pubsub.viewer@projects/{P}/topics/never-made",
                "roles/pubsub.viewer@nonsense"):
        failed = keys_cli("create", f"erin@{P}.iam.gserviceaccount.com", "--out",
                          str(Path(secure.data_dir) / "erin.json"), "--data-dir",
                          secure.data_dir, "--role", bad)
        assert failed.returncode == 2, failed.stdout
    listed = keys_cli("list", "--data-dir", secure.data_dir, "--email",
                      f"erin@{P}.iam.gserviceaccount.com")
    assert listed.stdout == ""  # a refused --role leaves no key behind


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_googles_iam_samples_with_auth(secure, tls_env, transport):
    """A --role roles/pubsub.admin key administers a fresh --auth server's policies with
    Google's clients unchanged; a key without roles holds nothing."""
    publisher, subscriber = clients(secure, transport, secure.keys["carol"])
    topic = _topic(publisher)
    sub = f"projects/{P}/subscriptions/{unique('s')}"
    subscriber.create_subscription(name=sub, topic=topic)
    policy = publisher.get_iam_policy(request={"resource": topic})
    assert policy.etag == EMPTY_ETAG
    policy.bindings.add(role="roles/pubsub.publisher",
                        members=[f"serviceAccount:bob@{P}.iam.gserviceaccount.com"])
    policy = publisher.set_iam_policy(request={"resource": topic, "policy": policy})
    assert publisher.get_iam_policy(request={"resource": topic}) == policy
    asked = ["pubsub.topics.publish", "pubsub.topics.setIamPolicy"]
    held = publisher.test_iam_permissions(request={"resource": topic, "permissions": asked})
    assert list(held.permissions) == asked
    sub_policy = subscriber.get_iam_policy(request={"resource": sub})
    assert subscriber.set_iam_policy(request={"resource": sub, "policy": sub_policy}).etag \
        == EMPTY_ETAG
    bob_publisher, _ = clients(secure, transport, secure.keys["bob"])
    bob_held = bob_publisher.test_iam_permissions(request={"resource": topic,
                                                           "permissions": asked})
    assert list(bob_held.permissions) == ["pubsub.topics.publish"]  # granted on the topic


def test_project_policies_are_an_administrators_with_auth(secure, tls_env):
    from google.auth.transport.requests import AuthorizedSession

    from test_tls_auth import credentials

    url = f"https://{secure.host}/v1/projects/{P}:getIamPolicy"
    scopes = ["https://www.googleapis.com/auth/pubsub"]
    carol = AuthorizedSession(credentials(secure.keys["carol"]).with_scopes(scopes))
    assert carol.get(url, timeout=10).status_code == 403
    alice = AuthorizedSession(credentials(secure.keys["alice"]).with_scopes(scopes))
    policy = alice.get(url, timeout=10).json()
    # `keys create --role roles/pubsub.admin` put carol's grant there.
    assert {"role": "roles/pubsub.admin",
            "members": [f"serviceAccount:carol@{P}.iam.gserviceaccount.com"]} \
        in policy["bindings"]


# --- a NATS store: policies shared by every process ---------------------------------------
@pytest.mark.skipif(nats_server_path() is None, reason=NATS_MISSING)
def test_policies_are_shared_by_processes_on_nats(nats_server):
    topic = f"projects/{P}/topics/{unique('t')}"
    with EmulatorProcess(extra_args=["--store", nats_server.url]) as one, \
            EmulatorProcess(extra_args=["--store", nats_server.url]) as two:
        assert _rest(one, "PUT", topic, {}).status_code == 200
        assert _rest(two, "GET", f"{topic}:getIamPolicy").json() == {"etag": "ACAB"}
        set_ = _rest(one, "POST", f"{topic}:setIamPolicy", {"policy": {"bindings": [
            {"role": "roles/pubsub.viewer", "members": ["allUsers"]}]}}).json()
        assert _rest(two, "GET", f"{topic}:getIamPolicy").json() == set_
        stale = _rest(two, "POST", f"{topic}:setIamPolicy", {"policy": {
            "etag": "ACAB", "bindings": [{"role": "roles/pubsub.admin",
                                          "members": ["allUsers"]}]}})
        assert stale.status_code == 409
        assert _rest(two, "DELETE", topic).status_code == 200
        assert _rest(one, "PUT", topic, {}).status_code == 200
        assert _rest(one, "GET", f"{topic}:getIamPolicy").json() == {"etag": "ACAB"}


# --- actAs for OIDC push, end to end ---------------------------------------------------------
def test_act_as_for_oidc_push_with_googles_client(secure, tls_env):
    """An editor may name a service account in a push subscription's OIDC token only once IAM
    lets it act as the account (roles/iam.serviceAccountUser, granted on the project by an
    administrator); the emulator then pushes with a token of that account."""
    pusher = f"pusher-{unique('a')}@{P}.iam.gserviceaccount.com"
    dana = f"dana-{unique('a')}@{P}.iam.gserviceaccount.com"
    for email, extra in ((pusher, []), (dana, ["--role", "roles/pubsub.editor"])):
        out = Path(secure.data_dir) / f"{email.partition('@')[0]}.json"
        done = keys_cli("create", email, "--out", str(out), "--data-dir", secure.data_dir,
                        "--url", f"https://{secure.host}", *extra)
        assert done.returncode == 0, done.stderr
        secure.keys[email] = out
    publisher, subscriber = clients(secure, "grpc", secure.keys[dana])
    admin, _ = clients(secure, "grpc", secure.keys["alice"])
    receiver = Receiver().start()
    try:
        topic = publisher.create_topic(name=f"projects/{P}/topics/{unique('t')}").name
        push = {"push_endpoint": receiver.url(), "oidc_token": {
            "service_account_email": pusher, "audience": "https://receiver.example"}}

        def create() -> str:
            name = f"projects/{P}/subscriptions/{unique('s')}"
            subscriber.create_subscription(request={"name": name, "topic": topic,
                                                    "push_config": push})
            return name

        with pytest.raises(exceptions.PermissionDenied):
            create()
        project = f"projects/{P}"
        policy = admin.get_iam_policy(request={"resource": project})
        policy.bindings.add(role="roles/iam.serviceAccountUser", members=[f"serviceAccount:{dana}"])
        admin.set_iam_policy(request={"resource": project, "policy": policy})
        create()
        publisher.publish(topic, b"as the pusher").result(timeout=30)
        wait_for(lambda: receiver.snapshot(), timeout=30, message="the push")
        got = receiver.snapshot()[0]
        assert got.data == b"as the pusher"
        token = (got.header("Authorization") or "").removeprefix("Bearer ")
        claims = google_jwt.decode(token, verify=False)
        assert (claims["email"], claims["aud"]) == (pusher, "https://receiver.example")
    finally:
        receiver.stop()
