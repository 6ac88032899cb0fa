"""Ollama's API beside the OpenAI one: /api/tags, /api/show, /api/ps, /api/version,
/api/chat, /api/generate (ollama/ollama docs/api.md).

A translation layer, no second decode path: an Ollama request becomes the server's own
`ChatRequest` or `CompletionRequest` (schemas.py) and goes through plan.py, models.py
(`using`: loading, the lease) and worker.py (the device queue, KV reuse, cancellation) like
an OpenAI request; its `GenerationEvent`s become Ollama's objects, streamed as NDJSON (one
JSON object a line, the default) or one object with `"stream": false`. Errors have Ollama's
shape `{"error": "..."}` (app.py picks it for these paths, `is_ollama_path`).

Refused with 400, never ignored: template, images, tools, think, suffix, context, and options
other than those in `Options`; `num_ctx` larger than the model's context.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from functools import partial
from typing import Any, Literal, Union

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .._version import __version__
from ..errors import ContextLengthError
from ..generate import GenerationEvent
from . import plan, worker
from .errors import ApiError, from_validation, not_supported
from .models import describe, using
from .ollama_models import described, infos, show, tag
from .routes import body_of, unless_gone
from .schemas import ChatRequest, CompletionRequest
from .stream import Stream

router = APIRouter()
INT32 = 2**31 - 1
NDJSON = "application/x-ndjson"


def is_ollama_path(path: str) -> bool:
    """The Ollama routes (Lemonade's /api/v1/* keep the OpenAI error shape)."""
    return path.startswith("/api/") and not path.startswith("/api/v1/")


# ---------------------------------------------------------------- request models


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Options(_Strict):
    """The options oga-npu honours; any other Ollama option is refused (400 unknown field)."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=INT32)
    seed: int | None = Field(None, ge=-1, lt=2**31)  # -1: a random seed (what llama.cpp and clients send)
    num_predict: int | None = Field(None, ge=-2, le=INT32)  # -1: until the context ends, -2: fill it
    stop: Union[str, list[str], None] = None
    repeat_penalty: float | None = Field(None, gt=0, le=100)
    num_ctx: int | None = Field(None, ge=1, le=INT32)


class OllamaMessage(_Strict):
    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: list[str] | None = None
    tool_calls: list[dict] | None = None
    tool_name: str | None = None
    thinking: str | None = None


def _untagged(name: str | None) -> str | None:
    """Ollama clients name models NAME:latest (the tag /api/tags implies): the same model."""
    return name[: -len(":latest")] if name and name.endswith(":latest") else name


class _Common(_Strict):
    model: str = Field(min_length=1)
    _no_tag = field_validator("model")(classmethod(lambda cls, v: _untagged(v)))
    format: Union[Literal["", "json"], dict, None] = None
    options: Options | None = None
    stream: bool = True
    keep_alive: Union[str, float, None] = None  # accepted: the router (--max-loaded) decides unloading
    think: Union[bool, str, None] = None


class OllamaChat(_Common):
    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict] | None = None


class OllamaGenerate(_Common):
    prompt: str = ""
    system: str | None = None
    template: str | None = None
    raw: bool = False
    suffix: str | None = None
    images: list[str] | None = None
    context: list[int] | None = None


class OllamaModel(_Strict):
    model: str | None = None
    name: str | None = None  # the old field name
    verbose: bool | None = None
    _no_tag = field_validator("model", "name")(classmethod(lambda cls, v: _untagged(v)))


# ---------------------------------------------------------------- Ollama -> the server's requests


def _refuse_common(req: _Common) -> None:
    if req.think:
        raise not_supported("think", "think")


def _sampling(req: _Common) -> dict:
    """The OpenAI-side fields for the options: temperature, ..., max_tokens."""
    o = req.options or Options()
    out: dict[str, Any] = {"model": req.model, "stream": req.stream}
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("top_k", "top_k"),
        ("seed", "seed"),
        ("repetition_penalty", "repeat_penalty"),
        ("stop", "stop"),
    ):
        v = getattr(o, theirs)
        if v is not None and not (theirs == "seed" and v == -1):
            out[ours] = v
    if o.num_predict == 0:
        raise ApiError(
            400,
            "options.num_predict: 0 generates nothing (give a positive count, or -1)",
            param="options.num_predict",
            code="invalid_value",
        )
    if o.num_predict is not None and o.num_predict > 0:
        out["max_tokens"] = o.num_predict
    return out


def _format(fmt) -> dict | None:
    """format "json" or a JSON schema -> OpenAI's response_format."""
    if fmt in (None, ""):
        return None
    if fmt == "json":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}


