"""SchemaService and the schema checks of topics and published messages."""

from .registry import SCHEMA_METHODS, SchemaRegistry

__all__ = ["SCHEMA_METHODS", "SchemaRegistry"]
