"""GGUF weights into a builder model without a second rounding (recipe `gguf-native`).

The OGA model builder makes the graph (from the dequantized HF folder, `-p int4`); this
pass then puts the GGUF file's own blocks into its MatMulNBits and embedding nodes, so
the ONNX model multiplies by exactly the weights llama.cpp multiplies by.

Every llama.cpp block format used by common files is written as

    w = scale * (q - zero_point) + offset        per block of `block` weights

with q the file's own integer codes, an integer zero point (uint8, the form onnxruntime's
fast int8-compute kernels take: a float zero point is 60x slower at 4 bits and refused at
8 bits on the CPU) and a float `offset` for the formats whose minimum is no multiple of
the scale (Q4_1, Q5_1, Q4_K, Q5_K). The offset is added by a small side product:
y += (x summed per block) @ offsets - the form llama.cpp's own Q4_1/Q4_K dot products
take (Q8_1 activations carry their block sums). So every type is exact:

    Q4_0  4 bits, block 32, zp 8            Q5_0  8 bits, block 32, zp 16
    Q4_1  4 bits, block 32, zp + offset     Q5_1  8 bits, block 32, zp + offset
    Q4_K  4 bits, block 32, zp + offset     Q5_K  8 bits, block 32, zp + offset
    Q8_0  8 bits, block 32, zp 128          Q6_K  8 bits, block 16, zp 32
    F32/F16/BF16: a plain MatMul / Gather on the float values

The token embedding becomes GatherBlockQuantized over the same codes (shared with the
output head when the model ties them), never a float copy of a quantized table.
Other types (Q2_K, Q3_K, IQ*) raise GGUFImportError naming the Quark recipes instead.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import OgaNpuError

QK_K = 256


class GGUFImportError(OgaNpuError):
    """The GGUF holds something the native import cannot represent."""


@dataclass
class BlockForm:
    """w[r, c] = scale[r, b] * (q[r, c] - zp[r, b]) + offset[r, b], b = c // block."""

    bits: int
    block: int
    q: np.ndarray  # uint8 [rows, cols]
    scale: np.ndarray  # float32 [rows, nb]
    zp: np.ndarray  # uint8 [rows, nb]
    offset: np.ndarray | None  # float32 [rows, nb], None when all zero
    qtype: str = ""
    # The file's own factors, when known: the graph stores these (the file's size) and
    # computes scale and offset from them in nodes onnxruntime folds at load.
    #   scale = d16 * sc          d16: float16 [rows, nd, 1]; sc: int [rows, nd, nb/nd] or None (= 1)
    #   minimum = m16 * mn        m16: float16 [rows, nd, 1]; mn: uint8 [rows, nd, nb/nd] or None
    #   offset = minimum + scale * zp   (float32, in this order)
    d16: np.ndarray | None = None
    sc: np.ndarray | None = None
    m16: np.ndarray | None = None
    mn: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return self.q.shape[0]

    @property
    def cols(self) -> int:
        return self.q.shape[1]

    def dequantize(self) -> np.ndarray:
        nb = self.cols // self.block
        w = (
            self.q.reshape(self.rows, nb, self.block).astype(np.float32) - self.zp[..., None].astype(np.float32)
        ) * self.scale[..., None]
        if self.offset is not None:
            w = w + self.offset[..., None]
        return w.reshape(self.rows, self.cols)

    def take_rows(self, order: np.ndarray) -> "BlockForm":
        def rows(a):
            return None if a is None else a[order]

        return BlockForm(
            self.bits,
            self.block,
            self.q[order],
            self.scale[order],
            self.zp[order],
            rows(self.offset),
            self.qtype,
            rows(self.d16),
            rows(self.sc),
            rows(self.m16),
            rows(self.mn),
        )

    @property
    def factored(self) -> bool:
        return self.d16 is not None

    def widen(self, bits: int, block: int) -> "BlockForm":
        """The same values in a form with more bits and/or smaller blocks."""
        if bits < self.bits or self.block % block:
            raise ValueError(f"cannot narrow {self.bits}-bit block {self.block} to {bits}-bit block {block}")
        rep = self.block // block
        if rep == 1:
            return BlockForm(
                bits, block, self.q, self.scale, self.zp, self.offset, self.qtype, self.d16, self.sc, self.m16, self.mn
            )
        return BlockForm(
            bits,
            block,
            self.q,
            np.repeat(self.scale, rep, 1),
            np.repeat(self.zp, rep, 1),
            None if self.offset is None else np.repeat(self.offset, rep, 1),
            self.qtype,
        )


