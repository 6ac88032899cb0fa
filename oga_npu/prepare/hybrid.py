"""Hybrid stage: `model_generate` turns the model into a Ryzen AI NPU+iGPU (or NPU-only)
model folder: the graph and weights genai_config.json's `model.decoder.filename` and
`external_data_file` name (model_jit.onnx and model_jit.pb.bin for a hybrid model of 1.7+),
genai_config.json with the RyzenAI provider options (1.7+) or custom_ops_library (1.6),
tokenizer files.

Input: the DML folder from the build stage (`--target hybrid`, built by the release's own
builder for `onnx_utils vaiml`) or the quantized HF folder (`--target npu`, and hybrid with
`compile_ops = "never"`: model_generate runs the release's builder itself). Tool:
`model_generate` of the Ryzen AI env (oga_npu.ryzenai), run with the env's folders first on
PATH, in the form of its release (amd/ryzen-ai-documentation docs/oga_model_prepare.rst):
  RAI 1.6, 1.7:  model_generate --hybrid <out> <in>
                 model_generate --npu <out> <in> --optimize decode
  RAI 1.7.1+:    model_generate --hybrid --input <in> --output <out>
                 model_generate --npu --full_fusion|--token_fusion|--basic|--eager --input <in> --output <out>
                 (a variant always; --basic, "safe default for new or untested models", unless the
                 recipe names one), [--mem_optimize]
  RAI 1.8:       --npu --token_fusion ... --extra_options max_seq_len=N past 4096 tokens
Context (docs/hybrid_oga.rst): 4096 tokens in total for 1.6 and for NPU models other than
token fusion (1.7.1: 4K only; 1.8: 16K); hybrid models of 1.7+ past 4096 get AMD's long-context
edit of genai_config (hybrid_opt_chunk_context "1", search.chunk_size 2048). DD_PLUGINS_ROOT
(the plugins stage's folder) and, with --trace, DD_PLUGINS_TRACING=1 are passed explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import RecipeError, ToolFailed
from ..ryzenai_releases import release
from ..tools import run_tool

NAME = "hybrid"
PRODUCES_MODEL = True
TOOL = "model_generate"
BASE_CONTEXT = 4096  # hybrid_opt_max_seq_length "4096" in AMD's configs; the 1.6 / full-fusion limit
CHUNK_SIZE = 2048  # "Add "chunk_size":2048 under search" (hybrid_oga.rst 1.7-1.8)
DEFAULT_NPU_VARIANT = "basic"


def applies(ctx) -> bool:
    return ctx.target in ("hybrid", "npu")


def npu_variant(ctx) -> str | None:
    """The `--npu --<variant>` flag model_generate gets: the recipe's, else --basic (1.7.1+);
    None for --hybrid and for 1.6/1.7, which have no variants."""
    if ctx.target != "npu" or not release(ctx.rai_version).npu_variants:
        return None
    v = ctx.recipe.hybrid.npu_variant
    return DEFAULT_NPU_VARIANT if v == "default" else v


def key(ctx) -> dict:
    h = ctx.recipe.hybrid
    return {
        "rai": ctx.rai_version,
        "variant": npu_variant(ctx) if ctx.target == "npu" else None,
        "mem_optimize": h.mem_optimize,
        "max_seq_length": h.max_seq_length,
    }


def context_problem(ctx) -> str | None:
    """Why the recipe's max_seq_length cannot be had from this release and target (None: it can)."""
    n = ctx.recipe.hybrid.max_seq_length
    rel = release(ctx.rai_version)
    if n <= BASE_CONTEXT:
        return None
    if ctx.target == "hybrid":
        if rel.hybrid_chunk_context:
            return None
        return (
            f"Ryzen AI {rel.version} models support up to {BASE_CONTEXT} tokens in total (input + output) and "
            f"its onnxruntime-genai {rel.oga} has no search.chunk_size for chunked prefill"
        )
    variant = npu_variant(ctx)
    if variant == "token_fusion":
        if n <= rel.token_fusion_max:
            return None
        if rel.token_fusion_max <= BASE_CONTEXT:
            return f"Ryzen AI {rel.version}'s model_generate makes token-fusion models with a 4K context only"
        return f"AMD documents token-fusion NPU models up to {rel.token_fusion_max} tokens"
    what = f"--npu --{variant} models" if variant else "NPU models"
    return (
        f"Ryzen AI {rel.version} {what} support up to {BASE_CONTEXT} tokens in total (input + output); "
        "longer contexts are for hybrid models (1.7+) and token-fusion NPU models"
    )


