"""The token embedding of a gguf-native model: GatherBlockQuantized over the GGUF's codes
(shared with the output head when the model ties them), never a float copy of a quantized
table; a float table (F32/F16/BF16) becomes a plain Gather."""

from __future__ import annotations

import numpy as np

from .blocks import BlockForm, GGUFImportError, block_sum_matrix, pack_codes, pack_zero_points
from .graph import Graph, value_is_fp16

PREFIX = "/model/embed_tokens"


def import_embedding(gr: Graph, gf, names, head_form, head_node, replace: dict) -> str:
    """Token embedding: GatherBlockQuantized over the GGUF codes (shared with a tied head).
    The nodes that replace the builder's go into `replace`; returns the report's label."""
    g = gr.g
    gname = names.gguf_name("model.embed_tokens.weight")
    if gname is None:
        raise GGUFImportError("the GGUF has no token embedding tensor", "check the file (token_embd.weight)")
    node, gbq = _embedding_node(g)
    qtype = gf.tensors[gname].qtype
    out_name = node.output[0]
    fdt = np.float16 if value_is_fp16(g, out_name) else np.float32
    form = gf.form(gname)
    order = names.row_order(gname, gf.tensors[gname].rows)
    if form is None:  # a float table: a plain Gather
        replace[node.name] = [_float_gather(gr, gf.floats(gname), order, fdt, out_name)]
        return qtype
    if order is not None:
        form = form.take_rows(order)
    shared = (
        head_node is not None
        and gbq is not None
        and gf.tensors[gname] is gf.tensors.get(names.gguf_name("lm_head.weight") or gname)
    )
    if shared and head_form is not None:
        form = head_form
        tables = _head_tables(gr, head_node, form)
    else:
        tables = _own_tables(gr, form, fdt)
    replace[node.name] = _gather_nodes(gr, form, tables, out_name, fdt)
    # the builder's Reshape feeding its GatherBlockQuantized goes with it (drop_unused cleans inits)
    if gbq is not None:
        for n in g.node:
            if n.op_type == "Reshape" and n.output[0] == gbq.input[0]:
                replace[n.name] = []
    return qtype + (" (shared with the output head)" if shared and head_form is not None else "")


def _embedding_node(g):
    """(the builder's embedding node, it when it is a GatherBlockQuantized else None)."""
    gbq = next((n for n in g.node if n.op_type == "GatherBlockQuantized"), None)
    gather = None if gbq else next((n for n in g.node if n.op_type == "Gather" and "input_ids" in n.input[1:]), None)
    node = gbq or gather
    if node is None:
        raise GGUFImportError("the built graph has no token embedding Gather", "rebuild with the gguf-native recipe")
    return node, gbq


def _float_gather(gr: Graph, w: np.ndarray, order, fdt, out_name: str):
    from onnx import helper

    w = w[order] if order is not None else w
    table = gr.add_init("gguf.model.embed_tokens.weight", w.astype(fdt))
    return helper.make_node("Gather", [table, "input_ids"], [out_name], name=f"{PREFIX}/Gather")


def _head_tables(gr: Graph, head_node, form: BlockForm) -> tuple[str, str, str]:
    """Codes, scales and zero points of the output head's MatMulNBits (a tied embedding)."""
    b, s = head_node.input[1], head_node.input[2]
    z = (
        head_node.input[3]
        if len(head_node.input) > 3 and head_node.input[3]
        else gr.add_init("gguf.model.embed_tokens.zero_points", pack_zero_points(form.zp, form.bits))
    )
    return b, s, z


def _own_tables(gr: Graph, form: BlockForm, fdt) -> tuple[str, str, str]:
    b = gr.add_init("gguf.model.embed_tokens.q", pack_codes(form.q, form.bits, form.block))
    s = gr.add_init("gguf.model.embed_tokens.scales", form.scale.astype(fdt).reshape(form.rows, -1))
    z = gr.add_init("gguf.model.embed_tokens.zero_points", pack_zero_points(form.zp, form.bits))
    return b, s, z


def _gather_nodes(gr: Graph, form: BlockForm, tables: tuple[str, str, str], out_name: str, fdt) -> list:
    """GatherBlockQuantized over the tables, plus the gathered rows' offsets where the form has them."""
    from onnx import helper

    b, s, z = tables
    flat = form.cols * form.bits // 8
    shape = gr.add_init("gguf.model.embed_tokens.shape", np.array([form.rows, flat], np.int64))
    scales2d = gr.add_init("gguf.model.embed_tokens.scales_2d", np.array([form.rows, -1], np.int64))
    zp2d = gr.add_init("gguf.model.embed_tokens.zp_2d", np.array([form.rows, -1], np.int64))
    p = PREFIX
    main = out_name if form.offset is None else f"{p}/gguf_main"
    new = [
        helper.make_node("Reshape", [b, shape], [f"{p}/gguf_table"], name=f"{p}/gguf_table"),
        helper.make_node("Reshape", [s, scales2d], [f"{p}/gguf_scales"], name=f"{p}/gguf_scales"),
        helper.make_node("Reshape", [z, zp2d], [f"{p}/gguf_zp"], name=f"{p}/gguf_zp"),
        helper.make_node(
            "GatherBlockQuantized",
            [f"{p}/gguf_table", "input_ids", f"{p}/gguf_scales", f"{p}/gguf_zp"],
            [main],
            name=f"{p}/GatherBlockQuantized",
            domain="com.microsoft",
            bits=form.bits,
            block_size=form.block,
            gather_axis=0,
            quantize_axis=1,
        ),
    ]
    if form.offset is not None:
        new += _offset_nodes(gr, form, main, out_name, fdt)
    return new


def _offset_nodes(gr: Graph, form: BlockForm, main: str, out_name: str, fdt) -> list:
    """out = main + (the rows' offsets, one per block, repeated over the block)."""
    from onnx import helper

    p = PREFIX
    tab = gr.add_init("gguf.model.embed_tokens.offsets", np.ascontiguousarray(form.offset).astype(fdt))
    e = gr.add_init(
        f"gguf.blockexpand.{form.cols}x{form.block}.{np.dtype(fdt).name}",
        np.ascontiguousarray(block_sum_matrix(form.cols, form.block).T).astype(fdt),
    )
    return [
        helper.make_node("Gather", [tab, "input_ids"], [f"{p}/gguf_offsets"], name=f"{p}/gguf_offsets"),
        helper.make_node("MatMul", [f"{p}/gguf_offsets", e], [f"{p}/gguf_offset_rows"], name=f"{p}/gguf_offset_rows"),
        helper.make_node("Add", [main, f"{p}/gguf_offset_rows"], [out_name], name=f"{p}/gguf_offset_add"),
    ]
