"""What differs between Ryzen AI releases: one row per release (oga_npu.ryzenai re-exports
Release, RELEASES, release() and vtuple()).

Sources: amd/ryzen-ai-documentation, one branch per release (1.6 0b781294, 1.7 25d4062e,
1.7.1 42a517bc, 1.8 0860e4dd): docs/oga_model_prepare.rst (model_generate forms),
docs/hybrid_oga.rst (context lengths, long context), docs/oga_op_prepare.rst (onnx_utils).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from .errors import PreflightError

NPU_VARIANTS = ("full_fusion", "token_fusion", "basic", "eager")


@dataclass(frozen=True)
class Release:
    """One release's rules for AMD's tools."""

    version: str
    oga: str  # onnxruntime-genai-directml-ryzenai that the release pins
    io_flags: bool  # model_generate --input/--output (1.7.1+) instead of <out> <in> (+ --optimize)
    npu_variants: tuple[str, ...] = ()  # model_generate --npu --<variant> (documented from 1.7.1)
    benchmark_one_length: bool = False  # model_benchmark: one -l value, no --prompt_file with -l (1.8)
    linux_npu: bool = False  # NPU-only models run on Linux (1.8)
    mem_optimize: bool = False  # model_generate --mem_optimize (1.7.1+; --oga_only likewise)
    max_seq_extra_option: bool = False  # model_generate --npu --token_fusion --extra_options max_seq_len=N (1.8)
    token_fusion_max: int = 0  # the longest context a token-fusion model made by this release's model_generate has
    hybrid_chunk_context: bool = False  # hybrid past 4096 tokens: hybrid_opt_chunk_context + search.chunk_size (1.7+)


RELEASES = {
    # 1.6: "models support up to 4096 tokens in total (input + output)" (hybrid_oga.rst@1.6).
    "1.6": Release("1.6", "0.9.2", io_flags=False),
    # 1.7: "Long Context Support" for hybrid models (hybrid_oga.rst@1.7); same model_generate forms as 1.6.
    "1.7": Release("1.7", "0.11.2", io_flags=False, hybrid_chunk_context=True),
    # 1.7.1: --input/--output, the four NPU variants, --oga_only, --mem_optimize (oga_model_prepare.rst@1.7.1);
    # "Token Fusion currently supports generating models with a 4K context length only".
    "1.7.1": Release(
        "1.7.1",
        "0.11.2",
        io_flags=True,
        npu_variants=NPU_VARIANTS,
        mem_optimize=True,
        token_fusion_max=4096,
        hybrid_chunk_context=True,
    ),
    # 1.8: token fusion 16K: `--extra_options max_seq_len=16384` (oga_model_prepare.rst@1.8).
    "1.8": Release(
        "1.8",
        "0.14.0",
        io_flags=True,
        npu_variants=NPU_VARIANTS,
        benchmark_one_length=True,
        linux_npu=True,
        mem_optimize=True,
        max_seq_extra_option=True,
        token_fusion_max=16384,
        hybrid_chunk_context=True,
    ),
}


def vtuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def release(version: str) -> Release:
    """The release's rules: "1.8.0" is 1.8, "1.7.2" follows 1.7.1; a release newer than the
    ones listed gets the newest one's rules."""
    t = vtuple(version)
    if len(t) < 2:
        raise PreflightError(f"'{version}' is not a Ryzen AI release", "pass --rai-version 1.6, 1.7, 1.7.1 or 1.8")
    if t < (1, 6):
        raise PreflightError(
            f"Ryzen AI {version} is older than 1.6, the first release with the flow oga-npu runs",
            "install Ryzen AI Software 1.6 or newer",
        )
    key = "1.7.1" if (1, 7, 1) <= t < (1, 8) else f"{t[0]}.{t[1]}"
    if key in RELEASES:
        return RELEASES[key]
    newest = max(RELEASES.values(), key=lambda r: vtuple(r.version))
    if t > vtuple(newest.version):
        return replace(newest, version=key)
    raise PreflightError(f"unknown Ryzen AI release {version}", "pass --rai-version 1.6, 1.7, 1.7.1 or 1.8")
