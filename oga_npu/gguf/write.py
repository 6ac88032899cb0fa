"""Writing GGUF files for checks: K-quant blocks (the gguf package has no K-quant
quantizer) and a copy of a GGUF with its weights re-quantized to other types.

Used by scripts/make_kquant_gguf.py (a K-quant file from the bundled SmolLM2, for the
perplexity comparison with llama.cpp) and the tests of oga_npu.gguf.native. Plain
round-to-nearest with the block layouts of ggml-quants.c; not llama.cpp's search for the
best scales (the point is a valid file, read back identically by both engines).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

QK_K = 256


def _f16(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8).reshape(len(x), 2)


def _pack_scale_min(sc: np.ndarray, mn: np.ndarray) -> np.ndarray:
    """[n, 8] 6-bit scales and mins -> [n, 12] bytes (inverse of gguf's Q4_K.get_scale_min)."""
    sc, mn = sc.astype(np.uint8), mn.astype(np.uint8)
    out = np.zeros((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, :4] & 63) | ((sc[:, 4:] >> 4) << 6)
    out[:, 4:8] = (mn[:, :4] & 63) | ((mn[:, 4:] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:] & 0x0F) | ((mn[:, 4:] & 0x0F) << 4)
    return out


def _k_scales(x: np.ndarray, levels: int):
    """Sub-blocks of 32: 6-bit scales and mins under fp16 super-scales, codes 0..levels."""
    n = x.shape[0]
    sub = x.reshape(n, 8, 32)
    lo = np.minimum(sub.min(-1), 0)
    hi = sub.max(-1)
    scale = (hi - lo) / levels
    d = (scale.max(-1) / 63).astype(np.float16).astype(np.float32)
    dmin = ((-lo).max(-1) / 63).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.clip(np.nan_to_num(np.rint(scale / d[:, None])), 0, 63)
        mn = np.clip(np.nan_to_num(np.rint(-lo / dmin[:, None])), 0, 63)
        s = d[:, None] * sc
        m = dmin[:, None] * mn
        q = np.clip(np.nan_to_num(np.rint((sub + m[..., None]) / s[..., None])), 0, levels).astype(np.uint8)
    return d, dmin, sc, mn, q


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    x = x.reshape(-1, QK_K).astype(np.float32)
    d, dmin, sc, mn, q = _k_scales(x, 15)
    n = x.shape[0]
    qs = (q[:, 0::2] | (q[:, 1::2] << 4)).reshape(n, 128)  # chunk c: sub-block 2c low, 2c+1 high
    return np.concatenate([_f16(d), _f16(dmin), _pack_scale_min(sc, mn), qs], axis=1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    x = x.reshape(-1, QK_K).astype(np.float32)
    d, dmin, sc, mn, q = _k_scales(x, 31)
    n = x.shape[0]
    lo = q & 0x0F
    qs = (lo[:, 0::2] | (lo[:, 1::2] << 4)).reshape(n, 128)
    hi = (q >> 4) & 1  # [n, 8, 32]: bit j of byte i = sub-block j, element i
    qh = (hi << np.arange(8, dtype=np.uint8).reshape(1, 8, 1)).sum(1).astype(np.uint8)
    return np.concatenate([_f16(d), _f16(dmin), _pack_scale_min(sc, mn), qh, qs], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    x = x.reshape(-1, QK_K).astype(np.float32)
    n = x.shape[0]
    sub = x.reshape(n, 16, 16)
    scale = np.abs(sub).max(-1) / 31
    d = (scale.max(-1) / 127).astype(np.float16).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        sc = np.clip(np.nan_to_num(np.rint(scale / d[:, None])), -128, 127).astype(np.int8)
        s = d[:, None] * sc
        q = (np.clip(np.nan_to_num(np.rint(sub / s[..., None])), -32, 31) + 32).astype(np.uint8).reshape(n, 256)
    ql = np.zeros((n, 128), np.uint8)
    qh = np.zeros((n, 64), np.uint8)
    v = np.arange(256)
    h, r = v // 128, v % 128
    ql_idx, ql_shift = h * 64 + r % 64, 4 * (r // 64)
    qh_idx, qh_shift = h * 32 + r % 32, 2 * (r // 32)
    for i in range(256):  # 256 vectorised column writes
        ql[:, ql_idx[i]] |= ((q[:, i] & 0x0F) << ql_shift[i]).astype(np.uint8)
        qh[:, qh_idx[i]] |= ((q[:, i] >> 4) << qh_shift[i]).astype(np.uint8)
    return np.concatenate([ql, qh, sc.view(np.uint8), _f16(d)], axis=1)


K_QUANTIZERS = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}


def quantize(x: np.ndarray, qtype: str) -> np.ndarray:
    """Rows of x [rows, cols] as GGUF bytes [rows, row_bytes] of `qtype`."""
    import gguf

    x = np.ascontiguousarray(x, np.float32)
    if qtype in K_QUANTIZERS:
        return K_QUANTIZERS[qtype](x).reshape(x.shape[0], -1)
    return gguf.quantize(x, gguf.GGMLQuantizationType[qtype])


def requantize(src: Path, dst: Path, choose) -> dict[str, str]:
    """Copy GGUF `src` to `dst` with every 2-D weight re-quantized to `choose(name, rows, cols)`
    (a type name, or None to keep it). Metadata and other tensors are copied as they are."""
    import gguf

    r = gguf.GGUFReader(str(src))
    arch = bytes(r.fields["general.architecture"].parts[r.fields["general.architecture"].data[0]]).decode()
    w = gguf.GGUFWriter(str(dst), arch)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
    chosen = {}
    for t in r.tensors:
        shape = [int(x) for x in t.shape]
        cols, rows = shape[0], int(np.prod(shape[1:])) if len(shape) > 1 else 1
        qt = choose(t.name, rows, cols) if len(shape) == 2 else None
        if qt is None or qt == t.tensor_type.name:
            w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
            chosen[t.name] = t.tensor_type.name
            continue
        x = gguf.dequantize(t.data, t.tensor_type).reshape(rows, cols)
        data = quantize(x, qt)
        w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType[qt])
        chosen[t.name] = qt
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return chosen
