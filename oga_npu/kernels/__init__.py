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

from ..workdir import home

DOMAIN = "oga_npu.ggml"
LIBRARY_NAME = "liboga_npu_ggml.so"
SOURCE = Path(__file__).with_name("ggml_ops.cc")
# llama.cpp as bundled in this sdist: the same source scripts/bench_vs_llamacpp.py measures
LLAMA_CPP_PYTHON = "0.3.36"
SRC_ENV = "OGA_NPU_GGML_SRC"  # an sdist (.tar.gz) or a llama.cpp folder
CMAKE_ENV = "OGA_NPU_GGML_CMAKE"  # extra cmake arguments (e.g. the reference build's ISA flags)

# GGUF type names the ops multiply (ggml has a CPU dot product and a to_float for each)
SUPPORTED = frozenset(
    "Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S "
    "IQ1_S IQ1_M IQ4_NL IQ4_XS TQ1_0 TQ2_0".split()
)


def root() -> Path:
    return home() / "kernels"


def built() -> Path | None:
    """The library built for this source, flags and compiler, or None."""
    from .build import Plan

    lib = Plan.current().library
    return lib if lib.is_file() else None


def ensure(source: Path | None = None, progress=None, force: bool = False) -> Path:
    """The library, built first when needed (raises KernelBuildError with a fix)."""
    from .build import build

    return build(source=source, progress=progress, force=force)


def info(lib: Path) -> str:
    """What the library says of itself: ggml's thread count, repacking, the CPU's features.
    Loading it starts ggml's CPU backend in this process."""
    import ctypes

    handle = ctypes.CDLL(str(lib))
    fn = handle.oga_npu_ggml_info
    fn.restype = ctypes.c_char_p
    return fn().decode()