def _build(cls, fields: dict):
    try:
        return cls.model_validate(fields)
    except ValidationError as e:
        raise from_validation(e) from e


def chat_request(req: OllamaChat) -> ChatRequest:
    """An Ollama chat as the server's ChatRequest (400 for what oga-npu does not do)."""
    _refuse_common(req)
    if req.tools:
        raise not_supported("tools on /api/chat (use /v1/chat/completions)", "tools")
    msgs = []
    for i, m in enumerate(req.messages):
        if m.images:
            raise not_supported("images", f"messages.{i}.images")
        if m.tool_calls:
            raise not_supported("tool_calls on /api/chat (use /v1/chat/completions)", f"messages.{i}.tool_calls")
        msgs.append({"role": m.role, "content": m.content})
    fields = {**_sampling(req), "messages": msgs}
    rf = _format(req.format)
    if rf is not None:
        fields["response_format"] = rf
    return _build(ChatRequest, fields)


def generate_request(req: OllamaGenerate) -> ChatRequest | CompletionRequest:
    """An Ollama generate: with the chat template (system + prompt as messages) unless raw."""
    _refuse_common(req)
    for name in ("template", "suffix", "images", "context"):
        if getattr(req, name):
            raise not_supported(name, name)
    if req.raw:
        if req.format not in (None, ""):
            raise not_supported("format with raw", "format")
        if req.system:
            raise not_supported("system with raw (put it in the prompt)", "system")
        return _build(
            CompletionRequest, {**_sampling(req), "prompt": req.prompt, "max_tokens": _sampling(req).get("max_tokens")}
        )
    msgs = ([{"role": "system", "content": req.system}] if req.system else []) + [
        {"role": "user", "content": req.prompt}
    ]
    fields = {**_sampling(req), "messages": msgs}
    rf = _format(req.format)
    if rf is not None:
        fields["response_format"] = rf
    return _build(ChatRequest, fields)


# ---------------------------------------------------------------- events -> Ollama objects


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


def ns(seconds: float | None) -> int:
    return int(round((seconds or 0.0) * 1e9))


def done_reason(ev: GenerationEvent | None) -> str:
    return "length" if ev is not None and ev.finish_reason == "length" else "stop"


def stats(last: GenerationEvent | None, started: float, load_s: float) -> dict:
    """Ollama's counts and durations (ns): prompt_eval = the prefill up to the first token,
    eval = the tokens after it at the measured decode speed."""
    out = {
        "done_reason": done_reason(last),
        "total_duration": ns(time.perf_counter() - started),
        "load_duration": ns(load_s),
        "prompt_eval_count": 0,
        "prompt_eval_duration": 0,
        "eval_count": 0,
        "eval_duration": 0,
    }
    if last is not None:
        decode = (last.generated_tokens - 1) / last.decode_tps if last.decode_tps else 0.0
        out.update(
            prompt_eval_count=last.prompt_tokens,
            prompt_eval_duration=ns(last.ttft),
            eval_count=last.generated_tokens,
            eval_duration=ns(decode),
        )
    return out


def chat_piece(model: str, text: str) -> dict:
    return {"model": model, "created_at": now_iso(), "message": {"role": "assistant", "content": text}, "done": False}


def generate_piece(model: str, text: str) -> dict:
    return {"model": model, "created_at": now_iso(), "response": text, "done": False}


def final(piece: dict, text: str, last: GenerationEvent | None, started: float, load_s: float) -> dict:
    """The last object: done, the whole text when not streamed (else empty), the stats."""
    out = dict(piece, done=True, **stats(last, started, load_s))
    if "message" in out:
        out["message"] = {"role": "assistant", "content": text}
    else:
        out["response"] = text
    return out


def line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=False) + "\n"


async def ndjson(run: worker.Started, piece, started: float, load_s: float):
    """One object per batch of text, then the done object; an error after the start is an
    `{"error": ...}` line (Ollama's in-band error)."""
    last = None
    try:
        ev = run.first
        while ev is not None:
            last = ev
            if ev.text:
                yield line(piece(ev.text))
            try:
                ev = await run.events.__anext__()
            except StopAsyncIteration:
                break
        yield line(final(piece(""), "", last, started, load_s))
    except ApiError as e:
        yield line(ollama_body(e))
    except Exception as e:  # noqa: BLE001 - the stream has started: report in band
        yield line({"error": f"internal error: {type(e).__name__}"})
    finally:
        await run.events.aclose()


async def whole(run: worker.Started, piece, started: float, load_s: float) -> dict:
    parts, last, ev = [], None, run.first
    try:
        while ev is not None:
            parts.append(ev.text)
            last = ev
            try:
                ev = await run.events.__anext__()
            except StopAsyncIteration:
                break
    finally:
        await run.events.aclose()
    return final(piece(""), "".join(parts), last, started, load_s)


