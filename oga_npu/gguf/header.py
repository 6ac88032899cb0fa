"""A GGUF file's header read without the gguf package's reader: architecture, weight count,
and the length its tensors need (so a truncated download is caught before any long step)."""

from __future__ import annotations

import os
import struct
from pathlib import Path

_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes


def gguf_header(path: Path) -> tuple[str | None, int]:
    """(general.architecture, number of weights) from a GGUF header, reading only the header.
    (gguf.GGUFReader maps every field and tensor: 7 s for SmolLM2's 49k-token vocabulary on
    this 2-core box; this takes 0.1 s.) Raises ValueError for a file that is not GGUF v2+."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # type -> (block, bytes per block)

    def block_size(qtype: int) -> tuple[int, int]:
        return GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]

    try:
        with open(path, "rb", buffering=1 << 20) as f:
            r = _Reader(f)
            _check_magic(r, path)
            n_tensors, n_kv = r.read("Q"), r.read("Q")
            arch, alignment = _read_settings(r, n_kv)
            total, end = _read_tensor_infos(r, n_tensors, block_size)
            data_start = -(-f.tell() // alignment) * alignment
    except struct.error as e:
        raise ValueError(f"{path.name}: truncated GGUF header") from e
    have = path.stat().st_size
    if data_start + end > have:
        raise ValueError(f"{path.name} is truncated: {have:,} bytes, its tensors need {data_start + end:,}")
    return arch, total


class _Reader:
    """Little-endian values from a GGUF file (struct.error past its end)."""

    def __init__(self, f) -> None:
        self.f = f

    def read(self, fmt: str):
        return struct.unpack("<" + fmt, self.f.read(struct.calcsize("<" + fmt)))[0]

    def skip_value(self, t: int) -> None:
        f = self.f
        if t == 8:  # string
            f.seek(self.read("Q"), os.SEEK_CUR)
        elif t == 9:  # array: item type, count, items
            it, n = self.read("I"), self.read("Q")
            if it in _GGUF_SCALAR:
                f.seek(_GGUF_SCALAR[it] * n, os.SEEK_CUR)
            else:
                for _ in range(n):
                    self.skip_value(it)
        elif t in _GGUF_SCALAR:
            f.seek(_GGUF_SCALAR[t], os.SEEK_CUR)
        else:
            raise ValueError(f"unknown GGUF value type {t}")


def _check_magic(r: _Reader, path: Path) -> None:
    """The magic and a version >= 2; a git-lfs pointer is named as one."""
    magic = r.f.read(4)
    if magic != b"GGUF":
        lfs = magic == b"vers" and r.f.read(20).startswith(b"ion https://git-lfs")
        raise ValueError(
            f"{path.name} is a git-lfs pointer, not the file"
            if lfs
            else f"{path.name} is not a GGUF file (it does not start with the bytes GGUF)"
        )
    if r.read("I") < 2:
        raise ValueError(f"{path.name} is not a GGUF v2+ file")


def _read_settings(r: _Reader, n_kv: int) -> tuple[str | None, int]:
    """(general.architecture, general.alignment) from the key-value section."""
    arch, alignment = None, 32
    for _ in range(n_kv):
        key = r.f.read(r.read("Q"))
        t = r.read("I")
        if key == b"general.architecture" and t == 8:
            arch = r.f.read(r.read("Q")).decode("utf-8", errors="replace")
        elif key == b"general.alignment" and t == 4:
            alignment = r.read("I") or 32
        else:
            r.skip_value(t)
    return arch, alignment


def _read_tensor_infos(r: _Reader, n_tensors: int, block_size) -> tuple[int, int]:
    """(number of weights, the end of the last tensor's data past the data section's start);
    block_size: GGML type -> (weights, bytes) per block."""
    total, end = 0, 0
    for _ in range(n_tensors):
        r.f.seek(r.read("Q"), os.SEEK_CUR)  # name
        n = 1
        for _ in range(r.read("I")):
            n *= r.read("Q")
        qtype, offset = r.read("I"), r.read("Q")
        total += n
        try:
            block, nbytes = block_size(qtype)
        except (ValueError, KeyError):  # a type newer than this gguf package: size unknown
            block = 0
        if block:
            end = max(end, offset + n // block * nbytes)
    return total, end
