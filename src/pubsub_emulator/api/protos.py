"""The Pub/Sub v1 API surface, read from the protos that google-cloud-pubsub ships.

Message classes come from the client library's generated types, so what we put on the wire is
byte-compatible with what Google's clients expect. The method list and the REST routes come from
the `.proto` sources themselves (compiled once with grpc_tools' protoc into a descriptor set), so
the `google.api.http` rules are Google's, not ours.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.api import annotations_pb2
from google.iam.v1 import iam_policy_pb2, policy_pb2
from google.protobuf import descriptor_pb2, empty_pb2
from google.protobuf.message import Message
from google.pubsub_v1 import types as pubsub_types

PROTO_PACKAGE = "google.pubsub.v1"
SERVICES = ("Publisher", "Subscriber", "SchemaService")
# The IAM mixin Pub/Sub serves on the same host: google.iam.v1.IAMPolicy.
IAM_PACKAGE = "google.iam.v1"
IAM_SERVICE = "IAMPolicy"


@dataclass(frozen=True)
class HttpRule:
    verb: str  # "get", "put", "post", "patch", "delete"
    template: str  # e.g. "/v1/{topic=projects/*/topics/*}:publish"
    body: str  # "", "*" or a field name


@dataclass(frozen=True)
class Method:
    service: str  # "Publisher"
    name: str  # "Publish"
    request_type: type[Message]
    response_type: type[Message]
    client_streaming: bool
    server_streaming: bool
    http: HttpRule | None
    # Further REST routes of the same method (the IAM methods have one per resource type).
    more_http: tuple[HttpRule, ...] = ()
    package: str = PROTO_PACKAGE

    @property
    def full_service(self) -> str:
        """The gRPC service name, e.g. google.pubsub.v1.Publisher."""
        return f"{self.package}.{self.service}"

    @property
    def path(self) -> str:
        """The gRPC method path, e.g. /google.pubsub.v1.Publisher/Publish."""
        return f"/{self.full_service}/{self.name}"

    @property
    def http_rules(self) -> tuple[HttpRule, ...]:
        return ((self.http,) if self.http else ()) + self.more_http


def _message_class(full_name: str) -> type[Message]:
    name = full_name.lstrip(".")
    if name == "google.protobuf.Empty":
        return empty_pb2.Empty
    package, _, short = name.rpartition(".")
    if package == IAM_PACKAGE:
        return getattr(iam_policy_pb2, short, None) or getattr(policy_pb2, short)
    if package != PROTO_PACKAGE:
        raise LookupError(f"unexpected message type {name}")
    return getattr(pubsub_types, short).pb()


def _proto_sources() -> dict[str, Path]:
    """Where the .proto files live in the installed packages."""
    import google.api
    import google.cloud.pubsub_v1
    import google.iam.v1
    import google.type
    import grpc_tools

    pubsub_dir = Path(google.cloud.pubsub_v1.__file__).parent / "proto"
    api_dir = Path(next(iter(google.api.__path__)))  # a namespace package
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    # grpc-google-iam-v1 and googleapis-common-protos (google-cloud-pubsub's dependencies)
    # ship the IAM protos beside their generated modules.
    iam_dir = Path(next(iter(google.iam.v1.__path__)))
    type_dir = Path(next(iter(google.type.__path__)))
    return {"pubsub": pubsub_dir, "api": api_dir, "well_known": well_known, "iam": iam_dir,
            "type": type_dir}


def _lay_out(root: Path, sources: dict[str, Path]) -> None:
    """Copy the .proto files under `root` as they import each other."""
    dest = root / "google" / "pubsub" / "v1"
    dest.mkdir(parents=True)
    for name in ("pubsub.proto", "schema.proto"):
        shutil.copy(sources["pubsub"] / name, dest / name)
    for key, folder in (("api", "google/api"), ("iam", "google/iam/v1"),
                        ("type", "google/type")):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for proto in sources[key].glob("*.proto"):
            shutil.copy(proto, root / folder / proto.name)


@functools.cache
def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """Compile pubsub.proto and iam_policy.proto (with imports) into a FileDescriptorSet."""
    from grpc_tools import protoc

    sources = _proto_sources()
    with tempfile.TemporaryDirectory(prefix="pubsub-protos-") as tmp:
        root = Path(tmp)
        _lay_out(root, sources)
        out = root / "pubsub.desc"
        rc = protoc.main([
            "protoc", f"-I{root}", f"-I{sources['well_known']}",
            f"--descriptor_set_out={out}", "--include_imports",
            "google/pubsub/v1/pubsub.proto", "google/iam/v1/iam_policy.proto",
        ])
        if rc != 0:
            raise RuntimeError("protoc could not compile google/pubsub/v1/pubsub.proto and "
                               "google/iam/v1/iam_policy.proto")
        return descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())


def _http_rule(options: descriptor_pb2.MethodOptions) -> HttpRule | None:
    if not options.HasExtension(annotations_pb2.http):
        return None
    rule: Any = options.Extensions[annotations_pb2.http]
    verb = rule.WhichOneof("pattern")
    if verb is None or verb == "custom":
        return None
    return HttpRule(verb=verb, template=getattr(rule, verb), body=rule.body)


# RPCs newer than the .proto files google-cloud-pubsub bundles (schema revisions): their message
# types are in the client's generated types, and their google.api.http rules in its generated
# REST transport (which is produced from the same protos), so those are read from there.
_NEWER_THAN_BUNDLED_PROTOS = {
    "SchemaService": {
        "ListSchemaRevisions": ("ListSchemaRevisionsRequest", "ListSchemaRevisionsResponse"),
        "CommitSchema": ("CommitSchemaRequest", "Schema"),
        "RollbackSchema": ("RollbackSchemaRequest", "Schema"),
        "DeleteSchemaRevision": ("DeleteSchemaRevisionRequest", "Schema"),
    },
}


def _generated_http_rule(service: str, method: str) -> HttpRule | None:
    import importlib

    module_name = {"SchemaService": "schema_service", "Publisher": "publisher",
                   "Subscriber": "subscriber"}[service]
    rest_base = importlib.import_module(
        f"google.pubsub_v1.services.{module_name}.transports.rest_base")
    transport = getattr(rest_base, f"_Base{service}RestTransport")
    options = getattr(transport, f"_Base{method}")._get_http_options()
    if not options:
        return None
    first = options[0]
    return HttpRule(verb=first["method"], template=first["uri"], body=first.get("body", ""))


# The routes of the IAM methods on `projects/P`: this emulator's project-level grants (no
# Google API has them on the Pub/Sub host: Google grants on projects through Resource Manager).
PROJECT_IAM_RULES = {
    "SetIamPolicy": HttpRule("post", "/v1/{resource=projects/*}:setIamPolicy", "*"),
    "GetIamPolicy": HttpRule("get", "/v1/{resource=projects/*}:getIamPolicy", ""),
    "TestIamPermissions": HttpRule("post", "/v1/{resource=projects/*}:testIamPermissions", "*"),
}


def _iam_http_rules(method: str) -> tuple[HttpRule, ...]:
    """The IAM mixin's routes as Pub/Sub serves them (one per resource type), read from the
    client's generated REST transport, which is made from Pub/Sub's service config: the
    rules in iam_policy.proto itself are the generic ones that config overrides."""
    import importlib

    rest_base = importlib.import_module(
        "google.pubsub_v1.services.publisher.transports.rest_base")
    transport = rest_base._BasePublisherRestTransport
    options = getattr(transport, f"_Base{method}")._get_http_options()
    return tuple(HttpRule(verb=o["method"], template=o["uri"], body=o.get("body", ""))
                 for o in options) + (PROJECT_IAM_RULES[method],)


def _described(package: str, service: str, m: descriptor_pb2.MethodDescriptorProto) -> Method:
    if package == IAM_PACKAGE:
        first, *more = _iam_http_rules(m.name)
        http, extra = first, tuple(more)
    else:
        http, extra = _http_rule(m.options), ()
    return Method(service=service, name=m.name, request_type=_message_class(m.input_type),
                  response_type=_message_class(m.output_type),
                  client_streaming=m.client_streaming, server_streaming=m.server_streaming,
                  http=http, more_http=extra, package=package)


@functools.cache
def methods() -> dict[str, Method]:
    """Every Publisher, Subscriber, SchemaService and IAMPolicy RPC, keyed by method name."""
    found: dict[str, Method] = {}
    wanted = {PROTO_PACKAGE: SERVICES, IAM_PACKAGE: (IAM_SERVICE,)}
    for file in descriptor_set().file:
        for service in file.service:
            if service.name in wanted.get(file.package, ()):
                for m in service.method:
                    found[m.name] = _described(file.package, service.name, m)
    for service, extra in _NEWER_THAN_BUNDLED_PROTOS.items():
        for name, (request, response) in extra.items():
            if name not in found:
                found[name] = Method(
                    service=service, name=name,
                    request_type=_message_class(f"{PROTO_PACKAGE}.{request}"),
                    response_type=_message_class(f"{PROTO_PACKAGE}.{response}"),
                    client_streaming=False, server_streaming=False,
                    http=_generated_http_rule(service, name))
    return found
