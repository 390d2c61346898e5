"""The operator's endpoints on the one port: `GET /metrics`, `GET /readyz`, `POST /reset`
(README "Metrics, readiness and reset").

- `/metrics`: Prometheus' text format (metrics.py). Open without `--auth`; under `--auth` an
  administrator's credential is needed, unless `--metrics-open` (a Prometheus server cannot
  mint the short-lived tokens the emulator accepts: keep the port on a trusted network then).
- `/readyz`: 200 once the store is open and the topology file applied, 503 before (`/healthz`
  stays liveness: 200 as soon as the port answers). API calls made before are held, not
  refused: they are served once the topology is in place (the 503's `held_calls` counts them).
- `/reset` (`?project=P` for one project): deletes every topic, subscription, snapshot and
  schema, with their messages (core/reset.py); 200 with how many of each went. Under `--auth`
  an administrator's only.
"""

from __future__ import annotations

from aiohttp import web

from .api.rest import error_response
from .core.errors import ApiError, Status
from .core.service import PubSubService
from .metrics import Metrics

METRICS_PATH = "/metrics"
READY_PATH = "/readyz"
RESET_PATH = "/reset"


class Ops:
    """The endpoints of one server, and whether it is ready."""

    def __init__(self, service: PubSubService, metrics: Metrics) -> None:
        self._service = service
        self._metrics = metrics
        self.ready = False
        self.reason = "applying the topology file"

    def set_ready(self) -> None:
        self.ready, self.reason = True, ""
        self._metrics.set_ready(True)

    def routes(self) -> list[web.RouteDef]:
        return [web.get(METRICS_PATH, self.metrics), web.get(READY_PATH, self.readyz),
                web.post(RESET_PATH, self.reset)]

    async def metrics(self, _: web.Request) -> web.Response:
        body, content_type = await self._metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def readyz(self, _: web.Request) -> web.Response:
        if self.ready:
            return web.json_response({"ready": True})
        return web.json_response({"ready": False, "reason": self.reason,
                                  "held_calls": self._service.held}, status=503)

    async def reset(self, http: web.Request) -> web.Response:
        if not self.ready:
            return error_response(ApiError(Status.UNAVAILABLE,
                                           f"Not ready: {self.reason}; try again."))
        project = http.query.get("project")
        try:
            deleted = await self._service.reset(project)  # (None: every project)
        except ApiError as exc:
            return error_response(exc)
        return web.json_response({"deleted": deleted})
