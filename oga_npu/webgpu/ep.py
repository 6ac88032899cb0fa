"""WebGPU through ONNX Runtime's plugin execution provider (package onnxruntime-ep-webgpu).

The plugin library is registered with onnxruntime-genai (and, to list adapters, with
onnxruntime) before a model that asks for WebGPU is opened. Each missing piece has its
own message: the package, the Vulkan loader (Linux), a WebGPU adapter. Nothing falls back
to the CPU silently.
"""

from __future__ import annotations

import ctypes
import importlib.util
import platform
from dataclasses import dataclass

EP_NAME = "WebGpuExecutionProvider"
INSTALL_HINT = "pip install 'oga-npu[webgpu]', which installs onnxruntime-ep-webgpu"
_registered_oga = False
_registered_ort = False


PCI_VENDORS = {0x1002: "AMD", 0x10DE: "NVIDIA", 0x8086: "Intel", 0x5143: "Qualcomm", 0x106B: "Apple"}


@dataclass
class Adapter:
    vendor: str
    device_type: str
    metadata: dict
    vendor_id: int = 0
    device_id: int = 0

    @property
    def name(self) -> str:
        """'NVIDIA GPU 10de:2335': onnxruntime leaves the vendor string empty on some drivers."""
        vendor = self.vendor or PCI_VENDORS.get(self.vendor_id, "")
        ids = f" {self.vendor_id:04x}:{self.device_id:04x}" if self.vendor_id else ""
        return f"{vendor} {self.device_type}{ids}".strip()


def library_path() -> str | None:
    if importlib.util.find_spec("onnxruntime_ep_webgpu") is None:
        return None
    import onnxruntime_ep_webgpu as ep

    try:
        return ep.get_library_path()
    except RuntimeError:
        return None


def vulkan_loader_present() -> bool:
    if platform.system() != "Linux":
        return True  # D3D12 (Windows) and Metal (macOS) need no extra loader
    try:
        ctypes.CDLL("libvulkan.so.1")
        return True
    except OSError:
        return False


def adapters() -> list[Adapter]:
    """WebGPU adapters onnxruntime sees through the plugin (empty when none)."""
    global _registered_ort
    lib = library_path()
    if lib is None:
        return []
    import onnxruntime as ort

    if not _registered_ort:
        try:
            ort.register_execution_provider_library(EP_NAME, lib)
        except Exception:  # noqa: BLE001 - an incompatible ORT is reported as no adapter
            return []
        _registered_ort = True
    out = []
    for d in ort.get_ep_devices():
        if d.ep_name == EP_NAME:
            hw = d.device
            out.append(
                Adapter(
                    str(hw.vendor),
                    str(hw.type).split(".")[-1],
                    dict(hw.metadata),
                    int(getattr(hw, "vendor_id", 0) or 0),
                    int(getattr(hw, "device_id", 0) or 0),
                )
            )
    return out


def available() -> tuple[bool, str]:
    if library_path() is None:
        return False, f"the WebGPU plugin EP is not installed: {INSTALL_HINT}"
    if not vulkan_loader_present():
        return False, "the Vulkan loader libvulkan.so.1 is missing (apt install libvulkan1, and a GPU driver)"
    if not adapters():
        return False, "no WebGPU adapter found: the GPU driver is missing or does not support Vulkan/D3D12/Metal"
    return True, ""


def register() -> None:
    """Register the plugin with onnxruntime-genai (once per process)."""
    global _registered_oga
    if _registered_oga:
        return
    from ..errors import ProviderError

    ok, why = available()
    if not ok:
        raise ProviderError(f"WebGPU is not available: {why}", "install it, or pass --fallback cpu")
    import onnxruntime_genai as og

    og.register_execution_provider_library(EP_NAME, library_path())
    _registered_oga = True
