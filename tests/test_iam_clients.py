"""IAM through Google's real clients (issue "IAM"): the table of test_iam_enforcement.py, every
RPC x role (none, viewer, publisher, subscriber, editor, admin) x level (granted on the
resources the row names, or on the project), made by a member's key against an emulator with
--tls-self-signed --auth, over the Python GAPIC clients (gRPC and REST) and the Node client
(gRPC, and REST with `fallback: true`).

What it proves: each call the table allows SUCCEEDS through the client (not merely "is not
refused"), each it refuses fails with PERMISSION_DENIED (gRPC 7, HTTP 403) and Google's
message; the expectation is test_iam_enforcement's `expected()`, computed from `GOOGLE` (an
independent statement of Google's table) and the roles, not from iam/permissions.py.

Each (row, role, level) has a fixture of its own in a project of its own (projects/iam-...):
test_iam_enforcement.fixture()'s topic, dead-letter topic, subscription (one message pulled,
its ack id; a second one waiting, which an allowed StreamingPull receives at once), snapshot
and schema of two revisions, made by an administrator over gRPC; then the role is granted to
the member (SetIamPolicy) on the project or on each resource `granted_on` names, and the
member makes the row's call, with requests_for()'s request moved into that project.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.api_core import exceptions
from google.api_core.client_options import ClientOptions
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.message import Message
from google.pubsub_v1 import PublisherClient, SchemaServiceClient, SubscriberClient
from google.pubsub_v1 import types as t
from google.pubsub_v1.services.publisher.transports import PublisherGrpcTransport
from google.pubsub_v1.services.schema_service.transports import SchemaServiceGrpcTransport
from google.pubsub_v1.services.subscriber.transports import SubscriberGrpcTransport

from test_iam_enforcement import (
    AVRO,
    DLT,
    GOOGLE,
    NOT_AUTHORIZED,
    ROLE_NAMES,
    SCHEMA,
    SNAP,
    SUB,
    TOPIC,
    P,
    expected,
    granted_on,
    requests_for,
)
from test_node_client import DROPPED_ENV, NODE_DIR, node_client  # noqa: F401  (a fixture)
from test_tls_auth import SecureEmulator, credentials, make_key

TRANSPORTS = ("grpc", "rest", "node-grpc", "node-rest")
ADMIN_EMAIL = "root@iam-clients.iam.gserviceaccount.com"
MEMBER_EMAIL = "member@iam-clients.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{MEMBER_EMAIL}"
CALL_TIMEOUT = 20.0  # seconds: a call that takes longer is reported, never waited for forever
WORKERS = 8  # threads making fixtures and calls (the emulator is the bottleneck)
NODE_TIMEOUT = 150
PUBLISHER_METHODS = {"CreateTopic", "UpdateTopic", "Publish", "GetTopic", "ListTopics",
                     "ListTopicSubscriptions", "ListTopicSnapshots", "DeleteTopic",
                     "DetachSubscription"}
IAM_METHODS = {"GetIamPolicy", "SetIamPolicy", "TestIamPermissions"}
IAM_CLIENT = {"topics": "publisher", "subscriptions": "subscriber", "snapshots": "subscriber",
              "schemas": "schema"}  # (Google's IAM samples: the client of the resource's kind)


# --- the table ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One cell: the row's call by a member holding `role` on `level`, in `project`."""

    row: str
    role: str  # a key of ROLE_NAMES ("none": no grant at all, one level only)
    level: str  # "resource" or "project"
    project: str  # projects/iam-...

    @property
    def allowed(self) -> bool:
        return expected(self.row, ROLE_NAMES[self.role], self.level)

    def grants(self) -> list[str]:
        """Where the role is granted, in this case's project."""
        if ROLE_NAMES[self.role] is None:
            return []
        return [moved(name, self.project) for name in granted_on(self.row, self.level)]

    def __str__(self) -> str:
        where = "" if self.role == "none" else f" on the {self.level}"
        return f"{self.row}: {self.role}{where} ({self.project})"


# Rows a transport cannot carry, and why (every other row runs over every transport).
NO_STREAMING = "REST has no StreamingPull (Google's REST API has no streaming method)"
NODE_REST_POST_GET_IAM_POLICY = (
    "Google's Node client over REST sends POST .../{resource}:getIamPolicy (google-gax's "
    "IamClient takes the generic rule of iam_policy.proto); Pub/Sub's service config serves "
    "GET only, and Google's servers refuse the POST too (googleapis/gax-nodejs#1462)")
