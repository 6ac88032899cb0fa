"""What differs per decoder architecture, in one table (read by `prepare` and its stages).

One `Architecture` per HF `architectures[0]` that the pinned onnxruntime-genai 0.18 model
builder's `create_model` dispatches on: the builder's class for it, the AMD Quark 0.13
template (Quark's own, or one registered here with the architecture's AWQ scaling layers),
config fixes applied to the copy the builder reads, runtime needs, the real checkpoint
whose settings the tiny test model copies, and per recipe x target whether the
combination is verified here, expected to work, or refused (with the reason).

    lookup(config)            -> Architecture (ArchitectureError when the builder lacks it)
    check(config, recipe, target) -> Support (raises ArchitectureError when refused)
    runtime_needs(config)     -> RuntimeNeeds of one model (sliding window, soft-capping, ...)
    config_fixes(config)      -> fixes the builder's process applies to its config (never to files)

The rows: `tested` (prepared and run by a test here) and `others`; their types, and the
shipped recipes and targets: `schema`; the config fixes: `fixes`.
"""

from __future__ import annotations

import copy

from ..errors import ArchitectureError
from .fixes import BUILDER_FIXES, CONFIG_FIXES, apply_config_fixes
from .others import OTHERS
from .schema import (
    AWQ_LAYOUTS,
    EXPECTED,
    GGUF_NATIVE_VERIFIED,
    GGUF_RECIPES,
    GGUF_VERIFIED,
    NOT_HERE,
    QUARK_KV_LAYERS,
    RECIPE_KIND,
    RECIPES,
    REFUSED,
    TARGETS,
    UNTESTED,
    VERIFIED,
    VERIFIED_HOW,
    Architecture,
    RuntimeNeeds,
    Support,
)
from .tested import TESTED

__all__ = [
    "ARCHITECTURES",
    "AWQ_LAYOUTS",
    "BUILDER_FIXES",
    "CONFIG_FIXES",
    "EXPECTED",
    "GGUF_NATIVE_VERIFIED",
    "GGUF_OTHERS",
    "GGUF_RECIPES",
    "GGUF_VERIFIED",
    "NOT_HERE",
    "NO_BUILDER_HINTS",
    "QUARK_KV_LAYERS",
    "RECIPES",
    "RECIPE_KIND",
    "REFUSED",
    "TARGETS",
    "UNTESTED",
    "VERIFIED",
    "VERIFIED_HOW",
    "Architecture",
    "RuntimeNeeds",
    "Support",
    "apply_config_fixes",
    "by_name",
    "check",
    "config_fixes",
    "gguf_config",
    "gguf_support",
    "hf_architecture",
    "known_names",
    "lookup",
    "quark_spec",
    "recipe_kind",
    "render",
    "runtime_needs",
    "table",
    "tiny_config",
]

ARCHITECTURES: tuple[Architecture, ...] = TESTED + OTHERS


def quark_spec(config: dict) -> tuple[str, str | None, list | None]:
    """(Quark template model_type, 'oga_npu' when this project registers it else 'quark',
    AWQ scaling layers this project supplies or None for Quark's own)."""
    arch = lookup(config)
    if arch.quark_template is None:
        raise ArchitectureError(
            f"{arch.hf_architectures[0]}: {arch.quark_refusal or 'AMD Quark 0.13 has no template for it'}",
            "use --recipe builder-int4",
        )
    return arch.quark_template, arch.quark_template_source, AWQ_LAYOUTS.get(arch.quark_awq or "")


def _cells(arch: Architecture) -> dict:
    return {r: {t: arch.support(r, t) for t in TARGETS} for r in RECIPES}


def _gguf_cells(arch: Architecture) -> dict:
    """A GGUF file's recipes on cpu: refused as the builder-kind cell is, or with no GGUF
    architecture transformers reads as this row; else what each recipe's own tests verify."""
    base = arch.support("builder", "cpu")
    if base.allowed and not arch.gguf:
        base = Support(REFUSED, "transformers reads no GGUF architecture as this one")
    return {r: gguf_support(arch, r) if base.allowed else base for r in GGUF_RECIPES}


def config_fixes(config: dict) -> list[str]:
    """Names of the CONFIG_FIXES the builder needs for this model (empty for most)."""
    try:
        return list(lookup(config).config_fixes)
    except ArchitectureError:
        return []


