"""`oga-npu serve`'s log lines on stderr, like llama-server's: one when a model is ready (in
models.py's loader), and one per request when it is over:

    INFO:     POST /v1/chat/completions 200 0.42 s | tiny-cpu | prompt 25 tokens (20 cached) \
        | completion 12 tokens (length) | TTFT 31 ms | 352.1 tok/s
    INFO:     POST /v1/chat/completions 200 1.03 s | tiny-cpu | prompt 25 tokens (0 cached) \
        | completion 57 tokens (stopped: client gone) | TTFT 30 ms | 60.2 tok/s
    INFO:     POST /v1/chat/completions 400 0.01 s | context_length_exceeded: the request needs ...

`RequestLog` is a plain ASGI middleware: it sees the status a response starts with and
returns only when the whole response (a stream included) has been sent, so a stream's line
comes after its last token. The route's generation and its error reach the line through a
context variable (`generation_done`, `error`), which the request's tasks share.
/health, /metrics and the chat page's files log at DEBUG (pollers and browsers ask often).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import sys
import time

log = logging.getLogger("oga_npu.server")

_current: contextvars.ContextVar[dict | None] = contextvars.ContextVar("oga_npu_request", default=None)
QUIET = ("/health", "/metrics", "/favicon.ico")
CUT_KEY = "oga_npu.cut"  # in a request's scope: conn.py closed it (a stalled body); its line is DEBUG, conn.py counts


def quiet(path: str) -> bool:
    return path in QUIET or path == "/" or path.startswith("/web/")


class RequestLog:
    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rec = {"status": 500, "gen": None, "error": None}
        token = _current.set(rec)
        t0 = time.perf_counter()

        async def send_status(message):
            if message["type"] == "http.response.start":
                rec["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            _current.reset(token)
            line = format_line(
                scope["method"], scope["path"], rec["status"], time.perf_counter() - t0, rec["gen"], rec["error"]
            )
            log.log(logging.DEBUG if quiet(scope["path"]) or CUT_KEY in scope else logging.INFO, "%s", line)


def error(code: str | None, message: str) -> None:
    """The error this request answers with (the line says its code and message)."""
    rec = _current.get()
    if rec is not None:
        rec["error"] = (code, message)


def generation_done(model: str, last, exc: BaseException | None) -> None:
    """Called where a generation ends (its last event, or None; the exception ending it)."""
    rec = _current.get()
    if rec is None:
        return
    if last is not None and last.finish_reason is not None:
        end = last.finish_reason
    elif isinstance(exc, (GeneratorExit, asyncio.CancelledError)):
        end = "stopped: client gone"
    elif exc is not None:
        end = f"stopped: {getattr(exc, 'code', None) or type(exc).__name__}"
    else:
        end = "stopped"
    rec["gen"] = {
        "model": model,
        "end": end,
        "prompt": last.prompt_tokens if last else None,
        "cached": last.cached_tokens if last else None,
        "completion": last.generated_tokens if last else 0,
        "ttft": last.ttft if last else None,
        "tps": last.decode_tps if last else None,
    }


def format_line(
    method: str, path: str, status: int, seconds: float, gen: dict | None, err: tuple[str | None, str] | None
) -> str:
    parts = [f"{method} {path} {status} {seconds:.2f} s"]
    if gen is not None:
        parts.append(gen["model"])
        if gen["prompt"] is not None:
            parts.append(f"prompt {gen['prompt']} tokens ({gen['cached']} cached)")
        parts.append(f"completion {gen['completion']} tokens ({gen['end']})")
        if gen["ttft"] is not None:
            parts.append(f"TTFT {gen['ttft'] * 1000:.0f} ms")
        if gen["tps"]:
            parts.append(f"{gen['tps']:.1f} tok/s")
    if err is not None:
        code, message = err
        message = message if len(message) <= 200 else message[:197] + "..."
        parts.append(f"{code}: {message}" if code else message)
    return " | ".join(parts)


def setup(level: str = "info") -> None:
    """oga_npu's log records to stderr in uvicorn's format ("INFO:     ..."), once."""
    from uvicorn.logging import DefaultFormatter

    logger = logging.getLogger("oga_npu")
    logger.setLevel(level.upper())
    if not any(getattr(h, "_oga_npu_serve", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s"))
        handler._oga_npu_serve = True  # type: ignore[attr-defined]
        logger.addHandler(handler)
    logger.propagate = False
