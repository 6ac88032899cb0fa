"""One function per endpoint, each over the app's `ServerState` (`request.app.state.server`).

A chat request: the body (`body_of`: size, JSON, pydantic) -> plan.py (messages, guidance,
options) -> models.py (the model, loaded) -> worker.py (queue, decode thread) -> stream.py
(OpenAI objects or SSE). `unless_gone` cancels the work when the client hangs up first.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from . import plan, stream, worker
from .errors import ApiError, from_validation
from .http import Refused, is_json_type, parse_json, read_body
from .models import describe, listing, using
from .schemas import ChatRequest, CompletionRequest, LoadRequest, UnloadRequest
from .state import ServerState

log = logging.getLogger("oga_npu.server")
router = APIRouter()


def state_of(request: Request) -> ServerState:
    return request.app.state.server


async def body_of(request: Request, model_cls, max_body: int):
    """The body as `model_cls`, or ApiError 400/413 naming the field."""
    ctype = request.headers.get("content-type", "")
    try:
        if not is_json_type(ctype):
            raise Refused(
                400, f"Content-Type must be application/json (got '{ctype[:100] or 'none'}')", "invalid_content_type"
            )
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
    """Run `work` (a coroutine: loading, queueing, generation) until done, or until the client
    closes the connection: then cancel it (a queued request leaves the queue, a running one
    stops after the token in hand) and answer 499 to nobody."""
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


@router.post("/v1/chat/completions")
async def chat_completions(request: Request):
    st = state_of(request)
    req = await body_of(request, ChatRequest, st.max_body)
    return await unless_gone(request, chat_answer(st, req))


async def chat_answer(st: ServerState, req: ChatRequest):
    async with using(st.provider, req.model) as sm:  # loaded (waits for a load) until the queue holds it
        guided, why_not = (False, "")
        if plan.wants_guidance(req):  # the probe (once per model) runs in the prep thread, off the loop
            guided, why_not = await worker.in_prep(sm, sm.guidance_support)
        p = plan.chat_plan(req, guided, why_not)
        run = await worker.begin(st, sm, partial(plan.chat_inputs, sm.lm, p, req), req.cache_prompt, p.errors)
    if req.stream:
        return stream.chat_sse(run, sm.id, include_usage(req), p.tool_call)
    return await stream.chat_whole(run, sm.id, p.tool_call)


@router.post("/v1/completions")
async def completions(request: Request):
    st = state_of(request)
    req = await body_of(request, CompletionRequest, st.max_body)
    return await unless_gone(request, completion_answer(st, req))


async def completion_answer(st: ServerState, req: CompletionRequest):
    prompt = plan.completion_prompt(req)
    async with using(st.provider, req.model) as sm:
        run = await worker.begin(
            st, sm, partial(plan.completion_inputs, sm.lm, prompt, req), req.cache_prompt, plan.completion_errors
        )
    if req.stream:
        return stream.completion_sse(run, sm.id, include_usage(req))
    return await stream.completion_whole(run, sm.id)


def include_usage(req) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


def loaded(st: ServerState) -> dict:
    return st.provider.models if st.provider.ready else {}


@router.get("/v1/models")
async def list_models(request: Request):
    """Every model offered, `loaded: true|false`; one that cannot load says why."""
    return {"object": "list", "data": listing(state_of(request).provider)}


@router.get("/v1/models/{model_id}")
async def get_model(request: Request, model_id: str):
    return describe(state_of(request).provider, model_id)


@router.post("/api/v1/load")
async def load_model(request: Request):
    """Lemonade's load: the model loaded (the request waits), others unloaded past --max-loaded."""
    st = state_of(request)
    req = await body_of(request, LoadRequest, st.max_body)
    async with using(st.provider, req.model_name):
        pass
    return {"status": "success", "message": f"loaded model: {req.model_name}"}


@router.post("/api/v1/unload")
async def unload_model(request: Request):
    """Lemonade's unload: one model (model_name) or every idle one; 409 while one answers requests."""
    st = state_of(request)
    req = await body_of(request, UnloadRequest, st.max_body)
    unload = getattr(st.provider, "unload", None)
    if unload is None:
        raise ApiError(400, "this server's models cannot be unloaded", code="not_supported")
    done = await unload(req.model_name)
    return {"status": "success", "message": f"unloaded: {', '.join(done) or 'nothing (none loaded)'}", "unloaded": done}


@router.get("/v1/stats")
async def stats(request: Request):
    st = state_of(request)
    return {
        "last_request": st.last,
        "models": {
            i: {
                "queue_depth": sm.queue.depth,
                "kv_cache": vars(sm.cache.stats) if sm.cache else None,
                **dict(zip(("kv_reuse", "kv_reuse_note"), sm.reuse())),
            }
            for i, sm in loaded(st).items()
        },
    }


@router.get("/health")
async def health(request: Request):
    provider = state_of(request).provider
    if provider.error is not None:
        return JSONResponse({"status": "error", "message": provider.error.message}, status_code=503)
    if not provider.ready:
        return JSONResponse({"status": "loading"}, status_code=503)
    return {"status": "ok", "models": list(provider.models)}


@router.get("/metrics")
async def prometheus(request: Request):
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(state_of(request).metrics.text(), media_type=CONTENT_TYPE_LATEST)
