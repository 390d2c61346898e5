"""Topology files: the projects, topics and subscriptions to have at start.

    projects:
      my-project:
        topics:
          my-topic:
            labels: {team: demo}          # any Topic field, in Google's JSON mapping
            subscriptions:
              subscription-to-my-topic:
                ackDeadlineSeconds: 10     # any Subscription field, in Google's JSON mapping
                pushConfig: {pushEndpoint: "http://127.0.0.1:8081/pubsub/push"}

Applying a topology creates what is missing and leaves what exists alone, so starting again with
the same file changes nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml
from google.protobuf import json_format

from .core.errors import ApiError, Status
from .core.model import Subscription, Topic
from .core.service import PubSubService

log = logging.getLogger("pubsub_emulator.topology")


class TopologyError(ValueError):
    pass


def load(path: str | Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TopologyError(f"cannot read topology {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("projects"), dict):
        raise TopologyError(f"{path}: expected a mapping with a 'projects' mapping")
    return data


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TopologyError(f"{where}: expected a mapping")
    return value


async def apply(service: PubSubService, topology: dict[str, Any]) -> int:
    """Create missing topics and subscriptions; returns how many were created."""
    created = 0
    for project, spec in _mapping(topology["projects"], "projects").items():
        topics = _mapping(_mapping(spec, f"projects.{project}").get("topics"),
                          f"projects.{project}.topics")
        for topic_id, topic_spec in topics.items():
            where = f"projects.{project}.topics.{topic_id}"
            fields = dict(_mapping(topic_spec, where))
            subscriptions = _mapping(fields.pop("subscriptions", None), f"{where}.subscriptions")
            topic = Topic()
            try:
                json_format.ParseDict(fields, topic)
            except json_format.ParseError as exc:
                raise TopologyError(f"{where}: {exc}") from None
            topic.name = f"projects/{project}/topics/{topic_id}"
            created += await _create(service.topics.create_topic, topic, where)
            for sub_id, sub_spec in subscriptions.items():
                sub_where = f"{where}.subscriptions.{sub_id}"
                sub = Subscription()
                try:
                    json_format.ParseDict(_mapping(sub_spec, sub_where), sub)
                except json_format.ParseError as exc:
                    raise TopologyError(f"{sub_where}: {exc}") from None
                sub.name = f"projects/{project}/subscriptions/{sub_id}"
                sub.topic = topic.name
                created += await _create(service.subscriptions.create_subscription, sub,
                                        sub_where)
    return created


async def _create(create: Any, resource: Any, where: str) -> int:
    try:
        await create(resource)
    except ApiError as exc:
        if exc.status is Status.ALREADY_EXISTS:
            return 0
        raise TopologyError(f"{where}: {exc.message}") from None
    return 1