def ollama_body(e: ApiError) -> dict:
    from .http import scrub_paths

    return {"error": scrub_paths(e.message, e.echo)}


# ---------------------------------------------------------------- routes


def _st(request: Request):
    return request.app.state.server


async def _body(request: Request, cls):
    return await body_of(request, cls, _st(request).max_body)


@router.get("/api/version")
async def version():
    return {"version": __version__}


@router.get("/api/tags")
async def tags(request: Request):
    return {"models": [tag(i) for i in infos(_st(request).provider) if i.get("loadable", True)]}


@router.get("/api/ps")
async def ps(request: Request):
    return {
        "models": [
            {**tag(i), "expires_at": None, "size_vram": 0, "context_length": i.get("context_length")}
            for i in infos(_st(request).provider)
            if i.get("loaded")
        ]
    }


@router.post("/api/show")
async def show_model(request: Request):
    req = await _body(request, OllamaModel)
    name = req.model or req.name
    if not name:
        raise ApiError(400, "model is required", param="model", code="invalid_value")
    provider = _st(request).provider
    return show(described(provider, describe(provider, name)))


@router.post("/api/chat")
async def chat(request: Request):
    req = await _body(request, OllamaChat)
    return await unless_gone(request, answer(_st(request), req, chat_piece))


@router.post("/api/generate")
async def generate(request: Request):
    req = await _body(request, OllamaGenerate)
    return await unless_gone(request, answer(_st(request), req, generate_piece))


async def answer(st, req: OllamaChat | OllamaGenerate, make_piece):
    """Translate, then the same path as the OpenAI routes: lease (load), plan, queue, decode."""
    started = time.perf_counter()
    empty = (not req.messages) if isinstance(req, OllamaChat) else (not req.prompt)
    inner = (
        chat_request(req)
        if not empty and isinstance(req, OllamaChat)
        else (generate_request(req) if not empty else None)
    )
    try:
        return await _answer(st, req, make_piece, started, inner)
    except ApiError as e:  # the OpenAI field names plan.py uses -> Ollama's
        if e.param == "response_format":
            e.param, e.message = "format", e.message.replace("response_format", "format")
        raise


async def _answer(st, req, make_piece, started: float, inner):
    num_ctx = req.options.num_ctx if req.options else None
    async with using(st.provider, req.model) as sm:
        load_s = time.perf_counter() - started
        piece = partial(make_piece, sm.id)
        if inner is None:  # Ollama: an empty prompt/messages loads the model and answers done
            out = dict(piece(""), done=True, done_reason="load")
            return out
        if isinstance(inner, ChatRequest):
            guided, why_not = (False, "")
            if plan.wants_guidance(inner):  # the probe (once per model) in the prep thread, as for /v1
                guided, why_not = await worker.in_prep(sm, sm.guidance_support)
            p = plan.chat_plan(inner, guided, why_not)
            build, errors = partial(plan.chat_inputs, sm.lm, p, inner), p.errors
        else:
            prompt = plan.completion_prompt(inner)
            build, errors = partial(plan.completion_inputs, sm.lm, prompt, inner), plan.completion_errors
        limit = min(sm.lm.context_length, getattr(sm.lm, "hybrid_limit", None) or sm.lm.context_length)
        run = await worker.begin(st, sm, _fitted(num_ctx, limit, build, inner), inner.cache_prompt, errors)
    if req.stream:
        return Stream(ndjson(run, piece, started, load_s), media_type=NDJSON)
    return await whole(run, piece, started, load_s)


def _fitted(num_ctx, limit, build, inner):
    """build() with num_ctx applied (see fit_num_ctx); num_predict unset lets num_ctx cap it.
    A partial, not a closure: a model worker process gets it pickled (procworker.py)."""
    given = (inner.max_completion_tokens or inner.max_tokens) if isinstance(inner, ChatRequest) else inner.max_tokens
    return partial(_run_fitted, num_ctx, limit, build, given)


def _run_fitted(num_ctx, limit, build, given):
    ids, opts = build()
    if num_ctx is None:
        return ids, opts
    if num_ctx > limit:
        raise ApiError(
            400,
            f"options.num_ctx {num_ctx} is larger than the model's {limit}-token context",
            param="options.num_ctx",
            code="context_length_exceeded",
            n_ctx=limit,
        )
    if len(ids) + opts.max_tokens > num_ctx:
        if given is None and len(ids) < num_ctx:
            from dataclasses import replace

            return ids, replace(opts, max_tokens=num_ctx - len(ids))
        raise ContextLengthError(len(ids), opts.max_tokens, num_ctx)
    return ids, opts