def concat_rows(forms: list[BlockForm]) -> BlockForm:
    bits, block = max(f.bits for f in forms), min(f.block for f in forms)
    forms = [f.widen(bits, block) for f in forms]
    offs = None
    if any(f.offset is not None for f in forms):
        offs = np.concatenate([f.offset if f.offset is not None else np.zeros_like(f.scale) for f in forms])
    out = BlockForm(
        bits,
        block,
        np.concatenate([f.q for f in forms]),
        np.concatenate([f.scale for f in forms]),
        np.concatenate([f.zp for f in forms]),
        offs,
        "+".join(f.qtype for f in forms),
    )

    def same(attr):  # factors concatenate when every form has them in the same layout
        arrs = [getattr(f, attr) for f in forms]
        if all(a is None for a in arrs):
            return True, None
        if any(a is None for a in arrs) or len({(a.shape[1:], a.dtype) for a in arrs}) != 1:
            return False, None
        return True, np.concatenate(arrs)

    parts = [same(a) for a in ("d16", "sc", "m16", "mn")]
    if all(ok for ok, _ in parts) and parts[0][1] is not None and (offs is None) == (parts[2][1] is None):
        out.d16, out.sc, out.m16, out.mn = (a for _, a in parts)
    return out


# ---------------------------------------------------------------- llama.cpp block formats


