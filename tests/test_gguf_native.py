"""gguf-native import: every llama.cpp block type, multiplied through onnxruntime, equals the
gguf package's dequantized matrix product; a tiny GGUF model's logits match transformers."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
ort = pytest.importorskip("onnxruntime")

from oga_npu.gguf import blocks as gb  # noqa: E402
from oga_npu.gguf import graph as gg  # noqa: E402

ROWS, COLS = 48, 512  # COLS: a multiple of the K-quants' super-block of 256


def _random_blocks(qtype: str, rows: int, cols: int, rng) -> np.ndarray:
    """Bytes of a valid tensor: the gguf quantizer where it has one, random blocks by hand
    (random codes and scales, sane fp16 super-scales) for the K-quants."""
    t = gguf.GGMLQuantizationType[qtype]
    w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
    if qtype in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"):
        return gguf.quantize(w, t)
    bsize, tsize = gguf.GGML_QUANT_SIZES[t]
    b = rng.integers(0, 256, (rows * cols // bsize, tsize), dtype=np.uint8)
    d = (rng.random((b.shape[0], 1)) * 0.01 + 1e-3).astype(np.float16).view(np.uint8)
    if qtype in ("Q4_K", "Q5_K"):
        b[:, 0:2] = d
        b[:, 2:4] = (rng.random((b.shape[0], 1)) * 0.01).astype(np.float16).view(np.uint8)
        b[0, 4:16] = 0  # a super-block with every sub-scale and minimum zero
    else:  # Q6_K: d last; int8 sub-scales
        b[:, 208:210] = d
        b[1, 192:208] = 0  # sub-scales of zero
    return b.reshape(rows, -1)


def _matmul_session(form: gb.BlockForm, accuracy_level: int, optimized=None, model_out=None):
    import onnx
    from onnx import TensorProto, helper

    m = helper.make_model(
        helper.make_graph(
            [],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", form.cols])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", form.rows])],
        ),
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
    )
    node = helper.make_node(
        "MatMulNBits",
        ["x", "b", "s"],
        ["y"],
        name="/model/layers.0/mlp/up_proj/MatMul_Q4",
        domain="com.microsoft",
        K=form.cols,
        N=form.rows,
        bits=4,
        block_size=32,
        accuracy_level=accuracy_level,
    )
    m.graph.node.append(node)
    node = m.graph.node[0]  # protobuf copies on append
    gr = gg.Graph(m)
    extra: list = []
    gg.matmul_nbits(gr, node, form, np.float32, extra)
    gg.place(m.graph, node.name, extra)
    onnx.checker.check_model(m)
    if model_out is not None:
        model_out.append(m)
    so = ort.SessionOptions()
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


ALL_TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]
EXPECT = {
    "Q4_0": (4, 32),
    "Q4_1": (4, 32),
    "Q4_K": (4, 32),
    "Q5_0": (8, 32),
    "Q5_1": (8, 32),
    "Q5_K": (8, 32),
    "Q8_0": (8, 32),
    "Q6_K": (8, 16),
}


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_block_type_through_onnxruntime_equals_gguf_dequantized_product(qtype, tmp_path):
    rng = np.random.default_rng(ALL_TYPES.index(qtype))
    raw = _random_blocks(qtype, ROWS, COLS, rng)
    ref_w = gguf.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(ROWS, COLS)
    form = gb.block_form(raw, qtype, ROWS, COLS)
    assert (form.bits, form.block) == EXPECT[qtype]
    assert form.q.max() < (1 << form.bits)
    # the form's values are the file's values (float rounding of scale*zp + offset only)
    np.testing.assert_allclose(form.dequantize(), ref_w, rtol=0, atol=1e-6 * max(1.0, np.abs(ref_w).max()))
    x = rng.standard_normal((5, COLS)).astype(np.float32)
    ref = x.astype(np.float64) @ ref_w.T.astype(np.float64)
    built: list = []
    y = _matmul_session(form, accuracy_level=0, optimized=tmp_path / "opt.onnx", model_out=built).run(None, {"x": x})[0]
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    # stored: the file's own bits (5/6-bit codes as nibbles + high bits, K-quant 6-bit factors,
    # fp16 d/m); shared per-model constants (shapes) aside
    from onnx import numpy_helper

    stored = sum(
        numpy_helper.to_array(t).nbytes for t in built[0].graph.initializer if not t.name.startswith("gguf.const.")
    )
    assert stored <= 1.07 * raw.nbytes, (stored, raw.nbytes)
    # ... and rebuilt by nodes onnxruntime folds at load: none of them runs per call
    import onnx

    ops = {n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node}
    assert ops <= {"MatMulNBits", "Reshape", "ReduceSum", "MatMul", "Add", "Gemm"}, ops  # Gemm: MatMul+Add (2-D)
    # accuracy_level 4 (int8 activations, as llama.cpp's own dot products): close, not exact
    y4 = _matmul_session(form, accuracy_level=4).run(None, {"x": x})[0]
    assert np.abs(y4 - ref).max() < 0.02 * np.abs(ref).max()


def test_packed_rows_of_different_types_share_one_form():
    rng = np.random.default_rng(7)
    a = gb.block_form(_random_blocks("Q4_K", 16, 256, rng), "Q4_K", 16, 256)
    b = gb.block_form(_random_blocks("Q6_K", 8, 256, rng), "Q6_K", 8, 256)
    both = gb.concat_rows([a, b])
    assert (both.bits, both.block) == (8, 16)
    np.testing.assert_allclose(both.dequantize(), np.concatenate([a.dequantize(), b.dequantize()]), atol=1e-7)


def test_unsupported_type_names_the_quark_recipe():
    with pytest.raises(gb.GGUFImportError, match="Q2_K") as e:
        gb.block_form(np.zeros((1, 84), np.uint8), "Q2_K", 1, 256)
    assert "--recipe default" in e.value.fix


# ---------------------------------------------------------------- whole models

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def _exact_recipe(tmp_path):
    """gguf-native with accuracy_level 0 (float activations): the exactness check."""
    r = tmp_path / "gguf-exact.toml"
    r.write_text(
        (REPO / "oga_npu" / "recipes" / "gguf-native.toml")
        .read_text()
        .replace("accuracy_level = 4", "accuracy_level = 0")
    )
    assert "accuracy_level = 0" in r.read_text()
    return r


def _last_logits_oga(model_dir, ids):
    import onnxruntime_genai as og

    m = og.Model(str(model_dir))
    p = og.GeneratorParams(m)
    p.set_search_options(max_length=len(ids) + 1)
    g = og.Generator(m, p)
    g.append_tokens(ids)
    return np.asarray(g.get_output("logits"))[0, -1].astype(np.float64)


def _last_logits_hf(hf_dir, ids):
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0, -1].double().numpy()


def test_tiny_gguf_model_prepared_native_matches_transformers_fp32(tmp_path, inprocess_tools):
    """llama.cpp's Q4_K_M mix on an untied Mistral (q/k permuted by the converter; packed qkv of
    Q4_K+Q4_K+Q6_K; Q6_K embedding and head, each its own): the prepared model's logits equal
    the dequantized model's in transformers fp32. (Tied heads: the SmolLM2 test below.) The
    builder and validate run in this process (inprocess_tools)."""
    arch, quant = "mistral", "Q4_K_M"
    import json

    from gguf_models import write_gguf

    from oga_npu.prepare import PrepareRequest, prepare
    from oga_npu.prepare.source import gguf_cache_dir

    src = write_gguf(
        tmp_path / f"{arch}-{quant}.gguf",
        arch,
        quant,
        hidden_size=256,
        intermediate_size=768,  # != vocab (512): the builder takes any Linear to vocab_size for the head
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
    )
    out = tmp_path / "model"
    res = prepare(PrepareRequest(str(src), recipe=str(_exact_recipe(tmp_path)), output=out))
    native = res.manifest["stages"]["build"]["detail"]["gguf_native"]
    assert "MatMulNBits" not in json.dumps(native) and native["matmuls"]  # every matmul came from the file
    # per layer: qkv, o, gate+up (one node: the builder's two merged), down; the head
    assert native["matmuls"] == {"Q4_K+Q4_K+Q6_K": 2, "Q4_K+Q4_K": 2, "Q4_K": 2, "Q6_K": 3}
    assert native["embedding"] == "Q6_K"  # GatherBlockQuantized over the file's own codes
    ids = [1, 17, 99, 200, 42, 7, 311, 5, 64, 128]
    ours = _last_logits_oga(out, ids)
    ref = _last_logits_hf(gguf_cache_dir(src.resolve()), ids)
    diff = np.abs(ours - ref).max()
    print(f"{arch} {quant}: max |logits - transformers fp32| = {diff:.2e} (logit range {np.ptp(ref):.2f})")
    assert diff < 1e-3 * max(1.0, np.abs(ref).max())


@pytest.mark.slow
def test_smollm2_default_gguf_recipe_is_native_and_within_1pct_of_fp32(tmp_path, session_home, smol_native, capfd):
    """The bundled SmolLM2 Q4_1 (tied Q8_0 embedding) prepared with no --recipe: gguf-native.
    Perplexity within 1% of transformers fp32 on the dequantized weights, recorded in the
    manifest and shown by `oga-npu models`; the folder at most 1.25x the GGUF. (The session's
    prepare, shared with test_smollm2; eval records into the manifest, so it runs on a copy.
    eval and models run in this process, conftest.call: torch and transformers are imported here
    already; eval as a child is test_smollm2's damaged-model case. capfd, not capsys: a logging
    handler that kept the original stderr is caught too.)"""
    import json
    import os
    import shutil

    from conftest import call, smollm2_gguf

    gguf_file = smollm2_gguf()
    prepared, r = smol_native
    assert "de-quantizing" not in r.stderr and "it/s" not in r.stderr  # transformers' own bars stay off
    out = tmp_path / "models" / "smol-native"
    shutil.copytree(prepared, out)
    assert os.environ["OGA_NPU_HOME"] == str(session_home)
    manifest = json.loads((out / "oga_npu_manifest.json").read_text())
    assert manifest["recipe"] == "gguf-native"
    size = sum(e["size"] for e in manifest["files"].values())
    assert size <= 1.25 * gguf_file.stat().st_size, (size, gguf_file.stat().st_size)
    code, stdout, stderr = call(capfd, "eval", "-m", str(out), "--window", "128", "--windows", "2", "--json")
    assert code == 0, stderr
    assert "Loading weights" not in stderr and "it/s" not in stderr
    ours, ref = json.loads(stdout)
    assert "evaluation part" in ours["text"] and ref["engine"] == "transformers fp32"
    assert abs(ours["perplexity"] / ref["perplexity"] - 1) < 0.01, (ours["perplexity"], ref["perplexity"])
    quality = json.loads((out / "oga_npu_manifest.json").read_text())["quality"]
    assert quality["perplexity"] == round(ours["perplexity"], 4)
    assert quality["references"]["transformers fp32"] == round(ref["perplexity"], 4)
    code, stdout, _ = call(capfd, "models", str(out.parent))
    assert code == 0 and f"{ours['perplexity']:.2f} (transformers fp32 {ref['perplexity']:.2f})" in stdout
    # (greedy answers are no check here: fp32 itself puts "The" 0.08 above "L'" for the first
    # token of "What is the capital of France?", and int8 activations, as in llama.cpp, flip it)
