"""What the ggml kernel library is: its names, source, supported GGUF types and where it is built."""

from __future__ import annotations

import os
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


ROOT_ENV = "OGA_NPU_KERNELS"  # where libraries are built (default $OGA_NPU_HOME/kernels)


def root() -> Path:
    env = os.environ.get(ROOT_ENV)
    return Path(env) if env else home() / "kernels"