def check_release(ctx) -> None:
    """Before anything is written: the recipe's NPU variant, --mem_optimize and context length
    exist in the user's release for this target."""
    h, rel = ctx.recipe.hybrid, release(ctx.rai_version)
    if ctx.target == "npu" and h.npu_variant != "default" and h.npu_variant not in rel.npu_variants:
        raise RecipeError(
            f"the recipe's npu_variant '{h.npu_variant}' (model_generate --npu --{h.npu_variant}) is not in "
            f"Ryzen AI {rel.version}; the NPU variants came with 1.7.1",
            'use npu_variant = "default" in the recipe, or Ryzen AI 1.7.1 or newer',
        )
    if h.mem_optimize and not rel.mem_optimize:
        raise RecipeError(
            f"the recipe's mem_optimize (model_generate --mem_optimize) is not in Ryzen AI {rel.version}; "
            "it came with 1.7.1",
            "set mem_optimize = false in the recipe's [hybrid], or use Ryzen AI 1.7.1 or newer",
        )
    problem = context_problem(ctx)
    if problem:
        raise RecipeError(
            f"the recipe's max_seq_length {h.max_seq_length}: {problem}",
            f"set max_seq_length = {BASE_CONTEXT} in the recipe's [hybrid]"
            + ("" if ctx.target == "hybrid" else ', or npu_variant = "token_fusion" with Ryzen AI 1.8 (up to 16384)')
            + ("" if ctx.target == "npu" else ", or use Ryzen AI 1.7 or newer"),
        )


def argv(ctx, in_dir: Path, out_dir: Path) -> list[str]:
    rel, h = release(ctx.rai_version), ctx.recipe.hybrid
    a = [ctx.tool_path(TOOL), "--hybrid" if ctx.target == "hybrid" else "--npu"]
    variant = npu_variant(ctx)
    if variant:
        a.append("--" + variant)
    if h.mem_optimize:
        a.append("--mem_optimize")
    if rel.io_flags:
        a += ["--input", str(in_dir), "--output", str(out_dir)]
    else:
        a += [str(out_dir), str(in_dir)]
        if ctx.target == "npu":
            a += ["--optimize", "decode"]
    if variant == "token_fusion" and h.max_seq_length > BASE_CONTEXT and rel.max_seq_extra_option:
        a += ["--extra_options", f"max_seq_len={h.max_seq_length}"]
    return a


def env_additions(ctx) -> dict[str, str]:
    env = {}
    if ctx.dd_plugins is not None and (
        ctx.target == "hybrid" and ctx.recipe.hybrid.compile_ops != "never" or ctx.dd_plugins.is_dir()
    ):
        env["DD_PLUGINS_ROOT"] = str(ctx.dd_plugins)
    return env


def describe(ctx, in_dir: Path, out_dir: Path) -> list[str]:
    env = ctx.rai_tool_env(**env_additions(ctx))
    shown = {k: v for k, v in env.items() if k.startswith("DD_PLUGINS")}
    lines = [
        f"Ryzen AI {ctx.rai_version} ({ctx.rai_source}) form:",
        "$ " + " ".join(argv(ctx, in_dir, out_dir)),
        "  env: " + (", ".join(f"{k}={v}" for k, v in sorted(shown.items())) or "no DD_PLUGINS_* set"),
    ]
    if ctx.target == "npu" and ctx.recipe.hybrid.npu_variant == "default" and npu_variant(ctx):
        lines.append(f"  --{DEFAULT_NPU_VARIANT}: AMD's safe default for new or untested models (recipe npu_variant)")
    n = ctx.recipe.hybrid.max_seq_length
    if ctx.target == "hybrid" and n > BASE_CONTEXT:
        lines.append(
            f"  then genai_config: hybrid_opt_chunk_context=1 (hybrid_opt_max_seq_length stays {BASE_CONTEXT}), "
            f"search.chunk_size={CHUNK_SIZE} (recipe max_seq_length {n} > {BASE_CONTEXT})"
        )
    return lines