# GGUF sources (the existing path: transformers dequantizes the file into an HF folder). transformers
# 5.24 reads these llama.cpp architectures (its GGUF_SUPPORTED_ARCHITECTURES); the rows above that
# it loads as name theirs in `gguf`, these others load as a model the 0.18 builder lacks or as one
# no row verifies. Any other name (gemma, granite, olmo, phi2, smollm3, ernie4_5, ...) it refuses:
# "GGUF model with architecture gemma is not supported yet." Mistral files from llama.cpp say
# "llama" (transformers reads them as Mistral only when general.name is exactly "mistral"), so they
# become Llama rows, the same graph without Mistral v0.1's window. Long-rope Phi-3.5/Phi-4-mini
# files load without their rope factors (transformers reads no rope.scaling keys for phi3).
GGUF_OTHERS = {
    "qwen2moe": "Qwen2MoeForCausalLM",
    "qwen3moe": "Qwen3MoeForCausalLM",
    "gpt-oss": "GptOssForCausalLM",
    "lfm2": "Lfm2ForCausalLM",
    "falcon": "FalconForCausalLM",
    "bloom": "BloomForCausalLM",
    "stablelm": "StableLmForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "starcoder2": "Starcoder2ForCausalLM",
    "mamba": "MambaForCausalLM",
    "gemma4": "Gemma4ForCausalLM",
    "deci": "DeciLMForCausalLM",
    "minimax-m2": "MiniMaxM2ForCausalLM",
    "t5": "T5ForConditionalGeneration",
    "t5encoder": "T5EncoderModel",
}


def gguf_config(gguf_arch: str | None, file_name: str = "the GGUF file") -> dict | None:
    """The config.json stand-in (architectures, model_type) of a GGUF's general.architecture,
    for the table's check before any work; raises ArchitectureError when transformers cannot
    read that architecture from GGUF at all. None when the header could not be read."""
    if not gguf_arch:
        return None
    for a in ARCHITECTURES:
        if a.gguf == gguf_arch:
            return {"architectures": [a.hf_architectures[0]], "model_type": a.model_type}
    if gguf_arch in GGUF_OTHERS:
        return {"architectures": [GGUF_OTHERS[gguf_arch]], "model_type": gguf_arch}
    readable = sorted(a.gguf for a in ARCHITECTURES if a.gguf and a.support("builder-int4", "cpu").allowed)
    row = next((a for a in ARCHITECTURES if gguf_arch.replace("-", "_") in (a.name, a.model_type)), None)
    if row is not None and row.support("builder-int4", "cpu").allowed:
        fix = "prepare it from its Hugging Face folder or hub id" + (f" (e.g. {row.reference})" * bool(row.reference))
    else:
        fix = "use a model of a supported architecture (`oga-npu architectures` lists them)"
    raise ArchitectureError(
        f"{file_name}: transformers cannot read GGUF files of architecture '{gguf_arch}', so it cannot be "
        f"dequantized for the builder (GGUF architectures that work: {', '.join(readable)})",
        fix + "; nothing was written",
    )


_BY_HF: dict[str, list[Architecture]] = {}
for _a in ARCHITECTURES:
    for _h in _a.hf_architectures:
        _BY_HF.setdefault(_h, []).append(_a)

# Well-known architectures the builder lacks, with what to use instead (for the refusal).
NO_BUILDER_HINTS = {
    "Olmo2ForCausalLM": "OLMo 2 is not in the 0.18 builder (OLMo 1, OlmoForCausalLM, is)",
    "GPTJForCausalLM": "GPT-J is not in the 0.18 builder",
}


def known_names() -> list[str]:
    return sorted(h for a in ARCHITECTURES for h in a.hf_architectures if not a.builder_refusal)


def hf_architecture(config: dict) -> str:
    archs = config.get("architectures") or []
    return archs[0] if archs else ""


