"""The served models: which there are, which are loaded, and one device queue per model.

- `DeviceQueue`: an asyncio FIFO lock; past `max_queue` waiting requests `QueueFull`
  (the route answers 503 with Retry-After).
- `ServedModel`: a loaded model, its queue, its worker thread (worker.py runs the decode
  loop there), a second thread for chat templates and tokenizing (so a request is checked
  and queued while another one generates) and its `PromptCache` (kvcache.py).
- `ModelManager`: the models a server offers (`Entry`: id, folder, facts, why it is not
  loadable) and the loaded ones, at most `max_loaded`, least recently used unloaded first.

The manager's API (the OpenAI, Lemonade and Ollama routes use it):

    manager.ready / .error            started (preloaded models loaded) / the preload failed
    manager.models                    {id: ServedModel} of the loaded ones
    manager.entries()                 every Entry, loaded or not (`entry.loaded`, `entry.problem`)
    manager.get(id)                   the Entry (by id or folder path), or None (an id not listed: the store)
    manager.refresh(force=False)      the store read again, at most once a second: store_scan.Changes
                                      (added, removed, changed ids); listing() calls it
    await manager.ensure(id)          the ServedModel, loading it first (the caller waits)
    await manager.load(id) / unload(id)   for clients that manage models (/api/v1/load, /unload)
    manager.forget(id), .store          a deleted model no longer offered; the store listed (manage.py)
    async with using(manager, id) as sm:  ensure + a lease: never unloaded while leased

A request holds a lease from the lookup until its generation holds the device queue
(worker.begin returns); from then the queue's depth keeps the model loaded. Unloading drops
every reference to the model (OGA model, tokenizer, Generators, KV cache), shuts its threads
down, runs gc and hands freed heap back to the OS (malloc_trim).

Two ways to fill it: `ModelManager.preloaded(folders)` (serve -m: all loaded in a background
thread at start; /health says 503 until then) and `ModelManager.from_store(store)` (serve
without -m: every model folder of the store listed, each loaded on its first request;
/health is 200 at once; the store followed live, see store_scan.py). Tests may pass any
object with `.ready`, `.error`, `.models`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GenerationError, OgaNpuError
from ..generate import stream_generate
from ..kvcache import PromptCache, reuse_support
from ..store import shown_source
from . import watch
from .errors import ApiError
from .http import known_path
from .plan import default_max_tokens
from .store_scan import Entry, LiveStore, StoreScan, entry_of

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
    kv_reuse: bool = True  # False: serve --no-kv-reuse
    generate: Callable = stream_generate  # the decode loop (tests pass a fake one)
    queue: DeviceQueue = field(init=False)
    cache: PromptCache | None = field(init=False)
    executor: ThreadPoolExecutor = field(init=False)  # decodes, one request at a time
    prep: ThreadPoolExecutor = field(init=False)  # chat template and tokenizer, while another decodes
    _guidance: tuple[bool, str] | None = field(init=False, default=None)  # (works, why not): probed once
    _probe_lock: threading.Lock = field(init=False, default_factory=threading.Lock)

    def __post_init__(self):
        self.queue = DeviceQueue(self.max_queue)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"model-{self.id}")
        self.prep = ThreadPoolExecutor(1, thread_name_prefix=f"prep-{self.id}")
        self.cache = PromptCache(self.lm) if self.kv_reuse else None

    def guidance_support(self) -> tuple[bool, str]:
        """Whether guided output (JSON schemas, tool grammars) works here, and why not. Probed on
        first need, in the prep thread (worker.in_prep): the probe builds a Generator with
        llguidance, ~0.3 s that a load (on demand: a waiting request) does not pay."""
        with self._probe_lock:
            if self._guidance is None:
                self._guidance = guidance_support(self.lm)
            return self._guidance

    @property
    def guidance(self) -> bool:
        return self.guidance_support()[0]

    @property
    def guidance_note(self) -> str:
        return self.guidance_support()[1]

    def close(self) -> None:
        """Its threads stopped, its KV cache and model dropped (the manager unloads it)."""
        self.executor.shutdown(wait=True)
        self.prep.shutdown(wait=True)
        if self.cache is not None:
            self.cache.clear()
        self.cache = self.lm = None

    def reuse(self) -> tuple[bool, str]:
        """Whether turns reuse the KV cache here, and why not (runtime, provider, --no-kv-reuse)."""
        return reuse_support(self.lm) if self.kv_reuse else (False, "off (serve --no-kv-reuse)")

    def info(self) -> dict:
        reuse, why = self.reuse()
        man = self.lm.manifest or {}
        return {
            "id": self.id,
            "object": "model",
            "created": int(Path(self.lm.path).stat().st_mtime),
            "owned_by": "oga-npu",
            "context_length": self.lm.context_length,
            "default_max_tokens": default_max_tokens(
                min(self.lm.context_length, getattr(self.lm, "hybrid_limit", None) or self.lm.context_length)
            ),
            "provider": self.lm.provider,
            "decoder": self.lm.decoder,
            "target": man.get("target"),
            "recipe": man.get("recipe"),
            "source": shown_source(man.get("source"), man.get("source_kind")),
            "hub_id": man.get("hub_id"),
            "revision": man.get("revision"),
            "kv_reuse": reuse,
            "kv_reuse_note": why,
            **self.guidance_info(),
        }

    def guidance_info(self) -> dict:
        """guided_output for /v1/models: the probe's verdict once a request needed it, before
        that what capabilities.py says (listing builds no Generator)."""
        ok, why = self._guidance or guidance_hint(self.lm)
        return {"guided_output": ok, **({"guided_output_note": why} if not ok else {})}


def guidance_available(lm) -> bool:
    """Whether this onnxruntime-genai build enforces JSON schemas (llguidance) for this model."""
    return guidance_support(lm)[0]


def guidance_hint(lm) -> tuple[bool, str]:
    """What can be said without building a Generator: the decoder and capabilities.py."""
    from ..capabilities import capabilities

    if lm.decoder != "oga":
        return False, "the direct WebGPU decoder has no guided output"
    if not capabilities().guidance:
        return False, capabilities().guidance_note()
    return True, ""


def guidance_support(lm) -> tuple[bool, str]:
    """guidance_available, and why not: no set_guidance in this onnxruntime-genai
    (capabilities.py), a build without llguidance (a guarded call), or the direct decoder."""
    ok, why = guidance_hint(lm)
    if not ok:
        log.info("guided output is off for %s: %s", lm.path, why)
        return False, why
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


class ModelManager(LiveStore):
    """The models a server offers, the loaded ones, loading on demand (see the module docstring)."""

    def __init__(
        self,
        entries: list[Entry],
        max_loaded: int = 1,
        max_queue: int = DEFAULT_MAX_QUEUE,
        provider: str | None = None,
        fallback: str | None = None,
        loader=None,
        kv_reuse: bool = True,
        make=None,
        spawn=None,
        max_restarts: int | None = None,
    ):
        ids = [e.id for e in entries]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise GenerationError(
                f"two model folders have the same name {dup} (the model id)", "rename one of the folders"
            )
        self._entries = {e.id: e for e in entries}
        self.max_loaded, self.max_queue, self.kv_reuse = max(1, max_loaded), max_queue, kv_reuse
        self.provider, self.fallback, self._loader, self._make = provider, fallback, loader, make or ServedModel
        self._spawn = spawn  # procworker.ProcessModel.start: each loaded model in its own process
        self.max_restarts = max_restarts or watch.MAX_RESTARTS
        self.error: OgaNpuError | None = None
        self.ready = False
        self.store = None  # the ModelStore it lists (from_store): only its folders may be deleted
        self._load_lock: asyncio.Lock | None = None
        self._scan: StoreScan | None = None  # from_store: the store, live (store_scan.py)
        self._retiring: set[asyncio.Task] = set()
        for e in entries:
            known_path(e.folder, e.id)

    # ------------------------------------------------------------ filling it

    @classmethod
    def preloaded(cls, folders: list[Path], **kw) -> ModelManager:
        """serve -m: these folders, all loaded at start (`start`)."""
        entries = [Entry(Path(f).resolve().name, Path(f)) for f in folders]
        return cls(entries, **{**kw, "max_loaded": max(len(entries), 1)})

    @classmethod
    def from_store(cls, store, **kw) -> ModelManager:
        """serve without -m: every model folder of the store; the damaged and unfinished ones
        listed as not loadable with the reason."""
        m = cls([entry_of(se) for se in store.entries()], **kw)
        m._scan = StoreScan(store)
        for e in m.entries():
            m._scan.note(e.id, e.folder)
        m.ready, m.store = True, store
        return m

    def start(self, on_error=None) -> None:
        """Load every entry in a background thread (preloaded); on_error(e) if one fails."""
        threading.Thread(target=self._preload, args=(on_error,), daemon=True, name="load-models").start()

    def _preload(self, on_error) -> None:
        try:
            for e in self._entries.values():
                e.served = self._open(e)
            self.ready = True
        except Exception as ex:  # noqa: BLE001 - reported, and the server stops
            self.error = (
                ex
                if isinstance(ex, OgaNpuError)
                else OgaNpuError(f"loading failed: {ex}", "re-run with OGA_NPU_DEBUG=1")
            )
            if on_error:
                on_error(self.error)

    def _open(self, e: Entry) -> ServedModel:
        """model.load (the same call as `oga-npu run`) and its ServedModel; in a worker thread."""
        from ..model import load

        t0 = time.perf_counter()
        e.weights = watch.weights(e.folder)
        if self._spawn is not None:
            sm = self._spawn(
                e.id,
                e.folder,
                self.provider,
                self.fallback,
                self._loader,
                max_queue=self.max_queue,
                kv_reuse=self.kv_reuse,
            )
            lm = sm.lm
        else:
            lm = (self._loader or load)(e.folder, provider=self.provider, fallback=self.fallback)
            sm = self._make(e.id, lm, self.max_queue, self.kv_reuse)
        log.info(
            "model %s ready: %s, %s decoder, context %d, loaded from %s in %.1f s",
            sm.id,
            lm.provider,
            lm.decoder,
            lm.context_length,
            e.folder,
            time.perf_counter() - t0,
        )
        return sm

    # ------------------------------------------------------------ the API

    @property
    def models(self) -> dict[str, ServedModel]:
        return {i: e.served for i, e in self._entries.items() if e.served is not None}

    def entries(self) -> list[Entry]:
        return list(self._entries.values())

    def get(self, model_id: str) -> Entry | None:
        """The entry by its id or its folder's path; a name not listed is looked for in the store
        (a model added since)."""
        e = self._entries.get(model_id) or by_folder(self._entries.values(), model_id)
        if e is None and self._scan is not None:
            folder = self._scan.folder_for(model_id)
            if folder is not None:
                self._reread(model_id, folder)
                e = self._entries.get(model_id)
        return e

    def _not_found(self, model_id: str) -> ApiError:
        return not_found(model_id, list(self._entries), empty=NONE_INSTALLED)

    def entry_or_error(self, model_id: str) -> Entry:
        e = self.get(model_id)
        if e is None:
            raise self._not_found(model_id)
        if e.problem is not None:
            raise ApiError(
                404,
                f"the model '{model_id}' cannot be loaded: {e.problem}",
                type_="not_found_error",
                param="model",
                code="model_not_loadable",
                echo=(model_id,),
            )
        return e

    async def ensure(self, model_id: str) -> ServedModel:
        """The loaded model; loads it first (unloading the least recently used idle ones).
        The load runs to its end even when the asking client leaves (the next one uses it)."""
        e = self.get(model_id)
        if e is not None and self._scan is not None:
            self._recheck(e)  # its folder changed: re-read (gone, re-prepared, damaged, restored)
        e = self.entry_or_error(model_id)
        await self._check(e)
        e.last_used = time.monotonic()
        e.leases += 1  # loaded for this caller: not unloaded for another before it resumes
        try:
            while e.served is None:
                if e.loading is None:
                    e.loading = asyncio.ensure_future(self._bring_in(e))
                    e.loading.add_done_callback(lambda t: t.cancelled() or t.exception())
                await asyncio.shield(e.loading)
                if self._entries.get(e.id) is not e:  # its folder was removed meanwhile
                    raise self._not_found(model_id)
                if e.problem is not None:
                    self.entry_or_error(model_id)
        finally:
            e.leases -= 1
        return e.served

    async def _check(self, e: Entry) -> None:
        """Before a request: a crashed worker dropped (restarted by the load that follows, within
        the limit); weights changed on disk: the model unloaded and refused (watch.py)."""
        sm = e.served
        dead = sm is not None and getattr(sm, "dead", None) is not None
        why = watch.changed(e.weights, e.folder) if sm is not None and e.weights else None
        if why is not None:
            e.problem = watch.weights_problem(e.id, why)
            log.error("model %s: %s", e.id, e.problem)
            if self._scan is not None:
                self._scan.note(e.id, e.folder)  # refused until its files change again
            if dead or not e.busy:
                await self._unload(e)
            raise watch.changed_error(e.id, e.problem)
        if dead:
            e.served = None
            e.crashes = [*watch.recent(e.crashes), time.monotonic()]
            await asyncio.get_running_loop().run_in_executor(None, release_memory, sm)
        if e.served is None:
            refusal = watch.restart_refusal(e.id, watch.recent(e.crashes), self.max_restarts)
            if refusal is not None:
                raise refusal

    async def _bring_in(self, e: Entry) -> None:
        try:
            if self._load_lock is None:
                self._load_lock = asyncio.Lock()
            async with self._load_lock:  # one load at a time
                if e.served is None:
                    await self._make_room()
                    await self._load(e)
                    if self._entries.get(e.id) is not e:  # removed from the store while it loaded
                        self._retire(e)
        finally:
            e.loading = None

    async def _load(self, e: Entry) -> None:
        try:
            e.served = await asyncio.get_running_loop().run_in_executor(None, self._open, e)
        except Exception as ex:
            e.problem = ex.message if isinstance(ex, OgaNpuError) else f"{type(ex).__name__}: {ex}"
            log.warning("model %s failed to load: %s", e.id, e.problem)
            raise ApiError(
                503, f"the model failed to load: {e.problem}", type_="server_error", code="model_load_failed"
            ) from ex
        e.last_used = time.monotonic()

    async def _make_room(self) -> None:
        """Unload the least recently used idle models until one more fits; wait while all are busy."""
        while len(self.models) >= self.max_loaded:
            idle = [e for e in self._entries.values() if e.served is not None and not e.busy]
            if idle:
                await self._unload(min(idle, key=lambda e: e.last_used))
            else:
                await asyncio.sleep(0.05)

    async def load(self, model_id: str) -> ServedModel:
        return await self.ensure(model_id)

    async def unload(self, model_id: str | None = None) -> list[str]:
        """Unload one model (None: every idle one); ApiError 409 when it is in use."""
        if model_id is None:
            targets = [e for e in self._entries.values() if e.served is not None and not e.busy]
        else:
            e = self.get(model_id)
            if e is None:
                raise ApiError(
                    404,
                    f"the model '{model_id}' does not exist",
                    type_="not_found_error",
                    param="model_name",
                    code="model_not_found",
                    echo=(model_id,),
                )
            if e.busy:
                raise ApiError(
                    409,
                    f"the model '{model_id}' is answering requests; unload it when they are done",
                    param="model_name",
                    code="model_busy",
                )
            targets = [e] if e.served is not None else []
        for e in targets:
            await self._unload(e)
        return [e.id for e in targets]

    def _release(self, sm) -> None:  # store_scan.LiveStore: a retired model's memory
        release_memory(sm)

    def forget(self, model_id: str) -> None:
        """No longer offered (its folder was deleted); the caller unloaded it first."""
        self._entries.pop(model_id, None)
        if self._scan is not None:
            self._scan.forget(model_id)

    async def _unload(self, e: Entry) -> None:
        sm, e.served = e.served, None
        await asyncio.get_running_loop().run_in_executor(None, release_memory, sm)
        log.info("model %s unloaded", e.id)


def release_memory(sm: ServedModel) -> None:
    """Drop the model (its threads, KV cache, OGA model and tokenizer), collect, trim the heap."""
    import gc

    sm.close()
    del sm
    gc.collect()
    trim_heap()


def trim_heap() -> None:
    """glibc keeps freed heap; malloc_trim hands it back to the OS (nothing elsewhere)."""
    import ctypes
    import ctypes.util
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass


# the lookups the routes use (lookup.py), here too for the callers that import them from models
from .lookup import NONE_INSTALLED, by_folder, check_ready, describe, listing, not_found, served, using  # noqa: E402

__all__ = ["check_ready", "describe", "listing", "served", "using"]
