"""The lookups a request makes before its generation: the listing (/v1/models), one model's
entry, and `using(provider, id)` (the model loaded, leased until the device queue holds it).
The provider: a models.ModelManager, or any object with `.ready`, `.error`, `.models`."""

from __future__ import annotations

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
    raise ApiError(
        404, f"the model '{model_id}' does not exist", type_="not_found_error", param="model", code="model_not_found"
    )


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
        raise ApiError(
            404,
            f"the model '{model_id}' does not exist (loaded: {', '.join(provider.models)})",
            type_="not_found_error",
            param="model",
            code="model_not_found",
        )
    return sm