def lookup(config: dict) -> Architecture:
    """The table row for a HF config.json (as a dict). Raises ArchitectureError when no row fits."""
    name = hf_architecture(config)
    rows = _BY_HF.get(name)
    if not rows:
        what = name or f"model_type '{config.get('model_type', '?')}' without `architectures`"
        hint = NO_BUILDER_HINTS.get(name, "")
        raise ArchitectureError(
            f"{what} cannot be prepared: the onnxruntime-genai 0.18 model builder has no such architecture"
            + (f" ({hint})" if hint else ""),
            "use a model of a supported architecture (`oga-npu architectures` lists them)",
        )
    if len(rows) == 1:
        return rows[0]
    # Phi3: the builder picks short or long rope by comparing the two context lengths.
    long_rope = config.get("max_position_embeddings") != config.get("original_max_position_embeddings")
    return next(r for r in rows if (r.builder or "").endswith("LongRoPEModel") == long_rope)


def recipe_kind(recipe) -> str:
    """awq | rtn | gptq | builder for a loaded recipe (oga_npu.recipe.Recipe)."""
    q = recipe.quantize
    if q.engine in ("builder", "gguf"):  # gguf-native: the builder's graph, the file's weights
        return "builder"
    return {"awq": "awq", "gptq": "gptq", "none": "rtn"}[q.algorithm]


def check(config: dict, recipe, target: str) -> tuple[Architecture, Support]:
    """Refuse (ArchitectureError) a combination that cannot work, naming what would."""
    arch = lookup(config)
    kind = recipe_kind(recipe) if not isinstance(recipe, str) else RECIPE_KIND.get(recipe, recipe)
    name = recipe.name if not isinstance(recipe, str) else recipe
    cell = arch.support(name if name in RECIPES else kind, target)
    if kind == "gptq" and arch.quark_template is not None and cell.allowed:
        cell = Support(UNTESTED, "Quark GPTQ is not tested here")
    if getattr(getattr(recipe, "quantize", None), "engine", None) == "gguf" and cell.allowed and target == "cpu":
        cell = gguf_support(arch, name)
    if cell.allowed:
        return arch, cell
    order = [target] + [x for x in TARGETS if x != target]
    rank = {VERIFIED: 0, EXPECTED: 1, UNTESTED: 2}
    options = sorted(
        (
            (rank[arch.support(r, t).status], order.index(t), r, t)
            for t in TARGETS
            for r in RECIPES
            if arch.support(r, t).allowed
        )
    )
    alternatives = [f"--recipe {r} --target {t}" + (" (not verified here)" if k == 2 else "") for k, _, r, t in options]
    fix = (
        f"use {alternatives[0]}" + (f" (or {alternatives[1]})" if len(alternatives) > 1 else "")
        if alternatives
        else "use a model of another architecture (`oga-npu architectures` lists them)"
    )
    raise ArchitectureError(
        f"{arch.hf_architectures[0]} with recipe {name} for --target {target} is refused: {cell.how}",
        fix + "; nothing was written",
    )


def gguf_support(arch: Architecture, recipe: str) -> Support:
    """The cpu cell of a GGUF recipe (gguf-native, gguf-ggml, or a TOML of the user's) for an
    architecture whose builder-kind cell is allowed: what that recipe's own tests verify."""
    how = GGUF_VERIFIED.get(recipe, {}).get(arch.name)
    if how:
        return Support(VERIFIED, how)
    if recipe in GGUF_VERIFIED:
        return Support(UNTESTED, f"{recipe}: no test here prepares a GGUF of this architecture with it")
    return Support(UNTESTED, f"{recipe}: a recipe of your own, which no test here runs")


def runtime_needs(config: dict) -> RuntimeNeeds:
    cfg = config.get("text_config", config)
    window = cfg.get("sliding_window")
    if cfg.get("use_sliding_window") is False:
        window = None
    types = cfg.get("layer_types") or []
    sliding = [t for t in types if t == "sliding_attention"]
    if window and types:
        layers = "all" if len(sliding) == len(types) else f"{len(sliding)} of {len(types)}" if sliding else ""
        window = window if sliding else None
    else:
        layers = "all" if window else ""
    tie = cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False))
    return RuntimeNeeds(
        window or None, layers, cfg.get("attn_logit_softcapping"), cfg.get("final_logit_softcapping"), bool(tie)
    )


