"""What a Hugging Face model folder holds, read cheaply: its parameter count from the
safetensors headers, and transformers kept quiet while it loads one."""

from __future__ import annotations

import contextlib
import json
import struct
from pathlib import Path


def safetensors_params(folder: Path) -> int | None:
    """Parameters in a HF folder's safetensors files, from their JSON headers (no weights read)."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for f in files:
        with open(f, "rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > (100 << 20):
                return None
            header = json.loads(fh.read(n))
        for name, t in header.items():
            if name != "__metadata__":
                count = 1
                for d in t.get("shape", []):
                    count *= d
                total += count
    return total


@contextlib.contextmanager
def transformers_quiet():
    """transformers' own progress bars off while it loads (oga-npu reports its stages on
    stderr): its logging bars ("Loading weights") and the raw tqdm of its GGUF reader
    ("Converting and de-quantizing GGUF tensors"), which printed even under `prepare -q`."""
    import functools

    from transformers.utils import logging as hf_logging

    try:
        import transformers.modeling_gguf_pytorch_utils as gguf_utils
    except ImportError:  # no gguf package: nothing of it runs
        gguf_utils = None
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    old = getattr(gguf_utils, "tqdm", None)
    if old is not None:
        gguf_utils.tqdm = functools.partial(old, disable=True)
    try:
        yield
    finally:
        if old is not None:
            gguf_utils.tqdm = old
        if was:
            hf_logging.enable_progress_bar()
