"""oga-npu's onnxruntime custom-op library: a GGUF's raw blocks multiplied by llama.cpp's ggml.

The recipe `gguf-ggml` keeps every weight as the GGUF file stores it and multiplies it with
the CPU kernels llama.cpp itself uses (ggml-base + ggml-cpu, linked statically into
`liboga_npu_ggml.so`; source: `ggml_ops.cc` here). The library is built on the user's machine,
once, from the llama.cpp source bundled in the llama-cpp-python sdist (PyPI), with cmake and
the C/C++ compiler; onnxruntime's C API headers come from AMD Quark's package (the `prepare`
extra). `build.py` does the build; this module says where the result is and what it takes.

    $OGA_NPU_HOME/kernels/
    ├── src/llama_cpp_python-<ver>.tar.gz     the sdist (pip download; OGA_NPU_GGML_SRC overrides)
    ├── build-<key>/                          cmake's build of ggml
    └── <key>/liboga_npu_ggml.so              the library (key: source, flags, compiler)

Ops (domain `oga_npu.ggml`, CPU): `GgmlMatMul(A, W0[, W1, W2]; types, K)` and
`GgmlGather(W, ids; type, K)`: see ggml_ops.cc.
"""

from __future__ import annotations

from pathlib import Path

from .build import Plan, build
from .spec import CMAKE_ENV, DOMAIN, LIBRARY_NAME, LLAMA_CPP_PYTHON, SOURCE, SRC_ENV, SUPPORTED, root

__all__ = [
    "CMAKE_ENV",
    "DOMAIN",
    "LIBRARY_NAME",
    "LLAMA_CPP_PYTHON",
    "SOURCE",
    "SRC_ENV",
    "SUPPORTED",
    "built",
    "ensure",
    "info",
    "root",
]


def built() -> Path | None:
    """The library built for this source, flags and compiler, or None."""
    lib = Plan.current().library
    return lib if lib.is_file() else None


def ensure(source: Path | None = None, progress=None, force: bool = False) -> Path:
    """The library, built first when needed (raises KernelBuildError with a fix)."""
    return build(source=source, progress=progress, force=force)


def info(lib: Path) -> str:
    """What the library says of itself: ggml's thread count, repacking, the CPU's features.
    Loading it starts ggml's CPU backend in this process."""
    import ctypes

    handle = ctypes.CDLL(str(lib))
    fn = handle.oga_npu_ggml_info
    fn.restype = ctypes.c_char_p
    return fn().decode()
