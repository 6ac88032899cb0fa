"""gguf-ggml: a GGUF's raw blocks multiplied by llama.cpp's kernels (oga_npu.gguf.ggml, the
custom-op library oga_npu.kernels).

One builder run makes the graph of a tiny tied llama in llama.cpp's Q4_K_M mix (q/k rows
permuted by the converter; a fused qkv of Q4_K + Q4_K + Q6_K; a Q6_K embedding tied to the
head); the import pass is checked on it without the library (node types, raw bytes in
the permuted order, the types attributes, one shared initializer), then, with the library,
against gguf-native's logits on the same graph."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ARCH, QUANT = "llama", "Q4_K_M"
SHAPE = dict(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2, head_dim=64)
IDS = [1, 17, 99, 200, 42, 7, 311, 5, 64, 128]


@pytest.fixture(scope="module")
def built(tmp_path_factory, session_home) -> tuple[Path, Path, Path]:
    """(the .gguf, its dequantized HF folder, the builder's model folder before any import pass).
    The builder runs in this process (conftest.tools_in_process)."""
    from conftest import tools_in_process
    from gguf_models import write_gguf

    from oga_npu.prepare import build
    from oga_npu.prepare.source import dequantize_gguf
    from oga_npu.recipe import load_recipe

    tmp = tmp_path_factory.mktemp("ggml")
    src = write_gguf(tmp / f"{ARCH}-{QUANT}.gguf", ARCH, QUANT, **SHAPE)
    hf = dequantize_gguf(src, tmp / "hf")
    cfg = load_recipe("gguf-ggml").build_for("cpu")
    opts = build.BuildOptions(cfg, cfg, (), build.resolved_session_options(cfg))
    out = tmp / "builder"
    with pytest.MonkeyPatch.context() as mp, tools_in_process(mp):
        build.run(hf, out, "cpu", opts, tmp / "build.log")  # no gguf: the builder's graph alone
    return src, hf, out


def _copy(folder: Path, dst: Path) -> Path:
    shutil.copytree(folder, dst)
    return dst


def _ggml_import(built, dst: Path, supported=None):
    from oga_npu.gguf import ggml

    src, hf, folder = built
    out = _copy(folder, dst)
    supported = supported or frozenset({"Q4_K", "Q6_K", "Q8_0"})
    rep = ggml.import_weights(out / "model.onnx", src, json.loads((hf / "config.json").read_text()), supported)
    return out, rep


def test_projections_become_ggml_matmuls_over_the_files_raw_rows(built, tmp_path):
    import gguf
    import onnx
    from onnx import numpy_helper

    from oga_npu.gguf.ggml import DOMAIN, raw_rows
    from oga_npu.gguf.reader import GGUFFile, NameMap

    out, rep = _ggml_import(built, tmp_path / "m")
    m = onnx.load(str(out / "model.onnx"))
    ops = {n.op_type for n in m.graph.node}
    assert not ops & {"MatMulNBits", "GatherBlockQuantized"} and not any(
        n.name.startswith("/gguf.") for n in m.graph.node
    )
    assert any(o.domain == DOMAIN for o in m.opset_import)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    mm = [n for n in m.graph.node if n.op_type == "GgmlMatMul"]
    assert all(n.domain == DOMAIN for n in mm)
    # per layer: qkv (one node, the file's three tensors), o, gate_up (merged), down; the head
    assert len(mm) == 2 * 4 + 1 and rep.summary()["matmuls"] == {
        "Q4_K+Q4_K+Q6_K": 2,
        "Q4_K+Q4_K": 2,
        "Q4_K": 2,
        "Q6_K": 3,
    }
    gf = GGUFFile(built[0])
    cfg = json.loads((built[1] / "config.json").read_text())
    names = NameMap(gf, cfg["num_hidden_layers"], cfg)
    qkv = next(n for n in mm if n.name.startswith("/model/layers.0/attn/qkv_proj/MatMul"))
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in qkv.attribute}
    assert attrs["types"] == [int(gguf.GGMLQuantizationType[t]) for t in ("Q4_K", "Q4_K", "Q6_K")] == [12, 12, 14]
    assert attrs["K"] == SHAPE["hidden_size"]
    for w, g in zip(qkv.input[1:], ("blk.0.attn_q.weight", "blk.0.attn_k.weight", "blk.0.attn_v.weight")):
        t = gf.tensors[g]
        order = names.row_order(g, t.rows)
        want = raw_rows(t) if order is None else raw_rows(t)[order]
        assert inits[w].dtype == np.uint8 and np.array_equal(inits[w], want), g
        assert (order is not None) == (g != "blk.0.attn_v.weight")  # llama.cpp permuted q and k, not v
    # the tied Q6_K embedding: a GgmlGather over the head's own initializer
    head = next(n for n in mm if n.name.startswith("/lm_head"))
    emb = next(n for n in m.graph.node if n.op_type == "GgmlGather")
    assert emb.input[0] == head.input[1] and emb.input[1] == "input_ids"
    assert {a.name: onnx.helper.get_attribute_value(a) for a in emb.attribute} == {"type": 14, "K": 256}
    assert rep.embedding == "Q6_K (shared with the output head)"
    from oga_npu.store import weight_bits

    assert weight_bits(out) == "4/6"  # `oga-npu models`' BITS: the GGUF types' (Q4_K, Q6_K)
    # the file's quantized bytes once each (the tied table once), nothing decoded beside them
    quantized = sum(raw_rows(t).nbytes for t in gf.tensors.values() if t.qtype not in ("F32", "F16"))
    assert sum(a.nbytes for k, a in inits.items() if k.startswith("ggml.")) == quantized


def test_a_type_the_library_does_not_take_names_the_other_recipes(built, tmp_path):
    from oga_npu.gguf.blocks import GGUFImportError

    with pytest.raises(GGUFImportError) as e:
        _ggml_import(built, tmp_path / "m", supported=frozenset({"Q8_0"}))
    assert "Q4_K" in str(e.value) and "--recipe gguf-native" in e.value.fix


def test_float_tensors_stay_plain_matmuls_as_in_gguf_native(built, tmp_path):
    """An F16 file of the same shapes on the same builder graph (the graph depends on the
    config, not the values): plain MatMul / Gather on the file's values, no custom op, so it
    loads without the library and gives gguf-native's logits."""
    from gguf_models import write_gguf

    from oga_npu.gguf.native import import_weights

    f16 = write_gguf(tmp_path / "f16.gguf", ARCH, "F16", **SHAPE)
    cfg = json.loads((built[1] / "config.json").read_text())
    out, rep = _ggml_import((f16, built[1], built[2]), tmp_path / "ggml")
    assert set(rep.summary()["matmuls"]) == {"F16", "F16+F16", "F16+F16+F16"} and rep.embedding == "F16"
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node}
    assert "MatMul" in ops and "Gather" in ops and not {"GgmlMatMul", "GgmlGather", "MatMulNBits"} & ops
    native = _copy(built[2], tmp_path / "native")
    import_weights(native / "model.onnx", f16, cfg)
    assert np.abs(_logits(out, IDS[:3]) - _logits(native, IDS[:3])).max() < 1e-5


