"""Ollama's model descriptions (/api/tags, /api/ps, /api/show) from the server's listing and
each model folder: the family (genai_config.json's model.type), parameter size, quantization
level, context length."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from .models import listing


def _details(info: dict) -> dict:
    family = info.get("architecture") or ""
    return {
        "parent_model": "",
        "format": "onnx",
        "family": family,
        "families": [family] if family else None,
        "parameter_size": _param_size(info.get("params")),
        "quantization_level": info.get("quantization") or _quant(info.get("bits")),
    }


def folder_facts(folder: Path) -> dict:
    """What Ollama's details name, read from a model folder: the family (genai_config.json's
    model.type: llama, qwen2, phi3, ...), parameters and weight bits (the manifest's model_info,
    else the graph), and a GGUF's quantization (Q4_1) for a gguf-native model."""
    from ..store import GGUF_QUANT, ModelStore
    from ..workdir import read_json

    cfg = read_json(folder / "genai_config.json") or {}
    model = cfg.get("model") if isinstance(cfg, dict) else None
    out: dict = {"architecture": model.get("type") if isinstance(model, dict) else None}
    e = ModelStore(folder.parent).entry(folder)
    if e is None:
        return out
    out.update(params=e.params, bits=e.bits)
    m = GGUF_QUANT.search(Path(e.source).stem) if e.source_kind == "gguf" and e.source else None
    if m and e.recipe in ("gguf-native", "gguf-ggml"):  # the file's own blocks: its quantization, as Ollama names it
        out["quantization"] = m.group(1).upper()
    return out


def described(provider, info: dict) -> dict:
    """`info` (listing/describe) with the folder's facts where it has none (serve -m lists fewer)."""
    get = getattr(provider, "get", None)
    e = get(info["id"]) if get is not None else None
    folder = getattr(e, "folder", None)
    if folder is None:
        sm = getattr(provider, "models", {}).get(info["id"])
        folder = getattr(getattr(sm, "lm", None), "path", None)
    if folder is None:
        return info
    try:
        facts = folder_facts(Path(folder))
    except OSError:
        return info
    return {**facts, **{k: v for k, v in info.items() if v is not None}}


def _param_size(params) -> str:
    from ..store import format_params

    return format_params(params) if params else ""


def _quant(bits) -> str:
    """weight_bits' "4", "4/8" or a float type -> Ollama's quantization_level ("Q4", "Q4/Q8", "fp16")."""
    if not bits:
        return ""
    return "/".join(f"Q{b}" if b.isdigit() else b for b in str(bits).split("/"))


def infos(provider) -> list[dict]:
    """listing(), with each folder's size on disk where the listing has none (serve -m)."""
    from ..store import disk_usage

    out = []
    get = getattr(provider, "get", None)
    for i in listing(provider):
        if not i.get("size") and get is not None and get(i["id"]) is not None:
            i = {**i, "size": disk_usage(get(i["id"]).folder)}
        out.append(described(provider, i))
    return out


def _modified(info: dict) -> str:
    return datetime.fromtimestamp(info.get("created") or 0, timezone.utc).isoformat().replace("+00:00", "Z")


def tag(info: dict) -> dict:
    return {
        "name": info["id"],
        "model": info["id"],
        "modified_at": _modified(info),
        "size": info.get("size") or 0,
        "details": _details(info),
    }


def show(info: dict) -> dict:
    ctx = info.get("context_length")
    model_info = {
        "general.architecture": info.get("architecture") or "",
        "general.parameter_count": info.get("params"),
        "oga_npu.context_length": ctx,
        "oga_npu.target": info.get("target"),
        "oga_npu.recipe": info.get("recipe"),
        "oga_npu.loaded": info.get("loaded"),
    }
    caps = ["completion"]
    return {
        "modelfile": "",
        "parameters": f"num_ctx {ctx}" if ctx else "",
        "template": "",
        "details": _details(info),
        "model_info": model_info,
        "capabilities": caps,
        "modified_at": _modified(info),
    }
