"""SchemaService and schema validation of published messages.

`SchemaRegistry` serves the google.pubsub.v1.SchemaService RPCs (its methods take and return the
request/response protos, raising ApiError like the rest of the core) and checks topics' schema
settings and published messages against them.

A schema is stored as one resource (kind "schemas") holding all its revisions, oldest first, as
JSON. Deleted revisions stay as tombstones so a topic's revision range keeps its bounds (Google
keeps accepting messages matching the revisions left between a deleted first/last revision).
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf import empty_pb2
from google.pubsub_v1 import types as t
from google.rpc import error_details_pb2

from ..core import names
from ..core.catalog import compare_and_set, page_size
from ..core.errors import (
    ApiError,
    Status,
    already_exists,
    failed_precondition,
    invalid_argument,
    not_found,
)
from ..store import InvalidPageToken, Kind, ResourceTable
from .validation import (
    AVRO,
    BINARY,
    JSON,
    PROTOCOL_BUFFER,
    DefinitionError,
    MessageError,
    Validator,
    ValidatorCache,
)

SCHEMA_METHODS = (
    "CreateSchema", "GetSchema", "ListSchemas", "ListSchemaRevisions", "CommitSchema",
    "RollbackSchema", "DeleteSchemaRevision", "DeleteSchema", "ValidateSchema",
    "ValidateMessage",
)

Schema = t.Schema.pb()
DELETED_SCHEMA = "_deleted-schema_"
BASIC, FULL = 1, 2  # google.pubsub.v1.SchemaView
MAX_DEFINITION_BYTES = 300 * 1000  # "The schema definition field cannot exceed 300 KB"
_ENCODING_NAMES = {JSON: "JSON", BINARY: "BINARY"}
_TYPE_NAMES = {AVRO: "AVRO", PROTOCOL_BUFFER: "PROTO"}

# Attributes Google adds to each message published to a topic with a schema.
ATTR_SCHEMA_NAME = "googclient_schemaname"
ATTR_SCHEMA_ENCODING = "googclient_schemaencoding"
ATTR_SCHEMA_REVISION = "googclient_schemarevisionid"


@dataclass
class Revision:
    id: str
    type: int
    definition: str
    create_ms: int
    descriptor: bytes = b""  # compiled FileDescriptorSet (protobuf schemas)
    deleted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "definition": self.definition,
                "create_ms": self.create_ms,
                "descriptor": base64.b64encode(self.descriptor).decode(),
                "deleted": self.deleted}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Revision:
        return cls(d["id"], d["type"], d["definition"], d["create_ms"],
                   base64.b64decode(d["descriptor"]), d["deleted"])

    def proto(self, name: str, view: int = FULL) -> Any:
        schema = Schema(name=name, type_=self.type, revision_id=self.id)
        if view != BASIC:
            schema.definition = self.definition
        schema.revision_create_time.FromMilliseconds(self.create_ms)
        return schema


def _dump(revisions: list[Revision]) -> bytes:
    return json.dumps({"revisions": [r.to_json() for r in revisions]}).encode()


def _parse(raw: bytes) -> list[Revision]:
    return [Revision.from_json(d) for d in json.loads(raw)["revisions"]]


def _live(revisions: list[Revision]) -> list[Revision]:
    return [r for r in revisions if not r.deleted]


def _split_revision(name: str) -> tuple[str, str]:
    """projects/p/schemas/s[@revision] -> (schema name, revision id or "")."""
    schema, _, revision = name.partition("@")
    names.parse(schema, Kind.SCHEMA)
    return schema, revision


def _schema_id(name: str) -> str:
    return name.rsplit("/", 1)[-1]


def _validation_failure(schema_name: str, revision_id: str, schema_type: int, encoding: int,
                        detail: str) -> ApiError:
    """Google's answer to a message that matches no allowed revision."""
    reason = f"INVALID_{_ENCODING_NAMES.get(encoding, 'JSON')}_" \
             f"{'AVRO' if schema_type == AVRO else 'PROTO'}_MESSAGE"
    info = error_details_pb2.ErrorInfo(
        reason=reason, domain="pubsub.googleapis.com",
        metadata={"message": "Message failed schema validation",
                  "revisionInfo": (
                      f"Could not validate message with any schema revision for schema: "
                      f"{schema_name}, last checked revision: revision_id={revision_id} failed "
                      f"with status: {detail}")})
    return ApiError(Status.INVALID_ARGUMENT,
                    "Invalid data in message: Message failed schema validation.", [info])