LEFT_OUT: dict[str, dict[str, str]] = {
    "rest": {"StreamingPull": NO_STREAMING},
    "node-rest": {"StreamingPull": NO_STREAMING,
                  **{row: NODE_REST_POST_GET_IAM_POLICY for row in GOOGLE
                     if row.startswith("GetIamPolicy")}},
}


def cases(transport: str, rows: list[str] | None = None, tag: str = "") -> list[Case]:
    """The cells of `rows` (by default every row `transport` can carry), each in a project of
    its own (named after `tag`, by default the transport)."""
    if rows is None:
        rows = [row for row in sorted(GOOGLE) if row not in LEFT_OUT.get(transport, {})]
    table = []
    for row in rows:
        for role in ROLE_NAMES:
            for level in ("project",) if role == "none" else ("resource", "project"):
                table.append(Case(row, role, level,
                                  f"projects/iam-{tag or transport}-{len(table)}"))
    return table


def moved(value: Any, project: str) -> Any:
    """`value` (a name, or a JSON value holding names) with projects/p replaced by `project`."""
    if isinstance(value, str) and (value == P or value.startswith(f"{P}/")):
        return project + value[len(P):]
    if isinstance(value, dict):
        return {key: moved(item, project) for key, item in value.items()}
    if isinstance(value, list):
        return [moved(item, project) for item in value]
    return value


def moved_request(request: Message, project: str) -> Message:
    data = MessageToDict(request, preserving_proto_field_name=True)
    return ParseDict(moved(data, project), type(request)())


def client_kind(method: str, request: Message) -> str:
    """Which client makes the call: "publisher", "subscriber" or "schema"."""
    if method in IAM_METHODS:
        return IAM_CLIENT[request.resource.split("/")[2]]  # type: ignore[attr-defined]
    if method in PUBLISHER_METHODS:
        return "publisher"
    if "Schema" in method or method.startswith("Validate"):
        return "schema"
    return "subscriber"


# --- the clients ----------------------------------------------------------------------------

@dataclass
class Clients:
    publisher: Any
    subscriber: Any
    schema: Any


def grpc_clients(emu: SecureEmulator, key: Path) -> Clients:
    creds = credentials(key)
    channel_creds = grpc.ssl_channel_credentials(emu.ca.read_bytes())

    def transport(cls: Any) -> Any:
        return cls(host=emu.host, credentials=creds, ssl_channel_credentials=channel_creds)

    return Clients(PublisherClient(transport=transport(PublisherGrpcTransport)),
                   SubscriberClient(transport=transport(SubscriberGrpcTransport)),
                   SchemaServiceClient(transport=transport(SchemaServiceGrpcTransport)))


def rest_clients(emu: SecureEmulator, key: Path) -> Clients:
    """Over HTTPS; the CA comes from REQUESTS_CA_BUNDLE."""
    options = ClientOptions(api_endpoint=f"https://{emu.host}")
    creds = credentials(key)
    return Clients(*(cls(transport="rest", client_options=options, credentials=creds)
                     for cls in (PublisherClient, SubscriberClient, SchemaServiceClient)))


def admin_clients(emu: SecureEmulator, key: Path) -> Clients:
    """The administrator's gRPC clients, shared by the threads that make fixtures. One call
    by each first: google-auth's first self-signed JWT is not made thread-safely (a thread may
    see credentials without a token) and each client's transport has its own copy of them."""
    admin = grpc_clients(emu, key)
    project, opts = "projects/iam-warm-up", {"retry": None, "timeout": CALL_TIMEOUT}
    admin.publisher.list_topics(project=project, **opts)
    admin.subscriber.list_subscriptions(project=project, **opts)
    admin.schema.list_schemas(parent=project, **opts)
    return admin


@dataclass
class Setup:
    emu: SecureEmulator
    admin_key: Path
    member_key: Path


