"""create_app(): the FastAPI app around one `ServerState`: the door (Host header, API key),
CORS when asked, OpenAI-shaped errors, the routes, the chat page, the request log."""

from __future__ import annotations

import hmac
import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from . import log as serverlog
from . import manage, ollama, pull, routes, web
from .errors import ApiError
from .http import DEFAULT_MAX_BODY_MB, allowed_hosts, host_ok
from .state import ServerState

log = logging.getLogger("oga_npu.server")

DEFAULT_STREAM_INTERVAL_MS = 30
# Paths answered without the API key: health, and the chat page and its static files
# (they hold no data; the page sends the key with its requests).
PUBLIC_PATHS = ("/health", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/web/",)  # the chat page's files (web/): no data in them


def create_app(
    provider,
    api_key: str | None = None,
    stream_interval_ms: float = DEFAULT_STREAM_INTERVAL_MS,
    *,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
    metrics_key: str | None = None,
    host: str = "127.0.0.1",
    allowed_host: tuple[str, ...] | list[str] = (),
    cors_origin: tuple[str, ...] | list[str] = (),
):
    """The FastAPI app. With `api_key` every route but /health and the chat page needs it
    (/metrics takes `metrics_key` too); the Host header must name `host` or an
    `allowed_host` (DNS rebinding); CORS only for `cors_origin`."""
    for name, key in (("--api-key", api_key), ("--metrics-key", metrics_key)):
        if key is not None and not key.strip():
            raise ValueError(f"{name} is empty: give a key, or leave the option out")
    st = ServerState(
        provider,
        api_key=api_key,
        metrics_key=metrics_key,
        hosts=allowed_hosts(host, list(allowed_host)),
        max_body=int(max_body_mb * 2**20),
        stream_interval=max(0.0, stream_interval_ms) / 1000,
    )
    app = FastAPI(title="oga-npu", docs_url=None, redoc_url=None)
    app.state.server = st
    app.middleware("http")(guard)
    if cors_origin:  # added after the guard, so it runs first: preflights need no key
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(cors_origin),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    for exc, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(exc, handler)
    app.include_router(routes.router)
    app.include_router(pull.router)  # /api/pull, /api/v1/pull, /api/v1/catalog (pull.py)
    app.include_router(ollama.router)  # Ollama's /api/* (ollama.py): a translation, same path
    app.include_router(manage.router)  # deleting a store model: /api/v1/delete, Ollama's /api/delete
    web.add_routes(app)  # GET / (the chat page) and /web/*, no key: they hold no data
    app.add_middleware(serverlog.RequestLog)  # added last: the outermost layer, sees every response
    return app


def error_response(e: ApiError, path: str = "") -> JSONResponse:
    """The OpenAI shape, or Ollama's `{"error": "..."}` on Ollama's routes."""
    serverlog.error(e.code, e.message)
    body = ollama.ollama_body(e) if ollama.is_ollama_path(path) else e.body()
    return JSONResponse(body, status_code=e.status, headers=e.headers)


def key_ok(headers, *keys: str | None) -> bool:
    auth = headers.get("authorization", "")
    given = (auth[7:].strip() if auth.lower().startswith("bearer ") else "").encode()
    return any(k is not None and hmac.compare_digest(given, k.encode()) for k in keys)


def door(st: ServerState, request: Request) -> ApiError | None:
    """Host, then key: the refusal for this request, or None."""
    path = request.url.path
    if not host_ok(request.headers.get("host"), st.hosts):
        return ApiError(
            400,
            "the Host header names a host this server does not answer for (serve --allowed-host NAME adds one)",
            code="invalid_host",
        )
    if request.method == "OPTIONS" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
        return None
    if path == "/metrics" and st.metrics_key is not None:
        if not key_ok(request.headers, st.metrics_key, st.api_key):
            return ApiError(
                401,
                "missing or wrong metrics key (Authorization: Bearer KEY)",
                type_="authentication_error",
                code="invalid_api_key",
            )
    elif st.api_key is not None and not key_ok(request.headers, st.api_key):
        return ApiError(
            401,
            "missing or wrong API key (Authorization: Bearer KEY)",
            type_="authentication_error",
            code="invalid_api_key",
        )
    return None


async def guard(request: Request, call_next):
    """The door before every route; every answer counted in the metrics."""
    st: ServerState = request.app.state.server
    refused = door(st, request)
    response = error_response(refused, request.url.path) if refused is not None else await call_next(request)
    st.metrics.count_request(request.url.path, response.status_code)
    return response


async def api_error(request, e: ApiError):
    return error_response(e, request.url.path)


async def invalid(request, e: RequestValidationError):
    return error_response(
        ApiError(400, str(e.errors()[0].get("msg", "invalid request")), code="invalid_value"), request.url.path
    )


async def not_found(request, _e):
    return error_response(ApiError(404, "no such route", type_="not_found_error", code="not_found"), request.url.path)


async def bad_method(request, _e):
    return error_response(ApiError(405, "method not allowed", code="method_not_allowed"), request.url.path)


async def crashed(_request, e: Exception):
    log.exception("request failed")
    return error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}", type_="server_error"))


ERROR_HANDLERS = {
    ApiError: api_error,
    RequestValidationError: invalid,
    404: not_found,
    405: bad_method,
    Exception: crashed,
}
