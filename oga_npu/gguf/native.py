"""GGUF weights into a builder model without a second rounding (recipe `gguf-native`).

The OGA model builder makes the graph (from the dequantized HF folder, `-p int4`); this
pass then puts the GGUF file's own blocks into its MatMulNBits and embedding nodes, so
the ONNX model multiplies by exactly the weights llama.cpp multiplies by:

- `blocks`: each GGML type's blocks as one exact form (codes, scales, integer zero points,
  offsets) and onnxruntime's layouts of it;
- `reader`: the file's tensors by GGUF name, and the HF names and row order they map to;
- `graph`: a MatMulNBits pointed at a form (the file's own data, rebuilt by `/gguf.*` nodes);
- `embedding`: the token embedding as GatherBlockQuantized over the same codes;
- here, `import_weights`: the driver over every projection of the graph, then the file
  written back in place.

F32/F16/BF16 tensors become a plain MatMul / Gather on the float values. Other types (Q2_K,
Q3_K, IQ*) raise GGUFImportError naming the Quark recipes instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .blocks import BlockForm, GGUFImportError, concat_rows
from .embedding import import_embedding
from .graph import Graph, float_matmul, hf_names_for_node, matmul_nbits, merge_gate_up, packed_hf_name, rebuild
from .reader import GGUFFile, NameMap


@dataclass
class ImportReport:
    nodes: dict  # ONNX node -> "Q4_1", "Q4_K+Q4_K+Q6_K", "F32" ...
    embedding: str
    types: dict  # GGUF type -> tensor count
    bytes_before: int
    bytes_after: int

    def summary(self) -> dict:
        kinds: dict[str, int] = {}
        for v in self.nodes.values():
            kinds[v] = kinds.get(v, 0) + 1
        return {
            "gguf_types": self.types,
            "matmuls": kinds,
            "embedding": self.embedding,
            "weights_bytes": self.bytes_after,
        }


@dataclass
class _MatMuls:
    """What the pass over the projections did: the report's labels, the nodes to insert
    (`after` a node, `first` in the graph) and the output head's form (a tied embedding
    shares it)."""

    report: dict[str, str] = field(default_factory=dict)
    after: dict[str, list] = field(default_factory=dict)
    first: list = field(default_factory=list)
    head_form: BlockForm | None = None
    head_node: object | None = None


def import_weights(model_file: Path, gguf_path: Path, hf_config: dict) -> ImportReport:
    """Rewrite model_file (and its external data) with the GGUF's blocks, in place."""
    import onnx

    model_file = Path(model_file)
    gf = GGUFFile(gguf_path)
    cfg = hf_config.get("text_config", hf_config)
    names = NameMap(gf, int(cfg["num_hidden_layers"]), cfg)
    data_name = model_file.name + ".data"
    before = (model_file.parent / data_name).stat().st_size if (model_file.parent / data_name).exists() else 0
    m = onnx.load(str(model_file), load_external_data=True)
    gr = Graph(m)
    merge_gate_up(gr)
    done = _import_matmuls(gr, gf, names)
    replace: dict[str, list] = {}
    embedding = import_embedding(gr, gf, names, done.head_form, done.head_node, replace)
    rebuild(gr.g, done.after, replace, done.first)
    gr.drop_unused()
    _save_in_place(m, model_file, data_name)
    after = (model_file.parent / data_name).stat().st_size
    return ImportReport(done.report, embedding, gf.types(), before, after)


def _import_matmuls(gr: Graph, gf: GGUFFile, names: NameMap) -> _MatMuls:
    """Each projection the builder made (MatMulNBits, and a float lm_head MatMul) on the file's tensors."""
    out = _MatMuls()
    for node in list(gr.g.node):
        if node.op_type not in ("MatMulNBits", "MatMul"):
            continue
        hf = hf_names_for_node(node.name)
        if hf is None:
            continue
        if node.op_type == "MatMul" and not node.name.startswith("/lm_head"):
            continue  # float MatMuls the builder kept float (none with -p int4)
        gnames = _gguf_names(node.name, hf, names)
        fdt = gr.float_dtype(node.input[2]) if node.op_type == "MatMulNBits" else np.float32
        parts, floats = _parts(gf, names, gnames)
        if floats:
            w = np.concatenate([p if isinstance(p, np.ndarray) else p.dequantize() for p in parts])
            float_matmul(gr, node, w, fdt)
        else:
            form = parts[0] if len(parts) == 1 else concat_rows(parts)
            extra: list = []
            matmul_nbits(gr, node, form, fdt, extra)
            out.first += [n for n in extra if n.name.startswith("/gguf.")]
            rest = [n for n in extra if not n.name.startswith("/gguf.")]
            if rest:
                out.after[node.name] = rest
            if node.name.startswith("/lm_head"):
                out.head_form, out.head_node = form, node
        out.report[node.name] = "+".join(gf.tensors[g].qtype for g in gnames)
    return out


def _gguf_names(node_name: str, hf: list[str], names: NameMap) -> list[str]:
    """The GGUF tensors whose rows a node concatenates (the HF parameters `hf`, in order)."""
    gnames = [names.gguf_name(h) for h in hf]
    if None in gnames and len(hf) > 1:  # fused in the file too (phi3's attn_qkv, ffn_up as gate+up)
        packed = packed_hf_name(node_name)
        if packed and names.gguf_name(packed):
            hf, gnames = [packed], [names.gguf_name(packed)]
    if hf == ["lm_head.weight"] and gnames == [None]:
        gnames = [names.gguf_name("model.embed_tokens.weight")]  # tied output head
    if None in gnames:
        missing = [h for h, g in zip(hf, gnames) if g is None]
        raise GGUFImportError(
            f"{node_name}: no GGUF tensor for {', '.join(missing)}",
            "prepare this file with a Quark recipe (--recipe default)",
        )
    return gnames


def _parts(gf: GGUFFile, names: NameMap, gnames: list[str]) -> tuple[list, bool]:
    """Each tensor in HF row order: a BlockForm, or float values when its type is a float
    one (then True: the node becomes a float MatMul)."""
    parts, floats = [], False
    for g in gnames:
        t = gf.tensors[g]
        order = names.row_order(g, t.rows)
        f = gf.form(g)
        if f is None:
            floats = True
            f = gf.floats(g)
            f = f[order] if order is not None else f
        elif order is not None:
            f = f.take_rows(order)
        parts.append(f)
    return parts, floats


def _save_in_place(m, model_file: Path, data_name: str) -> None:
    """Write the model and its one external data file next to model_file, then rename both
    into place under the original names."""
    import onnx

    tmp = model_file.with_name(model_file.name + ".gguf_tmp")
    tmp_data = tmp.name + ".data"
    onnx.save(
        m, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True, location=tmp_data, size_threshold=1024
    )
    # the graph names its data file: rename both into place under the original names
    m2 = onnx.load(str(tmp), load_external_data=False)
    for t in m2.graph.initializer:
        for kv in t.external_data:
            if kv.key == "location":
                kv.value = data_name
    onnx.save(m2, str(tmp))
    os.chmod(model_file.parent / tmp_data, 0o644)
    os.replace(model_file.parent / tmp_data, model_file.parent / data_name)
    os.replace(tmp, model_file)
