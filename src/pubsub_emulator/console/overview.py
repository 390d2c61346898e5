"""What the console shows that Google's API does not give: the projects that hold resources, and
per project the topics and subscriptions the caller may see, with each subscription's backlog
figures (store-wide, as GET /metrics reads them), rates (this process's counters,
rates.py) and push endpoint health.

Under `--auth` a resource is shown only to a caller who may get it (`pubsub.topics.get`,
`pubsub.subscriptions.get`, `pubsub.schemas.get`, on the resource or its project), as IAM
decides for the API (iam/enforce.py); what the caller may not see is left out, never counted.
Without `--auth` (no caller) everything is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from google.protobuf import json_format
from prometheus_client import Counter

from ..core.caller import Caller
from ..core.model import Subscription, Topic
from ..core.push_config import redact_url
from ..core.service import PubSubService
from ..metrics import Metrics
from ..push.ownership import Record, wall_ms
from ..push.pusher import BACKOFF
from ..store import Kind
from .rates import RateMeter

# Resources of a kind one overview lists at most (by name); the page says when there are more.
MAX_LISTED = 1000
SEE = {Kind.TOPIC: "pubsub.topics.get", Kind.SUBSCRIPTION: "pubsub.subscriptions.get",
       Kind.SCHEMA: "pubsub.schemas.get"}
PushStats = Callable[[], Mapping[str, Mapping[str, Any]]]


def counter_values(counter: Counter, kind: Kind) -> dict[str, float]:
    """A per-resource counter of metrics.py by resource name (`projects/P/KIND/ID`)."""
    values: dict[str, float] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                labels = sample.labels
                resource = labels.get("topic") or labels.get("subscription") or ""
                name = f"projects/{labels.get('project', '')}/{kind.value}/{resource}"
                values[name] = values.get(name, 0.0) + sample.value
    return values


def _json(message: Any) -> dict[str, Any]:
    return json_format.MessageToDict(message)


class Overview:
    """The console's figures, read from the store, the metrics and the push dispatcher."""

    def __init__(self, service: PubSubService, metrics: Metrics | None,
                 push_stats: PushStats) -> None:
        self._service = service
        self._metrics = metrics
        self._push_stats = push_stats
        self._publish_rates, self._delivery_rates, self._ack_rates = (
            RateMeter(), RateMeter(), RateMeter())

    async def may(self, who: Caller | None, permission: str, name: str) -> bool:
        """Whether the caller holds `permission` on `name` (no caller: no --auth, yes)."""
        if who is None or who.admin:
            return True
        return await self._service.authorizer.allowed(who, permission, name)

    async def _visible(self, who: Caller | None, kind: Kind, prefix: str
                       ) -> tuple[list[tuple[str, bytes]], bool]:
        """(name, data) of the resources of `kind` under `prefix` the caller may see, and
        whether the list was cut at MAX_LISTED."""
        page = await self._service.store.resources.list_prefixed(kind, prefix, 0, "")
        shown: list[tuple[str, bytes]] = []
        for item in page.items:
            if await self.may(who, SEE[kind], item.name):
                if len(shown) == MAX_LISTED:
                    return shown, True
                shown.append((item.name, item.data))
        return shown, False

    async def projects(self, who: Caller | None) -> list[dict[str, Any]]:
        """Each project holding resources the caller may see, with how many of each kind."""
        counts: dict[str, dict[str, int]] = {}
        for kind in SEE:
            shown, _ = await self._visible(who, kind, "projects/")
            for name, _data in shown:
                project = name.split("/")[1]
                per_kind = counts.setdefault(project, {k.value: 0 for k in SEE})
                per_kind[kind.value] += 1
        return [{"id": project, **counts[project]} for project in sorted(counts)]

    async def project(self, who: Caller | None, project: str) -> dict[str, Any]:
        """The topics and subscriptions of `project` the caller may see, with figures."""
        topics, topics_cut = await self._visible(who, Kind.TOPIC, f"projects/{project}/topics/")
        subs, subs_cut = await self._visible(who, Kind.SUBSCRIPTION,
                                             f"projects/{project}/subscriptions/")
        parsed = [Subscription.FromString(data) for _, data in subs]
        dead_letter_for: dict[str, list[str]] = {}
        for sub in parsed:
            target = sub.dead_letter_policy.dead_letter_topic
            if target:
                dead_letter_for.setdefault(target, []).append(sub.name)
        publish_rates = self._rates(self._publish_rates, "sent_messages", Kind.TOPIC,
                                    [name for name, _ in topics])
        return {
            "project": project,
            "nowMs": self._service.clock(),
            "topics": [{"topic": _json(Topic.FromString(data)),
                        "publishRate": publish_rates.get(name),
                        "deadLetterFor": dead_letter_for.get(name, [])}
                       for name, data in topics],
            "subscriptions": await self._subscriptions(parsed, dead_letter_for),
            "truncated": topics_cut or subs_cut,
        }

    def _rates(self, meter: RateMeter, counter_name: str, kind: Kind, names: list[str]
               ) -> dict[str, float | None]:
        if self._metrics is None:
            return {}
        counts = counter_values(getattr(self._metrics, counter_name), kind)
        return meter.record({name: counts.get(name, 0.0) for name in names})

    async def _subscriptions(self, subs: list[Any], dead_letter_for: Mapping[str, list[str]]
                             ) -> list[dict[str, Any]]:
        names = [sub.name for sub in subs]
        now = self._service.clock()
        stats = await self._service.store.messages.stats(names, now)
        delivery = self._rates(self._delivery_rates, "delivered_messages", Kind.SUBSCRIPTION,
                               names)
        acks = self._rates(self._ack_rates, "acks", Kind.SUBSCRIPTION, names)
        pushers = self._push_stats()
        rows = []
        for sub in subs:
            found = stats.get(sub.name)
            oldest = found.oldest_unacked_ms if found is not None else None
            rows.append({
                "subscription": _json(sub),
                "backlog": found.unacked if found is not None else None,
                "outstanding": found.outstanding if found is not None else None,
                "oldestUnackedAgeSeconds": (max(0.0, (now - oldest) / 1000)
                                            if oldest is not None else None),
                "deliveryRate": delivery.get(sub.name),
                "ackRate": acks.get(sub.name),
                "deadLetterSubscription": sub.topic in dead_letter_for,
                "push": (await self._push_health(sub, pushers.get(sub.name))
                         if sub.push_config.push_endpoint else None),
            })
        return rows

    async def _push_health(self, sub: Any, local: Mapping[str, Any] | None) -> dict[str, Any]:
        """The push endpoint's health: this process's pusher's figures when it pushes the
        subscription; otherwise the state its owner last handed over (push/ownership.py)."""
        # backoffSeconds: the pause between attempts the backoff is at (0: none).
        health: dict[str, Any] = {"endpoint": redact_url(sub.push_config.push_endpoint),
                                  "ownedHere": False, "owner": "", "lastStatus": None,
                                  "lastError": "", "lastAttemptUnix": None, "inBackoff": False,
                                  "backoffSeconds": 0.0, "failures": None, "delivered": None,
                                  "nacked": None, "attempts": None}
        if local is not None:
            health.update(owner=local["owner_id"], lastStatus=local["last_status"],
                          lastError=local["last_error"],
                          lastAttemptUnix=local["last_attempt_unix"] or None,
                          delivered=local["delivered"], nacked=local["nacked"],
                          attempts=local["attempts"])
        if local is not None and local["owner"]:
            health.update(ownedHere=True, inBackoff=local["in_backoff"],
                          backoffSeconds=local["backoff_ms"] / 1000)
            return health
        raw = await self._service.store.resources.get(Kind.PUSH_OWNER, sub.name)
        if raw is not None:
            record = Record.decode(raw)
            failures = record.state.failures
            health.update(owner=record.owner, failures=failures,
                          inBackoff=record.state.not_before_ms > wall_ms(),
                          backoffSeconds=BACKOFF.cap(failures))
        return health
