"""The lookups a request makes before its generation: the listing (/v1/models), one model's
entry, and `using(provider, id)` (the model loaded, leased until the device queue holds it).
The provider: a models.ModelManager, or any object with `.ready`, `.error`, `.models`."""

from __future__ import annotations

import os

from .errors import RETRY_AFTER_S, ApiError


def listing(provider) -> list[dict]:
    """/v1/models: every model the provider offers, loaded or not (none while preloading)."""
    if not provider.ready:
        return []
    refresh = getattr(provider, "refresh", None)
    if refresh is not None:
        refresh()  # the store read again (throttled): models added or removed since start
    if hasattr(provider, "entries"):
        return [e.info() for e in provider.entries()]
    return [{**sm.info(), "loaded": True} for sm in provider.models.values()]


def describe(provider, model_id: str) -> dict:
    """/v1/models/{id}: one model's entry, without loading it."""
    check_ready(provider)
    refresh = getattr(provider, "refresh", None)
    if refresh is not None:
        refresh()
    get = getattr(provider, "get", None)
    e = get(model_id) if get else None
    if e is not None:
        return e.info()
    if get is None and model_id in provider.models:
        return {**provider.models[model_id].info(), "loaded": True}
    raise not_found(model_id)


class _Lease:
    def __init__(self, provider, model_id: str):
        self.provider, self.model_id, self.entry = provider, model_id, None

    async def __aenter__(self):
        sm = await served(self.provider, self.model_id)
        get = getattr(self.provider, "get", None)
        self.entry = get(self.model_id) if get else None
        if self.entry is not None:
            self.entry.leases += 1
        return sm

    async def __aexit__(self, *exc) -> None:
        if self.entry is not None:
            self.entry.leases -= 1


def using(provider, model_id: str) -> _Lease:
    """`async with using(provider, id) as sm`: the model, loaded, kept loaded inside the block."""
    return _Lease(provider, model_id)


def check_ready(provider) -> None:
    """ApiError 503 while the provider is loading its models, or when that failed."""
    if provider.error is not None:
        raise ApiError(
            503, f"the model failed to load: {provider.error.message}", type_="server_error", code="model_load_failed"
        )
    if not provider.ready:
        raise ApiError(
            503,
            "the models are still loading",
            type_="unavailable_error",
            code="loading",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )


async def served(provider, model_id: str):
    """The model a request names, loaded and ready to queue on; ApiError (503 loading or
    failed, 404 unknown or not loadable) otherwise."""
    check_ready(provider)
    ensure = getattr(provider, "ensure", None)
    if ensure is not None:
        return await ensure(model_id)
    sm = provider.models.get(model_id)
    if sm is None:
        raise not_found(model_id, list(provider.models), "loaded")
    return sm


NONE_INSTALLED = (
    ": no model is installed yet (oga-npu pull NAME or oga-npu prepare SOURCE, or the chat page's Models panel)"
)


def not_found(
    model_id: str, names: list[str] | None = None, what: str = "models", empty: str | None = None
) -> ApiError:
    """404 for a name no model has, quoted as the client sent it (a path too: not scrubbed);
    `empty`: what to say instead of the list when `names` is empty."""
    listed = f" ({what}: {', '.join(names)})" if names is not None else ""
    if empty is not None and names == []:
        listed = empty
    hint = "; a model is named by its store name, not a path" if "/" in model_id or "\\" in model_id else ""
    return ApiError(
        404,
        f"the model '{model_id}' does not exist{listed}{hint}",
        type_="not_found_error",
        param="model",
        code="model_not_found",
        echo=(model_id,),
    )


def by_folder(entries, name: str):
    """The entry (of `entries`, with `.folder`) whose folder `name` is: a client may name a
    listed model by its folder's path, as `oga-npu run` takes it."""
    if "/" not in name and "\\" not in name:
        return None
    want = os.path.normcase(os.path.normpath(name))
    for e in entries:
        if want in {os.path.normcase(str(p)) for p in (e.folder, e.folder.resolve())}:
            return e
    return None
