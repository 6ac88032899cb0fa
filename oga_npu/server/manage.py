"""Deleting a model of the store through the server: `POST /api/v1/delete` (Lemonade's
shape, behind the API key like /api/v1/load and /unload) and Ollama's `/api/delete` (DELETE
or POST, `{"model"}` or `{"name"}`; 200 with an empty body, 404 `{"error": ...}`).

Only the store's models are deleted (a folder given to `serve -m` is refused): unloaded
first (409 while it answers requests), then removed as `oga-npu rm` removes it
(store.ModelStore.removal / remove: the refusals, the folder renamed away then deleted, the
cache entries only it used), and no longer listed.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict

from ..errors import LockedError, OgaNpuError
from .errors import ApiError
from .routes import body_of

router = APIRouter()


class DeleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = None
    name: str | None = None  # Ollama's older field
    model_name: str | None = None  # Lemonade's

    def target(self) -> str:
        name = self.model or self.name or self.model_name
        if not name or not name.strip():
            raise ApiError(400, 'name the model to delete: {"model": NAME}', param="model", code="invalid_value")
        return name.strip()


def not_found(name: str) -> ApiError:
    return ApiError(404, f"model '{name}' not found", type_="not_found_error", param="model", code="model_not_found")


async def delete_model(provider, name: str) -> int:
    """Unload `name`, remove its folder and cache entries; the bytes freed. ApiError 404 (not
    offered), 400 (not the store's, or not an oga-npu folder), 409 (busy, or a prepare holds it)."""
    get = getattr(provider, "get", None)
    e = get(name) if get else None
    if e is None:
        raise not_found(name)
    store = getattr(provider, "store", None)
    if store is None or not store.inside(e.folder):
        raise ApiError(
            400,
            f"the model '{name}' is the folder {e.folder} given to serve -m; only the model store's models "
            "are deleted here (remove it with oga-npu rm --outside-store)",
            param="model",
            code="not_in_store",
        )
    loop = asyncio.get_running_loop()
    try:
        entry = await loop.run_in_executor(None, store.removal, e.folder)
    except OgaNpuError as ex:
        status = 409 if isinstance(ex, LockedError) else 400
        raise ApiError(status, ex.message + (f" ({ex.fix})" if ex.fix else ""), param="model") from ex
    if e.busy:
        raise ApiError(
            409, f"the model '{name}' is answering requests; delete it when they are done", code="model_busy"
        )
    if e.loaded:
        await provider.unload(name)
    provider.forget(name)  # no request finds it from here on
    freed, cached = await loop.run_in_executor(None, store.remove, entry)
    return freed + cached


async def _name(request: Request) -> str:
    return (await body_of(request, DeleteRequest, request.app.state.server.max_body)).target()


@router.post("/api/v1/delete")
async def delete_v1(request: Request):
    name = await _name(request)
    freed = await delete_model(request.app.state.server.provider, name)
    return {"status": "success", "message": f"deleted model: {name}", "freed_bytes": freed}


@router.api_route("/api/delete", methods=["DELETE", "POST"])
async def delete_ollama(request: Request):
    name = await _name(request)
    if name.endswith(":latest"):  # Ollama clients name models NAME:latest (as /api/tags lists them)
        name = name[: -len(":latest")]
    await delete_model(request.app.state.server.provider, name)
    return Response(status_code=200)
