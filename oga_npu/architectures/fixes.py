"""Config fixes for the builder: applied in its process (oga_npu.prepare.build's `--fix`) to the
config object transformers loads for it, or to the builder's own code for one architecture.
A table row names the fixes it needs (`Architecture.config_fixes`)."""

from __future__ import annotations

# ---------------------------------------------------------------- config fixes (the builder's copy only)
# Applied in the builder's process to the config object transformers loads for it
# (oga_npu.prepare.build's `--fix`): a config.json rewrite would not survive, since
# transformers 5 re-normalizes it on load. The user's folder is never written.


def _fix_gemma3_rope(cfg) -> bool:
    """transformers 5 keeps Gemma 3's rope per layer type ({"full_attention": {...},
    "sliding_attention": {...}}); the 0.18 builder reads one dict (rope_type, rope_theta) and
    the local layers' base from rope_local_base_freq (transformers 4's layout)."""
    rp = getattr(cfg, "rope_parameters", None)
    if not (isinstance(rp, dict) and "full_attention" in rp):
        return False
    full = dict(rp["full_attention"])
    local = rp.get("sliding_attention") or {}
    object.__setattr__(cfg, "rope_parameters", full)
    object.__setattr__(cfg, "rope_theta", full.get("rope_theta", 1_000_000.0))
    object.__setattr__(cfg, "rope_local_base_freq", local.get("rope_theta", 10_000.0))
    return True


def _fix_smollm3_nope():
    """The 0.18 builder turns SmolLM3's no-RoPE layers (no_rope_layers[i] == 0) into layers
    with a separate rotary op whose position_ids input it has removed (KeyError). Those
    layers need no rotary op at all: switch rope off for them. Returns the undo."""
    import importlib

    import onnxruntime_genai.models.builder  # noqa: F401 - puts its top-level `builders` package on sys.path

    SmolLM3Model = importlib.import_module("builders.smollm").SmolLM3Model  # the class the builder uses

    original = SmolLM3Model.make_attention

    def make_attention(self, layer_id, attention, root_input, **kwargs):
        rope = self.attention_attrs["rope"]
        if not self.no_rope_layers[layer_id]:
            self.attention_attrs["rope"] = False
        try:
            return original(self, layer_id, attention, root_input, **kwargs)
        finally:
            self.attention_attrs["rope"] = rope

    SmolLM3Model.make_attention = make_attention
    return lambda: setattr(SmolLM3Model, "make_attention", original)


def _fix_uniform_sliding_window(cfg) -> bool:
    """One sliding_window for every layer and no layer_types (Mistral v0.1/v0.2, Phi-3 mini's
    2047): the 0.18 builder marks no layer local, so its graph attends to everything while
    genai_config.json still asks for a windowed KV cache, which fails once a sequence passes
    window + 16 ("total_sequence_length must equal past_sequence_length + ..."). Naming every
    layer sliding makes the graph apply the window, as transformers does, and bounds the cache."""
    window = getattr(cfg, "sliding_window", None)
    if not window or getattr(cfg, "use_sliding_window", True) is False or getattr(cfg, "layer_types", None):
        return False
    object.__setattr__(cfg, "layer_types", ["sliding_attention"] * int(cfg.num_hidden_layers))
    return True


# Fixes to the config object transformers loads for the builder: fn(config) -> changed.
CONFIG_FIXES = {
    "gemma3_rope_per_layer_type": _fix_gemma3_rope,
    "uniform_sliding_window": _fix_uniform_sliding_window,
}
# Fixes to the builder's own code for one architecture: fn() -> undo.
BUILDER_FIXES = {
    "smollm3_nope_layers": _fix_smollm3_nope,
}


def apply_config_fixes(cfg, names: list[str]) -> list[str]:
    """Apply the named config fixes to a transformers config object; returns those that changed it."""
    return [n for n in names if n in CONFIG_FIXES and CONFIG_FIXES[n](cfg)]
