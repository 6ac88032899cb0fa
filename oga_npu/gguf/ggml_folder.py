"""The custom-op library inside a gguf-ggml model folder: put there by prepare, checked at load.

genai_config.json's model.decoder.session_options "custom_ops_library" names it RELATIVE to
the folder ("liboga_npu_ggml.so"): every onnxruntime-genai in use resolves a relative name
against the model folder first (0.9.2, 0.11.2 and 0.14.0: model folder, then the EP
libraries' folders, then the working directory; 0.16 and later: the same places, and the
resolved file must lie inside one of them), so the folder loads after being moved or copied.
Checked: 0.18.0 and the 0.9.2 / 0.11.2 / 0.14.0 runtimes each opened the library by its
relative name from another working directory; 0.14.0 and 0.18.0 generate with it (0.9.2 and
0.11.2 refuse the pruned head's logits shape first, as for a gguf-native folder: the manifest's
`requires` says so).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from ..kernels.spec import LIBRARY_NAME

OPTION = "custom_ops_library"
FIX = (
    "re-run prepare for it (`oga-npu kernels build` first where the library is not built), "
    "or prepare the .gguf with --recipe gguf-native (no library)"
)


def type_bits(type_id: int) -> int | None:
    """The nominal bits of a ggml type (Q4_K 4, Q6_K 6, IQ2_XS 2, Q8_0 8), for `oga-npu models`."""
    import re

    import gguf

    try:
        m = re.search(r"\d+", gguf.GGMLQuantizationType(type_id).name)
    except ValueError:
        return None
    return int(m.group()) if m else None


def library_name(config: dict | None) -> str | None:
    """The custom-op library genai_config.json names (None: none)."""
    opts = (((config or {}).get("model") or {}).get("decoder") or {}).get("session_options") or {}
    v = opts.get(OPTION)
    return str(v) if v else None


def identity(lib: Path) -> dict:
    """What the manifest records of a library: its file name, size and sha256."""
    h = hashlib.sha256()
    with open(lib, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"library": lib.name, "size": lib.stat().st_size, "sha256": h.hexdigest()}


def install(lib: Path, out_dir: Path, config_path: Path) -> dict:
    """Copy `lib` into the model folder and name it (relative) in genai_config.json; its identity."""
    dst = Path(out_dir) / Path(lib).name
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(lib, tmp)
    tmp.chmod(0o755)
    tmp.replace(dst)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["model"]["decoder"].setdefault("session_options", {})[OPTION] = dst.name
    config_path.write_text(json.dumps(config, indent=4) + "\n", encoding="utf-8")
    return identity(dst)


def library_problem(folder: Path, config: dict | None, deep: bool = True) -> str | None:
    """Why the folder's custom-op library cannot load (None: it names none, or it looks loadable).
    deep: also read its first bytes (an ELF or PE file). Never loads it here: loading runs its
    code in this process (a broken one would crash the check); onnxruntime-genai's own failure
    to load it is translated at load (runtime_errors)."""
    name = library_name(config)
    if name is None or Path(name).name != LIBRARY_NAME:
        return None  # none, or another's (AMD's NPU folders name their onnx_custom_ops library)
    p = Path(name)
    lib = p if p.is_absolute() else Path(folder) / p
    if not lib.is_file():
        return f"its kernel library {name} (the gguf-ggml recipe's custom operators) is missing"
    if deep:
        magic = {"linux": b"\x7fELF", "win32": b"MZ"}.get(sys.platform)
        with open(lib, "rb") as f:
            head = f.read(4)
        if magic and not head.startswith(magic):
            return f"its kernel library {name} cannot be loaded: not a shared library for {sys.platform}"
    return None
