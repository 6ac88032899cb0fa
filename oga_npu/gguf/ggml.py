"""GGUF weights as the file stores them, multiplied by llama.cpp's own kernels (recipe `gguf-ggml`).

The OGA builder makes the graph (from the dequantized HF folder, `-p int4`), as for
gguf-native; this pass then replaces each of its MatMulNBits by a `GgmlMatMul` (domain
`oga_npu.ggml`, the project's custom-op library, oga_npu.kernels) whose weights are the
GGUF tensors' RAW block rows: no decoding, no `/gguf.*` rebuild nodes, nothing for
onnxruntime to prepack, so the folder holds the file's bytes once and that is what loads.

- a projection: `GgmlMatMul(A, W0[, W1, W2])`, one W per GGUF tensor whose rows it
  concatenates (a fused qkv of a Q4_K_M file: Q4_K + Q4_K + Q6_K), attributes `types` (the
  ggml type id of each W) and `K`; each W is [rows, row_bytes] uint8 in the graph's row order
  (llama's q/k un-permutation applied to whole raw rows); a bias the builder gave the node
  becomes an Add after it;
- the token embedding: `GgmlGather(W, ids)`, sharing the output head's W when they are tied;
- F32/F16/BF16 tensors stay as gguf-native makes them (a plain MatMul / Gather on the values).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .blocks import FLOAT_TYPES, GGUFImportError
from .embedding import _embedding_node, _float_gather
from .graph import Graph, float_matmul, hf_names_for_node, merge_gate_up, rebuild
from .native import ImportReport, _gguf_names, _save_in_place
from .reader import GGUFFile, NameMap

DOMAIN = "oga_npu.ggml"  # the custom-op library's domain (oga_npu.kernels.DOMAIN)
MATMUL_OP, GATHER_OP = "GgmlMatMul", "GgmlGather"
MAX_WEIGHTS = 3  # W0..W2: a fused qkv


def type_id(qtype: str) -> int:
    """The ggml type id of a GGUF type name (gguf.GGMLQuantizationType's value)."""
    import gguf

    return int(gguf.GGMLQuantizationType[qtype])


@dataclass
class _Pass:
    supported: frozenset
    report: dict[str, str] = field(default_factory=dict)
    after: dict[str, list] = field(default_factory=dict)
    head: tuple[str, str, int] | None = None  # the output head's (GGUF name, initializer, type id)


def import_weights(model_file: Path, gguf_path: Path, hf_config: dict, supported: frozenset) -> ImportReport:
    """Rewrite model_file (and its external data) to run the GGUF's raw blocks through the
    custom ops, in place. `supported`: the GGUF type names the library multiplies."""
    import onnx

    model_file = Path(model_file)
    gf = GGUFFile(gguf_path)
    cfg = hf_config.get("text_config", hf_config)
    names = NameMap(gf, int(cfg["num_hidden_layers"]), cfg)
    data_name = model_file.name + ".data"
    data = model_file.parent / data_name
    before = data.stat().st_size if data.exists() else 0
    m = onnx.load(str(model_file), load_external_data=True)
    gr = Graph(m)
    merge_gate_up(gr)
    done = _Pass(frozenset(supported))
    _projections(gr, gf, names, done)
    replace: dict[str, list] = {}
    embedding = _embedding(gr, gf, names, done, replace)
    rebuild(gr.g, done.after, replace)
    gr.drop_unused()
    _add_opset(m)
    _save_in_place(m, model_file, data_name)
    return ImportReport(done.report, embedding, gf.types(), before, data.stat().st_size)


def _add_opset(m) -> None:
    from onnx import helper

    if not any(o.domain == DOMAIN for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid(DOMAIN, 1))


def _projections(gr: Graph, gf: GGUFFile, names: NameMap, done: _Pass) -> None:
    """Every projection the builder made (MatMulNBits, and a float lm_head MatMul) on the file's tensors."""
    for node in list(gr.g.node):
        if node.op_type not in ("MatMulNBits", "MatMul"):
            continue
        hf = hf_names_for_node(node.name)
        if hf is None or (node.op_type == "MatMul" and not node.name.startswith("/lm_head")):
            continue
        gnames = _gguf_names(node.name, hf, names)
        qtypes = [gf.tensors[g].qtype for g in gnames]
        done.report[node.name] = "+".join(qtypes)
        if node.op_type == "MatMulNBits" and gr.float_dtype(node.input[2]) != np.float32:
            raise GGUFImportError(
                f"{node.name}: the builder made float16 activations; the ggml kernels take float32",
                "prepare with --target cpu (the gguf-ggml recipe builds float32 activations)",
            )
        if any(q in FLOAT_TYPES for q in qtypes):  # as gguf-native: the float values
            w = np.concatenate([gf.floats(g)[_order(names, gf, g)] for g in gnames])
            float_matmul(gr, node, w, np.float32)
            continue
        bias = _bias(node)
        ws = [_weight(gr, gf, names, g, done.supported) for g in gnames]
        if len(ws) > MAX_WEIGHTS:
            raise GGUFImportError(f"{node.name}: {len(ws)} tensors in one projection (at most {MAX_WEIGHTS})")
        _to_ggml_matmul(node, [w for w, _ in ws], [t for _, t in ws], gf.tensors[gnames[0]].cols)
        if bias:
            done.after[node.name] = [_bias_add(node, bias)]
        if node.name.startswith("/lm_head"):
            done.head = (gnames[0], ws[0][0], ws[0][1]) if len(gnames) == 1 else None


def _order(names: NameMap, gf: GGUFFile, gname: str):
    order = names.row_order(gname, gf.tensors[gname].rows)
    return slice(None) if order is None else order


def _weight(gr: Graph, gf: GGUFFile, names: NameMap, gname: str, supported: frozenset) -> tuple[str, int]:
    """(initializer name, ggml type id) of a GGUF tensor's raw rows in the graph's row order;
    one initializer per tensor (a tied head and embedding share it)."""
    t = gf.tensors[gname]
    if t.qtype not in supported:
        raise GGUFImportError(
            f"{gname}: GGUF type {t.qtype} is not one the ggml kernels multiply (they take: "
            f"{', '.join(sorted(supported))})",
            "prepare this file with --recipe gguf-native or a Quark recipe (--recipe default)",
        )
    name = f"ggml.{gname}"
    if name not in gr.inits:
        raw = np.ascontiguousarray(raw_rows(t))
        order = names.row_order(gname, t.rows)
        gr.add_init(name, raw if order is None else np.ascontiguousarray(raw[order]))
    return name, type_id(t.qtype)


def raw_rows(t) -> np.ndarray:
    """A quantized GGUF tensor's bytes as [rows, row_bytes] uint8, each row whole blocks."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[t.qtype]]
    if t.cols % block:
        raise GGUFImportError(f"{t.name}: a row of {t.cols} is not whole {t.qtype} blocks of {block}")
    return np.asarray(t.data).view(np.uint8).reshape(t.rows, t.cols // block * size)


def _bias(node) -> str | None:
    """MatMulNBits' optional bias input (index 5), if the builder gave one."""
    return node.input[5] if node.op_type == "MatMulNBits" and len(node.input) > 5 and node.input[5] else None


def _to_ggml_matmul(node, weights: list[str], types: list[int], k: int) -> None:
    from onnx import helper

    node.op_type, node.domain = MATMUL_OP, DOMAIN
    node.input[:] = [node.input[0], *weights]
    del node.attribute[:]
    node.attribute.extend([helper.make_attribute("types", types), helper.make_attribute("K", int(k))])


def _bias_add(node, bias: str):
    from onnx import helper

    y = node.output[0]
    node.output[0] = f"{y}/ggml_main"
    return helper.make_node("Add", [node.output[0], bias], [y], name=f"{node.name}/BiasAdd")


def _embedding(gr: Graph, gf: GGUFFile, names: NameMap, done: _Pass, replace: dict) -> str:
    """The token embedding: GgmlGather over the file's raw rows (the head's initializer when
    tied), a plain Gather for a float table. The builder's nodes go into `replace`."""
    from onnx import helper

    gname = names.gguf_name("model.embed_tokens.weight")
    if gname is None:
        raise GGUFImportError("the GGUF has no token embedding tensor", "check the file (token_embd.weight)")
    node, gbq = _embedding_node(gr.g)
    t = gf.tensors[gname]
    ids, out = node.input[1], node.output[0]
    if t.qtype in FLOAT_TYPES:
        order = names.row_order(gname, t.rows)
        replace[node.name] = [_float_gather(gr, gf.floats(gname), order, np.float32, out)]
        replace[node.name][0].input[1] = ids
        label = t.qtype
    else:
        shared = done.head is not None and done.head[0] == gname
        w, tid = done.head[1:] if shared else _weight(gr, gf, names, gname, done.supported)
        g = helper.make_node(
            GATHER_OP, [w, ids], [out], name="/model/embed_tokens/GgmlGather", domain=DOMAIN, type=tid, K=t.cols
        )
        replace[node.name] = [g]
        label = t.qtype + (" (shared with the output head)" if shared else "")
    if gbq is not None:  # the builder's Reshape feeding its GatherBlockQuantized goes with it
        for n in gr.g.node:
            if n.op_type == "Reshape" and n.output[0] == gbq.input[0]:
                replace[n.name] = []
    return label
