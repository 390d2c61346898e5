"""Topology files: the projects, topics and subscriptions to have at start, and IAM grants.

    groups:                                   # IAM groups, for `group:` members (docs/iam.md)
      group:team@example.com: [serviceAccount:a@my-project.iam.gserviceaccount.com]
    projects:
      my-project:
        iam:                                  # granted on every resource of the project
          bindings:
            - {role: roles/pubsub.admin, members: [group:team@example.com]}
        topics:
          my-topic:
            labels: {team: demo}          # any Topic field, in Google's JSON mapping
            iam: {bindings: [{role: roles/pubsub.publisher, members: [user:me@example.com]}]}
            subscriptions:
              subscription-to-my-topic:
                ackDeadlineSeconds: 10     # any Subscription field, in Google's JSON mapping
                pushConfig: {pushEndpoint: "http://127.0.0.1:8081/pubsub/push"}
                iam: {bindings: [...]}

Applying a topology creates what is missing and leaves what exists alone, so starting again with
the same file changes nothing. IAM grants are added to the policies in the store (what a policy
already grants stays, even when the file no longer lists it); groups live in the memory of each
process that reads the file.
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
from .iam import validation as iam_validation

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


def _list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TopologyError(f"{where}: expected a list")
    return value


def groups_of(topology: dict[str, Any]) -> dict[str, list[str]]:
    """The `groups` mapping, checked: `group:EMAIL` (or EMAIL) -> members."""
    groups: dict[str, list[str]] = {}
    for name, members in _mapping(topology.get("groups"), "groups").items():
        key = name if str(name).startswith("group:") else f"group:{name}"
        where = f"groups.{name}"
        try:
            iam_validation.check_member(key)
            groups[key] = [iam_validation.check_member(str(m)) for m in _list(members, where)]
        except ApiError as exc:
            raise TopologyError(f"{where}: {exc.message}") from None
    return groups


async def _grant(service: PubSubService, resource: str, spec: Any, where: str) -> None:
    """Apply an `iam: {bindings: [{role, members}]}` block to a resource's policy."""
    for i, binding in enumerate(_list(_mapping(spec, where).get("bindings"),
                                      f"{where}.bindings")):
        item = _mapping(binding, f"{where}.bindings[{i}]")
        members = [str(m) for m in _list(item.get("members"), f"{where}.bindings[{i}].members")]
        try:
            await service.policies.grant(resource, str(item.get("role", "")), members)
        except ApiError as exc:
            raise TopologyError(f"{where}.bindings[{i}]: {exc.message}") from None


async def apply(service: PubSubService, topology: dict[str, Any]) -> int:
    """Create missing topics and subscriptions, add the IAM grants, know the groups; returns
    how many resources were created."""
    service.policies.set_groups(groups_of(topology))
    created = 0
    for project, spec in _mapping(topology["projects"], "projects").items():
        spec = _mapping(spec, f"projects.{project}")
        if "iam" in spec:
            await _grant(service, f"projects/{project}", spec["iam"], f"projects.{project}.iam")
        topics = _mapping(spec.get("topics"), f"projects.{project}.topics")
        for topic_id, topic_spec in topics.items():
            created += await _apply_topic(service, project, topic_id, topic_spec)
    return created


async def _apply_topic(service: PubSubService, project: str, topic_id: str,
                       topic_spec: Any) -> int:
    where = f"projects.{project}.topics.{topic_id}"
    fields = dict(_mapping(topic_spec, where))
    subscriptions = _mapping(fields.pop("subscriptions", None), f"{where}.subscriptions")
    grants = fields.pop("iam", None)
    topic = Topic()
    try:
        json_format.ParseDict(fields, topic)
    except json_format.ParseError as exc:
        raise TopologyError(f"{where}: {exc}") from None
    topic.name = f"projects/{project}/topics/{topic_id}"
    created = await _create(service.topics.create_topic, topic, where)
    if grants is not None:
        await _grant(service, topic.name, grants, f"{where}.iam")
    for sub_id, sub_spec in subscriptions.items():
        sub_where = f"{where}.subscriptions.{sub_id}"
        sub_fields = dict(_mapping(sub_spec, sub_where))
        sub_grants = sub_fields.pop("iam", None)
        sub = Subscription()
        try:
            json_format.ParseDict(sub_fields, sub)
        except json_format.ParseError as exc:
            raise TopologyError(f"{sub_where}: {exc}") from None
        sub.name = f"projects/{project}/subscriptions/{sub_id}"
        sub.topic = topic.name
        created += await _create(service.subscriptions.create_subscription, sub, sub_where)
        if sub_grants is not None:
            await _grant(service, sub.name, sub_grants, f"{sub_where}.iam")
    return created


async def _create(create: Any, resource: Any, where: str) -> int:
    try:
        await create(resource)
    except ApiError as exc:
        if exc.status is Status.ALREADY_EXISTS:
            return 0
        raise TopologyError(f"{where}: {exc.message}") from None
    return 1
