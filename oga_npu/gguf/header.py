"""A GGUF file's header read without the gguf package's reader: architecture, weight count,
and the length its tensors need (so a truncated download is caught before any long step)."""

from __future__ import annotations

import os
from pathlib import Path

_GGUF_SCALAR = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}  # value type -> bytes


def gguf_header(path: Path) -> tuple[str | None, int]:
    """(general.architecture, number of weights) from a GGUF header, reading only the header.
    (gguf.GGUFReader maps every field and tensor: 7 s for SmolLM2's 49k-token vocabulary on
    this 2-core box; this takes 0.1 s.) Raises ValueError for a file that is not GGUF v2+."""
    import struct

    def read(fmt: str):
        return struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))[0]

    def skip_value(t: int) -> None:
        if t == 8:  # string
            f.seek(read("Q"), os.SEEK_CUR)
        elif t == 9:  # array: item type, count, items
            it, n = read("I"), read("Q")
            if it in _GGUF_SCALAR:
                f.seek(_GGUF_SCALAR[it] * n, os.SEEK_CUR)
            else:
                for _ in range(n):
                    skip_value(it)
        elif t in _GGUF_SCALAR:
            f.seek(_GGUF_SCALAR[t], os.SEEK_CUR)
        else:
            raise ValueError(f"unknown GGUF value type {t}")

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType  # type -> (block, bytes per block)

    arch, alignment, end = None, 32, 0
    try:
        with open(path, "rb", buffering=1 << 20) as f:
            magic = f.read(4)
            if magic != b"GGUF":
                lfs = magic == b"vers" and f.read(20).startswith(b"ion https://git-lfs")
                raise ValueError(
                    f"{path.name} is a git-lfs pointer, not the file"
                    if lfs
                    else f"{path.name} is not a GGUF file (it does not start with the bytes GGUF)"
                )
            if read("I") < 2:
                raise ValueError(f"{path.name} is not a GGUF v2+ file")
            n_tensors, n_kv = read("Q"), read("Q")
            for _ in range(n_kv):
                key = f.read(read("Q"))
                t = read("I")
                if key == b"general.architecture" and t == 8:
                    arch = f.read(read("Q")).decode("utf-8", errors="replace")
                elif key == b"general.alignment" and t == 4:
                    alignment = read("I") or 32
                else:
                    skip_value(t)
            total = 0
            for _ in range(n_tensors):
                f.seek(read("Q"), os.SEEK_CUR)  # name
                n = 1
                for _ in range(read("I")):
                    n *= read("Q")
                qtype, offset = read("I"), read("Q")
                total += n
                try:
                    block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
                except (ValueError, KeyError):  # a type newer than this gguf package: size unknown
                    block = 0
                if block:
                    end = max(end, offset + n // block * nbytes)
            data_start = -(-f.tell() // alignment) * alignment
    except struct.error as e:
        raise ValueError(f"{path.name}: truncated GGUF header") from e
    have = path.stat().st_size
    if data_start + end > have:
        raise ValueError(f"{path.name} is truncated: {have:,} bytes, its tensors need {data_start + end:,}")
    return arch, total