def _f16(b: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(b).view(np.float16).astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """[n, 16] bytes -> [n, 32] codes: element i < 16 in the low nibble of byte i, i >= 16 high."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _bits32(qh: np.ndarray) -> np.ndarray:
    """[n, 4] bytes (little-endian uint32) -> [n, 32] bits, bit i for element i."""
    return np.unpackbits(qh, axis=-1, bitorder="little")


def _with_minimum(scale, minimum, q, bits, block, qtype):
    """w = scale*q + minimum as an integer zero point plus the remaining offset (exact)."""
    top = (1 << bits) - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        zp = np.where(scale != 0, np.rint(-minimum / scale), 0.0)
    zp = np.clip(np.nan_to_num(zp), 0, top).astype(np.float32)
    scale, minimum = scale.astype(np.float32), minimum.astype(np.float32)
    offset = minimum + scale * zp  # float32, the order the graph computes it in
    return scale, zp.astype(np.uint8), offset, q


def block_form(raw: np.ndarray, qtype: str, rows: int, cols: int) -> BlockForm:
    """The integer codes, scales, zero points and offsets of a GGUF tensor [rows, cols]."""
    import gguf

    t = gguf.GGMLQuantizationType[qtype]
    bsize, tsize = gguf.GGML_QUANT_SIZES[t]
    if cols % bsize:
        raise GGUFImportError(f"{qtype} row of {cols} is not a multiple of its block {bsize}")
    b = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, tsize)
    n = b.shape[0]
    h16 = _h16
    factors: tuple = (None, None, None, None)  # d16, sc, m16, mn per GGUF block (reshaped below)
    if qtype in ("Q4_0", "Q8_0", "Q5_0"):
        factors = (h16(b[:, :2]), None, None, None)
    if qtype == "Q4_0":
        d, q = _f16(b[:, :2]), _nibbles(b[:, 2:])
        form = (4, 32, d, np.full((n, 1), 8, np.uint8), None, q)
    elif qtype == "Q8_0":
        d, q = _f16(b[:, :2]), (b[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
        form = (8, 32, d, np.full((n, 1), 128, np.uint8), None, q)
    elif qtype == "Q5_0":
        d, q = _f16(b[:, :2]), _nibbles(b[:, 6:]) | (_bits32(b[:, 2:6]) << 4)
        form = (8, 32, d, np.full((n, 1), 16, np.uint8), None, q)
    elif qtype in ("Q4_1", "Q5_1"):
        d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
        if qtype == "Q4_1":
            q, bits = _nibbles(b[:, 4:]), 4
        else:
            q, bits = _nibbles(b[:, 8:]) | (_bits32(b[:, 4:8]) << 4), 8
        s, zp, off, q = _with_minimum(d, m, q, bits, 32, qtype)
        form = (bits, 32, s, zp, off, q)
        factors = (h16(b[:, :2]), None, h16(b[:, 2:4]), None)
    elif qtype in ("Q4_K", "Q5_K"):
        from gguf.quants import Q4_K

        d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
        sc, mn = Q4_K.get_scale_min(b[:, 4:16].copy())
        if qtype == "Q4_K":
            qs = b[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
            q, bits = (qs & 0x0F).reshape(n * 8, 32), 4
        else:
            qh, qs = b[:, 16:48], b[:, 48:]
            ql = (qs.reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F
            hi = (qh.reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
            q, bits = (ql.reshape(n, 8, 32) | (hi << 4)).reshape(n * 8, 32), 8
        scale = (d * sc.astype(np.float32)).reshape(-1, 1)
        minimum = -(dmin * mn.astype(np.float32)).reshape(-1, 1)
        s, zp, off, q = _with_minimum(scale, minimum, q, bits, 32, qtype)
        form = (bits, 32, s, zp, off, q)
        factors = (h16(b[:, :2]), sc.reshape(n, 8).astype(np.uint8), -h16(b[:, 2:4]), mn.reshape(n, 8).astype(np.uint8))
    elif qtype == "Q6_K":
        ql, qh, sc, d = b[:, :128], b[:, 128:192], b[:, 192:208].view(np.int8), _f16(b[:, 208:210])
        lo = (ql.reshape(n, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F
        hi = (qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 0x03
        q = (lo.reshape(n, 8, 32) | (hi.reshape(n, 8, 32) << 4)).reshape(n * 16, 16)
        scale = (d * sc.astype(np.float32)).reshape(-1, 1)
        form = (8, 16, scale, np.full((n * 16, 1), 32, np.uint8), None, q)
        factors = (h16(b[:, 208:210]), sc.reshape(n, 16).astype(np.int8), None, None)
    else:
        raise GGUFImportError(
            f"GGUF type {qtype} has no exact native form here (covered: {', '.join(NATIVE_TYPES)})",
            "prepare this file with a Quark recipe instead (--recipe default or cpu-fast)",
        )
    bits, block, scale, zp, off, q = form
    nb = cols // block
    q = np.ascontiguousarray(q.reshape(rows, cols).astype(np.uint8))
    scale = np.ascontiguousarray(scale.reshape(rows, nb).astype(np.float32))
    zp = np.ascontiguousarray(zp.reshape(rows, nb).astype(np.uint8))
    if off is not None:
        off = off.reshape(rows, nb).astype(np.float32)
        if not off.any():
            off = None
    d16, sc, m16, mn = factors
    per_row = n // rows  # GGUF blocks (or super-blocks) per row
    nd = per_row

    def shaped(a, k):
        return None if a is None else np.ascontiguousarray(a.reshape(rows, nd, k))

    form = BlockForm(bits, block, q, scale, zp, off, qtype)
    if d16 is not None and nb % nd == 0:
        k = nb // nd
        form.d16, form.sc = shaped(d16, 1), shaped(sc, k)
        if off is not None and m16 is not None:
            form.m16, form.mn = shaped(m16, 1), shaped(mn, k)
        elif off is not None:  # an offset the factors cannot make: keep the float32 arrays
            form.d16 = form.sc = None
    return form


def _h16(b: np.ndarray) -> np.ndarray:
    """Two bytes per row as float16 [n] (the file's own d, m, dmin)."""
    return np.ascontiguousarray(b).view(np.float16).reshape(-1).copy()


NATIVE_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
FLOAT_TYPES = ("F32", "F16", "BF16")


# ---------------------------------------------------------------- onnxruntime layouts


def pack_codes(q: np.ndarray, bits: int, block: int) -> np.ndarray:
    """MatMulNBits B: uint8 [rows, nb, block*bits/8]; 4 bits: even element in the low nibble."""
    rows, cols = q.shape
    q = q.reshape(rows, cols // block, block)
    if bits == 8:
        return np.ascontiguousarray(q)
    return np.ascontiguousarray((q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8))


def pack_zero_points(zp: np.ndarray, bits: int) -> np.ndarray:
    """uint8 zero points [rows, ceil(nb*bits/8)]; 4 bits: two per byte, even block low."""
    if bits == 8:
        return np.ascontiguousarray(zp)
    if zp.shape[1] % 2:
        zp = np.pad(zp, ((0, 0), (0, 1)))
    return np.ascontiguousarray((zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8))


def block_sum_matrix(cols: int, block: int) -> np.ndarray:
    """[cols, nb] of 0/1: x @ E sums x over each block."""
    nb = cols // block
    e = np.zeros((cols, nb), np.float32)
    e[np.arange(cols), np.arange(cols) // block] = 1.0
    return e


# ---------------------------------------------------------------- reading the file


@dataclass
class GGUFTensor:
    name: str
    qtype: str
    rows: int
    cols: int
    data: np.ndarray  # raw bytes [rows, row_bytes] or float values [rows, cols]


class GGUFFile:
    """The tensors and the settings of a GGUF file, by GGUF name."""

    def __init__(self, path: Path):
        import gguf

        self.path = Path(path)
        self.reader = gguf.GGUFReader(str(path))
        self.tensors: dict[str, GGUFTensor] = {}
        for t in self.reader.tensors:
            shape = [int(x) for x in t.shape]  # ggml order: fastest dimension first
            cols = shape[0]
            rows = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            self.tensors[t.name] = GGUFTensor(t.name, t.tensor_type.name, rows, cols, t.data)
        arch = self.reader.fields.get("general.architecture")
        self.arch = bytes(arch.parts[arch.data[0]]).decode() if arch else ""

    def types(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.tensors.values():
            out[t.qtype] = out.get(t.qtype, 0) + 1
        return out

    def form(self, name: str) -> BlockForm | None:
        """The tensor as a BlockForm, or None for float types."""
        t = self.tensors[name]
        if t.qtype in FLOAT_TYPES:
            return None
        return block_form(t.data, t.qtype, t.rows, t.cols)

    def floats(self, name: str) -> np.ndarray:
        import gguf

        t = self.tensors[name]
        return gguf.dequantize(t.data, gguf.GGMLQuantizationType[t.qtype]).reshape(t.rows, t.cols).astype(np.float32)

    def hf_config(self) -> dict:
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        from ..hf_folder import transformers_quiet

        with transformers_quiet():
            return load_gguf_checkpoint(str(self.path), return_tensors=False).get("config", {})


class NameMap:
    """GGUF tensor name for an HF parameter name, and the row order transformers applies."""

    def __init__(self, gf: GGUFFile, n_layers: int, config: dict | None = None):
        import gguf
        from transformers.modeling_gguf_pytorch_utils import TENSOR_PROCESSORS, TensorProcessor

        arch = next((k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == gf.arch), None)
        if arch is None:
            raise GGUFImportError(
                f"the gguf package does not know architecture '{gf.arch}'",
                "prepare this file with a Quark recipe (--recipe default)",
            )
        self.map = gguf.get_tensor_name_map(arch, n_layers)
        # the processors read head counts by their HF names: the folder's config.json has them
        self.processor = TENSOR_PROCESSORS.get(gf.arch, TensorProcessor)(config=config or gf.hf_config())
        self.gf = gf

    def gguf_name(self, hf_name: str) -> str | None:
        base = hf_name[: -len(".weight")] if hf_name.endswith(".weight") else hf_name
        g = self.map.get_name(base)
        if g is None:
            return None
        g += ".weight"
        return g if g in self.gf.tensors else None

    def row_order(self, gguf_name: str, rows: int) -> np.ndarray | None:
        """Rows of the GGUF tensor in HF order (llama's q/k un-permutation), None if identity."""
        idx = np.arange(rows, dtype=np.float64).reshape(rows, 1)
        res = self.processor.process(weights=idx, name=gguf_name, tensor_key_mapping={}, parsed_parameters={})
        out = np.asarray(res.weights).reshape(-1)
        if out.shape[0] != rows:
            raise GGUFImportError(
                f"{gguf_name}: transformers reshapes it ({rows} rows -> {out.shape[0]})",
                "prepare this file with a Quark recipe (--recipe default)",
            )
        order = out.astype(np.int64)
        return None if np.array_equal(order, np.arange(rows)) else order


# ---------------------------------------------------------------- the graph pass


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


def _packed_hf_name(node_name: str) -> str | None:
    m = _NODE.match(node_name)
    if not m:
        return None
    layer, block, proj = m.groups()
    return f"model.layers.{layer}.{'self_attn' if block == 'attn' else 'mlp'}.{proj}_proj.weight"


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


class _Graph:
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


def _matmul_nbits(gr: _Graph, node, form: BlockForm, fdt, extra_nodes: list) -> None:
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


def _rank(gr: _Graph, name: str, default: int = 3) -> int:
    """The rank a graph input or a typed value declares; the builder's activations are 3-D."""
    for v in list(gr.g.input) + list(gr.g.value_info):
        if v.name == name and v.type.tensor_type.HasField("shape"):
            return len(v.type.tensor_type.shape.dim)
    return default


def _merge_gate_up(gr: _Graph) -> int:
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


def _u8(gr: _Graph, v: int) -> str:
    name = f"gguf.const.u8.{v}"
    if name not in gr.inits:
        gr.add_init(name, np.array([v], np.uint8))
    return name


def _shape(gr: _Graph, dims) -> str:
    dims = [int(d) for d in dims]
    name = "gguf.const.shape." + "x".join(str(d).replace("-", "m") for d in dims)
    if name not in gr.inits:
        gr.add_init(name, np.array(dims, np.int64))
    return name


def _codes(gr: _Graph, name: str, form: BlockForm, nodes: list) -> str:
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


def _scale_tensor(gr: _Graph, name: str, form: BlockForm, fdt, nodes: list) -> tuple[str, str | None]:
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
    gr: _Graph, name: str, half: np.ndarray, ints: np.ndarray | None, tags: tuple[str, str], nodes: list
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


def _zero_points(gr: _Graph, name: str, form: BlockForm, nodes: list) -> str | None:
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


def _offsets_t(gr: _Graph, name: str, form: BlockForm, fdt, s3: str | None, z: str | None, nodes: list) -> str:
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


def _scales(gr: _Graph, name: str, scale: np.ndarray, fdt, extra_nodes: list) -> str:
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


def _float_matmul(gr: _Graph, node, w: np.ndarray, fdt) -> None:
    """Replace a MatMulNBits by MatMul on the file's float weights ([N, K] -> [K, N])."""
    name = "gguf." + node.name.replace("/", ".").strip(".") + ".weight_t"
    gr.add_init(name, np.ascontiguousarray(w.T).astype(fdt))
    node.op_type, node.domain = "MatMul", ""
    node.input[:] = [node.input[0], name]
    del node.attribute[:]


def place(g, node_name: str, extra: list) -> None:
    """Insert the nodes _matmul_nbits made: those of initializers (`/gguf.*`) first, the rest
    after `node_name`."""
    _rebuild(
        g,
        {node_name: [n for n in extra if not n.name.startswith("/gguf.")]},
        {},
        first=[n for n in extra if n.name.startswith("/gguf.")],
    )


def _rebuild(g, after: dict, replace: dict, first: list = ()) -> None:
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
    gr = _Graph(m)
    report: dict[str, str] = {}
    tied_head_form: BlockForm | None = None
    tied_head_node = None
    after: dict[str, list] = {}
    first: list = []

    _merge_gate_up(gr)
    for node in list(gr.g.node):
        if node.op_type not in ("MatMulNBits", "MatMul"):
            continue
        hf = hf_names_for_node(node.name)
        if hf is None:
            continue
        if node.op_type == "MatMul" and not node.name.startswith("/lm_head"):
            continue  # float MatMuls the builder kept float (none with -p int4)
        gnames = [names.gguf_name(h) for h in hf]
        if None in gnames and len(hf) > 1:  # fused in the file too (phi3's attn_qkv, ffn_up as gate+up)
            packed = _packed_hf_name(node.name)
            if packed and names.gguf_name(packed):
                hf, gnames = [packed], [names.gguf_name(packed)]
        if hf == ["lm_head.weight"] and gnames == [None]:
            gnames = [names.gguf_name("model.embed_tokens.weight")]  # tied output head
        if None in gnames:
            missing = [h for h, g in zip(hf, gnames) if g is None]
            raise GGUFImportError(
                f"{node.name}: no GGUF tensor for {', '.join(missing)}",
                "prepare this file with a Quark recipe (--recipe default)",
            )
        fdt = gr.float_dtype(node.input[2]) if node.op_type == "MatMulNBits" else np.float32
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
        label = "+".join(gf.tensors[g].qtype for g in gnames)
        if floats:
            w = np.concatenate([p if isinstance(p, np.ndarray) else p.dequantize() for p in parts])
            _float_matmul(gr, node, w, fdt)
        else:
            form = parts[0] if len(parts) == 1 else concat_rows(parts)
            extra: list = []
            _matmul_nbits(gr, node, form, fdt, extra)
            first += [n for n in extra if n.name.startswith("/gguf.")]
            rest = [n for n in extra if not n.name.startswith("/gguf.")]
            if rest:
                after[node.name] = rest
            if node.name.startswith("/lm_head"):
                tied_head_form, tied_head_node = form, node
        report[node.name] = label

    replace: dict[str, list] = {}
    embedding = _import_embedding(gr, gf, names, tied_head_form, tied_head_node, replace)
    _rebuild(gr.g, after, replace, first)
    gr.drop_unused()
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
    after = (model_file.parent / data_name).stat().st_size
    return ImportReport(report, embedding, gf.types(), before, after)


def _import_embedding(gr: _Graph, gf: GGUFFile, names: NameMap, head_form, head_node, replace: dict) -> str:
    """Token embedding: GatherBlockQuantized over the GGUF codes (shared with a tied head)."""
    from onnx import helper

    g = gr.g
    gname = names.gguf_name("model.embed_tokens.weight")
    if gname is None:
        raise GGUFImportError("the GGUF has no token embedding tensor", "check the file (token_embd.weight)")
    gbq = next((n for n in g.node if n.op_type == "GatherBlockQuantized"), None)
    gather = None if gbq else next((n for n in g.node if n.op_type == "Gather" and "input_ids" in n.input[1:]), None)
    node = gbq or gather
    if node is None:
        raise GGUFImportError("the built graph has no token embedding Gather", "rebuild with the gguf-native recipe")
    qtype = gf.tensors[gname].qtype
    out_name = node.output[0]
    fdt = np.float16 if _value_is_fp16(g, out_name) else np.float32
    form = gf.form(gname)
    order = names.row_order(gname, gf.tensors[gname].rows)
    if form is None:  # a float table: a plain Gather
        w = gf.floats(gname)
        w = w[order] if order is not None else w
        table = gr.add_init("gguf.model.embed_tokens.weight", w.astype(fdt))
        new = helper.make_node("Gather", [table, "input_ids"], [out_name], name="/model/embed_tokens/Gather")
        replace[node.name] = [new]
        return qtype
    if order is not None:
        form = form.take_rows(order)
    shared = (
        head_node is not None
        and gbq is not None
        and gf.tensors[gname] is gf.tensors.get(names.gguf_name("lm_head.weight") or gname)
    )
    if shared and head_form is not None:
        b, s = head_node.input[1], head_node.input[2]
        form = head_form
        z = (
            head_node.input[3]
            if len(head_node.input) > 3 and head_node.input[3]
            else gr.add_init("gguf.model.embed_tokens.zero_points", pack_zero_points(form.zp, form.bits))
        )
    else:
        b = gr.add_init("gguf.model.embed_tokens.q", pack_codes(form.q, form.bits, form.block))
        s = gr.add_init("gguf.model.embed_tokens.scales", form.scale.astype(fdt).reshape(form.rows, -1))
        z = gr.add_init("gguf.model.embed_tokens.zero_points", pack_zero_points(form.zp, form.bits))
    flat = form.cols * form.bits // 8
    shape = gr.add_init("gguf.model.embed_tokens.shape", np.array([form.rows, flat], np.int64))
    scales2d = gr.add_init("gguf.model.embed_tokens.scales_2d", np.array([form.rows, -1], np.int64))
    zp2d = gr.add_init("gguf.model.embed_tokens.zp_2d", np.array([form.rows, -1], np.int64))
    p = "/model/embed_tokens"
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
        tab = gr.add_init("gguf.model.embed_tokens.offsets", np.ascontiguousarray(form.offset).astype(fdt))
        e = gr.add_init(
            f"gguf.blockexpand.{form.cols}x{form.block}.{np.dtype(fdt).name}",
            np.ascontiguousarray(block_sum_matrix(form.cols, form.block).T).astype(fdt),
        )
        new += [
            helper.make_node("Gather", [tab, "input_ids"], [f"{p}/gguf_offsets"], name=f"{p}/gguf_offsets"),
            helper.make_node(
                "MatMul", [f"{p}/gguf_offsets", e], [f"{p}/gguf_offset_rows"], name=f"{p}/gguf_offset_rows"
            ),
            helper.make_node("Add", [main, f"{p}/gguf_offset_rows"], [out_name], name=f"{p}/gguf_offset_add"),
        ]
    # the builder's Reshape feeding its GatherBlockQuantized goes with it (drop_unused cleans inits)
    replace[node.name] = new
    if gbq is not None:
        for n in g.node:
            if n.op_type == "Reshape" and n.output[0] == gbq.input[0]:
                replace[n.name] = []
    return qtype + (" (shared with the output head)" if shared and head_form is not None else "")


def _value_is_fp16(g, name: str) -> bool:
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
