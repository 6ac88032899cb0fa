"""Which execution provider runs a model folder: the one its genai_config.json names, whether
this onnxruntime-genai can run it here (RyzenAI: as OGA finds its library, oga_npu.ryzenai_folders),
and the choice `load` makes (never a silent CPU fallback)."""

from __future__ import annotations

import logging
from pathlib import Path

from . import ryzenai_folders
from .errors import ProviderError

log = logging.getLogger(__name__)

PROVIDERS = ("cpu", "webgpu", "dml", "cuda", "ryzenai")
# genai_config provider names as OGA spells them.
OGA_PROVIDER_NAME = {"webgpu": "WebGPU", "dml": "dml", "cuda": "cuda", "ryzenai": "RyzenAI"}


def configured_providers(config: dict) -> list[str]:
    so = config.get("model", {}).get("decoder", {}).get("session_options", {})
    opts = so.get("provider_options", [])
    if ryzenai_folders.folder_form(config) == "custom_ops" and not opts:
        return ["ryzenai"]  # Ryzen AI 1.6 hybrid and NPU models load AMD's custom ops instead of a provider
    names = []
    for entry in opts:
        for k in entry:
            names.append(k.lower())
    return names or ["cpu"]


def provider_available(
    provider: str, config: dict | None = None, folder: Path | None = None, manifest: dict | None = None
) -> tuple[bool, str]:
    """Whether this onnxruntime-genai can run `provider` here (for RyzenAI: the folder of
    `config`, when given), and why not."""
    from .capabilities import CPU_EXTRA_FIX, installed_runtime

    if installed_runtime().distribution is None:
        return False, f"no onnxruntime-genai is installed ({CPU_EXTRA_FIX})"
    import onnxruntime_genai as og

    if provider == "cpu":
        return True, ""
    if provider == "cuda":
        return bool(
            og.is_cuda_available()
        ), "this onnxruntime-genai build has no CUDA (pip install onnxruntime-genai-cuda)"
    if provider == "dml":
        return bool(og.is_dml_available()), "DirectML needs Windows and onnxruntime-genai-directml"
    if provider == "webgpu":
        from .capabilities import capabilities
        from .webgpu import ep as webgpu

        if not capabilities().ep_library:
            return False, (
                f"onnxruntime-genai {capabilities().version} cannot load plugin execution providers "
                "(no register_execution_provider_library)"
            )

        return webgpu.available()
    if provider == "ryzenai":  # as onnxruntime-genai finds its library, per OS and release
        return ryzenai_folders.available(config, folder, manifest)
    return False, f"unknown provider '{provider}' (known: {', '.join(PROVIDERS)})"


def choose_provider(
    config: dict, provider: str | None, fallback: str | None, manifest: dict | None, path: Path | None = None
) -> str:
    """The provider asked for (else the folder's), when available here; cpu only when
    `fallback="cpu"` says so."""
    wanted = (provider or configured_providers(config)[0]).lower()
    if wanted not in PROVIDERS:
        raise ProviderError(f"unknown provider '{wanted}'", f"use one of: {', '.join(PROVIDERS)}")
    ok, why = provider_available(wanted, config, path, manifest)
    if ok:
        return wanted
    if fallback != "cpu":
        raise ProviderError(
            f"provider {wanted} is not available: {why}",
            "install it, or pass --fallback cpu to run on the CPU instead (slower)",
        )
    log.warning("provider %s is not available (%s); falling back to cpu as asked", wanted, why)
    return "cpu"
