"""The built-in chat page of `oga-npu serve` (`GET /`): static HTML, CSS and JS in this folder,
no build step, nothing from a CDN. The page talks to the server's own /v1 routes; it holds no
data, so it is served without the API key (the page asks for the key when /v1 answers 401
and keeps it in the browser's localStorage).

A strict Content-Security-Policy goes with every file: only this server's scripts and styles
run, no inline script, no frames; the page builds the model's markdown as DOM nodes and text
(markdown.js), so HTML in an answer is shown, never run - and the policy would block it anyway.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import Response
from starlette.exceptions import HTTPException

DIR = Path(__file__).resolve().parent
FILES = {
    "index.html": "text/html; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "markdown.js": "text/javascript; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "manager.js": "text/javascript; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}


def is_page(path: str) -> bool:
    """The paths served without the API key."""
    return path == "/" or path.startswith("/web/")


def _file(name: str) -> Response:
    return Response((DIR / name).read_bytes(), media_type=FILES[name], headers=HEADERS)


def add_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    async def page():
        return _file("index.html")

    @app.get("/web/{name}", include_in_schema=False)
    async def asset(name: str):
        if name not in FILES:
            raise HTTPException(404)
        return _file(name)