@pytest.fixture(scope="module")
def iam_emulator(tmp_path_factory) -> Iterator[Setup]:
    data = tmp_path_factory.mktemp("iam-clients")
    with SecureEmulator(data_dir=data, extra_args=["--tls-self-signed", "--auth"]) as emu:
        yield Setup(emu, make_key(emu, ADMIN_EMAIL, "--admin"), make_key(emu, MEMBER_EMAIL))


# --- fixtures, by the administrator ---------------------------------------------------------

def build_fixture(admin: Clients, project: str) -> tuple[str, str]:
    """test_iam_enforcement.fixture() in `project`, and a second message waiting; (the
    schema's first revision, the pulled message's ack id)."""
    def here(name: str) -> str:
        return moved(name, project)

    opts: dict[str, Any] = {"retry": None, "timeout": CALL_TIMEOUT}
    admin.publisher.create_topic(name=here(TOPIC), **opts)
    admin.publisher.create_topic(name=here(DLT), **opts)
    admin.subscriber.create_subscription(name=here(SUB), topic=here(TOPIC), **opts)
    admin.publisher.publish(topic=here(TOPIC), messages=[{"data": b"m"}, {"data": b"n"}],
                            **opts)
    pulled = admin.subscriber.pull(subscription=here(SUB), max_messages=1, **opts)
    assert len(pulled.received_messages) == 1, (project, pulled)
    admin.subscriber.create_snapshot(name=here(SNAP), subscription=here(SUB), **opts)
    schema = {"type_": t.Schema.Type.AVRO, "definition": AVRO}
    created = admin.schema.create_schema(parent=project, schema_id="schema", schema=schema,
                                         **opts)
    admin.schema.commit_schema(name=here(SCHEMA), schema={"name": here(SCHEMA), **schema},
                               **opts)
    return created.revision_id, pulled.received_messages[0].ack_id


def prepare(admin: Clients, case: Case) -> tuple[str, Message]:
    """The case's fixture and grants; the member's (method, request)."""
    revision, ack_id = build_fixture(admin, case.project)
    role = ROLE_NAMES[case.role]
    for resource in case.grants():
        admin.publisher.set_iam_policy(request={"resource": resource, "policy": {
            "bindings": [{"role": role, "members": [MEMBER]}]}}, retry=None,
            timeout=CALL_TIMEOUT)
    method, request = requests_for(revision, ack_id)[case.row]
    return method, moved_request(request, case.project)


# --- outcomes -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    ok: bool
    denied: bool = False  # PERMISSION_DENIED: gRPC status 7, HTTP 403
    message: str = ""
    detail: str = "succeeded"


def mismatch(case: Case, outcome: Outcome) -> str | None:
    """What is wrong with `outcome` for `case`; None when it is what Google's table says."""
    if case.allowed:
        return None if outcome.ok else f"{case}: allowed by the table, got {outcome.detail}"
    if outcome.denied and NOT_AUTHORIZED in outcome.message:
        return None
    return f"{case}: PERMISSION_DENIED by the table, got {outcome.detail}"


