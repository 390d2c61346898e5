"""SchemaService and schema validation of published messages.

`SchemaRegistry` serves the google.pubsub.v1.SchemaService RPCs (its methods take and return the
request/response protos, raising ApiError like the rest of the core) and checks topics' schema
settings and published messages against them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ._errors import unimplemented
from ._store import Store

SCHEMA_METHODS = (
    "CreateSchema", "GetSchema", "ListSchemas", "ListSchemaRevisions", "CommitSchema",
    "RollbackSchema", "DeleteSchemaRevision", "DeleteSchema", "ValidateSchema",
    "ValidateMessage",
)


class SchemaRegistry:
    def __init__(self, store: Store, clock: Callable[[], int]) -> None:
        self.store = store
        self.clock = clock

    def check_topic_settings(self, topic: Any) -> None:
        """Validate a topic's schema_settings (schema exists, encoding, revision range)."""
        if topic.HasField("schema_settings"):
            raise unimplemented("Topics with schema settings are")

    def validate_messages(self, topic: Any, messages: Sequence[Any]) -> None:
        """Raise INVALID_ARGUMENT unless every message matches the topic's schema."""

    async def _unimplemented(self, request: Any) -> Any:
        raise unimplemented("SchemaService")

    create_schema = get_schema = list_schemas = list_schema_revisions = _unimplemented
    commit_schema = rollback_schema = delete_schema_revision = delete_schema = _unimplemented
    validate_schema = validate_message = _unimplemented
