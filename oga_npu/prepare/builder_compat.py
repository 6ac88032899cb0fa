"""The quantized folder in the form every pinned onnxruntime-genai model builder reads right.

Quark's export and `tokenizer.save_pretrained` run under transformers 5, which writes RoPE as
`rope_parameters` and the tokenizer class as `TokenizersBackend`. AMD's builders (0.9.2 in
Ryzen AI 1.6, 0.11.2 in 1.7/1.7.1, 0.14.0 in 1.8) run under AMD's transformers 4.57.6 and read
config.json only through `AutoConfig`: a missing `rope_theta` becomes the class default 10000 and
a missing `rope_scaling` None, so the RoPE cache is baked wrong with no error, and
`AutoTokenizer` refuses `TokenizersBackend` at the end of the build (tests/conformance/
test_builders.py cites the builder lines). `fix_folder` adds the transformers-4 keys beside
`rope_parameters` (which stays: transformers 5 and the 0.18 builder read it) and renames the
tokenizer class. It must be the last write to the folder: a transformers-5 load-and-save drops
the added keys again.

What the old builders cannot be given (they ignore linear/dynamic scaling, yarn and per-layer
RoPE are not verified) is refused for hybrid/npu, where AMD's builder reads this folder
(`refusal`, called before anything runs, and `fix_folder(strict=True)` after the export).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ArchitectureError

# RoPE kinds the 0.9.2 / 0.11.2 / 0.14.0 builders read from the legacy keys and CI checks
# (scripts/test_oga_versions.sh, tests/builders_check.py): default, llama3, longrope (su: its old name).
EXPRESSIBLE = ("default", "llama3", "longrope", "su")
LAYER_TYPES = ("full_attention", "sliding_attention")
TOKENIZER_CLASS = "PreTrainedTokenizerFast"  # loads tokenizer.json as it is in transformers 4.57 and 5


class BuilderCompatError(ArchitectureError):
    """The model's RoPE cannot be written in the form AMD's (older) model builders read."""


def rope_kind(cfg: dict) -> str:
    """The RoPE kind of a config.json dict in either form (transformers 4 hub keys or 5's
    rope_parameters): 'default', 'llama3', 'longrope', 'linear', ... or 'per-layer'."""
    cfg = cfg.get("text_config", cfg)
    rp = cfg.get("rope_parameters")
    if isinstance(rp, dict) and any(k in rp for k in LAYER_TYPES):
        return "per-layer"
    if cfg.get("model_type") in ("gemma3", "gemma3_text") and "rope_local_base_freq" in cfg:
        return "per-layer"
    sc = cfg.get("rope_scaling") or (rp if isinstance(rp, dict) else None) or {}
    return str(sc.get("rope_type", sc.get("type", "default")))


def refusal(cfg: dict) -> BuilderCompatError | None:
    """The error for a RoPE AMD's builders cannot be given, else None."""
    kind = rope_kind(cfg)
    if kind in EXPRESSIBLE:
        return None
    why = {
        "per-layer": "a RoPE per layer type (Gemma 3: full and sliding attention)",
        "linear": "linear RoPE scaling, which the 0.9.2/0.11.2 builders ignore",
        "dynamic": "dynamic RoPE scaling, which no pinned builder implements",
    }.get(kind, f"RoPE scaling '{kind}', which is not verified with the pinned builders")
    return BuilderCompatError(
        f"this model has {why}: AMD's model builder (onnxruntime-genai 0.9.2-0.14.0) would bake a wrong "
        "RoPE cache for --target hybrid/npu",
        "prepare it for --target cpu or webgpu (onnxruntime-genai 0.18 reads it), or pick a model with "
        "default, llama3 or longrope RoPE",
    )


def _legacy_scaling(rp: dict, kind: str) -> dict:
    if kind in ("longrope", "su"):
        # transformers 4.57's Phi3Config wants exactly {type, short_factor, long_factor}
        # (configuration_phi3.py:205); the builders read ["type"] and the two factor lists.
        sc = {"type": "longrope", "short_factor": rp["short_factor"], "long_factor": rp["long_factor"]}
        sc.update({k: rp[k] for k in ("short_mscale", "long_mscale") if k in rp})
        return sc
    sc = {k: v for k, v in rp.items() if k not in ("rope_theta", "partial_rotary_factor")}
    sc.setdefault("rope_type", kind)
    return sc


def legacy_rope_keys(cfg: dict, strict: bool = False) -> dict:
    """The top-level keys to add to a transformers-5 config dict (none already there is replaced).
    strict: raise BuilderCompatError for what the old builders cannot read; else leave it out."""
    rp = cfg.get("rope_parameters")
    if not isinstance(rp, dict):
        return {}
    kind = rope_kind(cfg)
    if kind not in EXPRESSIBLE:
        err = refusal(cfg)
        if strict and err is not None:
            raise err
        if kind == "per-layer":
            return {}
    add: dict = {}
    for k in ("rope_theta", "partial_rotary_factor"):
        if k in rp and k not in cfg:
            add[k] = rp[k]
    if kind not in ("llama3", "longrope", "su"):
        return add
    if cfg.get("rope_scaling") is None:
        add["rope_scaling"] = _legacy_scaling(rp, kind)
    om = rp.get("original_max_position_embeddings")
    # 0.9.2/0.11.2 read it at the top level only (builder.py:41 tests hasattr on a dict)
    if om is not None and "original_max_position_embeddings" not in cfg:
        add["original_max_position_embeddings"] = om
    return add


def fix_folder(folder: Path, strict: bool = False) -> dict:
    """Add the legacy keys to folder/config.json and rename a TokenizersBackend tokenizer class.
    Returns what changed, per file (for the stage's detail)."""
    changed: dict = {}
    cp = Path(folder) / "config.json"
    cfg = json.loads(cp.read_text(encoding="utf-8"))
    target = cfg.get("text_config", cfg)
    add = legacy_rope_keys(target, strict=strict)
    if add:
        target.update(add)
        cp.write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        changed["config.json"] = sorted(add)
    tp = Path(folder) / "tokenizer_config.json"
    if tp.is_file():
        tc = json.loads(tp.read_text(encoding="utf-8"))
        if tc.get("tokenizer_class") == "TokenizersBackend":
            tc["tokenizer_class"] = TOKENIZER_CLASS
            tp.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
            changed["tokenizer_config.json"] = [f"tokenizer_class TokenizersBackend -> {TOKENIZER_CLASS}"]
    return changed
