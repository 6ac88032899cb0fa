"""What `serve` checks before a request reaches a route: body size and depth, Content-Type,
the Host header (DNS rebinding), the API key.

- Bodies: at most `max_bytes` (413 from the Content-Length header before reading, or as
  soon as a chunked body passes it), JSON nested at most MAX_DEPTH levels, every string
  valid UTF-8 (JSON's \\ud800 escapes decode to lone surrogates), numbers finite and integers
  within 64 bits. Each refusal names the field (`param`).
- Host header: only names the server is bound to, loopback names for a loopback bind,
  and --allowed-host (a web page on another name cannot reach a loopback server through
  DNS rebinding).
- Error messages: filesystem paths are cut to their last part (`scrub_paths`); the
  server's URL paths (/api/chat) and the name a client sent stay as they are.

Raises `Refused`; app.py and routes.py turn it into an OpenAI-shaped error (errors.py).
"""

from __future__ import annotations

import json
import math
import re

MAX_DEPTH = 64
MAX_INT = 2**63
DEFAULT_MAX_BODY_MB = 4
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class Refused(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


async def read_body(request, max_bytes: int) -> bytes:
    """The body, refused with 413 past `max_bytes` without reading the rest."""
    too_big = Refused(413, f"the body is larger than {max_bytes / 2**20:g} MB (serve --max-body-mb)", "body_too_large")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise too_big
    from starlette.requests import ClientDisconnect

    parts, n = [], 0
    try:
        async for chunk in request.stream():
            n += len(chunk)
            if n > max_bytes:
                raise too_big
            parts.append(chunk)
    except ClientDisconnect:  # gone mid-body (or cut by serve --header-timeout): no traceback
        raise Refused(499, "the connection closed before the request body ended", "client_closed") from None
    return b"".join(parts)


def is_json_type(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


def parse_json(raw: bytes) -> object:
    """json.loads plus the checks above; Refused(400) naming the field otherwise."""
    try:
        obj = json.loads(raw)
    except RecursionError:
        raise Refused(400, f"the body is nested deeper than {MAX_DEPTH} levels", "too_deep") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise Refused(400, f"the body is not valid JSON: {e}", "invalid_json") from None
    check_values(obj)
    return obj


def _where(path: tuple) -> str | None:
    return ".".join(str(p) for p in path) or None


def check_values(obj: object) -> None:
    """Depth, strings (lone surrogates) and numbers (NaN, Infinity, huge integers) of a
    decoded JSON value, iteratively (no recursion on hostile input)."""
    stack: list[tuple[object, tuple]] = [(obj, ())]
    while stack:
        v, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise Refused(400, f"the body is nested deeper than {MAX_DEPTH} levels", "too_deep", _where(path[:3]))
        if isinstance(v, str):
            _check_str(v, path)
        elif isinstance(v, bool) or v is None:
            continue
        elif isinstance(v, float):
            if not math.isfinite(v):
                p = _where(path)
                raise Refused(400, f"{p or 'the body'}: {v} is not a finite number", "invalid_value", p)
        elif isinstance(v, int):
            if abs(v) >= MAX_INT:
                p = _where(path)
                raise Refused(400, f"{p or 'the body'}: integer out of range (at most 2**63 - 1)", "invalid_value", p)
        elif isinstance(v, dict):
            for k, x in v.items():
                _check_str(k, path)
                stack.append((x, path + (k,)))
        elif isinstance(v, list):
            for i, x in enumerate(v):
                stack.append((x, path + (i,)))


def _check_str(s: str, path: tuple) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        p = _where(path)
        raise Refused(
            400,
            f"{p or 'the body'}: the text is not valid UTF-8 (a lone surrogate such as \\ud800)",
            "invalid_value",
            p,
        ) from None


# ---------------------------------------------------------------- Host header


def _host_name(header: str) -> str:
    h = header.strip().lower()
    if h.startswith("["):  # [::1]:8000
        return h[1 : h.find("]")] if "]" in h else h
    if h.count(":") == 1:
        return h.split(":", 1)[0]
    return h


def allowed_hosts(bind: str, extra: list[str] | tuple[str, ...] = ()) -> set[str] | None:
    """Host names a request may carry; None = any (a wildcard bind without --allowed-host)."""
    extra = [e.strip().lower() for e in extra if e.strip()]
    if "*" in extra:
        return None
    bind = bind.strip("[]").lower()
    if bind in ("0.0.0.0", "::", ""):
        return (set(LOOPBACK_NAMES) | set(extra)) if extra else None
    names = {bind, *extra}
    if bind in LOOPBACK_NAMES or bind.startswith("127."):
        names |= set(LOOPBACK_NAMES)
    return names


def host_ok(header: str | None, names: set[str] | None) -> bool:
    if names is None:
        return True
    if not header:
        return False
    return _host_name(header) in names


# ---------------------------------------------------------------- paths out of messages

# The server's own URL roots: "/api/chat" or "/v1/models" in a message is an endpoint to
# name in full, not a file of the machine.
URL_ROOTS = ("v1", "api")
_PATH = re.compile(
    r"(?<![\w.:/])(?:[A-Za-z]:[\\/]|/(?!(?:" + "|".join(URL_ROOTS) + r")/))(?:[^\s'\"\\/:]+[\\/])+([^\s'\",;)\\/]*)"
)


_known: dict[str, str] = {}


def known_path(path, name: str) -> None:
    """A folder the server serves: its path (spaces and all) reads as `name` in errors."""
    from pathlib import Path

    for p in {str(path), str(Path(path).resolve())}:
        _known[p] = name


def scrub_paths(text: str, keep: tuple[str, ...] = ()) -> str:
    """'/home/u/models/tiny/model.onnx' -> 'model.onnx': no filesystem layout in errors. The
    server's URL paths stay, and so does what the client sent (`keep`, quoted as '...' in
    the message): a model named by a path reads as the name the client gave."""
    quoted = sorted({f"'{k}'" for k in keep if k}, key=len, reverse=True)
    if not quoted:
        return _scrub(text)
    pieces = re.split("(" + "|".join(map(re.escape, quoted)) + ")", text)
    return "".join(p if i % 2 else _scrub(p) for i, p in enumerate(pieces))


def _scrub(text: str) -> str:
    for p in sorted(_known, key=len, reverse=True):
        text = text.replace(p, _known[p])
    return _PATH.sub(lambda m: m.group(1) or "<path>", text)
