"""Resource names as Cloud Pub/Sub spells and validates them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..store import Kind
from .errors import invalid_name

# Topic, subscription and snapshot ids: 3-255 characters, starting with a letter, of letters,
# digits and - _ . ~ + %, not starting with "goog" (Google reserves that prefix).
_ID = re.compile(r"[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}")
_PROJECT = re.compile(r"[^/\s]{1,100}")

DELETED_TOPIC = "_deleted-topic_"


@dataclass(frozen=True)
class ResourceName:
    project: str
    kind: Kind
    id: str

    def __str__(self) -> str:
        return f"projects/{self.project}/{self.kind.value}/{self.id}"


def parse(name: str, kind: Kind) -> ResourceName:
    """Parse and validate projects/{project}/{kind}/{id}; INVALID_ARGUMENT otherwise."""
    parts = name.split("/")
    if (len(parts) != 4 or parts[0] != "projects" or parts[2] != kind.value
            or not _PROJECT.fullmatch(parts[1]) or not _ID.fullmatch(parts[3])
            or parts[3].lower().startswith("goog")):
        raise invalid_name(kind.value, name)
    return ResourceName(parts[1], kind, parts[3])


def parse_project(name: str) -> str:
    """Parse projects/{project} and return the project id."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "projects" or not _PROJECT.fullmatch(parts[1]):
        raise invalid_name("projects", name)
    return parts[1]


def topic(name: str) -> ResourceName:
    return parse(name, Kind.TOPIC)


def subscription(name: str) -> ResourceName:
    return parse(name, Kind.SUBSCRIPTION)


def snapshot(name: str) -> ResourceName:
    return parse(name, Kind.SNAPSHOT)
