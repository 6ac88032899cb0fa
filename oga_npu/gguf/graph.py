"""The graph rewrite of the gguf-native import: a builder MatMulNBits pointed at a BlockForm.

What a node stores is the file's own data where the form knows it (packed low nibbles and
high bits, 6-bit K-quant factors, fp16 scales and minimums); nodes named `/gguf.*` (the
graph's first nodes, inputs all initializers) rebuild the codes, scales and offsets, and
onnxruntime folds them at load (or `expand` once, into the cache). The offset of the
formats with a minimum is added by a small side product: y += (x summed per block) @
offsets - the form llama.cpp's own Q4_1/Q4_K dot products take (Q8_1 activations carry
their block sums).
"""

from __future__ import annotations

import re

import numpy as np

from .blocks import BlockForm, pack_codes, pack_zero_points

# builder node name -> HF parameter names whose rows it concatenates
_NODE = re.compile(r"^/model/layers\.(\d+)/(attn|mlp)/(\w+?)_proj/MatMul(?:_Q\d)?$")
_PACKED = {"qkv": ("q", "k", "v"), "gate_up": ("gate", "up")}


def hf_names_for_node(node_name: str) -> list[str] | None:
    if node_name.startswith("/lm_head/MatMul"):
        return ["lm_head.weight"]
    m = _NODE.match(node_name)
    if not m:
        return None
    layer, block, proj = m.groups()
    mod = "self_attn" if block == "attn" else "mlp"
    parts = _PACKED.get(proj, (proj,))
    return [f"model.layers.{layer}.{mod}.{p}_proj.weight" for p in parts]


def packed_hf_name(node_name: str) -> str | None:
    m = _NODE.match(node_name)
    if not m:
        return None
    layer, block, proj = m.groups()
    return f"model.layers.{layer}.{'self_attn' if block == 'attn' else 'mlp'}.{proj}_proj.weight"


class Graph:
    def __init__(self, model):
        self.m = model
        self.g = model.graph
        self.inits = {i.name: i for i in self.g.initializer}
        self.io_float = None

    def add_init(self, name: str, arr: np.ndarray) -> str:
        from onnx import numpy_helper

        if name in self.inits:
            self.g.initializer.remove(self.inits[name])
        t = numpy_helper.from_array(arr, name)
        self.g.initializer.append(t)
        self.inits[name] = t
        return name

    def drop_unused(self) -> None:
        used = {i for n in self.g.node for i in n.input} | {o.name for o in self.g.output}
        for name in list(self.inits):
            if name not in used:
                self.g.initializer.remove(self.inits.pop(name))

    def float_dtype(self, name: str):
        from onnx import helper

        return helper.tensor_dtype_to_np_dtype(self.inits[name].data_type)


