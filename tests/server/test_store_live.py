"""store_scan.py in process: serve without -m follows the store (fake loader, no OGA): models
added after start are listed and load, removed ones are 404 (their model dropped), an
interrupted prepare says so and how to resume, a damaged model loads again once its files
change, and the full rescan is throttled."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys

import pytest
from test_models import Loader, folder

from oga_npu.server.errors import ApiError
from oga_npu.server.models import ModelManager, listing
from oga_npu.store import ModelStore
from oga_npu.workdir import LOCK, MANIFEST, REQUEST


def manager(root, loader) -> ModelManager:
    return ModelManager.from_store(ModelStore(root), loader=loader, kv_reuse=False)


def rows(m) -> dict:
    return {d["id"]: d for d in listing(m)}


def refused(m, name) -> ApiError:
    with pytest.raises(ApiError) as e:
        asyncio.run(m.ensure(name))
    return e.value


def test_a_model_added_after_start_is_listed_and_loads_and_the_rescan_is_throttled(tmp_path):
    root, loader = tmp_path / "store", Loader()
    folder(root, "a-cpu")
    m = manager(root, loader)
    assert set(rows(m)) == {"a-cpu"} and m._scan.scans == 1
    folder(root, "b-cpu")
    for _ in range(50):  # within the second: no listing of the store
        assert set(rows(m)) == {"a-cpu"}
    assert m._scan.scans == 1
    folder(root, "c-cpu")
    assert asyncio.run(m.ensure("c-cpu")).lm.path == root / "c-cpu"  # a request naming it: found at once
    assert loader.calls == ["c-cpu"] and m._scan.scans == 1
    m._scan.last -= m._scan.interval  # a second later
    got = rows(m)
    assert set(got) == {"a-cpu", "b-cpu", "c-cpu"} and got["b-cpu"]["loadable"] and m._scan.scans == 2
    for bad in ("../a-cpu", "a-cpu/..", ".", "..", "", "x\x00y", "/etc", "a" * 300):
        assert refused(m, bad).code == "model_not_found"


def test_refresh_says_what_changed(tmp_path):
    root = tmp_path / "store"
    folder(root, "a-cpu"), folder(root, "b-cpu")
    m = manager(root, Loader())
    assert not m.refresh(force=True)
    shutil.rmtree(root / "a-cpu")
    folder(root, "c-cpu")
    (root / "b-cpu" / "model.onnx").unlink()
    ch = m.refresh(force=True)
    assert (ch.added, ch.removed, ch.changed) == (["c-cpu"], ["a-cpu"], ["b-cpu"])
    assert "model.onnx is missing" in rows(m)["b-cpu"]["not_loadable_reason"]
    assert not m.refresh()  # throttled: nothing read


def test_a_removed_model_is_404_and_a_loaded_one_is_dropped(tmp_path):
    root, loader = tmp_path / "store", Loader()
    for n in ("a-cpu", "b-cpu"):
        folder(root, n)
    m = ModelManager.from_store(ModelStore(root), loader=loader, kv_reuse=False, max_loaded=2)
    asyncio.run(m.ensure("a-cpu"))
    assert loader.alive("a-cpu") == 1
    shutil.rmtree(root / "a-cpu")
    shutil.rmtree(root / "b-cpu")  # never loaded
    for name in ("a-cpu", "b-cpu"):
        e = refused(m, name)
        assert (e.status, e.code, e.type) == (404, "model_not_found", "not_found_error"), e.message
    assert m.models == {} and loader.alive("a-cpu") == 0  # its model is gone from memory
    assert rows(m) == {} and loader.calls == ["a-cpu"]


def test_a_model_removed_while_loaded_is_dropped_by_the_listing(tmp_path):
    root, loader = tmp_path / "store", Loader()
    folder(root, "a-cpu")
    m = manager(root, loader)
    asyncio.run(m.ensure("a-cpu"))
    shutil.rmtree(root / "a-cpu")
    assert m.refresh(force=True).removed == ["a-cpu"]
    assert m.models == {} and loader.alive("a-cpu") == 0


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_an_interrupted_prepare_says_how_to_resume_and_a_running_one_says_running(tmp_path):
    root = tmp_path / "store"
    half = folder(root, "half-cpu", request=True)
    (half / LOCK).write_text(str(_dead_pid()))
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = folder(root, "run-cpu", request=True)
        (run / LOCK).write_text(str(live.pid))
        m = manager(root, Loader())
        got = rows(m)
        assert got["run-cpu"]["not_loadable_reason"] == f"prepare is running (pid {live.pid})"
        why = got["half-cpu"]["not_loadable_reason"]
        assert why.startswith("interrupted: re-run `oga-npu prepare x/y --output ") and why.endswith("` to resume")
        assert "--output half-cpu " in why and str(half) not in why and "--target cpu" in why  # no path of the machine
        live.kill()
        live.wait()
        assert m.refresh(force=True).changed == ["run-cpu"]  # same files, its process gone
        assert rows(m)["run-cpu"]["not_loadable_reason"].startswith("interrupted: re-run `oga-npu prepare")
    finally:
        live.kill()
        live.wait()
    (run / LOCK).unlink()  # the prepare finished (here: the folder is a model as it is)
    (run / REQUEST).unlink()
    m.refresh(force=True)
    assert rows(m)["run-cpu"]["loadable"] is True
    assert asyncio.run(m.ensure("run-cpu")).id == "run-cpu"


def _manifest(d) -> None:
    files = {f.name: {"size": f.stat().st_size} for f in d.iterdir() if f.is_file() and f.name != MANIFEST}
    (d / MANIFEST).write_text(json.dumps({"files": files}))


def _rewrite(f, data: bytes) -> None:
    f.write_bytes(data)
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # a new mtime even on a coarse clock


def test_damaged_under_a_loaded_model_is_refused_until_restored_then_loads(tmp_path):
    root, loader = tmp_path / "store", Loader()
    d = folder(root, "a-cpu")
    _manifest(d)
    m = manager(root, loader)
    asyncio.run(m.ensure("a-cpu"))
    _rewrite(d / "model.onnx", b"xy")  # no longer the manifest's size
    e = refused(m, "a-cpu")
    assert e.status == 409 and "oga-npu doctor -m a-cpu" in e.message
    assert m.models == {} and loader.alive("a-cpu") == 0
    assert refused(m, "a-cpu").code == "model_not_loadable"
    m.refresh(force=True)
    assert "doctor" in rows(m)["a-cpu"]["not_loadable_reason"]  # the mark stays while the files do
    _rewrite(d / "model.onnx", b"x")  # restored
    assert asyncio.run(m.ensure("a-cpu")).id == "a-cpu"  # no restart
    assert loader.calls == ["a-cpu", "a-cpu"]


def test_a_model_re_prepared_while_loaded_loads_its_new_files(tmp_path):
    root, loader = tmp_path / "store", Loader()
    d = folder(root, "a-cpu")
    _manifest(d)
    m = manager(root, loader)
    asyncio.run(m.ensure("a-cpu"))
    _rewrite(d / "model.onnx", b"new weights")
    _manifest(d)  # a new manifest that the files match
    assert asyncio.run(m.ensure("a-cpu")).id == "a-cpu"
    assert loader.calls == ["a-cpu", "a-cpu"] and loader.alive("a-cpu") == 1  # the old one dropped
