#!/usr/bin/env python3
"""Which gguf-native forms the WebGPU EP runs: every llama.cpp type through the exact graph
oga_npu.gguf.native writes (MatMulNBits 4/8 bits, blocks 32/16, uint8 zero points, the
offset product; GatherBlockQuantized 4/8 bits), float16 and float32 io, on WebGPU with the
CPU fallback disabled (a node WebGPU does not take fails the session), against numpy.

    python scripts/webgpu_gguf_ops.py [--provider webgpu|cpu] [--json OUT]

Used on the lent NVIDIA machine (Vulkan); `--provider cpu` runs the same checks here.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

TYPES = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K"]


_REGISTERED = []


def session(model, provider: str):
    import onnxruntime as ort

    model.ir_version = 10  # what onnxruntime 1.31 reads, whichever onnx wrote it
    so = ort.SessionOptions()
    if provider == "webgpu":
        from oga_npu.webgpu import ep as webgpu

        if not _REGISTERED:
            ort.register_execution_provider_library(webgpu.EP_NAME, webgpu.library_path())
            _REGISTERED.append(True)
        devs = [d for d in ort.get_ep_devices() if d.ep_name == webgpu.EP_NAME]
        if not devs:
            raise SystemExit("no WebGPU adapter")
        so.add_provider_for_devices(devs, {})
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        return ort.InferenceSession(model.SerializeToString(), so)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def matmul_model(form, fdt, accuracy_level=4):
    from onnx import TensorProto, helper

    from oga_npu.gguf import graph as gg

    et = TensorProto.FLOAT16 if fdt == np.float16 else TensorProto.FLOAT
    m = helper.make_model(
        helper.make_graph(
            [],
            "g",
            [helper.make_tensor_value_info("x", et, [1, "S", form.cols])],
            [helper.make_tensor_value_info("y", et, [1, "S", form.rows])],
        ),
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)],
    )
    m.graph.node.append(
        helper.make_node(
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
    )
    node = m.graph.node[0]
    gr = gg.Graph(m)
    extra: list = []
    gg.matmul_nbits(gr, node, form, fdt, extra)
    gg.place(m.graph, node.name, extra)
    return m


def gather_model(form, fdt):
    """The embedding subgraph gguf_native writes, on its own."""
    from onnx import TensorProto, helper, numpy_helper

    from oga_npu.gguf import embedding as ge
    from oga_npu.gguf import graph as gg

    et = TensorProto.FLOAT16 if fdt == np.float16 else TensorProto.FLOAT
    g = helper.make_graph(
        [],
        "g",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [1, "S"])],
        [helper.make_tensor_value_info("y", et, [1, "S", form.cols])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    # a stand-in builder graph: a plain Gather on a float table, replaced by the pass
    m.graph.initializer.append(numpy_helper.from_array(np.zeros((form.rows, form.cols), fdt), "table"))
    m.graph.node.append(helper.make_node("Gather", ["table", "input_ids"], ["y"], name="/model/embed_tokens/Gather"))
    gr = gg.Graph(m)
    replace: dict = {}

    the_form = form

    class _GF:  # the one tensor the pass asks for
        tensors = {"token_embd.weight": type("T", (), {"qtype": the_form.qtype, "rows": the_form.rows})()}

        def form(self, name):
            return the_form

    class _Names:
        def gguf_name(self, hf):
            return "token_embd.weight" if hf == "model.embed_tokens.weight" else None

        def row_order(self, name, rows):
            return None

    ge.import_embedding(gr, _GF(), _Names(), None, None, replace)
    gg.rebuild(m.graph, {}, replace)
    gr.drop_unused()
    return m


def main() -> int:
    import gguf

    from oga_npu.gguf import blocks as gb
    from oga_npu.gguf import write as gw

    ap = argparse.ArgumentParser()
    ap.add_argument("--provider", default="webgpu", choices=["webgpu", "cpu"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows, cols = 96, 512
    out = []
    for qt in TYPES:
        w = rng.standard_normal((rows, cols)).astype(np.float32) * 0.05
        raw = gw.quantize(w, qt)
        ref_w = gguf.dequantize(raw, gguf.GGMLQuantizationType[qt]).reshape(rows, cols).astype(np.float64)
        form = gb.block_form(raw, qt, rows, cols)
        for fdt in (np.float32, np.float16):
            x = rng.standard_normal((1, 7, cols)).astype(fdt)
            ref = x.astype(np.float64) @ ref_w.T
            rec = {
                "type": qt,
                "io": np.dtype(fdt).name,
                "bits": form.bits,
                "block": form.block,
                "offset": form.offset is not None,
            }
            try:
                y = session(matmul_model(form, fdt), args.provider).run(None, {"x": x})[0]
                rec["matmul_rel_err"] = float(np.abs(y - ref).max() / np.abs(ref).max())
            except Exception as e:  # noqa: BLE001
                rec["matmul_error"] = str(e).splitlines()[0][:300]
            try:
                ids = np.array([[0, 5, rows - 1, 17]], np.int64)
                y = session(gather_model(form, fdt), args.provider).run(None, {"input_ids": ids})[0]
                rec["gather_max_abs_err"] = float(np.abs(y[0].astype(np.float64) - ref_w[ids[0]]).max())
            except Exception as e:  # noqa: BLE001
                rec["gather_error"] = str(e).splitlines()[0][:300]
            print(json.dumps(rec), flush=True)
            out.append(rec)
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
