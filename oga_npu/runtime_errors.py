"""onnxruntime-genai's opaque messages turned into a cause and a fix (one table, matched in
order), with the versions of the runtime and of the folder's builder where a key is unknown."""

from __future__ import annotations

import re
from pathlib import Path

from .errors import ModelLoadError
from .gguf.ggml_folder import FIX as GGML_FIX
from .workdir import MANIFEST, read_json

# Known opaque runtime messages -> (cause, fix). Matched in order, first wins.
KNOWN_ERRORS: list[tuple[str, str, str]] = [
    (r"input_ids is empty", "the prompt is empty", "give a non-empty prompt"),
    (
        r"input_ids size \((\d+)\) \+ current sequence length \((\d+)\) exceeds max length \((\d+)\)",
        "the prompt does not fit the model's max length",
        "shorten the prompt or lower --max-tokens",
    ),
    (
        r"Failed to load library|Could not find an implementation for Ggml|No Op registered for Ggml",
        "the folder's custom-op library (genai_config.json's custom_ops_library, gguf-ggml's kernels) cannot be loaded",
        GGML_FIX,
    ),
    (
        r"Protobuf parsing failed",
        "the ONNX file is not a valid model (often a git-lfs pointer, a truncated download, or the wrong file)",
        "re-download or re-run prepare for this folder",
    ),
    (
        r"JSON Error: Unknown value|Unknown (key|value)",
        "genai_config.json uses a key this onnxruntime-genai does not know (made by a newer builder?)",
        "upgrade onnxruntime-genai, or rebuild the model with the installed version",
    ),
    (
        r"Unknown provider name '?(\w+)'?",
        "this onnxruntime-genai build does not know the model's execution provider",
        "install the runtime the model was built for (Ryzen AI's OGA for RyzenAI models), "
        "or re-run prepare for --target cpu",
    ),
    (
        r"invalid unordered_map<K, T> key",
        "a Ryzen AI hybrid model on an unsupported CPU or a mismatched Ryzen AI runtime",
        "run it on a Strix/Krackan NPU with the Ryzen AI release it was made with",
    ),
    (  # onnxruntime-genai 0.12-0.14 src/ryzenai/interface.cpp, SetupProvider
        r"No RyzenAI devices detected",
        "onnxruntime-genai loaded the RyzenAI execution provider but it offers no NPU: no Ryzen AI NPU "
        "here, its driver is not loaded, or the EP library was loaded before onnxruntime-genai registered "
        "it (0.12-0.14 then skip the registration)",
        "run on a Strix/Krackan PC with the NPU driver installed (Windows: Device Manager > Neural "
        "processors; Linux: /dev/accel/accel0, `oga-npu doctor`), and do not preload the EP library",
    ),
    (  # onnxruntime-genai after 0.15 (main), src/ryzenai/interface.cpp
        r"Failed to register RyzenAI execution provider library",
        "onnxruntime-genai could not load the RyzenAI execution provider library (a missing or wrong "
        "file, or a library it needs not on the search path)",
        "point RYZENAI_EP_PATH at the library of this Ryzen AI release (Linux: "
        "$PWD/deployment/lib/libonnxruntime_providers_ryzenai.so with deployment/lib on LD_LIBRARY_PATH; "
        "Windows: onnxruntime_providers_ryzenai.dll), then `oga-npu doctor -m DIR`",
    ),
    (
        r"total_sequence_length must equal past_sequence_length",
        "the model's genai_config.json asks for a sliding-window KV cache its graph does not use (an older build)",
        "re-run prepare for it with --force",
    ),
    (
        r"q_norm_weight / k_norm_weight inputs are not supported",
        "this model was built for WebGPU/CUDA, whose attention node also applies Qwen3-style q/k norms; "
        "onnxruntime's CPU kernel cannot",
        "prepare the source again for the CPU: oga-npu prepare {source} --target cpu",
    ),
    (
        r"Error opening (.+)",
        "a file the model needs could not be opened",
        "check the folder with `oga-npu doctor -m DIR`",
    ),
    (
        r"Load model from .* failed",
        "ONNX Runtime could not load the model file",
        "check the folder with `oga-npu doctor -m DIR`",
    ),
]


def versions_note(path: Path | None) -> str:
    """'runtime onnxruntime-genai 0.18.0; the folder was built with onnxruntime-genai 0.17.1 (oga-npu 0.1.0)'."""
    from .capabilities import installed_runtime

    here = installed_runtime().describe()
    manifest = read_json(path / MANIFEST) if path is not None else None
    builder = (manifest or {}).get("builder") or {}
    if builder:
        built = ", ".join(f"{k} {v}" for k, v in builder.items())
    elif manifest:  # manifests from before "builder": the build stage's versions
        v = manifest.get("versions", {})
        built = f"onnxruntime-genai {v.get('onnxruntime-genai')} (oga-npu {v.get('oga-npu')})"
    else:
        built = "an unknown builder (not prepared by oga-npu)"
    return f"runtime {here}; the folder was built with {built}"


def translate(exc: Exception, path: Path | None = None) -> ModelLoadError:
    text = str(exc)
    for pattern, cause, fix in KNOWN_ERRORS:
        if re.search(pattern, text):
            first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
            if "genai_config.json uses a key" in cause:
                cause += f" [{versions_note(path)}]"
            if "{source}" in fix:
                manifest = read_json(path / MANIFEST) if path is not None else None
                fix = fix.format(source=(manifest or {}).get("source") or "SOURCE")
            return ModelLoadError(f"{cause} ({first})", fix)
    first = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    where = f" loading {path}" if path else ""
    return ModelLoadError(f"onnxruntime-genai failed{where}: {first}", "re-run with OGA_NPU_DEBUG=1 for the traceback")
