"""A GGUF file's tensors read (`GGUFFile`: by GGUF name, as BlockForms or floats) and the
names and row order of their HF parameters (`NameMap`, from the gguf and transformers
packages)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .blocks import FLOAT_TYPES, BlockForm, GGUFImportError, block_form


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
