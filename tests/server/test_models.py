"""models.py in process: the model manager with a fake loader (no OGA): preloaded models,
a store's models on demand, least recently used unloading, leases, memory dropped."""

from __future__ import annotations

import asyncio
import gc
import json
import threading
import weakref
from pathlib import Path

import pytest
from fakes import FakeLM

from oga_npu.errors import ModelFolderError
from oga_npu.server.errors import ApiError
from oga_npu.server.models import ModelManager, ServedModel, listing, served, using
from oga_npu.store import ModelStore
from oga_npu.workdir import REQUEST


def _wait(cond, timeout=10):
    ev = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if cond():
            return True
        ev.wait(0.01)
    return False


class Loader:
    """model.load's stand-in: a FakeLM per call, each one watched (weakref) to see it freed."""

    def __init__(self, fail: set[str] = frozenset()):
        self.calls: list[str] = []
        self.made: dict[str, list[weakref.ref]] = {}
        self.fail = fail
        self.gate: threading.Event | None = None

    def __call__(self, path, **kw):
        path = Path(path)
        self.calls.append(path.name)
        if self.gate is not None:
            self.gate.wait(10)
        if path.name in self.fail:
            raise ModelFolderError(f"{path} cannot be loaded: model.onnx is broken", "prepare it again")
        lm = FakeLM(path, {"target": "cpu"})
        self.made.setdefault(path.name, []).append(weakref.ref(lm))
        return lm

    def alive(self, name: str) -> int:
        gc.collect()
        return sum(r() is not None for r in self.made.get(name, []))