def _ryzenai_options(so: dict) -> list[dict]:
    return [e["RyzenAI"] for e in so.get("provider_options", []) if isinstance(e, dict) and "RyzenAI" in e]


def check_output(out_dir: Path) -> tuple[list[str], str | None]:
    """Problems with a model_generate output folder, and which config form it has: the files
    genai_config.json names (model.decoder.filename, external_data_file) must be there."""
    cfg_path = out_dir / "genai_config.json"
    if not cfg_path.is_file():
        return ["genai_config.json is missing"], None
    dec = json.loads(cfg_path.read_text()).get("model", {}).get("decoder", {})
    so = dec.get("session_options", {})
    problems, form, data = [], None, None
    if _ryzenai_options(so):
        form, data = "ryzenai-provider", _ryzenai_options(so)[0].get("external_data_file")  # RAI 1.7+
    elif so.get("custom_ops_library"):
        form, data = "custom-ops-library", so.get("external_data_file")  # RAI 1.6
    else:
        problems.append("genai_config.json has neither RyzenAI provider options nor custom_ops_library")
    filename = dec.get("filename")
    if not filename:
        problems.append("genai_config.json names no model.decoder.filename")
    for what, name in (("model.decoder.filename", filename), ("external_data_file", data)):
        if name and not (out_dir / name).is_file():
            problems.append(f"{name} ({what} in genai_config.json) is missing")
    return problems, form


def apply_long_context(out_dir: Path, target: str, max_seq_length: int, form: str | None) -> dict:
    """AMD's edit for a hybrid model past 4096 tokens (hybrid_oga.rst 1.7-1.8): add
    hybrid_opt_chunk_context "1" under provider_options.RyzenAI (hybrid_opt_max_seq_length
    stays "4096") and search.chunk_size 2048. NPU models get no edit (token fusion is made
    for its length by model_generate)."""
    if max_seq_length <= BASE_CONTEXT or target != "hybrid":
        return {}
    if form != "ryzenai-provider":
        raise RecipeError(
            f"the recipe's max_seq_length {max_seq_length} needs AMD's long-context options, and model_generate "
            f"wrote the {form} config form (Ryzen AI 1.6), which has none: 4096 tokens in total",
            f"set max_seq_length = {BASE_CONTEXT} in the recipe's [hybrid], or use Ryzen AI 1.7 or newer",
        )
    cfg_path = out_dir / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    kept = None
    for ry in _ryzenai_options(cfg["model"]["decoder"]["session_options"]):
        ry["hybrid_opt_chunk_context"] = "1"
        kept = ry.get("hybrid_opt_max_seq_length", kept)
    cfg.setdefault("search", {})["chunk_size"] = CHUNK_SIZE
    cfg_path.write_text(json.dumps(cfg, indent=4) + "\n")
    return {
        "hybrid_opt_chunk_context": "1",
        "chunk_size": CHUNK_SIZE,
        "hybrid_opt_max_seq_length": kept,
        "context_length": cfg["model"].get("context_length"),
    }


def run_stage(ctx, in_dir: Path, out_dir: Path, log_path: Path) -> dict:
    a = argv(ctx, in_dir, out_dir)
    env = ctx.rai_tool_env(**env_additions(ctx))
    run_tool(a, name=TOOL, env=env, cwd=out_dir, log_path=log_path, version=ctx.tool_versions.get(TOOL))
    problems, form = check_output(out_dir)
    if problems:
        raise ToolFailed(
            TOOL, a, 0, ["exited 0 but the output is not a Ryzen AI model: " + "; ".join(problems)], log_path
        )
    long_ctx = apply_long_context(out_dir, ctx.target, ctx.recipe.hybrid.max_seq_length, form)
    ctx.collect_traces(out_dir, NAME)
    return {
        "argv": a,
        "config_form": form,
        "npu_variant": npu_variant(ctx),
        "rai_version": ctx.rai_version,
        "rai_source": ctx.rai_source,
        "env": {k: v for k, v in env.items() if k.startswith("DD_PLUGINS")},
        "long_context": long_ctx,
        "input": "dml folder" if (in_dir / "genai_config.json").is_file() else "quantized folder",
        **({"rai_env": ctx.rai_env.to_dict()} if ctx.rai_env is not None else {}),
    }
