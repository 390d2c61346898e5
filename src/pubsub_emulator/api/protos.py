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
from google.protobuf import descriptor_pb2, empty_pb2
from google.protobuf.message import Message
from google.pubsub_v1 import types as pubsub_types

PROTO_PACKAGE = "google.pubsub.v1"
SERVICES = ("Publisher", "Subscriber", "SchemaService")


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

    @property
    def path(self) -> str:
        """The gRPC method path, e.g. /google.pubsub.v1.Publisher/Publish."""
        return f"/{PROTO_PACKAGE}.{self.service}/{self.name}"


def _message_class(full_name: str) -> type[Message]:
    name = full_name.lstrip(".")
    if name == "google.protobuf.Empty":
        return empty_pb2.Empty
    package, _, short = name.rpartition(".")
    if package != PROTO_PACKAGE:
        raise LookupError(f"unexpected message type {name}")
    return getattr(pubsub_types, short).pb()


def _proto_sources() -> dict[str, Path]:
    """Where the .proto files live in the installed packages."""
    import google.api
    import google.cloud.pubsub_v1
    import grpc_tools

    pubsub_dir = Path(google.cloud.pubsub_v1.__file__).parent / "proto"
    api_dir = Path(next(iter(google.api.__path__)))  # a namespace package
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    return {"pubsub": pubsub_dir, "api": api_dir, "well_known": well_known}


@functools.cache
def descriptor_set() -> descriptor_pb2.FileDescriptorSet:
    """Compile pubsub.proto (with imports) into a FileDescriptorSet."""
    from grpc_tools import protoc

    sources = _proto_sources()
    with tempfile.TemporaryDirectory(prefix="pubsub-protos-") as tmp:
        root = Path(tmp)
        # pubsub.proto imports "google/pubsub/v1/schema.proto": lay the files out as imported.
        dest = root / "google" / "pubsub" / "v1"
        dest.mkdir(parents=True)
        for name in ("pubsub.proto", "schema.proto"):
            shutil.copy(sources["pubsub"] / name, dest / name)
        (root / "google" / "api").mkdir()
        for proto in sources["api"].glob("*.proto"):
            shutil.copy(proto, root / "google" / "api" / proto.name)
        out = root / "pubsub.desc"
        rc = protoc.main([
            "protoc", f"-I{root}", f"-I{sources['well_known']}",
            f"--descriptor_set_out={out}", "--include_imports",
            "google/pubsub/v1/pubsub.proto",
        ])
        if rc != 0:
            raise RuntimeError("protoc could not compile google/pubsub/v1/pubsub.proto")
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


@functools.cache
def methods() -> dict[str, Method]:
    """Every Publisher, Subscriber and SchemaService RPC, keyed by method name."""
    found: dict[str, Method] = {}
    for file in descriptor_set().file:
        if file.package != PROTO_PACKAGE:
            continue
        for service in file.service:
            if service.name not in SERVICES:
                continue
            for m in service.method:
                found[m.name] = Method(
                    service=service.name,
                    name=m.name,
                    request_type=_message_class(m.input_type),
                    response_type=_message_class(m.output_type),
                    client_streaming=m.client_streaming,
                    server_streaming=m.server_streaming,
                    http=_http_rule(m.options),
                )
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