class SchemaRegistry:
    def __init__(self, table: ResourceTable, clock: Callable[[], int],
                 drop_attached: Callable[[str], Awaitable[None]]) -> None:
        """`drop_attached(name)`: removes what a deleted schema leaves (its IAM policy) and
        tells the caches (core/catalog.py)."""
        self._table = table
        self._drop_attached = drop_attached
        self.clock = clock
        self.validators = ValidatorCache()
        self._revisions: dict[str, list[Revision]] = {}  # schema name -> revisions (cache)

    # --- storage ---------------------------------------------------------------------------
    async def _load(self, name: str) -> list[Revision] | None:
        cached = self._revisions.get(name)
        if cached is None:
            raw = await self._table.get(Kind.SCHEMA, name)
            if raw is None:
                return None
            cached = self._revisions[name] = _parse(raw)
        return cached

    def forget(self, name: str) -> None:
        """Drop the cached revisions of a schema (another process changed it)."""
        self._revisions.pop(name, None)

    async def _get(self, name: str) -> list[Revision]:
        revisions = await self._load(name)
        if revisions is None:
            raise not_found(_schema_id(name))
        return revisions

    async def _rewrite(self, name: str,
                       change: Callable[[list[Revision]], tuple[list[Revision], Any]]) -> Any:
        """Apply `change` (revisions -> (new revisions, result)) by compare-and-set: revisions
        another call or process added meanwhile are read again, never overwritten."""

        async def apply(raw: bytes) -> tuple[bytes, tuple[list[Revision], Any]]:
            revisions, result = change(_parse(raw))
            return _dump(revisions), (revisions, result)

        try:
            revisions, result = await compare_and_set(self._table, Kind.SCHEMA, name,
                                                      _schema_id(name), apply)
        except ApiError as exc:
            if exc.status is Status.NOT_FOUND:
                self._revisions.pop(name, None)
            raise
        self._revisions[name] = revisions
        return result

    def _new_revision_id(self, revisions: list[Revision]) -> str:
        taken = {r.id for r in revisions}
        while True:
            rid = secrets.token_hex(4)  # Google's ids: eight hex characters, e.g. "0a0b0c0d"
            if rid not in taken:
                return rid

    def _validator(self, revision: Revision) -> Validator:
        return self.validators.load(revision.type, revision.definition, revision.descriptor)

    async def _compile(self, schema: Any) -> tuple[Validator, bytes]:
        if schema.type_ not in (AVRO, PROTOCOL_BUFFER):
            raise invalid_argument("The schema type must be AVRO or PROTOCOL_BUFFER.")
        if not schema.definition:
            raise invalid_argument("The schema definition must not be empty.")
        if len(schema.definition.encode()) > MAX_DEFINITION_BYTES:
            raise invalid_argument(
                f"The schema definition is larger than the maximum of {MAX_DEFINITION_BYTES} "
                f"bytes.")
        try:
            return await self.validators.compile(schema.type_, schema.definition)
        except DefinitionError as e:
            raise invalid_argument(f"Invalid schema definition: {e}") from None

    # --- SchemaService ---------------------------------------------------------------------
    async def create_schema(self, request: Any) -> Any:
        project = names.parse_project(request.parent)
        schema_id = request.schema_id or _schema_id(request.schema.name)
        name = f"projects/{project}/schemas/{schema_id}"
        names.parse(name, Kind.SCHEMA)
        if request.schema.name and request.schema.name != name:
            raise invalid_argument(
                f"The schema name {request.schema.name!r} does not match the parent and "
                f"schema_id ({name!r}).")
        if await self._load(name) is not None:
            raise already_exists(schema_id)
        _, descriptor = await self._compile(request.schema)
        revision = Revision(self._new_revision_id([]), request.schema.type_,
                            request.schema.definition, self.clock(), descriptor)
        if not await self._table.create(Kind.SCHEMA, name, _dump([revision])):
            raise already_exists(schema_id)
        self._revisions[name] = [revision]
        return revision.proto(name)

    async def get_schema(self, request: Any) -> Any:
        name, revision_id = _split_revision(request.name)
        revisions = _live(await self._get(name))
        view = request.view or FULL
        if revision_id:
            for revision in revisions:
                if revision.id == revision_id:
                    return revision.proto(name, view)
            raise not_found(f"{_schema_id(name)}@{revision_id}")
        return revisions[-1].proto(name, view)

    async def list_schemas(self, request: Any) -> Any:
        project = names.parse_project(request.parent)
        try:
            page = await self._table.list_prefixed(Kind.SCHEMA, f"projects/{project}/schemas/",
                                                   page_size(request.page_size),
                                                   request.page_token)
        except InvalidPageToken:
            raise invalid_argument("The page_token is invalid.") from None
        view = request.view or BASIC
        return t.ListSchemasResponse.pb()(
            schemas=[_live(_parse(raw))[-1].proto(name, view) for name, raw in page.items],
            next_page_token=page.next_token)

    async def list_schema_revisions(self, request: Any) -> Any:
        name, _ = _split_revision(request.name)
        newest_first = list(reversed(_live(await self._get(name))))
        start = 0
        if request.page_token:
            ids = [r.id for r in newest_first]
            try:
                start = ids.index(base64.urlsafe_b64decode(request.page_token).decode()) + 1
            except (ValueError, UnicodeDecodeError):
                raise invalid_argument("The page_token is invalid.") from None
        size = page_size(request.page_size)
        chosen = newest_first[start:start + size]
        token = ""
        if start + size < len(newest_first):
            token = base64.urlsafe_b64encode(chosen[-1].id.encode()).decode()
        view = request.view or BASIC
        return t.ListSchemaRevisionsResponse.pb()(
            schemas=[r.proto(name, view) for r in chosen], next_page_token=token)

    def _appended(self, name: str, revisions: list[Revision], schema_type: int,
                  definition: str, descriptor: bytes) -> tuple[list[Revision], Any]:
        revision = Revision(self._new_revision_id(revisions), schema_type, definition,
                            self.clock(), descriptor)
        return [*revisions, revision], revision.proto(name)

    async def commit_schema(self, request: Any) -> Any:
        name, _ = _split_revision(request.name)
        latest = _live(await self._get(name))[-1]  # (a schema's type never changes)
        if request.schema.type_ != latest.type:
            raise invalid_argument(
                f"The schema type of a new revision must be the schema's type "
                f"({_TYPE_NAMES[latest.type]}).")
        _, descriptor = await self._compile(request.schema)

        def commit(revisions: list[Revision]) -> tuple[list[Revision], Any]:
            return self._appended(name, revisions, request.schema.type_,
                                  request.schema.definition, descriptor)

        return await self._rewrite(name, commit)

    async def rollback_schema(self, request: Any) -> Any:
        name, _ = _split_revision(request.name)
        if not request.revision_id:
            raise invalid_argument("The revision_id must be set.")

        def rollback(revisions: list[Revision]) -> tuple[list[Revision], Any]:
            for revision in _live(revisions):
                if revision.id == request.revision_id:
                    return self._appended(name, revisions, revision.type, revision.definition,
                                          revision.descriptor)
            raise not_found(f"{_schema_id(name)}@{request.revision_id}")

        return await self._rewrite(name, rollback)

    async def delete_schema_revision(self, request: Any) -> Any:
        name, revision_id = _split_revision(request.name)
        revision_id = revision_id or request.revision_id
        if not revision_id:
            raise invalid_argument(
                "The name must include the revision id to delete "
                "(projects/{project}/schemas/{schema}@{revision}).")

        def delete(revisions: list[Revision]) -> tuple[list[Revision], Any]:
            live = _live(revisions)
            for index, revision in enumerate(revisions):
                if revision.id == revision_id and not revision.deleted:
                    if len(live) == 1:
                        raise failed_precondition(
                            "Cannot delete the only revision of a schema; delete the schema "
                            "instead.")
                    updated = list(revisions)
                    updated[index] = Revision(revision.id, revision.type, "",
                                              revision.create_ms, deleted=True)
                    return updated, revision.proto(name)
            raise not_found(f"{_schema_id(name)}@{revision_id}")

        return await self._rewrite(name, delete)

    async def delete_schema(self, request: Any) -> Any:
        name, _ = _split_revision(request.name)
        await self._get(name)
        # Google keeps the topics, their schema_settings.schema saying "_deleted-schema_".
        for topic_name, raw in (await self._table.list_prefixed(Kind.TOPIC, "", 0, "")).items:
            topic = t.Topic.pb().FromString(raw)
            if topic.schema_settings.schema == name:
                topic.schema_settings.schema = DELETED_SCHEMA
                await self._table.update(Kind.TOPIC, topic_name, topic.SerializeToString())
        await self._table.delete(Kind.SCHEMA, name)
        await self._drop_attached(name)  # its IAM policy goes with it
        self._revisions.pop(name, None)
        return empty_pb2.Empty()

    async def validate_schema(self, request: Any) -> Any:
        names.parse_project(request.parent)
        await self._compile(request.schema)
        return t.ValidateSchemaResponse.pb()()

    async def validate_message(self, request: Any) -> Any:
        names.parse_project(request.parent)
        if request.encoding not in (JSON, BINARY):
            raise invalid_argument("The encoding must be JSON or BINARY.")
        which = request.WhichOneof("schema_spec")
        if which == "name":
            name, revision_id = _split_revision(request.name)
            live = _live(await self._get(name))
            revision = live[-1]
            if revision_id:
                matching = [r for r in live if r.id == revision_id]
                if not matching:
                    raise not_found(f"{_schema_id(name)}@{revision_id}")
                revision = matching[0]
            validator, schema_type, revision_id = (self._validator(revision), revision.type,
                                                   revision.id)
        elif which == "schema":
            validator, _ = await self._compile(request.schema)
            schema_type, name, revision_id = request.schema.type_, "", ""
        else:
            raise invalid_argument("Either the schema name or a schema must be given.")
        try:
            validator.validate(request.message, request.encoding)
        except MessageError as e:
            raise _validation_failure(name, revision_id, schema_type, request.encoding,
                                      str(e)) from None
        return t.ValidateMessageResponse.pb()()

    # --- topics ----------------------------------------------------------------------------
    async def check_topic_settings(self, topic: Any) -> None:
        """Validate a topic's schema_settings (schema exists, encoding, revision range)."""
        if not topic.HasField("schema_settings"):
            return
        settings = topic.schema_settings
        if settings.schema == DELETED_SCHEMA:
            return  # as Google leaves it after DeleteSchema
        if not settings.schema:
            raise invalid_argument("The schema_settings.schema must be set.")
        try:
            names.parse(settings.schema, Kind.SCHEMA)
        except ApiError:
            raise invalid_argument(
                f"Invalid schema name in schema_settings: {settings.schema!r}.") from None
        revisions = await self._get(settings.schema)
        if settings.encoding not in (JSON, BINARY):
            raise invalid_argument("The schema_settings.encoding must be JSON or BINARY.")
        positions = {r.id: i for i, r in enumerate(revisions)}
        for field in ("first_revision_id", "last_revision_id"):
            rid = getattr(settings, field)
            if rid and rid not in positions:
                raise invalid_argument(
                    f"The schema_settings.{field} {rid!r} is not a revision of schema "
                    f"{settings.schema}.")
        if (settings.first_revision_id and settings.last_revision_id
                and positions[settings.first_revision_id]
                > positions[settings.last_revision_id]):
            raise invalid_argument(
                "The schema_settings.first_revision_id must not be newer than "
                "last_revision_id.")

    def _allowed(self, settings: Any, revisions: list[Revision]) -> list[Revision]:
        """The revisions a topic's messages may match, newest first."""
        ids = [r.id for r in revisions]
        first, last = 0, len(revisions) - 1
        if settings.first_revision_id in ids:
            first = ids.index(settings.first_revision_id)
        if settings.last_revision_id in ids:
            last = ids.index(settings.last_revision_id)
        return [r for r in reversed(revisions[first:last + 1]) if not r.deleted]

    async def validate_messages(self, topic: Any, messages: Sequence[Any]) -> list[bytes] | None:
        """Raise INVALID_ARGUMENT unless every message matches the topic's schema.

        Adds Google's googclient_schema* attributes to each message and returns the messages
        serialized again (None when the topic's schema is gone and nothing was checked).
        """
        settings = topic.schema_settings
        if settings.schema == DELETED_SCHEMA or not settings.schema:
            return None
        revisions = await self._load(settings.schema)
        if revisions is None:
            return None
        allowed = self._allowed(settings, revisions)
        encoding = settings.encoding
        raws = []
        for message in messages:
            matched, detail, checked = None, "no revision in the allowed range", ""
            for revision in allowed:
                checked = revision.id
                try:
                    self._validator(revision).validate(message.data, encoding)
                except MessageError as e:
                    detail = str(e)
                    continue
                matched = revision
                break
            if matched is None:
                raise _validation_failure(settings.schema, checked, revisions[-1].type,
                                          encoding, detail)
            message.attributes[ATTR_SCHEMA_NAME] = settings.schema
            message.attributes[ATTR_SCHEMA_ENCODING] = _ENCODING_NAMES[encoding]
            message.attributes[ATTR_SCHEMA_REVISION] = matched.id
            raws.append(message.SerializeToString())
        return raws
