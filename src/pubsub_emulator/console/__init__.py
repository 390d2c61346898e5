"""The web console at /console/ on the emulator's port (README "Console", docs/console.md).

A static page (static/: HTML, one vanilla script, one style sheet; no framework, no build step)
that does everything Google's API can do through the emulator's own REST API (/v1/..., so IAM
applies by itself under `--auth`), and reads what that API cannot give from a small JSON API
under /console/api/ (api.py: projects, backlog figures and rates, push health, peek).

`Console.public_routes()` are the page's assets (no credential needed: they hold no data);
`Console.routes()` the JSON API (a credential under `--auth`, like every API call).
"""

from __future__ import annotations

from aiohttp import web

from ..core.service import PubSubService
from ..metrics import Metrics
from .api import API_PATH, ConsoleApi
from .assets import CONSOLE_PATH, CONTENT_SECURITY_POLICY, asset_routes
from .overview import PushStats

__all__ = ["API_PATH", "CONSOLE_PATH", "CONTENT_SECURITY_POLICY", "Console"]


class Console:
    """The console of one server."""

    def __init__(self, service: PubSubService, metrics: Metrics | None, push_stats: PushStats,
                 auth: bool = False) -> None:
        """`push_stats`: this process's pushers' figures by subscription (push/dispatcher.py's
        `stats()["subscriptions"]`); `auth`: the server runs with --auth."""
        self.api = ConsoleApi(service, metrics, push_stats, auth)

    def public_routes(self) -> list[web.RouteDef]:
        return asset_routes()

    def routes(self) -> list[web.RouteDef]:
        return self.api.routes()
