"""WebGPU through ONNX Runtime's plugin execution provider (package onnxruntime-ep-webgpu).

The plugin library is registered with onnxruntime-genai before a model that asks for
WebGPU is opened. Missing pieces (the package, a Vulkan/D3D12/Metal loader, an adapter)
are reported by name; nothing falls back to the CPU silently.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

EP_NAME = "WebGpuExecutionProvider"
_registered = False


def library_path() -> Path | None:
    spec = importlib.util.find_spec("onnxruntime_ep_webgpu")
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0])
    for pattern in ("*.so", "*.dll", "*.dylib", "**/*.so", "**/*.dll", "**/*.dylib"):
        libs = sorted(p for p in root.glob(pattern) if "webgpu" in p.name.lower() or "ep" in p.name.lower())
        if libs:
            return libs[0]
    return None


def available() -> tuple[bool, str]:
    if library_path() is None:
        return False, "the WebGPU plugin EP is not installed (pip install 'oga-npu[webgpu]')"
    return True, ""


def register() -> None:
    global _registered
    if _registered:
        return
    import onnxruntime_genai as og

    lib = library_path()
    if lib is None:
        from .errors import ProviderError

        raise ProviderError("the WebGPU plugin EP is not installed", "pip install 'oga-npu[webgpu]'")
    og.register_execution_provider_library(EP_NAME, str(lib))
    _registered = True
