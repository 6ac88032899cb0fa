"""Loading checks: what a user sees for each broken-folder case."""

import json
import os
import shutil

import pytest
from conftest import run_cli

from oga_npu.errors import IncompleteModelError, ModelFolderError, ProviderError
from oga_npu.model import check_folder, load
from oga_npu.runtime_errors import translate
from oga_npu.workdir import MANIFEST


def make_foreign(d):
    """Strip oga-npu's markers: a model folder from elsewhere (e.g. downloaded)."""
    (d / MANIFEST).unlink()
    shutil.rmtree(d / "stages")
    (d / "prepare.json").unlink()


@pytest.fixture
def copy(tmp_path, tiny_model):
    d = tmp_path / "model"
    shutil.copytree(tiny_model, d)
    return d


def test_ready_copy_loads(copy):
    assert check_folder(copy).ok
    assert load(copy).provider == "cpu"


@pytest.mark.parametrize(
    "name,expect",
    [
        ("genai_config.json", "genai_config.json is missing"),
        ("model.onnx.data", "model.onnx.data is missing"),
        ("model.onnx", "model.onnx is missing"),
        ("tokenizer.json", "tokenizer.json is missing"),
    ],
)
def test_missing_file_is_named(copy, name, expect):
    (copy / name).unlink()
    make_foreign(copy)
    assert expect in " ".join(check_folder(copy).problems)
    with pytest.raises(ModelFolderError, match=expect):
        load(copy)


def test_missing_file_in_our_folder_is_incomplete(copy):
    (copy / "model.onnx.data").unlink()
    with pytest.raises(IncompleteModelError, match="model.onnx.data is missing"):
        load(copy)
    r = run_cli("run", "-m", str(copy), "hi")
    assert r.returncode == 1 and "oga-npu prepare" in r.stderr


def test_git_lfs_pointer_is_detected(copy):
    make_foreign(copy)
    (copy / "model.onnx.data").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n")
    probs = " ".join(check_folder(copy).problems)
    assert "git-lfs pointer" in probs and "model.onnx.data" in probs


def test_missing_manifest_after_interrupted_prepare(copy):
    (copy / MANIFEST).unlink()
    r = run_cli("run", "-m", str(copy), "hi")
    assert r.returncode == 1
    assert "incomplete" in r.stderr and "oga-npu prepare" in r.stderr


def test_missing_provider_is_an_error_not_a_cpu_run(copy):
    with pytest.raises(ProviderError, match="dml"):
        load(copy, provider="dml")
    lm = load(copy, provider="dml", fallback="cpu")
    assert lm.provider == "cpu"


def test_known_runtime_errors_are_translated():
    e = translate(RuntimeError("Load model from x failed:Protobuf parsing failed."))
    assert "git-lfs" in e.message
    e = translate(RuntimeError("Unknown provider name 'RyzenAI'"))
    assert "execution provider" in e.message
    e = translate(RuntimeError("genai_config.json JSON Error: Unknown value 'foo' at line 3"))
    assert "newer builder" in e.message


def test_webgpu_qk_norm_attention_on_cpu_names_a_cpu_prepare(tmp_path):
    """A webgpu build of Qwen3 fuses the q/k norms into GroupQueryAttention; run with
    --fallback cpu, onnxruntime's CPU kernel refuses it: the fix names the folder's source."""
    native = (
        "Non-zero status code returned while running GroupQueryAttention node. Name:'/model/layers.0/attn/"
        "GroupQueryAttention' Status Message: GroupQueryAttention (CPU): q_norm_weight / k_norm_weight inputs "
        "are not supported. The per-head Q/K RMS normalization prologue is implemented only on the CUDA and "
        "WebGPU EPs."
    )
    (tmp_path / "oga_npu_manifest.json").write_text(json.dumps({"source": "Qwen/Qwen3-0.6B", "target": "webgpu"}))
    e = translate(RuntimeError(native), tmp_path)
    assert "built for WebGPU/CUDA" in e.message
    assert e.fix == "prepare the source again for the CPU: oga-npu prepare Qwen/Qwen3-0.6B --target cpu"
    assert "SOURCE --target cpu" in translate(RuntimeError(native)).fix  # no folder: a placeholder


def test_eos_list_is_read(copy):
    cfg = json.loads((copy / "genai_config.json").read_text())
    cfg["model"]["eos_token_id"] = [2, 0]
    (copy / "genai_config.json").write_text(json.dumps(cfg))
    make_foreign(copy)
    assert {0, 2} <= set(load(copy).eos_token_ids)


