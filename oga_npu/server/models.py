"""The served models: one loaded model = one device, its requests one at a time.

- `DeviceQueue`: an asyncio FIFO lock; past `max_queue` waiting requests `QueueFull`
  (the route answers 503 with Retry-After).
- `ServedModel`: a loaded model, its queue, its worker thread (worker.py runs the decode
  loop there), a second thread for chat templates and tokenizing (so a request is checked
  and queued while another one generates) and its `PromptCache` (kvcache.py).
- `FolderProvider`: loads model folders in a background thread (/health says 503 until they
  are ready); the id is the folder name.
- `served(provider, id)`: the ServedModel a request asks for, or the ApiError to answer.

A provider is any object with `.ready`, `.error` and `.models` (id -> ServedModel); tests
inject their own (`create_app(provider)`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import Any

from ..errors import GenerationError, OgaNpuError
from ..generate import stream_generate
from ..kvcache import PromptCache, reuse_support
from .errors import RETRY_AFTER_S, ApiError
from .http import known_path

log = logging.getLogger("oga_npu.server")

DEFAULT_MAX_QUEUE = 16


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


@dataclass
class ServedModel:
    """A loaded model, its device queue, its worker thread and its KV cache."""

    id: str
    lm: Any
    max_queue: int = DEFAULT_MAX_QUEUE
    kv_reuse: bool = True                              # False: serve --no-kv-reuse
    generate: Callable = stream_generate               # the decode loop (tests pass a fake one)
    queue: DeviceQueue = field(init=False)
    cache: PromptCache | None = field(init=False)
    executor: ThreadPoolExecutor = field(init=False)   # decodes, one request at a time
    prep: ThreadPoolExecutor = field(init=False)       # chat template and tokenizer, while another decodes
    guidance: bool = field(init=False)

    def __post_init__(self):
        self.queue = DeviceQueue(self.max_queue)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"model-{self.id}")
        self.prep = ThreadPoolExecutor(1, thread_name_prefix=f"prep-{self.id}")
        self.cache = PromptCache(self.lm) if self.kv_reuse else None
        self.guidance = guidance_available(self.lm)

    def info(self) -> dict:
        reuse, why = reuse_support(self.lm) if self.kv_reuse else (False, "off (serve --no-kv-reuse)")
        man = self.lm.manifest or {}
        return {"id": self.id, "object": "model", "created": int(Path(self.lm.path).stat().st_mtime),
                "owned_by": "oga-npu", "context_length": self.lm.context_length, "provider": self.lm.provider,
                "decoder": self.lm.decoder, "target": man.get("target"), "recipe": man.get("recipe"),
                "source": man.get("source"), "hub_id": man.get("hub_id"),
                "revision": man.get("revision"), "kv_reuse": reuse, "kv_reuse_note": why,
                "guided_output": self.guidance}


def guidance_available(lm) -> bool:
    """Whether this onnxruntime-genai build enforces JSON schemas (llguidance) for this model."""
    if lm.decoder != "oga":
        return False
    try:
        import onnxruntime_genai as og

        params = og.GeneratorParams(lm.model)
        params.set_search_options(max_length=8)
        params.set_guidance("json_schema", '{"type": "object"}')
        og.Generator(lm.model, params)
        return True
    except Exception as e:  # noqa: BLE001 - a build without llguidance raises here
        log.info("guided output is off for %s: %s", lm.path, e)
        return False


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
        from ..model import load

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


async def served(provider, model_id: str) -> ServedModel:
    """The model a request names, ready to queue on; ApiError (503 loading or failed, 404
    unknown) otherwise."""
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
