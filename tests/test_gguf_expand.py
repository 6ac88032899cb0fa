"""The expanded form of a gguf-native model (issue 21, goal 4): its `/gguf.*` values computed
once into a cache entry that load() opens instead of the compact folder."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def native(tmp_path_factory, session_home) -> Path:
    """A tiny llama in llama.cpp's Q4_K_M mix (Q4_K with offsets, Q6_K with high bits),
    prepared with gguf-native and no expanded form yet. Its builder and validate run in this
    process (conftest.tools_in_process); the fresh prepare below keeps its child-process validate."""
    from conftest import tools_in_process
    from gguf_models import write_gguf

    from oga_npu.prepare import PrepareRequest, prepare

    tmp = tmp_path_factory.mktemp("expand")
    with pytest.MonkeyPatch.context() as mp, tools_in_process(mp):
        mp.setenv("OGA_NPU_HOME", str(session_home))
        mp.setenv("OGA_NPU_EXPAND", "0")
        mp.setenv("HF_HUB_OFFLINE", "1")
        src = write_gguf(
            tmp / "llama-Q4_K_M.gguf",
            "llama",
            "Q4_K_M",
            hidden_size=256,
            intermediate_size=768,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=64,
        )
        out = tmp / "model"
        prepare(PrepareRequest(str(src), output=out))
    return out


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("OGA_NPU_HOME", str(h))
    monkeypatch.delenv("OGA_NPU_EXPAND", raising=False)
    return h


def _last_logits(folder: Path, ids: list[int]) -> np.ndarray:
    import onnxruntime_genai as og

    m = og.Model(str(folder))
    p = og.GeneratorParams(m)
    p.set_search_options(max_length=len(ids) + 1)
    g = og.Generator(m, p)
    g.append_tokens(ids)
    return np.asarray(g.get_output("logits"))[0, -1].copy()


def _entry(home: Path) -> Path:
    entries = [p for p in (home / "cache" / "expanded").iterdir() if p.is_dir()]
    assert len(entries) == 1, entries
    return entries[0]


def test_expanded_model_has_no_gguf_nodes_and_the_bytes_onnxruntime_folds(native, tmp_path, home):
    import onnx
    import onnxruntime as ort

    from oga_npu.gguf.expand import _stored, expand_folder

    out = tmp_path / "expanded"
    expand_folder(native, out)
    m = onnx.load(str(out / "model.onnx"), load_external_data=False)
    compact = onnx.load(str(native / "model.onnx"), load_external_data=False)
    assert any(n.name.startswith("/gguf.") for n in compact.graph.node)
    assert not any(n.name.startswith("/gguf.") for n in m.graph.node)
    assert [n.name for n in m.graph.node] == [n.name for n in compact.graph.node if not n.name.startswith("/gguf.")]
    assert list(m.opset_import) == list(compact.opset_import) and m.metadata_props == compact.metadata_props
    # what onnxruntime's constant folding makes of the compact model (basic level, saved)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(tmp_path / "folded.onnx")
    so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "folded.onnx.data")
    ort.InferenceSession(str(native / "model.onnx"), so, providers=["CPUExecutionProvider"])
    folded = {t.name: t for t in onnx.load(str(tmp_path / "folded.onnx"), load_external_data=False).graph.initializer}
    made = {t.name for t in m.graph.initializer} - {t.name for t in compact.graph.initializer}
    assert made
    compared = 0
    for t in m.graph.initializer:
        if t.name in made and t.name in folded:
            a, b = _stored(t, out), _stored(folded[t.name], tmp_path)
            assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), t.name
            compared += 1
    assert compared >= len(made) // 2, (compared, len(made))  # (onnxruntime does not fold ConstantOfShape)
    ids = [1, 17, 99, 200, 42, 7, 311, 5, 64, 128]
    np.testing.assert_array_equal(_last_logits(out, ids), _last_logits(native, ids))


def test_load_makes_the_cache_once_then_reuses_it(native, home, capsys):
    from oga_npu.model import load

    lm = load(native)
    assert lm.path == native and lm.files is not None and lm.files.parent == home / "cache" / "expanded"
    assert lm.files == _entry(home)
    assert capsys.readouterr().err.count("expanded the GGUF blocks of model for loading (once)") == 1
    st = (lm.files / "model.onnx.data").stat()
    del lm
    lm = load(native)
    assert lm.path == native and lm.files == _entry(home)
    again = (lm.files / "model.onnx.data").stat()
    assert (again.st_ino, again.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert "expanded" not in capsys.readouterr().err
    assert list(native.glob("*.onnx*")) and not (native / "done.json").exists()  # the user's folder unchanged


def test_a_failed_or_killed_make_leaves_nothing_finished(native, home, monkeypatch, caplog):
    from oga_npu.gguf import expand as gguf_expand
    from oga_npu.model import load

    real, calls = gguf_expand._compute, []

    def failing(*a, **k):
        calls.append(1)
        if len(calls) > 3:
            raise RuntimeError("simulated failure midway")
        return real(*a, **k)

    monkeypatch.setattr(gguf_expand, "_compute", failing)
    lm = load(native)
    assert lm.files is None  # the compact folder, with a warning
    assert any("could not expand" in r.message and "simulated" in r.message for r in caplog.records)
    root = home / "cache" / "expanded"
    assert not [p for p in root.iterdir() if not p.name.endswith(".lock")]
    # a killed make: its temp folder is left; the next load ignores it, cleans it and makes the entry
    monkeypatch.setattr(gguf_expand, "_compute", real)
    key = gguf_expand.entry_dir(lm.content_hash).name
    stale = root / f".{key}.tmp-999999"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    lm = load(native)
    assert lm.files == root / key and (lm.files / "done.json").is_file() and not stale.exists()
    # a damaged entry (a data file cut short) is made again, not loaded
    data = lm.files / "model.onnx.data"
    size = data.stat().st_size
    with open(data, "r+b") as f:
        f.truncate(size // 2)
    del lm
    lm = load(native)
    assert lm.files == root / key and (lm.files / "model.onnx.data").stat().st_size == size


def test_expand_off_or_an_unwritable_cache_loads_the_compact_folder(native, home, monkeypatch, caplog, tmp_path):
    from oga_npu.model import load

    monkeypatch.setenv("OGA_NPU_EXPAND", "0")
    assert load(native).files is None and not home.exists()
    monkeypatch.delenv("OGA_NPU_EXPAND")
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv("OGA_NPU_HOME", str(blocked / "home"))  # mkdir fails (root or not)
    lm = load(native)
    assert lm.files is None
    assert [r.message for r in caplog.records if "could not write the expanded form" in r.message]


def test_rm_removes_the_cache_entry(native, home, monkeypatch, capsys, tmp_path):
    from conftest import call

    from oga_npu.model import load
    from oga_npu.workdir import models_dir

    folder = models_dir() / "tiny-native"
    shutil.copytree(native, folder)
    entry = load(folder).files
    assert entry is not None and entry.is_dir()
    code, out, err = call(capsys, "rm", "tiny-native", "-y")
    assert code == 0, err
    assert not folder.exists() and not entry.exists()


def test_prepare_makes_the_expanded_form(native, home, capsys):
    """Also when the folder is already prepared (made before this cache existed): `prepare`
    leaves the model ready for a quick first load."""
    from oga_npu.model import load
    from oga_npu.prepare import PrepareRequest, prepare

    prepare(PrepareRequest(str(native.parent / "llama-Q4_K_M.gguf"), output=native))
    entry = _entry(home)
    assert (entry / "done.json").is_file()
    assert "expanded the GGUF blocks" in capsys.readouterr().err
    assert load(native).files == entry


def test_a_fresh_prepare_validates_the_expanded_form(native, tmp_path, home, capsys):
    """validate loads the form later loads open (the compact form's folding at load is what
    costs the memory), made once, recorded for the prepared folder; load reuses it."""
    import json

    from oga_npu.model import load
    from oga_npu.prepare import PrepareRequest, prepare

    out = tmp_path / "fresh"
    prepare(PrepareRequest(str(native.parent / "llama-Q4_K_M.gguf"), output=out))
    entry = _entry(home)
    assert json.loads((entry / "done.json").read_text())["folder"] == str(out.resolve())
    logs = "".join(p.read_text(errors="replace") for p in out.rglob("*.log"))
    assert "expanded the GGUF blocks of fresh for loading (once)" in logs  # by the validate stage
    assert "expanded" not in capsys.readouterr().err  # and not made again at prepare's end
    assert not (entry / "build").exists() and (entry / "done.json").is_file()
    made = (entry / "model.onnx.data").stat()
    lm = load(out)
    assert lm.files == entry and lm.path == out
    again = (entry / "model.onnx.data").stat()
    assert (again.st_ino, again.st_mtime_ns) == (made.st_ino, made.st_mtime_ns)


def test_an_engine_graph_shares_the_expanded_data(native, tmp_path, home):
    """model.engine.onnx (webgpu's direct decoder: the same weights, by reference) is expanded
    onto the same data file, each tensor written once."""
    import onnx
    import onnxruntime as ort

    from oga_npu.gguf.expand import expand_folder
    from oga_npu.webgpu.engine import ENGINE_FILE

    folder = tmp_path / "with-engine"
    shutil.copytree(native, folder)
    shutil.copy(folder / "model.onnx", folder / ENGINE_FILE)
    expand_folder(native, tmp_path / "plain")
    expand_folder(folder, tmp_path / "both")
    assert (tmp_path / "both" / "model.onnx.data").stat().st_size == (
        tmp_path / "plain" / "model.onnx.data"
    ).stat().st_size
    e = onnx.load(str(tmp_path / "both" / ENGINE_FILE), load_external_data=False)
    m = onnx.load(str(tmp_path / "both" / "model.onnx"), load_external_data=False)
    assert not any(n.name.startswith("/gguf.") for n in e.graph.node)
    assert [(t.name, list(t.external_data)) for t in e.graph.initializer] == [
        (t.name, list(t.external_data)) for t in m.graph.initializer
    ]
    ort.InferenceSession(str(tmp_path / "both" / ENGINE_FILE), providers=["CPUExecutionProvider"])


def test_an_entry_of_a_folder_deleted_by_hand_goes_when_another_is_made(native, tmp_path, home):
    """A folder removed without `oga-npu rm` leaves its entry only until the next make."""
    import json

    from oga_npu.gguf.expand import ensure

    gone = tmp_path / "gone"
    shutil.copytree(native, gone)
    old = ensure(gone, "0" * 16)
    shutil.rmtree(gone)
    assert json.loads((old / "done.json").read_text())["folder"] == str(gone.resolve())
    kept = ensure(native, "1" * 16)
    assert kept.is_dir() and not old.exists() and not old.with_name(old.name + ".lock").exists()
