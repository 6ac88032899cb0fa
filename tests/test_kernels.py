"""The ggml custom-op library (oga_npu/kernels): its ops against the gguf package's own
dequantization, and its build's errors and cache key.

The weights are random GGUF blocks of each type (random bytes are valid codes; the fp16
scales are set to small positive values), so the K-quants are covered although the gguf
package cannot quantize to them. The reference is float: A @ dequantize(W)^T. ggml
quantizes A to 8 bits per block (Q8_0/Q8_1/Q8_K, as llama.cpp does), so the ops agree with
it to about 1% of the output's scale, not exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from oga_npu import kernels
from oga_npu.errors import KernelBuildError
from oga_npu.kernels.build import Plan

gguf = pytest.importorskip("gguf")
ort = pytest.importorskip("onnxruntime")

# byte offsets of each block's fp16 factors (ggml-common.h's block layouts)
F16_AT = {"Q4_0": (0,), "Q4_1": (0, 2), "Q8_0": (0,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,), "Q3_K": (108,)}


def random_blocks(qtype: str, rows: int, cols: int, seed: int) -> np.ndarray:
    t = gguf.GGMLQuantizationType[qtype]
    block, size = gguf.GGML_QUANT_SIZES[t]
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
    for at in F16_AT[qtype]:
        f = rng.uniform(0.002, 0.02, size=(rows, cols // block)).astype(np.float16)
        raw[:, :, at : at + 2] = f.view(np.uint8).reshape(rows, cols // block, 2)
    if qtype in ("Q4_K", "Q5_K"):  # 6-bit sub-block factors: any bytes are valid
        pass
    return raw.reshape(rows, -1)


def dequantize(qtype: str, raw: np.ndarray, cols: int) -> np.ndarray:
    return gguf.dequantize(raw, gguf.GGMLQuantizationType[qtype]).reshape(-1, cols).astype(np.float32)


def session(lib, nodes, inits, inputs, outputs):
    from onnx import helper, numpy_helper

    g = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(kernels.DOMAIN, 1)])
    so = ort.SessionOptions()
    so.register_custom_ops_library(str(lib))
    so.intra_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def matmul_session(lib, parts: list[tuple[str, np.ndarray]], k: int):
    from onnx import TensorProto, helper

    names = [f"W{i}" for i in range(len(parts))]
    node = helper.make_node(
        "GgmlMatMul",
        ["A", *names],
        ["Y"],
        domain=kernels.DOMAIN,
        types=[int(gguf.GGMLQuantizationType[q]) for q, _ in parts],
        K=k,
    )
    a = helper.make_tensor_value_info("A", TensorProto.FLOAT, ["B", "S", k])
    y = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    return session(lib, [node], dict(zip(names, (r for _, r in parts))), [a], [y])


@pytest.mark.parametrize(
    "qtypes",
    [("Q4_0",), ("Q4_1",), ("Q8_0",), ("Q4_K",), ("Q6_K",), ("Q5_K",), ("Q3_K",), ("Q4_K", "Q4_K", "Q6_K")],
    ids=lambda q: "+".join(q),
)
def test_matmul_agrees_with_the_dequantized_weights(ggml_library, qtypes):
    """Every type, the repacked ones (Q4_0, Q4_K on AVX2) and those read in place, and a fused
    projection of three weights of different types (a Q4_K_M file's qkv): Y's columns are
    [A@W0^T | A@W1^T | A@W2^T], for one row (decode) and many (prefill) in a 3-D batch."""
    k = 512
    rows = [64, 32, 32][: len(qtypes)]
    parts = [(q, random_blocks(q, n, k, seed=i)) for i, (q, n) in enumerate(zip(qtypes, rows))]
    w = np.concatenate([dequantize(q, r, k) for q, r in parts])
    s = matmul_session(ggml_library, parts, k)
    rng = np.random.default_rng(7)
    for shape in ((1, 1, k), (2, 37, k)):
        a = rng.standard_normal(shape).astype(np.float32)
        y = s.run(None, {"A": a})[0]
        ref = a @ w.T
        assert y.shape == shape[:2] + (sum(rows),)
        err = np.abs(y - ref).max() / np.abs(ref).max()
        assert err < 0.03, (qtypes, shape, err)
        # and not merely small: each part lands in its own columns
        wrong = np.abs(y - a @ np.roll(w, 1, axis=0).T).max() / np.abs(ref).max()
        assert wrong > 0.2


def test_gather_is_the_dequantized_rows(ggml_library):
    from onnx import TensorProto, helper

    k, v = 256, 50
    raw = random_blocks("Q4_K", v, k, seed=3)
    node = helper.make_node(
        "GgmlGather", ["E", "ids"], ["Y"], domain=kernels.DOMAIN, type=int(gguf.GGMLQuantizationType.Q4_K), K=k
    )
    ids_in = helper.make_tensor_value_info("ids", TensorProto.INT64, ["B", "S"])
    s = session(
        ggml_library, [node], {"E": raw}, [ids_in], [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)]
    )
    ids = np.array([[0, 49, 7], [3, 3, 1]], dtype=np.int64)
    y = s.run(None, {"ids": ids})[0]
    np.testing.assert_array_equal(y, dequantize("Q4_K", raw, k)[ids])
    with pytest.raises(Exception, match="out of range"):
        s.run(None, {"ids": np.array([[50]], dtype=np.int64)})


def test_a_weight_of_the_wrong_size_is_refused_at_load(ggml_library):
    raw = random_blocks("Q4_0", 8, 64, seed=1)[:, :-1]  # a row one byte short
    with pytest.raises(Exception, match="is not \\[N, 36\\] bytes"):
        matmul_session(ggml_library, [("Q4_0", raw)], 64)


def test_the_library_says_what_ggml_found(ggml_library):
    text = kernels.info(ggml_library)
    assert "pool=onnxruntime" in text and "avx2=" in text


def test_build_refuses_a_missing_source_with_a_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("OGA_NPU_KERNELS", str(tmp_path / "k"))
    with pytest.raises(KernelBuildError) as e:
        kernels.ensure(source=tmp_path / "nope.tar.gz")
    assert "no such file" in e.value.message and e.value.fix.startswith("pass --source a llama-cpp-python sdist")
    folder = tmp_path / "not-llama"
    folder.mkdir()
    with pytest.raises(KernelBuildError, match="not a llama.cpp folder"):
        kernels.ensure(source=folder)
    assert not (tmp_path / "k").exists()  # nothing written for a source that is not there
    monkeypatch.setenv(kernels.SRC_ENV, str(tmp_path / "gone.tar.gz"))  # (what prepare builds from)
    with pytest.raises(KernelBuildError) as e:
        kernels.ensure()
    assert e.value.message.startswith(kernels.SRC_ENV) and "gguf-native" in e.value.fix


def test_build_without_cmake_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("OGA_NPU_KERNELS", str(tmp_path / "k"))
    monkeypatch.setenv("PATH", str(tmp_path))  # no cmake, no compiler
    monkeypatch.delenv("CXX", raising=False)
    with pytest.raises(KernelBuildError) as e:
        kernels.ensure(source=tmp_path / "x.tar.gz")
    assert "cmake" in e.value.message or "compiler" in e.value.message
    assert "install" in e.value.fix


def test_the_cache_key_follows_source_flags_and_code(monkeypatch):
    monkeypatch.delenv(kernels.SRC_ENV, raising=False)
    monkeypatch.delenv(kernels.CMAKE_ENV, raising=False)
    base = Plan.current()
    # a copy of the default sdist given by path is the same build
    assert Plan.current(source=kernels.root() / "elsewhere" / base.identity).key == base.key
    monkeypatch.setenv(kernels.CMAKE_ENV, "-DGGML_NATIVE=OFF -DGGML_AVX2=ON")
    flags = Plan.current()
    assert flags.key != base.key and flags.cmake_args == ("-DGGML_NATIVE=OFF", "-DGGML_AVX2=ON")
    assert flags.library.parent.parent == kernels.root()
