"""`oga-npu serve`: an OpenAI-compatible HTTP server over `stream_generate`.

A thin layer: a route validates the body (pydantic models below), turns it into a prompt
and `GenerationOptions`, and turns `GenerationEvent`s into OpenAI objects or SSE chunks.
Beside the routes, small objects do the rest:

- `ServedModel`: one loaded model = one device. Its requests run one at a time in arrival
  order (`DeviceQueue`: an asyncio FIFO lock; past `max_queue` waiting requests the answer
  is 503 with Retry-After). Generation runs in its one worker thread, which runs the decode
  loop and hands each token to the event loop; a stream whose client went away stops within
  one token and the next request starts at once. Chat templates and tokenizing run in a
  second thread, so a request is checked and queued while another one generates. Its
  `PromptCache` (kvcache.py) keeps the last conversation's KV cache.
- `Metrics`: Prometheus counters and histograms (prometheus-client, own registry).
- The chat page at `/` (oga_npu/web, static files, no key) and the log lines: a model is
  ready, one line per request (serverlog.py).
- The model provider is injected (`create_app(provider)`): `FolderProvider` loads model
  folders in the background (/health says 503 until they are ready); tests may pass any
  object with `.ready`, `.error`, `.models` (id -> ServedModel).

Unsupported request features are refused with 400 ("... is not supported"), never
ignored silently; README.md has the table.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import ChatTemplateError, ContextLengthError, GenerationError, GuidanceError, OgaNpuError
from .httpguard import (DEFAULT_MAX_BODY_MB, Refused, allowed_hosts, host_ok, is_json_type, known_path, parse_json,
                        read_body, scrub_paths)
from .generate import (GenerationEvent, GenerationOptions, check_fits, encode_chat, encode_raw, resolve_options,
                       stream_generate)
from .kvcache import PromptCache, reuse_support
from . import serverlog, web

log = logging.getLogger("oga_npu.server")

DEFAULT_MAX_QUEUE = 16
# max_tokens when a request gives none: the rest of the context, at most this (the KV cache
# is sized by prompt + max_tokens; a 128k-context model would otherwise allocate all of it)
DEFAULT_MAX_TOKENS = 4096
RETRY_AFTER_S = 2
INT32 = 2**31 - 1          # the largest count or id any numeric field takes
# Paths answered without the API key: health, and the chat page and its static files
# (they hold no data; the page sends the key with its requests).
PUBLIC_PATHS = ("/health", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/web/",)   # the chat page's files (oga_npu/web): no data in them


# ---------------------------------------------------------------- request models

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ToolCallFunction(BaseModel):
    name: str
    arguments: str

    @field_validator("arguments")
    @classmethod
    def _json_arguments(cls, v: str) -> str:
        if v.strip():
            try:
                json.loads(v)
            except (ValueError, RecursionError):
                raise ValueError("the tool call's arguments must be a JSON string (e.g. '{\"x\": 1}')") from None
        return v


class ToolCall(BaseModel):
    id: str | None = None
    type: Literal["function"] = "function"
    function: ToolCallFunction


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        if self.content is None and self.tool_calls:
            return json.dumps([{"name": c.function.name, "arguments": json.loads(c.function.arguments or "{}")}
                               for c in self.tool_calls])
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: bool = False


class JsonSchemaSpec(_Strict):
    name: str = "response"
    description: str | None = None
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class FunctionDef(_Strict):
    name: str
    description: str | None = None
    parameters: dict = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: dict


class _Sampling(_Strict):
    """Fields both routes share. Accepted only at their no-op value: n, presence_penalty,
    frequency_penalty, logprobs (400 otherwise). Accepted and ignored: user."""

    model: str
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=INT32)        # extension (llama.cpp, vLLM)
    repetition_penalty: float | None = Field(None, gt=0, le=100)   # extension
    ignore_eos: bool = False                               # extension (llama.cpp, vLLM): benchmarks
    cache_prompt: bool = True                              # extension (llama.cpp): false = full prefill
    seed: int | None = Field(None, ge=0, lt=2**31)
    stop: Union[str, list[str], None] = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=-INT32, le=INT32)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    user: str | None = None


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=INT32)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool | None = None


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]
    max_tokens: int | None = Field(16, ge=1, le=INT32)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None


# ---------------------------------------------------------------- errors

class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers, self.extra = headers or {}, extra

    def body(self) -> dict:
        return {"error": {"message": scrub_paths(self.message), "type": self.type, "param": self.param,
                          "code": self.code, **self.extra}}


def not_supported(what: str, param: str) -> ApiError:
    return ApiError(400, f"{what} is not supported by oga-npu serve", param=param, code="not_supported")


def from_validation(e: ValidationError) -> ApiError:
    err = e.errors()[0]
    loc = [str(x) for x in err.get("loc", ()) if x != "body"]
    param = ".".join(loc) or None
    if err.get("type") == "extra_forbidden":
        return ApiError(400, f"unknown field '{param}' (see the support table in the README)", param=param,
                        code="unknown_field")
    msg = err.get("msg", "invalid request")
    return ApiError(400, f"{param}: {msg}" if param else msg, param=param, code="invalid_value")


def from_library(e: OgaNpuError, prompt_param: str = "messages", guidance_param: str = "response_format") -> ApiError:
    if isinstance(e, ContextLengthError):
        return ApiError(400, f"the request needs {e.prompt_tokens} prompt tokens + {e.max_tokens} max_tokens, "
                             f"more than the model's {e.context}-token context (n_prompt_tokens={e.prompt_tokens}, "
                             f"n_ctx={e.context})", param=prompt_param, code="context_length_exceeded",
                        n_prompt_tokens=e.prompt_tokens, n_ctx=e.context)
    if isinstance(e, GuidanceError):
        return ApiError(400, e.message, param=guidance_param, code="invalid_schema")
    if isinstance(e, (GenerationError, ChatTemplateError)):
        return ApiError(400, e.message, code="invalid_value")
    return ApiError(500, e.message, type_="server_error", code="generation_failed")


# ---------------------------------------------------------------- queue, metrics, models

class QueueFull(Exception):
    pass


class DeviceQueue:
    """One request at a time, first come first served; at most `max_queue` waiting."""

    def __init__(self, max_queue: int):
        self.max_queue = max_queue
        self.waiting = 0
        self.running = 0
        self._lock: asyncio.Lock | None = None

    async def acquire(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        if self._lock.locked() and self.waiting >= self.max_queue:
            raise QueueFull()
        self.waiting += 1
        try:
            await self._lock.acquire()
        finally:
            self.waiting -= 1
        self.running = 1

    def release(self) -> None:
        self.running = 0
        if self._lock is not None and self._lock.locked():
            self._lock.release()

    @property
    def depth(self) -> int:
        return self.waiting + self.running


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("oga_npu_requests", "HTTP requests", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("oga_npu_prompt_tokens", "Prompt tokens", ["model"], registry=r)
        self.completion_tokens = Counter("oga_npu_completion_tokens", "Generated tokens", ["model"], registry=r)
        self.cached_tokens = Counter("oga_npu_cached_tokens", "Prompt tokens reused from the KV cache", ["model"],
                                     registry=r)
        self.ttft = Histogram("oga_npu_ttft_seconds", "Time to first token", ["model"], registry=r,
                              buckets=(.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        self.decode = Histogram("oga_npu_decode_tokens_per_second", "Decode speed per request", ["model"],
                                registry=r, buckets=(1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000))
        self.cancelled = Counter("oga_npu_cancelled_requests", "Generations stopped early (client gone, error, "
                                 "shutdown)", ["model"], registry=r)
        self.queue = Gauge("oga_npu_queue_depth", "Requests running or waiting", ["model"], registry=r)

    def observe(self, model: str, ev: GenerationEvent) -> None:
        self.prompt_tokens.labels(model).inc(ev.prompt_tokens)
        self.completion_tokens.labels(model).inc(ev.generated_tokens)
        self.cached_tokens.labels(model).inc(ev.cached_tokens)
        if ev.ttft is not None:
            self.ttft.labels(model).observe(ev.ttft)
        if ev.decode_tps:
            self.decode.labels(model).observe(ev.decode_tps)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


@dataclass
class ServedModel:
    """A loaded model, its device queue, its worker thread and its KV cache."""

    id: str
    lm: Any
    max_queue: int = DEFAULT_MAX_QUEUE
    kv_reuse: bool = True                              # False: serve --no-kv-reuse
    queue: DeviceQueue = field(init=False)
    cache: PromptCache | None = field(init=False)
    executor: ThreadPoolExecutor = field(init=False)   # decodes, one request at a time
    prep: ThreadPoolExecutor = field(init=False)       # chat template and tokenizer, while another decodes
    guidance: bool = field(init=False)
    guidance_note: str = field(init=False, default="")   # why not, when guidance is False

    def __post_init__(self):
        self.queue = DeviceQueue(self.max_queue)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"model-{self.id}")
        self.prep = ThreadPoolExecutor(1, thread_name_prefix=f"prep-{self.id}")
        self.cache = PromptCache(self.lm) if self.kv_reuse else None
        self.guidance, self.guidance_note = guidance_support(self.lm)

    def reuse(self) -> tuple[bool, str]:
        """Whether turns reuse the KV cache here, and why not (runtime, provider, --no-kv-reuse)."""
        return reuse_support(self.lm) if self.kv_reuse else (False, "off (serve --no-kv-reuse)")

    def info(self) -> dict:
        reuse, why = self.reuse()
        man = self.lm.manifest or {}
        return {"id": self.id, "object": "model", "created": int(Path(self.lm.path).stat().st_mtime),
                "owned_by": "oga-npu", "context_length": self.lm.context_length, "provider": self.lm.provider,
                "decoder": self.lm.decoder, "target": man.get("target"), "recipe": man.get("recipe"),
                "source": man.get("source"), "hub_id": man.get("hub_id"),
                "revision": man.get("revision"), "kv_reuse": reuse, "kv_reuse_note": why,
                "guided_output": self.guidance, **({"guided_output_note": self.guidance_note} if not self.guidance else {})}


def guidance_available(lm) -> bool:
    """Whether this onnxruntime-genai build enforces JSON schemas (llguidance) for this model."""
    return guidance_support(lm)[0]


def guidance_support(lm) -> tuple[bool, str]:
    """guidance_available, and why not: no set_guidance in this onnxruntime-genai
    (capabilities.py), a build without llguidance (a guarded call), or the direct decoder."""
    from .capabilities import capabilities

    if lm.decoder != "oga":
        return False, "the direct WebGPU decoder has no guided output"
    if not capabilities().guidance:
        log.info("guided output is off for %s: %s", lm.path, capabilities().guidance_note())
        return False, capabilities().guidance_note()
    try:
        import onnxruntime_genai as og

        params = og.GeneratorParams(lm.model)
        params.set_search_options(max_length=8)
        params.set_guidance("json_schema", '{"type": "object"}')
        og.Generator(lm.model, params)
        return True, ""
    except Exception as e:  # noqa: BLE001 - a build without llguidance raises here
        log.info("guided output is off for %s: %s", lm.path, e)
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        return False, f"this onnxruntime-genai build has no guided output ({first})"


class FolderProvider:
    """Loads model folders (model.load) in a background thread; the id is the folder name."""

    def __init__(self, folders: list[Path], max_queue: int = DEFAULT_MAX_QUEUE, provider: str | None = None,
                 fallback: str | None = None, loader=None, kv_reuse: bool = True):
        self.folders = [Path(f) for f in folders]
        self.max_queue, self.provider, self.fallback, self.kv_reuse = max_queue, provider, fallback, kv_reuse
        self.models: dict[str, ServedModel] = {}
        self.error: OgaNpuError | None = None
        self.ready = False
        self._loader = loader
        ids = [f.resolve().name for f in self.folders]
        for f, i in zip(self.folders, ids):
            known_path(f, i)
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise GenerationError(f"two model folders have the same name {sorted(dup)} (the model id)",
                                  "rename one of the folders")

    def start(self, on_error=None) -> None:
        threading.Thread(target=self._load, args=(on_error,), daemon=True, name="load-models").start()

    def _load(self, on_error) -> None:
        from .model import load

        try:
            for f in self.folders:
                t0 = time.perf_counter()
                lm = (self._loader or load)(f, provider=self.provider, fallback=self.fallback)
                sm = ServedModel(f.resolve().name, lm, self.max_queue, self.kv_reuse)
                self.models[sm.id] = sm
                log.info("model %s ready: %s, %s decoder, context %d, loaded from %s in %.1f s", sm.id, lm.provider,
                         lm.decoder, lm.context_length, f, time.perf_counter() - t0)
            self.ready = True
        except OgaNpuError as e:
            self.error = e
            if on_error:
                on_error(e)
        except Exception as e:  # noqa: BLE001
            self.error = OgaNpuError(f"loading failed: {e}", "re-run with OGA_NPU_DEBUG=1")
            if on_error:
                on_error(self.error)


# ---------------------------------------------------------------- requests -> options

def _options(req: _Sampling, max_tokens: int | None, lm, n_prompt: int, guidance=None,
             prompt_param: str = "messages") -> GenerationOptions:
    if req.n != 1:
        raise not_supported("n other than 1", "n")
    if req.presence_penalty or req.frequency_penalty:
        raise not_supported("presence_penalty/frequency_penalty (use repetition_penalty)",
                            "presence_penalty" if req.presence_penalty else "frequency_penalty")
    stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if any(not s for s in stops):
        raise ApiError(400, "stop strings must not be empty", param="stop")
    if len(stops) > 4:
        raise ApiError(400, "at most 4 stop strings", param="stop")
    limit = min(lm.context_length, lm.hybrid_limit or lm.context_length)
    if max_tokens is None:
        if limit - n_prompt < 1:
            raise from_library(ContextLengthError(n_prompt, 1, limit), prompt_param)
        max_tokens = min(limit - n_prompt, DEFAULT_MAX_TOKENS)
    kw: dict[str, Any] = {"max_tokens": max_tokens, "stop": tuple(stops), "guidance": guidance,
                          "ignore_eos": req.ignore_eos}
    for name in ("temperature", "top_p", "top_k", "seed", "repetition_penalty"):
        v = getattr(req, name)
        if v is not None:
            kw[name] = v
    opts = resolve_options(GenerationOptions(**kw), lm)   # unset sampling fields: the model's defaults
    try:
        opts.validate()
        check_fits(lm, n_prompt, max_tokens)
    except OgaNpuError as e:
        raise from_library(e, prompt_param) from e
    return opts


def _schema_guidance(schema: dict) -> tuple[str, str]:
    """llguidance JSON; compact whitespace unless the schema says otherwise (small models
    otherwise tend to fill the answer with newlines)."""
    schema = dict(schema)
    schema.setdefault("x-guidance", {"whitespace_flexible": False})
    return ("json_schema", json.dumps(schema))


def _tool_schema(tools: list[Tool], choice) -> dict:
    if isinstance(choice, NamedToolChoice):
        name = choice.function.get("name")
        tools = [t for t in tools if t.function.name == name]
        if not tools:
            raise ApiError(400, f"tool_choice names '{name}', which is not in tools", param="tool_choice")
    variants = [{"type": "object", "properties": {"name": {"const": t.function.name},
                                                  "arguments": t.function.parameters or {"type": "object"}},
                 "required": ["name", "arguments"], "additionalProperties": False} for t in tools]
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def _auto_grammar(schema: dict) -> tuple[str, str]:
    """tool_choice auto, enforced: the answer is either one tool call (JSON that validates
    against the tools) or text that does not start with '{' - so its first character says
    which it is, and a streamed text answer streams."""
    schema = dict(schema)
    schema.setdefault("x-guidance", {"whitespace_flexible": False})
    return ("lark_grammar", "start: call | text\ncall: %json " + json.dumps(schema) + "\ntext: /[^{](.|\\n)*/\n")


def _no_guidance(sm: ServedModel) -> str:
    return getattr(sm, "guidance_note", "") or "this model/runtime has no guided output"


def _chat_plan(req: ChatRequest, sm: ServedModel) -> tuple[list[dict], tuple[str, str] | None, bool | str]:
    """Messages for the template, guidance, and whether the answer is a tool call (True),
    may be one ("auto": it is when it starts with '{'), or is not (False)."""
    if req.logprobs or req.top_logprobs:
        raise not_supported("logprobs", "logprobs")
    msgs = []
    for i, m in enumerate(req.messages):
        role = "system" if m.role == "developer" else m.role
        msgs.append({"role": role, "content": m.text()})
    guidance = None
    tool_call = False
    rf = req.response_format
    if rf is not None and rf.type != "text":
        if not sm.guidance:
            raise not_supported(f"response_format {rf.type} ({_no_guidance(sm)})", "response_format")
        if rf.type == "json_object":
            guidance = _schema_guidance({"type": "object"})
        else:
            if rf.json_schema is None:
                raise ApiError(400, "response_format json_schema needs a json_schema object",
                               param="response_format.json_schema")
            guidance = _schema_guidance(rf.json_schema.schema_ or {"type": "object"})
    if req.tools and req.tool_choice != "none":
        if not sm.guidance:
            raise not_supported(f"tools ({_no_guidance(sm)})", "tools")
        if guidance:
            raise not_supported("response_format together with tools", "response_format")
        schema = _tool_schema(req.tools, req.tool_choice)
        listing = json.dumps([t.function.model_dump(exclude_none=True) for t in req.tools])
        if req.tool_choice in (None, "auto"):
            guidance, tool_call = _auto_grammar(schema), "auto"
            note = ("You can call these functions. To call one, answer with only the call as JSON "
                    f'{{"name": ..., "arguments": {{...}}}}; otherwise answer in words.\nFunctions: {listing}')
        else:
            guidance, tool_call = _schema_guidance(schema), True
            note = ("You can call these functions. Answer with one call as JSON "
                    f'{{"name": ..., "arguments": {{...}}}}.\nFunctions: {listing}')
        if msgs and msgs[0]["role"] == "system":
            msgs[0] = {"role": "system", "content": msgs[0]["content"] + "\n\n" + note}
        else:
            msgs.insert(0, {"role": "system", "content": note})
    elif req.tool_choice not in (None, "none", "auto") and not req.tools:
        raise ApiError(400, "tool_choice needs tools", param="tool_choice")
    if not any(m["content"].strip() for m in msgs if m["role"] == "user"):
        raise ApiError(400, "the conversation has no user text", param="messages")
    return msgs, guidance, tool_call


# ---------------------------------------------------------------- the app

class _Stream(StreamingResponse):
    """Closes its body when the client goes away (Starlette cancels the send loop and leaves
    the generator suspended), so the device queue is released at once, not at GC."""

    async def __call__(self, scope, receive, send):
        import anyio

        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await self.body_iterator.aclose()


DEFAULT_STREAM_INTERVAL_MS = 30


def create_app(provider, api_key: str | None = None, stream_interval_ms: float = DEFAULT_STREAM_INTERVAL_MS, *,
               max_body_mb: float = DEFAULT_MAX_BODY_MB, metrics_key: str | None = None, host: str = "127.0.0.1",
               allowed_host: tuple[str, ...] | list[str] = (), cors_origin: tuple[str, ...] | list[str] = ()):
    """The FastAPI app. With `api_key` every route but /health and the chat page needs it
    (/metrics takes `metrics_key` too); the Host header must name `host` or an
    `allowed_host` (DNS rebinding); CORS only for `cors_origin`."""
    for name, key in (("--api-key", api_key), ("--metrics-key", metrics_key)):
        if key is not None and not key.strip():
            raise ValueError(f"{name} is empty: give a key, or leave the option out")
    stream_interval = max(0.0, stream_interval_ms) / 1000
    max_body = int(max_body_mb * 2**20)
    hosts = allowed_hosts(host, list(allowed_host))
    app = FastAPI(title="oga-npu", docs_url=None, redoc_url=None)
    metrics = Metrics()
    state = {"last": None, "stopping": False}
    app.state.provider = provider
    app.state.metrics = metrics
    app.state.serve_state = state

    def error_response(e: ApiError):
        serverlog.error(e.code, e.message)
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    def key_ok(headers, *keys: str | None) -> bool:
        auth = headers.get("authorization", "")
        given = (auth[7:].strip() if auth.lower().startswith("bearer ") else "").encode()
        return any(k is not None and hmac.compare_digest(given, k.encode()) for k in keys)

    def door(request: Request) -> ApiError | None:
        """Host, then key: the refusal for this request, or None."""
        path = request.url.path
        if not host_ok(request.headers.get("host"), hosts):
            return ApiError(400, "the Host header names a host this server does not answer for (serve "
                                 "--allowed-host NAME adds one)", code="invalid_host")
        if request.method == "OPTIONS" or path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return None
        if path == "/metrics" and metrics_key is not None:
            if not key_ok(request.headers, metrics_key, api_key):
                return ApiError(401, "missing or wrong metrics key (Authorization: Bearer KEY)",
                                type_="authentication_error", code="invalid_api_key")
        elif api_key is not None and not key_ok(request.headers, api_key):
            return ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)",
                            type_="authentication_error", code="invalid_api_key")
        return None

    @app.middleware("http")
    async def count_and_guard(request: Request, call_next):
        path = request.url.path
        refused = door(request)
        response = error_response(refused) if refused is not None else await call_next(request)
        route = path if path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health",
                                 "/metrics", "/v1/stats") else "other"
        metrics.requests.labels(route, str(response.status_code)).inc()
        return response

    if cors_origin:   # added after the guard, so it runs first: preflights need no key
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origin), allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.exception_handler(ApiError)
    async def api_error(_request, e: ApiError):
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, e: RequestValidationError):
        return error_response(ApiError(400, str(e.errors()[0].get("msg", "invalid request")), code="invalid_value"))

    @app.exception_handler(404)
    async def not_found(_request, _e):
        return error_response(ApiError(404, "no such route", type_="not_found_error", code="not_found"))

    @app.exception_handler(405)
    async def bad_method(_request, _e):
        return error_response(ApiError(405, "method not allowed", code="method_not_allowed"))

    @app.exception_handler(Exception)
    async def crashed(_request, e: Exception):
        log.exception("request failed")
        return error_response(ApiError(500, f"internal error: {type(e).__name__}: {e}", type_="server_error"))

    async def body_of(request: Request, model_cls):
        ctype = request.headers.get("content-type", "")
        try:
            if not is_json_type(ctype):
                raise Refused(400, f"Content-Type must be application/json (got '{ctype[:100] or 'none'}')",
                              "invalid_content_type")
            obj = parse_json(await read_body(request, max_body))
        except Refused as e:
            raise ApiError(e.status, e.message, param=e.param, code=e.code) from None
        if not isinstance(obj, dict):
            raise ApiError(400, f"the body must be a JSON object, not {type(obj).__name__}", code="invalid_json")
        try:
            return model_cls.model_validate(obj)
        except ValidationError as e:
            raise from_validation(e) from e

    async def unless_gone(request: Request, work):
        """Run `work` (a coroutine: queueing, generation) until done, or until the client
        closes the connection: then cancel it (a queued request leaves the queue, a running
        one stops after the token in hand) and answer 499 to nobody."""
        task = asyncio.ensure_future(work)

        async def gone():
            while True:
                if (await request.receive())["type"] == "http.disconnect":
                    return

        watch = asyncio.ensure_future(gone())
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        finally:
            watch.cancel()
        if task.done():
            return task.result()
        task.cancel()
        try:
            await task
        except (asyncio.CancelledError, Exception):  # noqa: BLE001 - nobody is there to tell
            pass
        log.info("client closed the connection: request cancelled")
        raise ApiError(499, "the client closed the connection", code="client_closed")

    def served(model_id: str) -> ServedModel:
        if provider.error is not None:
            raise ApiError(503, f"the model failed to load: {provider.error.message}", type_="server_error",
                           code="model_load_failed")
        if not provider.ready:
            raise ApiError(503, "the models are still loading", type_="unavailable_error", code="loading",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        sm = provider.models.get(model_id)
        if sm is None:
            raise ApiError(404, f"the model '{model_id}' does not exist (loaded: {', '.join(provider.models)})",
                           type_="not_found_error", param="model", code="model_not_found")
        return sm

    async def in_prep(sm: ServedModel, fn, *args):
        """Template and tokenizer work: beside the decode thread, so a request is checked
        (context length, options) and queued, or refused, while another one generates."""
        return await asyncio.get_running_loop().run_in_executor(sm.prep, fn, *args)

    async def events(sm: ServedModel, ids: list[int], opts: GenerationOptions, reuse: bool = True,
                     errors=from_library) -> AsyncIterator[GenerationEvent]:
        """stream_generate in the model's worker thread; holds the device queue while it runs.

        The worker runs the decode loop on its own and hands each event to the event loop
        (call_soon_threadsafe): the next token is computed while this one is encoded and
        sent, never waiting for the loop. Tokens that come faster than `stream_interval`
        are sent together (the first one at once): a write and a client wake-up per token
        cost 5-9% of decode tok/s on 2 cores. A closed stream sets `stop`, which the worker
        reads after each token. reuse=False (cache_prompt: false): a full prefill, whose
        Generator is then the one kept for the next request."""
        try:
            await sm.queue.acquire()
        except QueueFull:
            raise ApiError(503, f"{sm.id} is busy: {sm.queue.waiting} requests are waiting (--max-queue "
                                f"{sm.queue.max_queue})", type_="unavailable_error", code="server_busy",
                           headers={"Retry-After": str(RETRY_AFTER_S)}) from None
        metrics.queue.labels(sm.id).set(sm.queue.depth)
        loop = asyncio.get_running_loop()
        box: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                if stop.is_set():   # cancelled before its turn came
                    loop.call_soon_threadsafe(box.put_nowait, None)
                    return
                if not reuse and sm.cache is not None:
                    sm.cache.clear()
                it = stream_generate(sm.lm, ids, opts, cache=sm.cache)
                try:
                    for ev in it:
                        loop.call_soon_threadsafe(box.put_nowait, ev)
                        if stop.is_set() or state["stopping"]:
                            break
                finally:
                    it.close()
                loop.call_soon_threadsafe(box.put_nowait, None)
            except BaseException as e:  # noqa: BLE001 - handed to the request, raised there
                loop.call_soon_threadsafe(box.put_nowait, e)

        sm.executor.submit(produce)

        def shutting_down() -> ApiError:
            return ApiError(503, "the server is shutting down", type_="server_error", code="shutting_down")

        last = None
        held: GenerationEvent | None = None   # text not yet sent (tokens faster than the interval)
        sent_at = 0.0
        try:
            while True:
                if state["stopping"]:
                    raise shutting_down()
                if held is None:
                    ev = await box.get()
                else:
                    try:
                        ev = await asyncio.wait_for(box.get(), max(0.0, sent_at + stream_interval - loop.time()))
                    except asyncio.TimeoutError:
                        yield held
                        held, sent_at = None, loop.time()
                        continue
                if ev is None:
                    if state["stopping"] and (last is None or last.finish_reason is None):
                        # the worker saw the stop before this loop did: the same error event
                        if held is not None:
                            yield held
                        raise shutting_down()
                    break
                if isinstance(ev, BaseException):
                    raise ev
                last = ev
                held = ev if held is None else replace(ev, text=held.text + ev.text)
                now = loop.time()
                if ev.finish_reason is not None or now - sent_at >= stream_interval:
                    yield held
                    held, sent_at = None, now
            if held is not None:
                yield held
        except OgaNpuError as e:
            raise errors(e) from e
        finally:
            # The worker stops after the token in hand; it is one thread, so the next
            # request's first step runs after that.
            stop.set()
            sm.queue.release()
            metrics.queue.labels(sm.id).set(sm.queue.depth)
            serverlog.generation_done(sm.id, last, sys.exc_info()[1])
            if last is None or last.finish_reason is None:
                metrics.cancelled.labels(sm.id).inc()
                if last is not None:
                    metrics.completion_tokens.labels(sm.id).inc(last.generated_tokens)
            else:
                metrics.observe(sm.id, last)
                state["last"] = {"model": sm.id, "provider": last.runtime, "prompt_tokens": last.prompt_tokens,
                                 "completion_tokens": last.generated_tokens, "cached_tokens": last.cached_tokens,
                                 "ttft_s": last.ttft, "prefill_tokens_per_s": last.prefill_tps,
                                 "decode_tokens_per_s": last.decode_tps, "finish_reason": last.finish_reason}

    def usage(ev: GenerationEvent | None) -> dict:
        p, c, k = (ev.prompt_tokens, ev.generated_tokens, ev.cached_tokens) if ev else (0, 0, 0)
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                "prompt_tokens_details": {"cached_tokens": k}}

    def finish(ev: GenerationEvent, tool_call: bool) -> str:
        if ev.finish_reason == "length":
            return "length"
        return "tool_calls" if tool_call else "stop"

    def sse(obj) -> str:
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def envelope(cid: str, created: int, sm: ServedModel, obj: str, choice: dict | None, usage_: dict | None = None):
        """An OpenAI object around one choice, or (a usage chunk) around none."""
        out = {"id": cid, "object": obj, "created": created, "model": sm.id,
               "choices": [] if usage_ else [choice]}
        if usage_:
            out["usage"] = usage_
        return out

    def sse_response(gen, first, chunk, req, tool_call) -> StreamingResponse:
        include = bool(req.stream_options and req.stream_options.include_usage)
        return _Stream(stream_body(gen, first, chunk, include, tool_call),
                       media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def collect(gen, first) -> tuple[str, GenerationEvent | None]:
        """A whole (not streamed) answer: its text and its last event."""
        parts, last = ([first.text], first) if first else ([], None)
        async for ev in gen:
            parts.append(ev.text)
            last = ev
        return "".join(parts), last

    async def stream_body(gen: AsyncIterator[GenerationEvent], first: GenerationEvent | None, make_chunk,
                          include_usage: bool, tool_call: bool | str):
        """SSE: role first (chat), text deltas, the finish chunk, usage, [DONE]; errors as an event.
        A tool call is held back and sent whole at the end; with tool_choice auto the first
        character decides ('{': a call), and a text answer streams from there."""
        last = None
        text = []
        calls = None
        try:
            head = make_chunk(None, None, first=True)
            if head is not None:
                yield sse(head)
            pending = [first] if first is not None else []
            while True:
                if pending:
                    ev = pending.pop()
                else:
                    try:
                        ev = await gen.__anext__()
                    except StopAsyncIteration:
                        break
                last = ev
                if tool_call == "auto" and ev.text:
                    tool_call = ev.text.startswith("{")  # the grammar allows no other way to a call
                if tool_call:
                    text.append(ev.text)
                elif ev.text:
                    yield sse(make_chunk(ev.text, None))
            if last is not None:
                if tool_call == "auto":  # nothing was generated
                    tool_call = False
                if tool_call:
                    calls = _tool_calls("".join(text)) if last.finish_reason != "length" else None
                    if calls:
                        yield sse(make_chunk(None, None, tool_calls=[dict(c, index=i) for i, c in enumerate(calls)]))
                    else:
                        yield sse(make_chunk("".join(text), None))
                yield sse(make_chunk(None, finish(last, bool(tool_call) and last.finish_reason != "length"
                                                  and bool(calls))))
                if include_usage:
                    yield sse(make_chunk(None, None, usage=usage(last)))
        except ApiError as e:
            yield sse(e.body())
        except Exception as e:  # noqa: BLE001 - the stream has started: report in band
            log.exception("stream failed")
            yield sse(ApiError(500, f"{type(e).__name__}: {e}", type_="server_error").body())
        finally:
            await gen.aclose()
        yield "data: [DONE]\n\n"

    async def start(gen: AsyncIterator[GenerationEvent]) -> GenerationEvent | None:
        """The first event, so queue-full and early errors become HTTP statuses."""
        try:
            return await gen.__anext__()
        except StopAsyncIteration:
            return None

    async def begin(sm: ServedModel, build, id_prefix: str, req: _Sampling, errors=from_library):
        """Template and tokens (build, in the prep thread), then the generation up to its
        first event: (completion id, created, events, first event)."""
        try:
            ids, opts = await in_prep(sm, build)
        except OgaNpuError as e:
            raise errors(e) from e
        gen = events(sm, ids, opts, req.cache_prompt, errors)
        try:
            first = await start(gen)
        except BaseException:
            await gen.aclose()
            raise
        return f"{id_prefix}-{uuid.uuid4().hex}", int(time.time()), gen, first

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await body_of(request, ChatRequest)
        sm = served(req.model)
        return await unless_gone(request, chat_answer(req, sm))

    async def chat_answer(req: ChatRequest, sm: ServedModel):
        msgs, guidance, tool_call = _chat_plan(req, sm)

        def build():
            ids = encode_chat(sm.lm, msgs)
            return ids, _options(req, req.max_completion_tokens or req.max_tokens, sm.lm, len(ids), guidance)

        def errors(e: OgaNpuError) -> ApiError:
            return from_library(e, "messages", "tools" if tool_call else "response_format")

        cid, created, gen, first = await begin(sm, build, "chatcmpl", req, errors)

        if req.stream:
            def chunk(text, reason, first=False, usage=None, tool_calls=None):
                if first:
                    delta = {"role": "assistant", "content": ""}
                elif tool_calls is not None:
                    delta = {"tool_calls": tool_calls}
                else:
                    delta = {"content": text} if text is not None else {}
                return envelope(cid, created, sm, "chat.completion.chunk",
                                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}, usage)

            return sse_response(gen, first, chunk, req, tool_call)

        text, last = await collect(gen, first)
        if tool_call == "auto":
            tool_call = text.startswith("{")
        message: dict[str, Any] = {"role": "assistant", "content": text}
        reason = finish(last, tool_call) if last else "stop"
        if tool_call and reason == "tool_calls":
            calls = _tool_calls(text)
            if calls:
                message = {"role": "assistant", "content": None, "tool_calls": calls}
            else:
                reason = "stop"
        return {"id": cid, "object": "chat.completion", "created": created, "model": sm.id,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": reason}],
                "usage": usage(last)}

    @app.post("/v1/completions")
    async def completions(request: Request):
        req = await body_of(request, CompletionRequest)
        sm = served(req.model)
        return await unless_gone(request, completion_answer(req, sm))

    async def completion_answer(req: CompletionRequest, sm: ServedModel):
        if req.logprobs:
            raise not_supported("logprobs", "logprobs")
        if req.echo:
            raise not_supported("echo", "echo")
        if req.suffix:
            raise not_supported("suffix", "suffix")
        prompt = req.prompt
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise not_supported("more than one prompt per request", "prompt")
            prompt = prompt[0]
        if not prompt.strip():
            raise ApiError(400, "the prompt is empty", param="prompt")

        def build():
            ids = encode_raw(sm.lm, prompt)
            return ids, _options(req, req.max_tokens, sm.lm, len(ids), prompt_param="prompt")

        def errors(e: OgaNpuError) -> ApiError:
            return from_library(e, "prompt")

        cid, created, gen, first = await begin(sm, build, "cmpl", req, errors)

        if req.stream:
            def chunk(text, reason, first=False, usage=None, tool_calls=None):
                if first:
                    return None
                return envelope(cid, created, sm, "text_completion",
                                {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}, usage)

            return sse_response(gen, first, chunk, req, False)
        text, last = await collect(gen, first)
        return {"id": cid, "object": "text_completion", "created": created, "model": sm.id,
                "choices": [{"index": 0, "text": text, "logprobs": None,
                             "finish_reason": finish(last, False) if last else "stop"}],
                "usage": usage(last)}

    @app.get("/v1/models")
    async def list_models():
        served_models = provider.models if provider.ready else {}
        return {"object": "list", "data": [sm.info() for sm in served_models.values()]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str):
        return served(model_id).info()

    @app.get("/v1/stats")
    async def stats():
        return {"last_request": state["last"],
                "models": {i: {"queue_depth": sm.queue.depth, "kv_cache": vars(sm.cache.stats) if sm.cache else None,
                               **dict(zip(("kv_reuse", "kv_reuse_note"), sm.reuse()))}
                           for i, sm in (provider.models if provider.ready else {}).items()}}

    @app.get("/health")
    async def health():
        if provider.error is not None:
            return JSONResponse({"status": "error", "message": provider.error.message}, status_code=503)
        if not provider.ready:
            return JSONResponse({"status": "loading"}, status_code=503)
        return {"status": "ok", "models": list(provider.models)}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    web.add_routes(app)                     # GET / (the chat page) and /web/*, no key: they hold no data
    app.add_middleware(serverlog.RequestLog)  # added last: the outermost layer, sees every response
    return app


def _tool_calls(text: str) -> list[dict] | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or "name" not in obj:
        return None
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": obj["name"], "arguments": json.dumps(obj.get("arguments", {}))}}]


# ---------------------------------------------------------------- running it

def serve(folders: list[Path], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          max_queue: int = DEFAULT_MAX_QUEUE, provider: str | None = None, fallback: str | None = None,
          log_level: str = "info", stream_interval_ms: float = DEFAULT_STREAM_INTERVAL_MS,
          max_body_mb: float = DEFAULT_MAX_BODY_MB, metrics_key: str | None = None,
          allowed_host: tuple[str, ...] | list[str] = (), cors_origin: tuple[str, ...] | list[str] = (),
          kv_reuse: bool = True, loader=None) -> int:
    """Run until SIGINT/SIGTERM. Open streams then get an error event and [DONE]. `loader`
    replaces model.load (the CLI's speculative decoding attaches its drafter there)."""
    import uvicorn

    from .model import check_folder
    from .errors import ModelFolderError

    for f in folders:
        rep = check_folder(Path(f), deep=False)
        if not rep.ok:
            raise ModelFolderError(f"{f} cannot be served: " + "; ".join(rep.problems),
                                   "pass a folder made by `oga-npu prepare`")
    serverlog.setup(log_level)
    models = FolderProvider(folders, max_queue, provider, fallback, kv_reuse=kv_reuse, loader=loader)
    try:
        app = create_app(models, api_key, stream_interval_ms, max_body_mb=max_body_mb, metrics_key=metrics_key,
                         host=host, allowed_host=allowed_host, cors_origin=cors_origin)
    except ValueError as e:
        raise GenerationError(str(e), "pass a non-empty key (or set OGA_NPU_API_KEY), or leave --api-key out") from e
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5,
                            access_log=False)

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.serve_state["stopping"] = True   # open streams end with an error event, then [DONE]
            super().handle_exit(sig, frame)
            stopped.append(sig)
            self._captured_signals.clear()   # a clean stop exits 0 instead of re-raising the signal

    server = Server(config)
    failed: list[OgaNpuError] = []
    stopped: list[int] = []

    def on_error(e: OgaNpuError):
        failed.append(e)
        print(f"Error: {e.message}" + (f"\nFix: {e.fix}" if e.fix else ""), file=sys.stderr, flush=True)
        server.should_exit = True

    models.start(on_error)
    print(f"oga-npu serve: http://{host}:{port}/v1 (models: {', '.join(f.resolve().name for f in models.folders)}; "
          f"loading, /health says when ready); chat page: http://{host}:{port}/", file=sys.stderr, flush=True)
    server.run()
    if stopped:
        print("oga-npu serve: stopped", file=sys.stderr, flush=True)
    return 1 if failed else 0
