"""Hybrid stage: `model_generate` turns the model into a Ryzen AI NPU+iGPU (or NPU-only)
model folder (model_jit.onnx, model_jit.onnx.data, model_jit.bin, model_jit.pb.bin,
genai_config.json with the RyzenAI provider options, tokenizer files).

Input: the DML folder from the build stage (`--target hybrid`, built by the release's own
builder for `onnx_utils vaiml`) or the quantized HF folder (`--target npu`, and hybrid with
`compile_ops = "never"`: model_generate runs the release's builder itself). Tool:
`model_generate` of the Ryzen AI env (oga_npu.ryzenai), run with the env's folders first on
PATH, in the form of its release:
  RAI 1.4-1.7:   model_generate --hybrid <out> <in>          model_generate --npu <out> <in>
  RAI 1.7.1+:    model_generate --hybrid --input <in> --output <out>  (--npu likewise;
                 1.8 adds --full_fusion / --token_fusion / --basic / --eager)
DD_PLUGINS_ROOT (the plugins stage's folder) and, with --trace, DD_PLUGINS_TRACING=1
are passed explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..devices import version_tuple
from ..errors import RecipeError, ToolFailed
from ..tools import run_tool

NAME = "hybrid"
PRODUCES_MODEL = True
TOOL = "model_generate"
JIT_FILES = ("model_jit.onnx",)
CHUNK_SIZE = 2048


def applies(ctx) -> bool:
    return ctx.target in ("hybrid", "npu")


def key(ctx) -> dict:
    h = ctx.recipe.hybrid
    return {
        "rai": ctx.rai_version,
        "variant": h.npu_variant if ctx.target == "npu" else None,
        "max_seq_length": h.max_seq_length,
    }


def new_form(rai_version: str) -> bool:
    return version_tuple(rai_version) >= (1, 7, 1)


def check_release(ctx) -> None:
    """Before anything is written: the recipe's NPU variant exists in the user's release."""
    from ..ryzenai import release

    variant = ctx.recipe.hybrid.npu_variant
    if ctx.target != "npu" or variant == "default":
        return
    rel = release(ctx.rai_version)
    if variant not in rel.npu_variants:
        raise RecipeError(
            f"the recipe's npu_variant '{variant}' (model_generate --npu --{variant}) is not in Ryzen AI "
            f"{rel.version}; it came with 1.8",
            'use npu_variant = "default" in the recipe, or Ryzen AI 1.8',
        )


def argv(ctx, in_dir: Path, out_dir: Path) -> list[str]:
    mode = "--hybrid" if ctx.target == "hybrid" else "--npu"
    a = [ctx.tool_path(TOOL), mode]
    if ctx.target == "npu" and ctx.recipe.hybrid.npu_variant != "default":
        a.append("--" + ctx.recipe.hybrid.npu_variant)
    if new_form(ctx.rai_version):
        a += ["--input", str(in_dir), "--output", str(out_dir)]
    else:
        a += [str(out_dir), str(in_dir)]
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
    if ctx.recipe.hybrid.max_seq_length > 4096:
        lines.append(
            f"  then genai_config: hybrid_opt_chunk_context=1, search.chunk_size={CHUNK_SIZE} "
            f"(recipe max_seq_length {ctx.recipe.hybrid.max_seq_length} > 4096)"
        )
    return lines


def check_output(out_dir: Path) -> tuple[list[str], str | None]:
    """Problems with a model_generate output folder, and which config form it has."""
    problems = [f"{f} is missing" for f in (*JIT_FILES, "genai_config.json") if not (out_dir / f).is_file()]
    form = None
    cfg_path = out_dir / "genai_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        so = cfg.get("model", {}).get("decoder", {}).get("session_options", {})
        if any("RyzenAI" in e for e in so.get("provider_options", [])):
            form = "ryzenai-provider"  # RAI 1.7+
        elif so.get("custom_ops_library"):
            form = "custom-ops-library"  # RAI <= 1.6
        else:
            problems.append("genai_config.json has neither RyzenAI provider options nor custom_ops_library")
    return problems, form


def apply_long_context(out_dir: Path, max_seq_length: int) -> dict:
    """Past 4096 tokens the runtime needs chunked prefill: set it explicitly (from the recipe)."""
    if max_seq_length <= 4096:
        return {}
    cfg_path = out_dir / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    for entry in cfg["model"]["decoder"].setdefault("session_options", {}).setdefault("provider_options", []):
        if "RyzenAI" in entry:
            entry["RyzenAI"]["hybrid_opt_chunk_context"] = "1"
            entry["RyzenAI"]["hybrid_opt_max_seq_length"] = str(max_seq_length)
    cfg.setdefault("search", {})["chunk_size"] = CHUNK_SIZE
    cfg_path.write_text(json.dumps(cfg, indent=4) + "\n")
    return {"hybrid_opt_chunk_context": "1", "chunk_size": CHUNK_SIZE}


def run_stage(ctx, in_dir: Path, out_dir: Path, log_path: Path) -> dict:
    a = argv(ctx, in_dir, out_dir)
    env = ctx.rai_tool_env(**env_additions(ctx))
    run_tool(a, name=TOOL, env=env, cwd=out_dir, log_path=log_path, version=ctx.tool_versions.get(TOOL))
    problems, form = check_output(out_dir)
    if problems:
        raise ToolFailed(
            TOOL, a, 0, ["exited 0 but the output is not a hybrid model: " + "; ".join(problems)], log_path
        )
    long_ctx = apply_long_context(out_dir, ctx.recipe.hybrid.max_seq_length)
    ctx.collect_traces(out_dir, NAME)
    return {
        "argv": a,
        "config_form": form,
        "rai_version": ctx.rai_version,
        "rai_source": ctx.rai_source,
        "env": {k: v for k, v in env.items() if k.startswith("DD_PLUGINS")},
        "long_context": long_ctx,
        "input": "dml folder" if (in_dir / "genai_config.json").is_file() else "quantized folder",
        **({"rai_env": ctx.rai_env.to_dict()} if ctx.rai_env is not None else {}),
    }