def _attr(node, name, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _set_attr(node, name, value) -> None:
    from onnx import helper

    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def matmul_nbits(gr: Graph, node, form: BlockForm, fdt, extra_nodes: list) -> None:
    """Point `node` (MatMulNBits) at the form's codes; add the offset product if needed.

    What is stored is the file's own data where the form knows it: 5- and 6-bit codes as
    their low nibbles and high bits, K-quant scales and minimums as the file's 6-bit factors
    and fp16 super-block scales, Q4_1/Q5_1 minimums as fp16. Nodes named `/gguf.*` (the
    graph's first nodes, inputs all initializers) rebuild the 8-bit codes, the float
    scales and the offsets; onnxruntime folds them into initializers when it loads the model,
    so they cost load time (well under a second) and no time per token."""
    from onnx import helper

    base = node.name.replace("/", ".").strip(".").removesuffix("_Q4").removesuffix("_Q8")
    pre = f"gguf.{base}"
    b = _codes(gr, f"{pre}.q{form.bits}", form, extra_nodes)
    s, s3 = _scale_tensor(gr, f"{pre}.scales", form, fdt, extra_nodes)
    z = _zero_points(gr, f"{pre}.zero_points", form, extra_nodes)
    x = node.input[0]
    node.input[:] = [x, b, s] + ([z] if z else [])
    _set_attr(node, "bits", form.bits)
    _set_attr(node, "block_size", form.block)
    _set_attr(node, "K", form.cols)
    _set_attr(node, "N", form.rows)
    if form.offset is None:
        return
    r = _offsets_t(gr, f"{pre}.offsets", form, fdt, s3, z, extra_nodes)  # [nb, N]
    y = node.output[0]
    main = f"{y}/gguf_main"
    node.output[0] = main
    p = node.name + "/gguf_offset"
    # x summed per block: a Reshape to [..., nb, block] and a ReduceSum (WebGPU ran this 1.37x
    # faster per token than a MatMul by a 0/1 matrix; the same on the CPU)
    nb = form.cols // form.block
    lead = [0] * (_rank(gr, x) - 1)  # keep the leading dims ([batch, sequence] in the builder's graphs)
    extra_nodes += [
        helper.make_node("Reshape", [x, _shape(gr, lead + [nb, form.block])], [p + "/blocks"], name=p + "/Blocks"),
        helper.make_node(
            "ReduceSum", [p + "/blocks", _shape(gr, [-1])], [p + "/block_sums"], name=p + "/BlockSum", keepdims=0
        ),
        helper.make_node("MatMul", [p + "/block_sums", r], [p + "/output_0"], name=p + "/MatMul"),
        helper.make_node("Add", [main, p + "/output_0"], [y], name=p + "/Add"),
    ]


def _rank(gr: Graph, name: str, default: int = 3) -> int:
    """The rank a graph input or a typed value declares; the builder's activations are 3-D."""
    for v in list(gr.g.input) + list(gr.g.value_info):
        if v.name == name and v.type.tensor_type.HasField("shape"):
            return len(v.type.tensor_type.shape.dim)
    return default


def merge_gate_up(gr: Graph) -> int:
    """One MatMulNBits for each layer's gate and up projections (same input): the builder's
    two nodes become `gate_up_proj` (the rows of both) and a Split into the old outputs.
    A layer then runs one 4-bit kernel, one offset product and one Add where it ran two of
    each. Returns the number of layers merged."""
    from onnx import helper

    g = gr.g
    by_name = {n.name: n for n in g.node}
    merged = 0
    new_nodes = []
    drop = set()
    for n in g.node:
        m = _NODE.match(n.name)
        if not (m and m.group(2) == "mlp" and m.group(3) == "gate" and n.op_type == "MatMulNBits"):
            new_nodes.append(n)
            continue
        up = by_name.get(n.name.replace("/gate_proj/", "/up_proj/"))
        if up is None or up.op_type != "MatMulNBits" or up.input[0] != n.input[0]:
            new_nodes.append(n)
            continue
        gate_out, up_out = n.output[0], up.output[0]
        inter = _attr(n, "N")
        name = n.name.replace("/gate_proj/", "/gate_up_proj/")
        out = name + "/output_0"
        fused = helper.make_node("MatMulNBits", list(n.input), [out], name=name, domain=n.domain)
        fused.attribute.extend(n.attribute)
        split = gr.add_init(f"gguf.const.split.{inter}x2", np.array([inter, inter], np.int64))
        new_nodes += [fused, helper.make_node("Split", [out, split], [gate_out, up_out], name=name + "/Split", axis=-1)]
        drop.add(up.name)
        merged += 1
    if merged:
        del g.node[:]
        g.node.extend(n for n in new_nodes if n.name not in drop)
    return merged


def _u8(gr: Graph, v: int) -> str:
    name = f"gguf.const.u8.{v}"
    if name not in gr.inits:
        gr.add_init(name, np.array([v], np.uint8))
    return name


def _shape(gr: Graph, dims) -> str:
    dims = [int(d) for d in dims]
    name = "gguf.const.shape." + "x".join(str(d).replace("-", "m") for d in dims)
    if name not in gr.inits:
        gr.add_init(name, np.array(dims, np.int64))
    return name


def _codes(gr: Graph, name: str, form: BlockForm, nodes: list) -> str:
    """MatMulNBits B. 8-bit codes that use 5 or 6 bits (Q5_*, Q6_K; Q8_0 uses all 8) are
    stored as packed low nibbles plus 1 or 2 high bits each, and widened by folded nodes."""
    from onnx import helper

    packed = pack_codes(form.q, form.bits, form.block)
    top = int(form.q.max()) if form.q.size else 255
    hb = 1 if top < 32 else 2 if top < 64 else 0
    if form.bits != 8 or not hb or form.q.size % 8:
        return gr.add_init(name, packed)
    q = form.q.reshape(-1)
    lo = ((q[0::2] & 15) | ((q[1::2] & 15) << 4)).astype(np.uint8).reshape(-1, 1)
    per = 8 // hb
    hi = (q >> 4).astype(np.uint8).reshape(-1, per)
    hib = np.zeros(hi.shape[0], np.uint8)
    for j in range(per):
        hib |= (hi[:, j] << (j * hb)).astype(np.uint8)
    lo_n = gr.add_init(f"{name}.lo4", lo)
    hi_n = gr.add_init(f"{name}.hi{hb}", hib.reshape(-1, 1))
    shifts = f"gguf.const.shifts{hb}"
    if shifts not in gr.inits:
        gr.add_init(shifts, (np.arange(per) * hb).astype(np.uint8).reshape(1, per))
    P = f"/{name}"
    mk = helper.make_node
    nodes += [
        mk("BitwiseAnd", [lo_n, _u8(gr, 15)], [P + "/lo_even"], name=P + "/lo_even"),
        mk("BitShift", [lo_n, _u8(gr, 4)], [P + "/lo_odd"], name=P + "/lo_odd", direction="RIGHT"),
        mk("Concat", [P + "/lo_even", P + "/lo_odd"], [P + "/lo"], name=P + "/lo", axis=1),
        mk("BitShift", [hi_n, shifts], [P + "/hi_s"], name=P + "/hi_s", direction="RIGHT"),
        mk("BitwiseAnd", [P + "/hi_s", _u8(gr, (1 << hb) - 1)], [P + "/hi"], name=P + "/hi"),
        mk("BitShift", [P + "/hi", _u8(gr, 4)], [P + "/hi4"], name=P + "/hi4", direction="LEFT"),
        mk("Reshape", [P + "/hi4", _shape(gr, [-1, 2])], [P + "/hi4_2"], name=P + "/hi4_2"),
        mk("BitwiseOr", [P + "/lo", P + "/hi4_2"], [P + "/q"], name=P + "/q"),
        mk("Reshape", [P + "/q", _shape(gr, packed.shape)], [name], name=P + "/codes"),
    ]
    return name


def _scale_tensor(gr: Graph, name: str, form: BlockForm, fdt, nodes: list) -> tuple[str, str | None]:
    """MatMulNBits scales [N*nb], and the float32 [rows, nd, k] tensor they come from (None
    when stored as plain values)."""
    from onnx import helper

    if not form.factored:
        return _scales(gr, name, form.scale.reshape(-1), fdt, nodes), None
    P = f"/{name}"
    mk = helper.make_node
    cur = _factor_product(gr, name, form.d16, form.sc, ("d16", "sc"), nodes)
    out = name if np.dtype(fdt) == np.float32 else P + "/flat"
    nodes.append(mk("Reshape", [cur, _shape(gr, [-1])], [out], name=P + "/flat"))
    if out != name:
        nodes.append(mk("Cast", [out], [name], name=P + "/io", to=helper.np_dtype_to_tensor_dtype(np.dtype(fdt))))
    return name, cur


def _factor_product(
    gr: Graph, name: str, half: np.ndarray, ints: np.ndarray | None, tags: tuple[str, str], nodes: list
) -> str:
    """float32 half * ints (the file's fp16 scale or minimum times its small integer factors,
    exact in float32) from stored factors, by folded nodes; the result's tensor name."""
    from onnx import TensorProto, helper

    P = f"/{name}"
    h = gr.add_init(f"{name}.{tags[0]}", half)
    nodes.append(helper.make_node("Cast", [h], [f"{P}/{tags[0]}"], name=f"{P}/{tags[0]}", to=TensorProto.FLOAT))
    if ints is None:
        return f"{P}/{tags[0]}"
    i = gr.add_init(f"{name}.{tags[1]}", ints)
    nodes += [
        helper.make_node("Cast", [i], [f"{P}/{tags[1]}"], name=f"{P}/{tags[1]}", to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{P}/{tags[0]}", f"{P}/{tags[1]}"], [f"{P}/product"], name=f"{P}/product"),
    ]
    return f"{P}/product"


def _zero_points(gr: Graph, name: str, form: BlockForm, nodes: list) -> str | None:
    """MatMulNBits zero points: None where all are the kernel's default (2^(bits-1)), one
    folded ConstantOfShape where all are equal, else the packed values."""
    from onnx import TensorProto, helper

    zp = form.zp
    if zp.size and (zp == (1 << (form.bits - 1))).all():
        return None
    packed = pack_zero_points(zp, form.bits).reshape(-1)
    if zp.size and (zp == zp.flat[0]).all():
        value = helper.make_tensor("value", TensorProto.UINT8, [1], [int(packed[0])])
        nodes.append(
            helper.make_node("ConstantOfShape", [_shape(gr, [packed.size])], [name], name=f"/{name}/fill", value=value)
        )
        return name
    return gr.add_init(name, packed)


def _offsets_t(gr: Graph, name: str, form: BlockForm, fdt, s3: str | None, z: str | None, nodes: list) -> str:
    """The offsets transposed, [nb, N]: from the file's minimums (folded nodes) when the form
    has them, else stored."""
    from onnx import TensorProto, helper

    if s3 is None or form.m16 is None:
        return gr.add_init(name, np.ascontiguousarray(form.offset.T).astype(fdt))
    rows, nd, k = form.m16.shape[0], form.m16.shape[1], form.d16.shape[2] if form.sc is None else form.sc.shape[2]
    nb = nd * k
    P = f"/{name}"
    mk = helper.make_node
    cur = _factor_product(gr, name, form.m16, form.mn, ("m16", "mn"), nodes)
    if z is None:  # the kernel's default zero point
        zf = gr.add_init(f"gguf.const.f32.{1 << (form.bits - 1)}", np.array([1 << (form.bits - 1)], np.float32))
    else:
        zu = z
        if form.bits == 4:  # two per byte, even block low: unpack
            nbh = (nb + 1) // 2
            nodes += [
                mk("Reshape", [z, _shape(gr, [rows, nbh, 1])], [P + "/zp2"], name=P + "/zp2"),
                mk("BitwiseAnd", [P + "/zp2", _u8(gr, 15)], [P + "/zp_even"], name=P + "/zp_even"),
                mk("BitShift", [P + "/zp2", _u8(gr, 4)], [P + "/zp_odd"], name=P + "/zp_odd", direction="RIGHT"),
                mk("Concat", [P + "/zp_even", P + "/zp_odd"], [P + "/zp_pairs"], name=P + "/zp_pairs", axis=2),
                mk("Reshape", [P + "/zp_pairs", _shape(gr, [rows, 2 * nbh])], [P + "/zp_all"], name=P + "/zp_all"),
            ]
            zu = P + "/zp_all"
            if 2 * nbh != nb:
                nodes.append(
                    mk(
                        "Slice",
                        [zu, _shape(gr, [0]), _shape(gr, [nb]), _shape(gr, [1])],
                        [P + "/zp_cut"],
                        name=P + "/zp_cut",
                    )
                )
                zu = P + "/zp_cut"
        nodes += [
            mk("Reshape", [zu, _shape(gr, [rows, nd, k])], [P + "/zp3"], name=P + "/zp3"),
            mk("Cast", [P + "/zp3"], [P + "/zpf"], name=P + "/zpf", to=TensorProto.FLOAT),
        ]
        zf = P + "/zpf"
    nodes += [
        mk("Mul", [s3, zf], [P + "/sz"], name=P + "/sz"),
        mk("Add", [cur, P + "/sz"], [P + "/off"], name=P + "/off"),
        mk("Reshape", [P + "/off", _shape(gr, [rows, nb])], [P + "/off2"], name=P + "/off2"),
    ]
    out = name if np.dtype(fdt) == np.float32 else P + "/t"
    nodes.append(mk("Transpose", [P + "/off2"], [out], name=P + "/t", perm=[1, 0]))
    if out != name:
        nodes.append(mk("Cast", [out], [name], name=P + "/io", to=helper.np_dtype_to_tensor_dtype(np.dtype(fdt))))
    return name


def _scales(gr: Graph, name: str, scale: np.ndarray, fdt, extra_nodes: list) -> str:
    """Scales in the io dtype; fp32 scales that are exact in fp16 (the file's own fp16 `d` of
    Q4_0/Q4_1/Q5_*/Q8_0) are stored as fp16 with a Cast onnxruntime folds at load (half the
    bytes on disk, the same values)."""
    from onnx import TensorProto, helper

    if np.dtype(fdt) != np.float32:
        return gr.add_init(name, scale.astype(fdt))
    half = scale.astype(np.float16)
    if not np.array_equal(half.astype(np.float32), scale):
        return gr.add_init(name, scale.astype(np.float32))
    gr.add_init(name + ".fp16", half)
    extra_nodes.insert(
        0, helper.make_node("Cast", [name + ".fp16"], [name], name=f"/{name}/Cast", to=TensorProto.FLOAT)
    )
    return name


def float_matmul(gr: Graph, node, w: np.ndarray, fdt) -> None:
    """Replace a MatMulNBits by MatMul on the file's float weights ([N, K] -> [K, N])."""
    name = "gguf." + node.name.replace("/", ".").strip(".") + ".weight_t"
    gr.add_init(name, np.ascontiguousarray(w.T).astype(fdt))
    node.op_type, node.domain = "MatMul", ""
    node.input[:] = [node.input[0], name]
    del node.attribute[:]


def place(g, node_name: str, extra: list) -> None:
    """Insert the nodes matmul_nbits made: those of initializers (`/gguf.*`) first, the rest
    after `node_name`."""
    rebuild(
        g,
        {node_name: [n for n in extra if not n.name.startswith("/gguf.")]},
        {},
        first=[n for n in extra if n.name.startswith("/gguf.")],
    )


def rebuild(g, after: dict, replace: dict, first: list = ()) -> None:
    """One pass over the node list (protobuf copies on extend, so only once, at the end):
    nodes in `replace` (by name) give way to their list, `after` lists follow their node,
    `first` (Casts of initializers) lead the graph."""
    nodes = list(g.node)
    out = list(first)
    for n in nodes:
        out += replace[n.name] if n.name in replace else [n]
        out += after.get(n.name, [])
    del g.node[:]
    g.node.extend(out)


def value_is_fp16(g, name: str) -> bool:
    from onnx import TensorProto

    for v in list(g.value_info) + list(g.output):
        if v.name == name:
            return v.type.tensor_type.elem_type == TensorProto.FLOAT16
    # the builder's io dtype: the first float initializer feeding a layer norm
    for n in g.node:
        if n.op_type in ("SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization", "LayerNormalization"):
            for i in n.input:
                for t in g.initializer:
                    if t.name == i:
                        return t.data_type == TensorProto.FLOAT16
    return False
