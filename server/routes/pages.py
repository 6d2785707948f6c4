"""The browser clients: the HTML pages and their static files (server/static/, committed, no build step).

    /                 landing: pick an exam, give a name, start (POST /api/auth/guest, POST /api/sessions)
    /exam/<sid>       the student's exam page; the session link is /exam/<sid>#token=<session token>
    /proctor          the proctor's dashboard (login, live grid, alerts, actions, results)
    /analytics        a template's charts (?template=<id>): score histogram, facility against discrimination
    /static/<path>    the pages' scripts and styles

Pages are not REST endpoints, so they are added to the router directly (`install`, called by create_app) and
stay out of the OpenAPI document. A path that is not a page or a file gets the same JSON 404 as the API.
Every page is served with a Content-Security-Policy that allows only this origin (scripts, styles, fetch and
the WebSockets), so an injected script from anywhere else cannot run in an exam.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from server.api import fail
from server.routes.sessions import SESSION_ID

STATIC = Path(__file__).resolve().parent.parent / "static"

CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain",
}
TEXT = frozenset({".html", ".js", ".css", ".svg", ".txt"})

# 'self' covers this origin's ws:// and wss:// too (CSP level 3); nothing is inline, nothing is fetched elsewhere
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: a redeployed hub's pages reach the next reload
}


def _file(path: Path) -> web.FileResponse:
    kind = CONTENT_TYPES[path.suffix]
    charset = "; charset=utf-8" if path.suffix in TEXT else ""
    return web.FileResponse(path, headers={**HEADERS, "Content-Type": kind + charset})


def _page(name: str) -> web.FileResponse:
    return _file(STATIC / name)


async def landing(request: web.Request) -> web.StreamResponse:
    return _page("index.html")


async def exam(request: web.Request) -> web.StreamResponse:
    if not SESSION_ID.match(request.match_info["sid"]):
        fail(404, "session_not_found", "no such session: a session link is /exam/<32 hex characters>#token=...")
    return _page("exam.html")


async def proctor(request: web.Request) -> web.StreamResponse:
    return _page("proctor.html")


async def analytics(request: web.Request) -> web.StreamResponse:
    return _page("analytics.html")


async def static(request: web.Request) -> web.StreamResponse:
    """A file under server/static/ with a known type; anything else (dot files, folders, paths that climb out,
    unknown types) is a JSON 404."""
    rel = request.match_info["path"]
    parts = rel.split("/")
    if any(not p or p.startswith(".") for p in parts):
        fail(404, "not_found", "no such file")
    path = (STATIC / rel).resolve()
    if not path.is_relative_to(STATIC) or not path.is_file() or path.suffix not in CONTENT_TYPES:
        fail(404, "not_found", "no such file")
    return _file(path)


def install(app: web.Application) -> None:
    app.router.add_get("/", landing)
    app.router.add_get("/exam/{sid}", exam)
    app.router.add_get("/proctor", proctor)
    app.router.add_get("/analytics", analytics)
    app.router.add_get("/static/{path:.+}", static)
