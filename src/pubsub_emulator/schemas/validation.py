"""Compiling Pub/Sub schema definitions (Avro, Protocol Buffers) and validating messages with them.

Avro schemas are parsed with fastavro. Protocol Buffer definitions are compiled with protoc
(grpc_tools) into a FileDescriptorSet, loaded into a private DescriptorPool per revision (never the
default pool, so user types cannot clash with the emulator's own or with each other).
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import sys
import tempfile
from collections import OrderedDict
from typing import Any

import fastavro
from fastavro.validation import validate as avro_validate
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError

AVRO, PROTOCOL_BUFFER = 2, 1  # google.pubsub.v1.Schema.Type
JSON, BINARY = 1, 2  # google.pubsub.v1.Encoding

_PROTO_FILE = "pubsub_schema.proto"


class DefinitionError(ValueError):
    """The schema definition is not valid for its type."""


class MessageError(ValueError):
    """A message does not match the schema."""


class Validator:
    def validate(self, data: bytes, encoding: int) -> None:
        raise NotImplementedError


class AvroValidator(Validator):
    def __init__(self, definition: str) -> None:
        try:
            raw = json.loads(definition)
        except ValueError as e:
            raise DefinitionError(f"The Avro schema is not valid JSON: {e}") from None
        try:
            self.schema = fastavro.parse_schema(raw)
        except Exception as e:  # fastavro raises several types (SchemaParseException, ...)
            raise DefinitionError(f"Invalid Avro schema: {e}") from None

    def validate(self, data: bytes, encoding: int) -> None:
        if encoding == BINARY:
            buf = io.BytesIO(data)
            try:
                fastavro.schemaless_reader(buf, self.schema, None)
            except Exception as e:
                raise MessageError(f"Could not parse binary Avro data: {e or type(e).__name__}"
                                   ) from None
            if buf.tell() != len(data):
                raise MessageError("Too much data to parse for schema.")
            return
        try:
            value = json.loads(data)
        except ValueError as e:
            raise MessageError(f"Message is not valid JSON: {e}") from None
        try:
            [record] = fastavro.json_reader(io.StringIO(json.dumps(value)), self.schema)
            avro_validate(record, self.schema, raise_errors=True)
        except Exception as e:
            raise MessageError(f"JSON does not match the Avro schema: {e or type(e).__name__}"
                               ) from None


class ProtoValidator(Validator):
    def __init__(self, descriptor_set: bytes) -> None:
        fds = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set)
        pool = descriptor_pool.DescriptorPool()
        for file in fds.file:
            pool.Add(file)
        [top] = fds.file[-1].message_type
        package = fds.file[-1].package
        full_name = f"{package}.{top.name}" if package else top.name
        self.message_class = message_factory.GetMessageClass(
            pool.FindMessageTypeByName(full_name))

    def validate(self, data: bytes, encoding: int) -> None:
        message = self.message_class()
        if encoding == BINARY:
            try:
                message.ParseFromString(data)
            except DecodeError as e:
                raise MessageError(f"Could not parse binary Protocol Buffer data: {e}") from None
            self._check_required(message)
            return
        try:
            json_format.Parse(data, message)
        except (json_format.ParseError, UnicodeDecodeError) as e:
            raise MessageError(f"JSON does not match the Protocol Buffer schema: {e}") from None
        self._check_required(message)

    @staticmethod
    def _check_required(message: Any) -> None:
        if not message.IsInitialized():  # proto2 required fields
            missing = ", ".join(message.FindInitializationErrors())
            raise MessageError(f"Message is missing required fields: {missing}")


def _check_proto(fds: descriptor_pb2.FileDescriptorSet) -> None:
    file = fds.file[-1]
    if file.dependency:
        raise DefinitionError("Import statements are not supported in Protocol Buffer schemas.")
    types = len(file.message_type) + len(file.enum_type)
    if types != 1 or len(file.message_type) != 1:
        raise DefinitionError(
            "A Protocol Buffer schema must define exactly one top-level type, a message; "
            f"found {len(file.message_type)} messages and {len(file.enum_type)} enums.")


async def compile_proto(definition: str) -> bytes:
    """protoc the definition into a serialized FileDescriptorSet; DefinitionError if invalid."""
    with tempfile.TemporaryDirectory(prefix="pubsub-schema-") as tmp:
        path = os.path.join(tmp, _PROTO_FILE)
        out = os.path.join(tmp, "out.pb")
        with open(path, "w", encoding="utf-8") as f:
            f.write(definition)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={tmp}",
            f"--descriptor_set_out={out}", _PROTO_FILE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        _, err = await proc.communicate()
        if proc.returncode != 0:
            detail = err.decode(errors="replace").strip().replace(f"{_PROTO_FILE}:", "")
            raise DefinitionError(f"Invalid Protocol Buffer schema: {detail}")
        with open(out, "rb") as f:
            raw = f.read()
    _check_proto(descriptor_pb2.FileDescriptorSet.FromString(raw))
    return raw


class ValidatorCache:
    """Validators keyed by (type, definition): compiled once, reused by every publish."""

    def __init__(self, size: int = 512) -> None:
        self._size = size
        self._cache: OrderedDict[tuple[int, str], Validator] = OrderedDict()

    def _put(self, key: tuple[int, str], validator: Validator) -> Validator:
        self._cache[key] = validator
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return validator

    def cached(self, schema_type: int, definition: str) -> Validator | None:
        key = (schema_type, definition)
        found = self._cache.get(key)
        if found is not None:
            self._cache.move_to_end(key)
        return found

    async def compile(self, schema_type: int, definition: str) -> tuple[Validator, bytes]:
        """Check a definition and build its validator; returns it with the descriptor set
        (protobuf; b"" for Avro) to store with the revision."""
        if schema_type == AVRO:
            validator = self.cached(schema_type, definition) or AvroValidator(definition)
            return self._put((schema_type, definition), validator), b""
        if schema_type == PROTOCOL_BUFFER:
            raw = await compile_proto(definition)
            return self._put((schema_type, definition), ProtoValidator(raw)), raw
        raise DefinitionError("The schema type must be AVRO or PROTOCOL_BUFFER.")

    def load(self, schema_type: int, definition: str, descriptor_set: bytes) -> Validator:
        """The validator of a stored (already checked) revision."""
        found = self.cached(schema_type, definition)
        if found is not None:
            return found
        validator: Any
        if schema_type == AVRO:
            validator = AvroValidator(definition)
        else:
            validator = ProtoValidator(descriptor_set)
        return self._put((schema_type, definition), validator)