def snake(method: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", method).lower()


def first_streamed(subscriber: Any, request: Message) -> None:
    """Open a StreamingPull, read its first response (it must hold a message), cancel it. The
    request stream stays open until then (a half-close could end the call early); the deadline
    bounds the call, so a silent server fails the case instead of hanging the test."""
    answered = threading.Event()

    def requests() -> Iterator[Message]:
        yield request
        answered.wait(CALL_TIMEOUT)

    stream = subscriber.streaming_pull(requests=requests(), retry=None, timeout=CALL_TIMEOUT)
    try:
        response = next(stream)
        assert response.received_messages, "the first response held no message"
    finally:
        answered.set()
        stream.cancel()


def python_call(clients: Clients, transport: str, method: str, request: Message) -> Outcome:
    try:
        if method == "StreamingPull":
            first_streamed(clients.subscriber, request)
        else:
            client = getattr(clients, client_kind(method, request))
            getattr(client, snake(method))(request=request, retry=None, timeout=CALL_TIMEOUT)
    except exceptions.GoogleAPICallError as exc:
        denied = (exc.grpc_status_code == grpc.StatusCode.PERMISSION_DENIED
                  if transport == "grpc" else exc.code == 403)
        return Outcome(False, denied, exc.message or "",
                       f"{type(exc).__name__} ({exc.code}): {exc.message}")
    except (AssertionError, StopIteration) as exc:
        return Outcome(False, detail=f"{type(exc).__name__}: {exc}")
    return Outcome(True)


def python_outcomes(setup: Setup, transport: str, table: list[Case], admin: Clients
                    ) -> dict[Case, Outcome]:
    """Each case through the GAPIC clients of `transport`, a client set per thread."""
    local = threading.local()
    make = grpc_clients if transport == "grpc" else rest_clients

    def run(case: Case) -> Outcome:
        if not hasattr(local, "clients"):
            local.clients = make(setup.emu, setup.member_key)
        return python_call(local.clients, transport, *prepare(admin, case))

    with ThreadPoolExecutor(WORKERS) as pool:
        return dict(zip(table, pool.map(run, table), strict=True))


# --- Node -----------------------------------------------------------------------------------

def node_call(case_id: int, method: str, request: Message) -> dict[str, str]:
    camel = method[0].lower() + method[1:]
    return {"id": str(case_id), "client": client_kind(method, request), "method": camel,
            "type": request.DESCRIPTOR.full_name,
            "request": base64.b64encode(request.SerializeToString()).decode()}


def node_outcome(answer: dict[str, Any], transport: str) -> Outcome:
    if answer["ok"]:
        return Outcome(True)
    denied = answer["code"] == 7 if transport == "node-grpc" else answer["statusCode"] == 403
    return Outcome(False, denied, answer["message"],
                   f"code {answer['code']}, HTTP {answer['statusCode']}: {answer['message']}")


def node_outcomes(setup: Setup, transport: str, table: list[Case], admin: Clients,
                  node: str, work: Path) -> dict[Case, Outcome]:
    """Every fixture first (Python), then one Node process making every call."""
    with ThreadPoolExecutor(WORKERS) as pool:
        prepared = list(pool.map(lambda case: prepare(admin, case), table))
    calls = [node_call(i, method, request) for i, (method, request) in enumerate(prepared)]
    config, results = work / "calls.json", work / "results.json"
    config.write_text(json.dumps({
        "endpoint": f"127.0.0.1:{setup.emu.port}",  # (Node may resolve localhost to ::1)
        "keyFile": str(setup.member_key), "transport": transport.removeprefix("node-"),
        "concurrency": WORKERS, "results": str(results), "calls": calls}))
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(setup.emu.ca)  # grpc-js, read at load
    env["NODE_EXTRA_CA_CERTS"] = str(setup.emu.ca)  # Node's https (REST), read at start
    done = subprocess.run([node, str(NODE_DIR / "iam_table.js"), str(config)], cwd=NODE_DIR,
                          env=env, capture_output=True, text=True, timeout=NODE_TIMEOUT)
    assert done.returncode == 0, f"iam_table.js failed:\n{done.stderr[-3000:]}"
    answers = json.loads(results.read_text())
    return {case: node_outcome(answers[str(i)], transport) for i, case in enumerate(table)}


# --- the tests ------------------------------------------------------------------------------

@pytest.fixture
def secure_env(iam_emulator: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PUBSUB_EMULATOR_HOST", raising=False)  # (clients drop TLS with it)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(iam_emulator.emu.ca))  # (REST)


def differences(setup: Setup, transport: str, table: list[Case],
                request: pytest.FixtureRequest, work: Path) -> list[str]:
    """Each cell of `table` through `transport`: what differs from Google's table."""
    assert {case.allowed for case in table} == {True, False}  # (both outcomes are at stake)
    admin = admin_clients(setup.emu, setup.admin_key)
    if transport.startswith("node"):
        node = request.getfixturevalue("node_client")[0]  # (npm ci first, if need be)
        outcomes = node_outcomes(setup, transport, table, admin, node, work)
    else:
        outcomes = python_outcomes(setup, transport, table, admin)
    return [found for case in table if (found := mismatch(case, outcomes[case]))]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_each_rpc_by_role_and_level_through_the_clients(
        transport: str, iam_emulator: Setup, secure_env: None,
        request: pytest.FixtureRequest, tmp_path: Path) -> None:
    table = cases(transport)
    wrong = differences(iam_emulator, transport, table, request, tmp_path)
    assert not wrong, (f"{len(wrong)} of {len(table)} calls over {transport} differ from "
                       "Google's table:\n" + "\n".join(wrong))