def folder(root: Path, name: str, request: bool = False) -> Path:
    """A model folder check_folder(deep=False) accepts (external: not made by prepare)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "genai_config.json").write_text(
        json.dumps({"model": {"context_length": 256, "decoder": {"filename": "model.onnx"}}})
    )
    (d / "model.onnx").write_bytes(b"x")
    (d / "tokenizer.json").write_text("{}")
    if request:  # prepare started it and never finished: incomplete
        (d / REQUEST).write_text(json.dumps({"source": "x/y", "target": "cpu"}))
    return d


def on_demand(tmp_path, names=("a-cpu", "b-cpu", "c-cpu"), max_loaded=1, loader=None) -> ModelManager:
    for n in names:
        folder(tmp_path / "store", n)
    return ModelManager.from_store(
        ModelStore(tmp_path / "store"), max_loaded=max_loaded, loader=loader or Loader(), kv_reuse=False
    )


# ---------------------------------------------------------------- serve -m: preloaded


def test_preloaded_folders_load_in_the_background_and_are_served_by_folder_name(tmp_path):
    a, b = folder(tmp_path, "a-cpu"), folder(tmp_path, "b-cpu")
    loader = Loader()
    loader.gate = threading.Event()
    m = ModelManager.preloaded([a, b], provider="cpu", loader=loader, kv_reuse=False)
    m.start()
    with pytest.raises(ApiError) as e:
        asyncio.run(served(m, "a-cpu"))
    assert e.value.status == 503 and e.value.code == "loading"
    loader.gate.set()
    assert _wait(lambda: m.ready)
    assert loader.calls == ["a-cpu", "b-cpu"] and list(m.models) == ["a-cpu", "b-cpu"]
    assert asyncio.run(served(m, "b-cpu")).lm.path == b
    assert [d["loaded"] for d in listing(m)] == [True, True]
    with pytest.raises(ApiError) as e:
        asyncio.run(served(m, "c-cpu"))
    assert e.value.status == 404 and e.value.code == "model_not_found" and "a-cpu, b-cpu" in e.value.message


def test_a_preload_failure_is_reported_and_every_request_is_503(tmp_path):
    seen = []
    m = ModelManager.preloaded([tmp_path / "x-cpu"], loader=Loader(fail={"x-cpu"}))
    m.start(seen.append)
    assert _wait(lambda: m.error is not None)
    assert seen == [m.error] and not m.ready and "model.onnx is broken" in m.error.message
    with pytest.raises(ApiError) as e:
        asyncio.run(served(m, "x-cpu"))
    assert e.value.status == 503 and e.value.code == "model_load_failed"


def test_two_folders_with_one_name_are_refused(tmp_path):
    with pytest.raises(Exception, match="same name"):
        ModelManager.preloaded([tmp_path / "one" / "m", tmp_path / "two" / "m"], loader=Loader())


# ---------------------------------------------------------------- serve: the store on demand


def test_the_store_is_listed_unloaded_and_a_broken_folder_is_not_loadable(tmp_path):
    root = tmp_path / "store"
    folder(root, "a-cpu")
    (folder(root, "half-cpu", request=True))
    broken = folder(root, "broken-cpu")
    (broken / "model.onnx").unlink()
    loader = Loader()
    m = ModelManager.from_store(ModelStore(root), loader=loader, kv_reuse=False)
    assert m.ready and m.models == {} and loader.calls == []
    rows = {d["id"]: d for d in listing(m)}
    assert rows["a-cpu"]["loaded"] is False and rows["a-cpu"]["loadable"] is True
    assert rows["a-cpu"]["context_length"] == 256 and rows["a-cpu"]["size"] > 0
    assert (
        rows["broken-cpu"]["loadable"] is False and "model.onnx is missing" in rows["broken-cpu"]["not_loadable_reason"]
    )
    assert rows["half-cpu"]["loadable"] is False and rows["half-cpu"]["not_loadable_reason"]
    for name in ("broken-cpu", "half-cpu"):
        with pytest.raises(ApiError) as e:
            asyncio.run(m.ensure(name))
        assert e.value.status == 404 and e.value.code == "model_not_loadable"
    assert loader.calls == []  # never tried


def test_a_request_loads_its_model_and_the_least_recently_used_is_unloaded_and_freed(tmp_path):
    loader = Loader()
    m = on_demand(tmp_path, max_loaded=2, loader=loader)

    async def go():
        await m.ensure("a-cpu")
        await m.ensure("b-cpu")
        await m.ensure("a-cpu")  # a is now the more recent
        await m.ensure("c-cpu")  # unloads b
        return set(m.models)

    assert asyncio.run(go()) == {"a-cpu", "c-cpu"}
    assert loader.calls == ["a-cpu", "b-cpu", "c-cpu"]
    assert loader.alive("b-cpu") == 0 and loader.alive("a-cpu") == 1  # no reference to b's model is left
    assert [d["loaded"] for d in listing(m)] == [True, False, True]


def test_alternating_requests_with_max_loaded_1_each_load_once_per_switch(tmp_path):
    loader = Loader()
    m = on_demand(tmp_path, names=("a-cpu", "b-cpu"), loader=loader)

    async def go():
        for name in ["a-cpu", "b-cpu"] * 3:
            async with using(m, name) as sm:
                assert sm.id == name and list(m.models) == [name]

    asyncio.run(go())
    assert loader.calls == ["a-cpu", "b-cpu"] * 3
    assert loader.alive("a-cpu") == 0 and loader.alive("b-cpu") == 1


def test_a_model_in_use_is_never_unloaded_the_next_load_waits(tmp_path):
    m = on_demand(tmp_path, names=("a-cpu", "b-cpu"))

    async def go():
        order = []
        async with using(m, "a-cpu"):
            with pytest.raises(ApiError) as e:
                await m.unload("a-cpu")
            assert e.value.status == 409 and e.value.code == "model_busy"
            b = asyncio.ensure_future(m.ensure("b-cpu"))
            await asyncio.sleep(0.2)
            order.append(("a held", sorted(m.models), b.done()))
        await b
        order.append(("a released", sorted(m.models), b.done()))
        return order

    assert asyncio.run(go()) == [("a held", ["a-cpu"], False), ("a released", ["b-cpu"], True)]


def test_a_model_with_a_queued_request_is_not_unloaded(tmp_path):
    m = on_demand(tmp_path, names=("a-cpu", "b-cpu"))

    async def go():
        sm = await m.ensure("a-cpu")
        await sm.queue.acquire()  # a generation runs (worker.events holds the queue)
        b = asyncio.ensure_future(m.ensure("b-cpu"))
        await asyncio.sleep(0.2)
        held = (sorted(m.models), b.done())
        sm.queue.release()
        await b
        return held, sorted(m.models)

    assert asyncio.run(go()) == ((["a-cpu"], False), ["b-cpu"])


def test_concurrent_requests_for_one_model_load_it_once(tmp_path):
    loader = Loader()
    m = on_demand(tmp_path, loader=loader)

    async def go():
        sms = await asyncio.gather(*(m.ensure("b-cpu") for _ in range(5)))
        return {id(sm) for sm in sms}

    assert len(asyncio.run(go())) == 1 and loader.calls == ["b-cpu"]


def test_load_and_unload_for_clients_that_manage_models(tmp_path):
    loader = Loader()
    m = on_demand(tmp_path, max_loaded=3, loader=loader)

    async def go():
        await m.load("a-cpu")
        await m.load("c-cpu")
        one = await m.unload("a-cpu")
        again = await m.unload("a-cpu")  # not loaded: nothing to do
        rest = await m.unload()  # every idle one
        with pytest.raises(ApiError) as e:
            await m.unload("nope")
        return one, again, rest, e.value.status

    assert asyncio.run(go()) == (["a-cpu"], [], ["c-cpu"], 404)
    assert m.models == {} and loader.alive("a-cpu") == loader.alive("c-cpu") == 0


def test_a_failed_load_answers_503_then_lists_the_model_as_not_loadable(tmp_path):
    m = on_demand(tmp_path, loader=Loader(fail={"b-cpu"}))
    with pytest.raises(ApiError) as e:
        asyncio.run(m.ensure("b-cpu"))
    assert e.value.status == 503 and e.value.code == "model_load_failed" and "broken" in e.value.message
    row = next(d for d in listing(m) if d["id"] == "b-cpu")
    assert row["loadable"] is False and "broken" in row["not_loadable_reason"]
    assert asyncio.run(m.ensure("a-cpu")).id == "a-cpu"


def test_unloading_stops_the_model_threads(tmp_path):
    m = on_demand(tmp_path, names=("a-cpu", "b-cpu"))

    async def go():
        sm: ServedModel = await m.ensure("a-cpu")
        await asyncio.get_running_loop().run_in_executor(sm.executor, lambda: None)  # its thread started
        await m.ensure("b-cpu")
        return sm

    sm = asyncio.run(go())
    assert sm.lm is None and sm.cache is None and sm.executor._shutdown
    assert not any(t.name.startswith("model-a-cpu") for t in threading.enumerate())


# ---------------------------------------------------------------- names, paths and error text


def test_a_model_named_by_its_folder_path_is_that_listed_model(tmp_path):
    """A client (or a user who pasted `oga-npu models`' path) names a listed model by its
    folder: it is that model. An unlisted path is a 404 that quotes the path as sent (not
    cut to its last part, which read as a listed model that "does not exist")."""
    m = on_demand(tmp_path, names=("a-cpu", "b-cpu"))
    a = tmp_path / "store" / "a-cpu"

    async def go(name):
        async with using(m, name) as sm:
            return sm.id

    for name in (str(a), str(a) + "/", str(a.resolve()), str(tmp_path / "store" / "x" / ".." / "a-cpu")):
        assert asyncio.run(go(name)) == "a-cpu"
    assert m.get(str(a)) is m.get("a-cpu") and m.get("store/a-cpu") is None
    for name in (str(tmp_path / "elsewhere" / "a-cpu"), "/etc/passwd"):
        with pytest.raises(ApiError) as e:
            asyncio.run(go(name))
        msg = e.value.body()["error"]["message"]
        assert e.value.status == 404 and e.value.code == "model_not_found"
        assert f"the model '{name}' does not exist" in msg and "a-cpu, b-cpu" in msg and "store name" in msg
    with pytest.raises(ApiError) as e:  # a plain unknown name: no word about paths
        asyncio.run(go("zz"))
    assert "path" not in e.value.body()["error"]["message"]


def test_error_text_keeps_url_paths_and_cuts_filesystem_paths():
    from oga_npu.server.errors import not_supported
    from oga_npu.server.http import scrub_paths
    from oga_npu.server.ollama import ollama_body

    e = not_supported("tools on /api/chat (use /v1/chat/completions)", "tools")
    msg = "tools on /api/chat (use /v1/chat/completions) is not supported by oga-npu serve"
    assert e.body()["error"]["message"] == msg and ollama_body(e) == {"error": msg}
    assert scrub_paths("cannot read /home/u/models/tiny/model.onnx: gone") == "cannot read model.onnx: gone"
    assert scrub_paths(r"C:\Users\me\models\x\model.onnx is broken") == "model.onnx is broken"
    assert scrub_paths("C:/api/secret/w.bin is broken") == "w.bin is broken"  # only the server's own URLs stay
    # what a client sent stays as sent where it is quoted; paths beside it are still cut
    text = "the model '/srv/m/a' does not exist; see /var/log/x.log"
    assert scrub_paths(text, ("/srv/m/a",)) == "the model '/srv/m/a' does not exist; see x.log"


def test_the_listing_shows_a_source_as_the_user_knows_it_not_the_machines_path(tmp_path):
    """/v1/models: a hub id as is, a local .gguf or HF folder by its name; the full path
    stays in the store (what `oga-npu models` prints on the machine)."""
    root = tmp_path / "store"
    gguf = tmp_path / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    sources = {"g-cpu": (str(gguf), "gguf"), "h-cpu": ("HuggingFaceTB/SmolLM2-135M-Instruct", "hub")}
    for n in sources:
        folder(root, n)
    half = folder(root, "half-cpu", request=True)  # unfinished: only its request, no source kind
    (half / REQUEST).write_text(json.dumps({"source": str(tmp_path / "hf" / "my-llama") + "/", "target": "cpu"}))

    class WithSource(Loader):
        def __call__(self, path, **kw):
            lm = super().__call__(path, **kw)
            source, kind = sources[Path(path).name]
            lm.manifest = {"target": "cpu", "source": source, "source_kind": kind}
            return lm

    m = ModelManager.from_store(ModelStore(root), loader=WithSource(), kv_reuse=False, max_loaded=2)
    for n in sources:
        asyncio.run(m.ensure(n))
    rows = {d["id"]: d for d in listing(m)}
    assert rows["g-cpu"]["loaded"] and rows["g-cpu"]["source"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert rows["h-cpu"]["source"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert rows["half-cpu"]["loaded"] is False and rows["half-cpu"]["source"] == "my-llama"
    assert str(tmp_path) not in json.dumps(listing(m))
    assert {e.name: e.source for e in ModelStore(root).entries()}["half-cpu"].startswith(str(tmp_path))