def test_every_type_the_library_lists_is_taken_as_raw_rows():
    """No decoder per type: Q2_K, Q3_K and the IQ types (refused by gguf-native) are rows of
    whole blocks like any other, with their ggml type id."""
    import gguf

    from oga_npu.gguf.ggml import raw_rows, type_id
    from oga_npu.gguf.reader import GGUFTensor
    from oga_npu.kernels import SUPPORTED

    for q in sorted(SUPPORTED):
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[q]]
        cols = 256 * 2
        data = np.arange(3 * cols // block * size, dtype=np.uint8).reshape(3, -1)
        rows = raw_rows(GGUFTensor("t", q, 3, cols, data))
        assert rows.shape == (3, cols // block * size) and np.array_equal(rows, data), q
        assert type_id(q) == int(gguf.GGMLQuantizationType[q])
    assert {"Q2_K", "Q3_K", "IQ4_XS", "IQ2_XXS"} <= SUPPORTED


@pytest.mark.parametrize("content", [None, b"not a library"], ids=["missing", "broken"])
def test_a_folder_whose_kernel_library_is_missing_or_broken_says_so_with_the_fix(tmp_path, content):
    """Only oga-npu's own library is checked: AMD's NPU folders name their onnx_custom_ops
    library in the same key, and it is theirs to find (oga_npu.ryzenai_folders)."""
    from oga_npu.errors import ModelFolderError
    from oga_npu.kernels import LIBRARY_NAME
    from oga_npu.model import check, check_folder

    folder = tmp_path / "m"
    folder.mkdir()
    config = {"model": {"decoder": {"filename": "model.onnx", "session_options": {"custom_ops_library": LIBRARY_NAME}}}}
    (folder / "genai_config.json").write_text(json.dumps(config))
    if content is not None:
        (folder / LIBRARY_NAME).write_bytes(content)
    with pytest.raises(ModelFolderError) as e:
        check(folder)
    assert ("is missing" if content is None else "cannot be loaded") in e.value.message
    assert "oga-npu kernels build" in e.value.fix and "--recipe gguf-native" in e.value.fix
    assert any(f"kernel library {LIBRARY_NAME}" in p for p in check_folder(folder).problems)
    amd = tmp_path / "amd"
    amd.mkdir()
    config["model"]["decoder"]["session_options"]["custom_ops_library"] = "onnx_custom_ops.dll"
    (amd / "genai_config.json").write_text(json.dumps(config))
    assert not any("kernel library" in p for p in check_folder(amd).problems)


def test_onnxruntime_genai_failing_to_load_the_library_names_it_with_the_fix():
    from oga_npu.runtime_errors import translate

    e = translate(RuntimeError("Failed to load library /m/liboga_npu_ggml.so with error: undefined symbol: x"))
    assert "custom-op library" in e.message and "undefined symbol" in e.message
    assert "oga-npu kernels build" in e.fix


def test_gguf_ggml_is_for_the_cpu_target_only():
    from conftest import smollm2_gguf

    from oga_npu.errors import RecipeError
    from oga_npu.prepare.request import PrepareRequest, resolve

    with pytest.raises(RecipeError) as e:
        resolve(PrepareRequest(str(smollm2_gguf()), recipe="gguf-ggml", target="webgpu"))
    assert "--target cpu" in e.value.fix and "--recipe gguf-native" in e.value.fix


def test_gguf_ggml_without_a_library_or_compiler_is_refused_before_any_stage(monkeypatch, tmp_path):
    from conftest import smollm2_gguf

    from oga_npu.errors import KernelBuildError
    from oga_npu.prepare.request import PrepareRequest, resolve

    monkeypatch.setattr("oga_npu.kernels.built", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))  # no cmake, no c++
    with pytest.raises(KernelBuildError) as e:
        resolve(PrepareRequest(str(smollm2_gguf()), recipe="gguf-ggml"))
    assert "cmake" in e.value.message and "oga-npu kernels build" in e.value.fix and "gguf-native" in e.value.fix
    assert not list((tmp_path / "models").glob("*"))  # nothing written


@pytest.fixture(scope="module")
def library(request) -> Path:
    """The kernel library (conftest's ggml_library: built once per checkout). Skipped only
    where this machine has no C++ compiler or cmake to build it."""
    import shutil as sh

    missing = [t for t in ("cmake", "c++") if sh.which(t) is None]
    if missing:
        pytest.skip(f"no {' or '.join(missing)} on this machine: the ggml kernel library cannot be built")
    return request.getfixturevalue("ggml_library")


def _native(built, dst: Path, accuracy_level: int) -> Path:
    """gguf-native's import on a copy of the same builder graph (its MatMulNBits at accuracy_level)."""
    import onnx

    from oga_npu.gguf.native import import_weights

    src, hf, folder = built
    out = _copy(folder, dst)
    m = onnx.load(str(out / "model.onnx"))
    for n in m.graph.node:
        if n.op_type == "MatMulNBits":
            n.attribute.remove(next(a for a in n.attribute if a.name == "accuracy_level"))
            n.attribute.append(onnx.helper.make_attribute("accuracy_level", accuracy_level))
    onnx.save(m, str(out / "model.onnx"))
    import_weights(out / "model.onnx", src, json.loads((hf / "config.json").read_text()))
    return out


def _logits(folder: Path, ids: list[int]) -> np.ndarray:
    """Every position's logits (the builder pruned the head to the last one: one step per token)."""
    import onnxruntime_genai as og

    m = og.Model(str(folder))
    p = og.GeneratorParams(m)
    p.set_search_options(max_length=len(ids) + 1)
    g = og.Generator(m, p)
    rows = []
    for i in ids:
        g.append_tokens([i])
        rows.append(np.asarray(g.get_output("logits"))[0, -1].astype(np.float64))
    return np.stack(rows)


def test_ggml_logits_match_gguf_native_and_greedy_generation_runs(built, library, tmp_path):
    """The same file through llama.cpp's kernels and through onnxruntime's MatMulNBits:
    both exact in the weights, both rounding activations to int8 blocks (ggml: Q8_K per 256
    for K-quants, Q8_0 per 32 else; onnxruntime's accuracy_level 4: int8 per block), so
    neither equals the float product. The bound: ggml's distance from the float-activation
    form (gguf-native at accuracy_level 0, which matches transformers fp32 to 1e-3) is of the
    order of onnxruntime's own int8 distance from it (within 3x, and 2% of the logits' range;
    measured: 0.021 against onnxruntime's 0.014, range 2.39). This checks the products on the
    bytes (types, K, the concatenated W, the tied gather); the row order is checked byte for
    byte above (skipping llama's q/k un-permutation here gave 0.050: this tiny random model's
    attention barely moves the logits, so that would pass unnoticed here alone)."""
    from oga_npu.generate import GenerationOptions, generate
    from oga_npu.gguf.ggml_folder import install
    from oga_npu.kernels import SUPPORTED
    from oga_npu.model import load

    out, _ = _ggml_import(built, tmp_path / "ggml", SUPPORTED)
    ident = install(library, out, out / "genai_config.json")
    assert (out / ident["library"]).is_file() and len(ident["sha256"]) == 64
    exact = _logits(_native(built, tmp_path / "exact", 0), IDS)
    int8 = _logits(_native(built, tmp_path / "int8", 4), IDS)
    moved = tmp_path / "moved"  # the folder names its library relative to itself
    out.rename(moved)
    ours = _logits(moved, IDS)
    d_ggml, d_ort, span = np.abs(ours - exact).max(), np.abs(int8 - exact).max(), np.ptp(exact)
    print(f"max |logits - float-activation|: ggml {d_ggml:.3e}, onnxruntime int8 {d_ort:.3e}, range {span:.2f}")
    assert d_ggml <= max(3 * d_ort, 1e-3 * span) and d_ggml < 0.02 * span
    text, ev = generate(load(moved), "Hello there", GenerationOptions(max_tokens=6, temperature=0))
    assert ev.generated_tokens >= 1 and ev.finish_reason in ("stop", "length")


@pytest.mark.slow
def test_smollm2_prepared_with_gguf_ggml_answers_through_run(library, tmp_path, session_home, capsys, inprocess_tools):
    """The bundled SmolLM2 Q4_1 (tied Q8_0 embedding): prepare --recipe gguf-ggml copies the
    library into the folder, names it relative in genai_config.json and records its hash;
    `oga-npu run` answers from a copy of the folder elsewhere. The CLI and its builder and
    validate tools run in this process (conftest.call, inprocess_tools; the GGUF's dequantized
    copy is the session's, in session_home): the child-process prepare of a GGUF is smol_native's."""
    import os

    from conftest import call, smollm2_gguf

    from oga_npu.gguf.ggml_folder import identity

    assert os.environ["OGA_NPU_HOME"] == str(session_home)
    out = tmp_path / "made" / "smol-ggml"
    code, _, err = call(capsys, "prepare", str(smollm2_gguf()), "--recipe", "gguf-ggml", "--output", str(out))
    assert code == 0, err
    manifest = json.loads((out / "oga_npu_manifest.json").read_text())
    config = json.loads((out / "genai_config.json").read_text())
    name = config["model"]["decoder"]["session_options"]["custom_ops_library"]
    assert manifest["recipe"] == "gguf-ggml" and name == library.name  # relative: inside the folder
    assert manifest["kernels"] == identity(out / name) and identity(out / name)["sha256"] == identity(library)["sha256"]
    detail = manifest["stages"]["build"]["detail"]
    # per layer qkv (3 tensors), o, gate_up (2), down; the head on the tied Q8_0 table
    want = {"Q4_1+Q4_1+Q4_1": 30, "Q4_1": 60, "Q4_1+Q4_1": 30, "Q8_0": 1}
    assert detail["gguf_ggml"]["matmuls"] == want and "gguf_native" not in detail
    assert detail["gguf_ggml"]["embedding"] == "Q8_0 (shared with the output head)"
    moved = shutil.copytree(out, tmp_path / "elsewhere" / "smol-ggml")
    # (the validate stage's prompt: on the bare question int8 activations, llama.cpp's too,
    # tip fp32's "The" (0.08 ahead) to "L'", as for gguf-native: test_gguf_native.py)
    prompt = "What is the capital of France? Answer in one sentence."
    code, out, err = call(capsys, "run", "-m", str(moved), prompt, "-t", "0", "-n", "16")
    assert code == 0, err
    assert "Paris" in out


def test_a_default_gguf_prepare_names_gguf_ggml_only_where_it_can_run(monkeypatch):
    """The tip after a default (gguf-native) CPU prepare of a .gguf: shown where gguf-ggml can run
    (its library built, or Linux with cmake and a compiler), never for another recipe or target,
    a recipe the user chose, or a machine that cannot build the library."""
    import shutil
    import sys

    from oga_npu import kernels
    from oga_npu.cli import prepare as cli_prepare

    def native(**types):
        return {"recipe": "gguf-native", "stages": {"build": {"detail": {"gguf_native": {"gguf_types": types}}}}}

    q4km = native(F32=50, Q4_K=100, Q6_K=20)
    monkeypatch.setattr(kernels, "built", lambda: None)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(shutil, "which", lambda t: f"/usr/bin/{t}")
    tip = cli_prepare.ggml_tip("m.Q4_K_M.gguf", "cpu", None, q4km)
    assert tip and "--recipe gguf-ggml" in tip
    assert cli_prepare.ggml_tip("m.gguf", "cpu", None, native(F32=5, Q4_0=90, Q6_K=1))
    # a file whose bulk has no repacked kernel (SmolLM2's Q4_1): its prefill is slower, no tip
    assert cli_prepare.ggml_tip("m.gguf", "cpu", None, native(F32=61, Q4_1=210, Q8_0=1)) is None
    assert cli_prepare.ggml_tip("m.gguf", "cpu", "gguf-native", q4km) is None  # chosen by the user
    assert cli_prepare.ggml_tip("m.gguf", "webgpu", None, q4km) is None
    assert cli_prepare.ggml_tip("org/model", "cpu", None, {"recipe": "default"}) is None
    monkeypatch.setattr(shutil, "which", lambda t: None if t == "cmake" else f"/usr/bin/{t}")
    assert cli_prepare.ggml_tip("m.gguf", "cpu", None, q4km) is None  # nothing to build it with
    monkeypatch.setattr(kernels, "built", lambda: "/lib/liboga_npu_ggml.so")
    assert cli_prepare.ggml_tip("m.gguf", "cpu", None, q4km)  # already built: no compiler needed
    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(kernels, "built", lambda: None)
    monkeypatch.setattr(shutil, "which", lambda t: f"C:/bin/{t}")
    assert cli_prepare.ggml_tip("m.gguf", "cpu", None, q4km) is None  # no Windows build of the library
