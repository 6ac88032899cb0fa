"""Pulling models through the server: Ollama's `POST /api/pull`, Lemonade-style `POST
/api/v1/pull` (behind the key, as every non-public route) and `GET /api/v1/catalog`.

A pull runs oga_npu.pull.pull in a thread (the server keeps answering), its events become
NDJSON lines as Ollama streams them ({"status": "pulling manifest"}, {"status": "pulling
<digest>", "digest", "total", "completed"}, ..., {"status": "success"}); /api/v1/pull's last
line adds "model": the store name. One pull per source at a time (409 for a second). When it is
done the model manager's `refresh` (when it has one) lists the new model.
"""

from __future__ import annotations

import asyncio
import json
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict

from ..errors import HubError, OgaNpuError, PullError
from .errors import ApiError
from .routes import body_of, state_of

router = APIRouter()
NDJSON = "application/x-ndjson"
BYTES_EVERY_S = 0.25  # byte progress at most this often per file (the last one always)


class OllamaPull(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    name: str | None = None  # Ollama's older field
    insecure: bool | None = None
    stream: bool = True


class V1Pull(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    model_name: str | None = None  # Lemonade's field
    variant: str | None = None
    revision: str | None = None
    name: str | None = None  # the name in the store
    stream: bool = True


def status_for(e: OgaNpuError) -> int:
    """A pull's error as a 4xx (503 when the hub cannot be reached)."""
    text = e.message.lower()
    if isinstance(e, HubError) and ("not found" in text or "is not in the repo" in text):
        return 404
    if "not reachable" in text:
        return 503
    return 400


def _source(req) -> str:
    src = (req.model or req.name) if isinstance(req, OllamaPull) else (req.model or req.model_name)
    src = src or ""
    if not src.strip():
        raise ApiError(
            400, 'name the model to pull: {"model": "NAME or org/repo"}', param="model", code="missing_model"
        )
    return src.strip().removesuffix(":latest")


def _request(req):
    from ..pull import PullRequest

    if isinstance(req, OllamaPull):
        return PullRequest(_source(req))
    return PullRequest(_source(req), variant=req.variant, revision=req.revision, name=req.name)


async def _events(st, preq, final_model: bool):
    """Run the pull in a thread; yield its events as dicts (an error as {"error": ...}, last)."""
    from ..pull import pull

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    last_sent: dict[str, float] = {}

    def progress(ev) -> None:
        if ev.digest is not None and ev.completed != ev.total:
            now = time.monotonic()
            if now - last_sent.get(ev.digest, 0.0) < BYTES_EVERY_S:
                return
            last_sent[ev.digest] = now
        loop.call_soon_threadsafe(queue.put_nowait, ev.to_dict())

    key = preq.source
    if key in st.pulls:
        raise ApiError(409, f"a pull of {key} is already running", code="pull_running")
    store = getattr(st.provider, "store", None)  # the store this server lists (--models-dir too); None: the default
    fut = loop.run_in_executor(None, lambda: pull(preq, progress, store=store))
    st.pulls[key] = fut
    fut.add_done_callback(lambda f: _pull_done(st, key, f))
    fut.add_done_callback(lambda _f: queue.put_nowait(None))
    while True:
        item = await queue.get()
        if item is None:
            break
        if item.get("status") != "success":  # sent last, below, once the model is listed
            yield item
    try:
        result = fut.result()
    except OgaNpuError as e:
        yield {"error": e.message + (f" (fix: {e.fix})" if e.fix else ""), "_status": status_for(e)}
        return
    yield {"status": "success", **({"model": result.name} if final_model else {})}


def _pull_done(st, key: str, fut) -> None:
    """The pull is over (even when its client left): the next one may start, and the manager
    (when it can) lists the new model."""
    st.pulls.pop(key, None)
    if fut.cancelled() or fut.exception() is not None:
        return
    refresh = getattr(st.provider, "refresh", None)
    if refresh is not None:
        refresh(force=True)


async def _answer(request: Request, cls, final_model: bool):
    st = state_of(request)
    req = await body_of(request, cls, st.max_body)
    try:
        preq = _request(req)
        from ..pull.run import plan_source

        plan_source(preq)  # a malformed name is a 400 before anything streams
    except PullError as e:
        raise ApiError(status_for(e), e.message, param="model", code="invalid_model") from None
    events = _events(st, preq, final_model)
    if not req.stream:
        last = None
        async for item in events:
            last = item
        if last and "error" in last:
            return JSONResponse({"error": last["error"]}, status_code=last["_status"])
        return last

    first = await anext(events)  # a 409 or an immediate error still gets its status code
    if "error" in first:
        return JSONResponse({"error": first["error"]}, status_code=first["_status"])

    async def lines():
        yield json.dumps(first) + "\n"
        async for item in events:
            item.pop("_status", None)
            yield json.dumps(item) + "\n"

    return StreamingResponse(lines(), media_type=NDJSON)


@router.post("/api/pull")
async def ollama_pull(request: Request):
    """Ollama's pull: a catalog name, org/repo, org/repo:QUANT or org/repo/FILE.gguf."""
    return await _answer(request, OllamaPull, final_model=False)


@router.post("/api/v1/pull")
async def v1_pull(request: Request):
    """The same pull (with variant, revision, name); the last line names the model."""
    return await _answer(request, V1Pull, final_model=True)


@router.get("/api/v1/catalog")
async def catalog(request: Request):
    """The catalog, with whether each fits this machine and is in the store."""
    from ..pull.catalog import listing
    from ..pull.run import installed_names
    from ..store import ModelStore

    store = getattr(state_of(request).provider, "store", None) or ModelStore()
    data = await asyncio.get_running_loop().run_in_executor(None, lambda: listing(installed_names(store)))
    return {"data": data}