def tiny_config(arch: Architecture | str, vocab_size: int, **overrides) -> dict:
    """A 2-layer config.json dict of `arch` in its reference checkpoint's settings, narrow widths."""
    if isinstance(arch, str):
        arch = by_name(arch)
    cfg = {
        "architectures": [arch.hf_architectures[0]],
        "model_type": arch.model_type,
        "num_hidden_layers": 2,
        "vocab_size": vocab_size,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    cfg.update(copy.deepcopy(arch.settings))
    cfg.update(arch.tiny)
    cfg.update(overrides)
    return cfg


def by_name(name: str) -> Architecture:
    for a in ARCHITECTURES:
        if a.name == name:
            return a
    raise KeyError(name)


def table() -> list[dict]:
    """The whole table as plain data (for `oga-npu architectures --json`)."""
    rows = []
    for a in ARCHITECTURES:
        rows.append(
            {
                "name": a.name,
                "hf_architectures": list(a.hf_architectures),
                "model_type": a.model_type,
                "builder": a.builder,
                "quark_template": a.quark_template,
                "quark_template_source": a.quark_template_source if a.quark_template else None,
                "config_fixes": list(a.config_fixes),
                "runtime": list(a.runtime),
                "reference": a.reference,
                "gguf": a.gguf or None,
                "gguf_verified": a.gguf_verified,  # a GGUF of it through the dequantizing recipes
                "gguf_recipes": {r: {"status": c.status, "how": c.how} for r, c in _gguf_cells(a).items()},
                "note": a.note,
                "support": {
                    r: {t: {"status": c.status, "how": c.how} for t, c in cells.items()}
                    for r, cells in _cells(a).items()
                },
            }
        )
    return rows


_MARK = {VERIFIED: "V", EXPECTED: "e", UNTESTED: "?", REFUSED: "-"}


def _gguf_line(rows: list[dict]) -> str:
    """Which rows each GGUF recipe is verified for (on cpu), by recipe: their own tests."""
    said = []
    for r in GGUF_RECIPES:
        names = [row["name"] for row in rows if row["gguf_recipes"][r]["status"] == VERIFIED]
        said.append(f"{r} verified here for {', '.join(names) or 'none'}")
    return f"a .gguf on cpu: {'; '.join(said)}; other rows with a GGUF architecture untested (--json: gguf_recipes)"


def render(rows: list[dict] | None = None, reasons: bool = False) -> str:
    """The table as text: one line per architecture, one letter per recipe x target cell."""
    rows = rows if rows is not None else table()
    head = f"{'architecture':<17} {'HF architectures[0]':<38} {'Quark template':<24}"
    groups = "  ".join(f"{r:<14}" for r in RECIPES)
    lines = [f"{'':<81}{groups}", head + "  " + "  ".join(f"{' '.join(t[0] for t in TARGETS):<14}" for _ in RECIPES)]
    notes, by_reason = [], {}
    for row in rows:
        quark = (
            "-"
            if not row["quark_template"]
            else row["quark_template"] + (" (oga-npu)" if row["quark_template_source"] == "oga_npu" else "")
        )
        cells = "  ".join(f"{' '.join(_MARK[row['support'][r][t]['status']] for t in TARGETS):<14}" for r in RECIPES)
        lines.append(f"{row['name']:<17} {row['hf_architectures'][0]:<38} {quark:<24}  {cells}")
        if reasons:
            for r in RECIPES:
                for t in TARGETS:
                    c = row["support"][r][t]
                    if c["status"] in (REFUSED, UNTESTED):
                        by_reason.setdefault((c["status"], c["how"]), {}).setdefault(row["name"], []).append(f"{r}/{t}")
    for (status, how), archs in by_reason.items():
        notes.append(f"  {status}: {how}")
        notes.append(
            "      "
            + "; ".join(f"{a} ({', '.join(cells) if len(cells) < 15 else 'all'})" for a, cells in archs.items())
        )
    lines.append("")
    lines.append(
        "targets: c=cpu w=webgpu d=dml h=hybrid n=npu.  V = verified here ("
        + VERIFIED_HOW.split(":")[0]
        + "), e = expected (not verifiable on this machine), ? = untested, - = refused by prepare"
    )
    lines.append(_gguf_line(rows))
    if notes:
        lines.append("why:")
        lines += notes
    else:
        lines.append("`oga-npu architectures --reasons` says why a cell is refused or untested; --json has every cell")
    return "\n".join(lines)
