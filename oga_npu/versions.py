"""Package versions: what is installed, and what prepare needs.

REQUIRED_VERSIONS: what prepare needs, checked before any long step (--dry-run too) and
shown by doctor: (distribution, minimum, below). Matches pyproject.toml's cpu and prepare
extras: prepare builds with onnxruntime-genai 0.18's model builder whatever runtime the
folder is for (--oga-version). run/chat/serve judge the runtime by
capabilities.judge_runtime instead.
"""

from __future__ import annotations

from ._version import __version__

REQUIRED_VERSIONS = {
    "onnxruntime-genai": ("0.18", "0.19"),
    "onnxruntime": ("1.31", "1.32"),
    "amd-quark": ("0.13", "0.14"),
    "transformers": ("5.0", "6"),
    "onnx": ("1.17", "2"),
    "numpy": ("1.26", "3"),
    "protobuf": ("4.25", "8"),
}


# Only prepare needs these: doctor notes them missing, run/chat/serve do not need them.
PREPARE_PACKAGES = ("onnxruntime-genai", "onnxruntime", "amd-quark", "transformers")


VERSION_PACKAGES = (
    "onnxruntime-genai",
    "onnxruntime",
    "amd-quark",
    "transformers",
    "torch",
    "onnx",
    "huggingface-hub",
    "numpy",
    "protobuf",
)


def installed_versions() -> dict:
    from importlib import metadata

    out = {"oga-npu": __version__}
    for name in VERSION_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out
