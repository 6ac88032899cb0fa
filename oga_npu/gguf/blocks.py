"""A GGUF tensor's quantized blocks as one form, `BlockForm`, and onnxruntime's layouts of it.

Every llama.cpp block format used by common files is written as

    w = scale * (q - zero_point) + offset        per block of `block` weights

with q the file's own integer codes, an integer zero point (uint8, the form onnxruntime's
fast int8-compute kernels take: a float zero point is 60x slower at 4 bits and refused at
8 bits on the CPU) and a float `offset` for the formats whose minimum is no multiple of
the scale (Q4_1, Q5_1, Q4_K, Q5_K). So every type is exact:

    Q4_0  4 bits, block 32, zp 8            Q5_0  8 bits, block 32, zp 16
    Q4_1  4 bits, block 32, zp + offset     Q5_1  8 bits, block 32, zp + offset
    Q4_K  4 bits, block 32, zp + offset     Q5_K  8 bits, block 32, zp + offset
    Q8_0  8 bits, block 32, zp 128          Q6_K  8 bits, block 16, zp 32

`block_form` reads one GGML type's blocks (a decoder per type); other types (Q2_K, Q3_K,
IQ*) raise GGUFImportError naming the Quark recipes instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import OgaNpuError


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


def _q4_0(b: np.ndarray, n: int):
    d, q = _f16(b[:, :2]), _nibbles(b[:, 2:])
    return (4, 32, d, np.full((n, 1), 8, np.uint8), None, q), (_h16(b[:, :2]), None, None, None)


def _q8_0(b: np.ndarray, n: int):
    d, q = _f16(b[:, :2]), (b[:, 2:].view(np.int8).astype(np.int16) + 128).astype(np.uint8)
    return (8, 32, d, np.full((n, 1), 128, np.uint8), None, q), (_h16(b[:, :2]), None, None, None)


def _q5_0(b: np.ndarray, n: int):
    d, q = _f16(b[:, :2]), _nibbles(b[:, 6:]) | (_bits32(b[:, 2:6]) << 4)
    return (8, 32, d, np.full((n, 1), 16, np.uint8), None, q), (_h16(b[:, :2]), None, None, None)


def _q4_1(b: np.ndarray, n: int):
    return _with_min_32(b, _nibbles(b[:, 4:]), 4, "Q4_1")


def _q5_1(b: np.ndarray, n: int):
    return _with_min_32(b, _nibbles(b[:, 8:]) | (_bits32(b[:, 4:8]) << 4), 8, "Q5_1")


def _with_min_32(b: np.ndarray, q: np.ndarray, bits: int, qtype: str):
    """Q4_1, Q5_1: fp16 d and m, then the codes."""
    d, m = _f16(b[:, :2]), _f16(b[:, 2:4])
    s, zp, off, q = _with_minimum(d, m, q, bits, 32, qtype)
    return (bits, 32, s, zp, off, q), (_h16(b[:, :2]), None, _h16(b[:, 2:4]), None)


def _k_codes_q4(b: np.ndarray, n: int) -> np.ndarray:
    qs = b[:, 16:].reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
    return (qs & 0x0F).reshape(n * 8, 32)


def _k_codes_q5(b: np.ndarray, n: int) -> np.ndarray:
    qh, qs = b[:, 16:48], b[:, 48:]
    ql = (qs.reshape(n, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F
    hi = (qh.reshape(n, 1, 32) >> np.arange(8, dtype=np.uint8).reshape(1, 8, 1)) & 1
    return (ql.reshape(n, 8, 32) | (hi << 4)).reshape(n * 8, 32)


def _q4_k(b: np.ndarray, n: int):
    return _k_with_min(b, n, _k_codes_q4(b, n), 4, "Q4_K")


def _q5_k(b: np.ndarray, n: int):
    return _k_with_min(b, n, _k_codes_q5(b, n), 8, "Q5_K")


def _k_with_min(b: np.ndarray, n: int, q: np.ndarray, bits: int, qtype: str):
    """Q4_K, Q5_K: fp16 d and dmin, 6-bit sub-scales and minimums, then the codes."""
    from gguf.quants import Q4_K

    d, dmin = _f16(b[:, :2]), _f16(b[:, 2:4])
    sc, mn = Q4_K.get_scale_min(b[:, 4:16].copy())
    scale = (d * sc.astype(np.float32)).reshape(-1, 1)
    minimum = -(dmin * mn.astype(np.float32)).reshape(-1, 1)
    s, zp, off, q = _with_minimum(scale, minimum, q, bits, 32, qtype)
    factors = (_h16(b[:, :2]), sc.reshape(n, 8).astype(np.uint8), -_h16(b[:, 2:4]), mn.reshape(n, 8).astype(np.uint8))
    return (bits, 32, s, zp, off, q), factors


def _q6_k(b: np.ndarray, n: int):
    ql, qh, sc, d = b[:, :128], b[:, 128:192], b[:, 192:208].view(np.int8), _f16(b[:, 208:210])
    lo = (ql.reshape(n, 2, 1, 64) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)) & 0x0F
    hi = (qh.reshape(n, 2, 1, 32) >> np.array([0, 2, 4, 6], np.uint8).reshape(1, 1, 4, 1)) & 0x03
    q = (lo.reshape(n, 8, 32) | (hi.reshape(n, 8, 32) << 4)).reshape(n * 16, 16)
    scale = (d * sc.astype(np.float32)).reshape(-1, 1)
    form = (8, 16, scale, np.full((n * 16, 1), 32, np.uint8), None, q)
    return form, (_h16(b[:, 208:210]), sc.reshape(n, 16).astype(np.int8), None, None)


# GGML type -> (GGUF blocks [n, type size] bytes, n) -> ((bits, block, scale, zp, offset, q),
# (d16, sc, m16, mn) the file's factors per GGUF block, reshaped by _form)
_DECODERS = {
    "Q4_0": _q4_0,
    "Q8_0": _q8_0,
    "Q5_0": _q5_0,
    "Q4_1": _q4_1,
    "Q5_1": _q5_1,
    "Q4_K": _q4_k,
    "Q5_K": _q5_k,
    "Q6_K": _q6_k,
}


def block_form(raw: np.ndarray, qtype: str, rows: int, cols: int) -> BlockForm:
    """The integer codes, scales, zero points and offsets of a GGUF tensor [rows, cols]."""
    import gguf

    t = gguf.GGMLQuantizationType[qtype]
    bsize, tsize = gguf.GGML_QUANT_SIZES[t]
    if cols % bsize:
        raise GGUFImportError(f"{qtype} row of {cols} is not a multiple of its block {bsize}")
    b = np.ascontiguousarray(raw).view(np.uint8).reshape(-1, tsize)
    decode = _DECODERS.get(qtype)
    if decode is None:
        raise GGUFImportError(
            f"GGUF type {qtype} has no exact native form here (covered: {', '.join(NATIVE_TYPES)})",
            "prepare this file with a Quark recipe instead (--recipe default or cpu-fast)",
        )
    form, factors = decode(b, b.shape[0])
    return _form(form, factors, qtype, rows, cols, b.shape[0] // rows)


def _form(form: tuple, factors: tuple, qtype: str, rows: int, cols: int, nd: int) -> BlockForm:
    """The decoded arrays as a BlockForm [rows, cols], with the file's factors where they make
    its scale and offset (nd: GGUF blocks, or super-blocks, per row)."""
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

    def shaped(a, k):
        return None if a is None else np.ascontiguousarray(a.reshape(rows, nd, k))

    out = BlockForm(bits, block, q, scale, zp, off, qtype)
    if d16 is not None and nb % nd == 0:
        k = nb // nd
        out.d16, out.sc = shaped(d16, 1), shaped(sc, k)
        if off is not None and m16 is not None:
            out.m16, out.mn = shaped(m16, 1), shaped(mn, k)
        elif off is not None:  # an offset the factors cannot make: keep the float32 arrays
            out.d16 = out.sc = None
    return out


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