def test_webgpu_model_without_adapter_gives_the_adapter_error(tiny_webgpu_prepare):
    """A webgpu build here (conftest's session prepare, shared with test_engine): validate
    records why it was skipped; run names what is missing."""
    out, r = tiny_webgpu_prepare
    cfg = json.loads((out / "genai_config.json").read_text())
    webgpu = cfg["model"]["decoder"]["session_options"]["provider_options"][0]["webgpu"]
    assert webgpu["enableGraphCapture"] == "1"  # graph capture is on by default for webgpu
    import onnx

    graph = onnx.load(str(out / "model.onnx"), load_external_data=False).graph
    logits = next(o for o in graph.output if o.name == "logits")
    assert logits.type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # our pass: OGA needs no cast session
    assert graph.node[-1].op_type == "Cast" and graph.node[-1].output[0] == "logits"
    from oga_npu.webgpu.ep import available

    ok, why = available()
    if ok:
        pytest.skip("this machine has a WebGPU adapter")
    assert "skipped" in r.stderr and why in r.stderr
    r = run_cli("run", "-m", str(out), "hi")
    assert r.returncode == 1
    assert f"provider webgpu is not available: {why}" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("run", "-m", str(out), "hi", "-n", "3", "--fallback", "cpu", "--timings")
    assert r.returncode == 0, r.stderr
    assert "falling back to cpu" in r.stderr and "[cpu]" in r.stderr


def test_webgpu_dry_run_shows_builder_flags(tmp_path, tiny_hf):
    r = run_cli("prepare", str(tiny_hf), "--target", "webgpu", "--dry-run")
    assert r.returncode == 0
    assert "-e webgpu" in r.stdout and "enable_webgpu_graph=true" in r.stdout
    assert "prune_lm_head=true" in r.stdout and "logits output float32" in r.stdout


def test_webgpu_missing_package_message(monkeypatch):
    from oga_npu.webgpu import ep as webgpu

    monkeypatch.setattr(webgpu, "library_path", lambda: None)
    ok, why = webgpu.available()
    assert not ok and "onnxruntime-ep-webgpu" in why


def test_float32_logits_pass_keeps_values(tmp_path):
    """The graph pass appends a Cast: same numbers, float32 type, external weights untouched."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from oga_npu.prepare.build import cast_logits_to_float32

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 16)).astype(np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["logits"], name="lm_head")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT16, [1, 16])],
        [w],
    )
    path = tmp_path / "model.onnx"
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        str(path),
        save_as_external_data=True,
        location="model.onnx.data",
        size_threshold=0,
    )
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float16)
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    data = (tmp_path / "model.onnx.data").read_bytes()
    assert cast_logits_to_float32(path) is True
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert before.dtype == np.float16 and after.dtype == np.float32
    # equal up to the float16 rounding the cast removes (ORT's CPU MatMul works in float32)
    np.testing.assert_allclose(after, before.astype(np.float32), rtol=2e-3, atol=2e-3)
    assert (tmp_path / "model.onnx.data").read_bytes() == data
    assert cast_logits_to_float32(path) is False  # already float32: nothing to do


def test_compiled_op_model_gets_dd_plugins_root_before_oga_opens_it(copy, tmp_path, monkeypatch, caplog):
    """A folder whose manifest records the plugins stage's dd_plugins folder: DD_PLUGINS_ROOT is
    set for the process before onnxruntime-genai creates the model (run, chat, serve and bench
    all load through model.load/open), and a value the user set is kept."""
    import logging

    import onnxruntime_genai as og

    plugins = tmp_path / "dd_plugins"
    plugins.mkdir()
    m = json.loads((copy / MANIFEST).read_text())
    m.setdefault("stages", {})["plugins"] = {"detail": {"dd_plugins_root": str(plugins)}}
    (copy / MANIFEST).write_text(json.dumps(m))
    monkeypatch.setenv("DD_PLUGINS_ROOT", "x")  # recorded, so the test leaves the variable as it found it
    monkeypatch.delenv("DD_PLUGINS_ROOT")
    seen = {}
    real = og.Model

    def model(cfg):
        seen["root"] = os.environ.get("DD_PLUGINS_ROOT")
        return real(cfg)

    monkeypatch.setattr(og, "Model", model)
    with caplog.at_level(logging.DEBUG, logger="oga_npu.ryzenai_folders"):
        load(copy)
    assert seen["root"] == str(plugins)
    assert any("DD_PLUGINS_ROOT" in r.getMessage() for r in caplog.records)
    monkeypatch.setenv("DD_PLUGINS_ROOT", str(tmp_path / "mine"))
    load(copy)
    assert seen["root"] == str(tmp_path / "mine")
