"""The console's static page (static/: one HTML page, one script, one style sheet; no build step),
and the headers every console response carries.

The assets are public (under `--auth` too): they hold no data, and the page asks for a
credential before it reads anything. The Content-Security-Policy allows scripts, styles and
connections from the emulator's own origin only and no inline script or style, so data shown
on the page can never run as code (the script also only ever sets `textContent`).
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

CONSOLE_PATH = "/console/"
CONTENT_SECURITY_POLICY = ("default-src 'none'; script-src 'self'; style-src 'self'; "
                           "connect-src 'self'; img-src 'self' data:; base-uri 'none'; "
                           "form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
# file name -> content type; only these are served.
ASSETS = {"index.html": "text/html", "console.js": "text/javascript",
          "console.css": "text/css"}


def secured(response: web.StreamResponse) -> web.StreamResponse:
    response.headers.update(SECURITY_HEADERS)
    return response


def read_asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static", name).read_bytes()


def asset_routes() -> list[web.RouteDef]:
    """GET /console/ (the page), its script and style, and /console (a redirect)."""

    def serve(name: str) -> web.RouteDef:
        path = CONSOLE_PATH if name == "index.html" else CONSOLE_PATH + name

        async def handler(_: web.Request) -> web.StreamResponse:
            # Read on each request (small files): an edited page shows on reload.
            return secured(web.Response(body=read_asset(name), charset="utf-8",
                                        content_type=ASSETS[name]))

        return web.get(path, handler)

    async def redirect(_: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(CONSOLE_PATH)

    return [web.get(CONSOLE_PATH.rstrip("/"), redirect), *(serve(name) for name in ASSETS)]
