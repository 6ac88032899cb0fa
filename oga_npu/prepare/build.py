"""Build stage: the onnxruntime-genai model builder turns the quantized HF folder into
an OGA model folder (model.onnx, model.onnx.data, genai_config.json, tokenizer files).

Input: the quantize stage's folder. Output: the OGA folder for the target's execution
provider (`-e cpu`, `-e webgpu`, `-e dml`; hybrid builds with `-e dml` first).
Tool: `python -m onnxruntime_genai.models.builder`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

from ..architectures import config_fixes
from ..errors import ToolFailed
from ..recipe import BuildConfig
from ..threads import physical_cores
from ..tools import python_module_argv, run_tool, tool_env

BUILDER_MODULE = "onnxruntime_genai.models.builder"
SHIM_MODULE = "oga_npu.prepare.build"  # main() below: the builder with config fixes applied
# The builder's execution provider for each prepare target.
BUILDER_EP = {"cpu": "cpu", "webgpu": "webgpu", "dml": "dml", "hybrid": "dml", "npu": "cpu"}
REQUIRED_FILES = ("genai_config.json",)


def builder_argv(
    in_dir: Path, out_dir: Path, target: str, cfg: BuildConfig, cache_dir: Path, fixes: list[str] = (), rai_env=None
) -> list[str]:
    """The builder's command line; with config fixes, the builder runs under this module's
    main(), which applies them to the config object it loads (see oga_npu.architectures).
    With rai_env (oga_npu.ryzenai), the Ryzen AI release's own builder in its env."""
    args = ["-i", str(in_dir), "-o", str(out_dir), "-p", cfg.precision, "-e", BUILDER_EP[target], "-c", str(cache_dir)]
    if rai_env is not None:
        return rai_env.builder_argv(args, {**window_options(in_dir), **cfg.extra_options})[0]
    if fixes:
        argv = python_module_argv(SHIM_MODULE, *[x for f in fixes for x in ("--fix", f)], "--", *args)
    else:
        argv = python_module_argv(BUILDER_MODULE, *args)
    extra = {**window_options(in_dir), **cfg.extra_options}
    if extra:
        argv.append("--extra_options")
        argv += [f"{k}={_opt(v)}" for k, v in sorted(extra.items())]
    return argv


def window_options(in_dir: Path) -> dict:
    """Builder options the model's sliding window needs. A window wider than the context
    (a config's default window on a short-context model) never slides, but the builder
    would still give those layers a windowed KV cache that onnxruntime refuses to run
    below the window's size, which max_length (at most the context) cannot reach."""
    try:
        cfg = json.loads((Path(in_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    cfg = cfg.get("text_config") or cfg
    window = cfg.get("sliding_window") or 0
    context = cfg.get("seq_length") or cfg.get("max_position_embeddings") or 0
    if isinstance(window, int) and isinstance(context, int) and 0 < context < window:
        return {"windowed_kv_cache": False}
    return {}


def _opt(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def resolved_session_options(cfg: BuildConfig) -> dict:
    out = {}
    for k, v in cfg.session_options.items():
        if v == "auto" and k in ("intra_op_num_threads", "inter_op_num_threads"):
            v = physical_cores()
        out[k] = v
    return out


def run(
    in_dir: Path,
    out_dir: Path,
    target: str,
    cfg: BuildConfig,
    log_path: Path,
    env: dict[str, str] | None = None,
    gguf: Path | None = None,
    rai_env=None,
) -> dict:
    cache = out_dir.parent / (out_dir.name + ".cache")
    fixes = config_fixes(json.loads((in_dir / "config.json").read_text()))
    env = env or tool_env()
    if rai_env is not None:  # its Python and builder; our fixes are for the 0.18 builder (RaiEnv.build_detail)
        env = rai_env.child_env(env)
    argv = builder_argv(in_dir, out_dir, target, cfg, cache, [] if rai_env else fixes, rai_env)
    try:
        result = run_tool(argv, name="onnxruntime-genai model builder", env=env, log_path=log_path)
    except ToolFailed as e:
        raise builder_failed(e) from e
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    missing = [f for f in REQUIRED_FILES if not (out_dir / f).is_file()]
    onnx_files = list(out_dir.glob("*.onnx"))
    if missing or not onnx_files:
        raise ToolFailed(
            "onnxruntime-genai model builder",
            argv,
            0,
            [f"builder exited 0 but wrote no {', '.join(missing) or '*.onnx'} in {out_dir}"],
            log_path,
        )
    config_path = out_dir / "genai_config.json"
    config = json.loads(config_path.read_text())
    passes = []
    native = None
    if gguf is not None:  # before the other passes: they read the graph this one rewrites
        native = import_gguf(out_dir / config["model"]["decoder"].get("filename", "model.onnx"), gguf, in_dir, log_path)
        passes.append("gguf_native")
    if cfg.float32_logits:
        model_file = out_dir / config["model"]["decoder"].get("filename", "model.onnx")
        if cast_logits_to_float32(model_file):
            passes.append("float32_logits")
    skipped = {}
    if cfg.direct_decode:
        from ..webgpu.graphpass import GraphPassError, engine_graph

        model_file = out_dir / config["model"]["decoder"].get("filename", "model.onnx")
        try:
            engine_graph(model_file, int(config["model"]["vocab_size"]))
            passes.append("direct_decode")
        except GraphPassError as e:  # the model still runs on onnxruntime-genai's Generator
            skipped["direct_decode"] = str(e)
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(f"direct_decode skipped: {e}\n")
    session = resolved_session_options(cfg)
    sw = config["model"]["decoder"].get("sliding_window")
    if sw is not None and not sw.get("layers"):
        # The builder gave no layer a window (its graph attends to everything), yet this asks
        # onnxruntime-genai for a window-sized cache on every layer: too small past window + 16.
        del config["model"]["decoder"]["sliding_window"]
        passes.append("no_unused_sliding_window")
    if session:
        config["model"]["decoder"].setdefault("session_options", {}).update(session)
    if session or "no_unused_sliding_window" in passes:
        config_path.write_text(json.dumps(config, indent=4) + "\n")
    from ..capabilities import fix_tokenizer_config

    tok_class = fix_tokenizer_config(out_dir, in_dir)  # transformers 5's class name: 0.9.2/0.11.2 refuse it
    if tok_class:
        passes.append("tokenizer_class")
    detail = {
        "argv": argv,
        "seconds": round(result.seconds, 2),
        "session_options": session,
        "config_fixes": fixes,
        "graph_passes": passes,
        "graph_passes_skipped": skipped,
        "provider": providers_in_config(config),
    }
    if native is not None:
        detail["gguf_native"] = native
    if rai_env is not None:
        detail.update(rai_env.build_detail({**window_options(in_dir), **cfg.extra_options}, fixes))
    if tok_class:
        detail["tokenizer_class"] = tok_class
    return detail


def import_gguf(model_file: Path, gguf: Path, hf_dir: Path, log_path: Path) -> dict:
    """Replace the builder's int4 weights by the GGUF's own blocks (oga_npu.gguf.native)."""
    import time

    from ..gguf.native import import_weights

    t0 = time.monotonic()
    rep = import_weights(model_file, gguf, json.loads((hf_dir / "config.json").read_text()))
    summary = dict(
        rep.summary(), gguf=str(gguf), gguf_bytes=gguf.stat().st_size, seconds=round(time.monotonic() - t0, 2)
    )
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(f"gguf_native: {json.dumps(summary)}\n")
        for node, kind in rep.nodes.items():
            f.write(f"  {node}: {kind}\n")
    return summary


def gguf_of(in_dir: Path) -> Path:
    """The .gguf file a dequantized source folder was made from (oga_npu_source.json)."""
    from ..errors import RecipeError
    from ..workdir import read_json

    meta = read_json(in_dir / "oga_npu_source.json") or {}
    p = Path(meta["gguf"]) if meta.get("gguf") else None
    if p is None or not p.is_file():
        raise RecipeError(
            "the gguf-native recipe needs a .gguf source (this source is an HF model or the file is gone)",
            "prepare a .gguf file, or pick another recipe (--recipe default)",
        )
    return p


def builder_failed(e: ToolFailed) -> ToolFailed:
    """The builder is deterministic: the same input fails the same way, so the fix names the
    cause (an unsupported architecture, a config the builder cannot read), not a re-run."""
    text = " ".join(e.tail)
    if "is not currently supported" in text:
        e.fix = (
            "this architecture is not in the onnxruntime-genai 0.18 model builder: use a model of one that is "
            "(`oga-npu architectures`)"
        )
    else:
        e.fix = (
            f"the builder fails the same way on the same input: see {e.log_path} for the cause "
            "(`oga-npu architectures` lists what is supported); after fixing it, the re-run keeps finished stages"
        )
    return e


def cast_logits_to_float32(model_file: Path, output: str = "logits") -> bool:
    """Append Cast(to=float32) to the graph output `output` when it is float16 or bfloat16.
    Only model.onnx is rewritten (weights stay in their external data file). Returns
    whether the graph changed."""
    import onnx

    m = onnx.load(str(model_file), load_external_data=False)
    g = m.graph
    out = next((o for o in g.output if o.name == output), None)
    low = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)
    if out is None or out.type.tensor_type.elem_type not in low:
        return False
    inner = f"{output}_before_float32_cast"
    for node in g.node:
        node.output[:] = [inner if o == output else o for o in node.output]
        node.input[:] = [inner if i == output else i for i in node.input]
    g.node.append(
        onnx.helper.make_node("Cast", [inner], [output], name="/oga_npu/logits_float32/Cast", to=onnx.TensorProto.FLOAT)
    )
    out.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    tmp = model_file.with_name(model_file.name + ".tmp")
    onnx.save(m, str(tmp))
    os.replace(tmp, model_file)
    return True


def providers_in_config(config: dict) -> list[str]:
    opts = config.get("model", {}).get("decoder", {}).get("session_options", {}).get("provider_options", [])
    names = [k for entry in opts for k in entry]
    return names or ["cpu"]


def main(argv: list[str] | None = None) -> int:
    """`python -m oga_npu.prepare.build --fix NAME ... -- BUILDER ARGS`: run the OGA builder
    with the named oga_npu.architectures config fixes applied to every config transformers
    loads in this process (the builder's view only; no file is changed)."""
    import argparse
    import runpy

    from transformers import AutoConfig

    from ..architectures import BUILDER_FIXES, CONFIG_FIXES, apply_config_fixes

    argv = list(sys.argv[1:] if argv is None else argv)
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(prog=f"python -m {SHIM_MODULE}")
    ap.add_argument("--fix", action="append", default=[], choices=sorted({**CONFIG_FIXES, **BUILDER_FIXES}))
    ns = ap.parse_args(argv[:split])
    undo = [BUILDER_FIXES[n]() for n in ns.fix if n in BUILDER_FIXES]
    if undo:
        print(f"oga-npu: builder fixes: {', '.join(n for n in ns.fix if n in BUILDER_FIXES)}", file=sys.stderr)
    original = AutoConfig.from_pretrained.__func__

    def from_pretrained(cls, *a, **k):
        cfg = original(cls, *a, **k)
        applied = apply_config_fixes(cfg, ns.fix)
        if applied:
            print(f"oga-npu: config fixes for the builder: {', '.join(applied)}", file=sys.stderr)
        return cfg

    AutoConfig.from_pretrained = classmethod(from_pretrained)
    saved = sys.argv
    sys.argv = [BUILDER_MODULE, *argv[split + 1 :]]
    try:
        runpy.run_module(BUILDER_MODULE, run_name="__main__", alter_sys=False)
    finally:
        sys.argv = saved
        AutoConfig.from_pretrained = classmethod(original)
        for u in undo:
            u()
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---------------------------------------------------------------- stage protocol (see oga_npu.pipeline)

NAME = "build"
PRODUCES_MODEL = True


def applies(ctx) -> bool:
    # model_generate runs the release's builder itself on the quantized folder: --npu always,
    # --hybrid when no operator is compiled (onnx_utils vaiml needs the DML folder).
    return not (ctx.target == "npu" or (ctx.target == "hybrid" and ctx.recipe.hybrid.compile_ops == "never"))


def config_for(ctx) -> BuildConfig:
    """The recipe's build config with only the builder options the target runtime
    (ctx.oga_version, see capabilities.target_oga_version) can run."""
    cfg = ctx.recipe.build_for(ctx.target)
    kept = options_for(ctx)
    return cfg if kept == cfg.extra_options else cfg.model_copy(update={"extra_options": kept})


def options_for(ctx) -> dict:
    from ..capabilities import builder_options_for

    return builder_options_for(ctx.recipe.build_for(ctx.target).extra_options, getattr(ctx, "oga_version", ""))[0]


def key(ctx) -> dict:
    cfg = config_for(ctx)
    k = {"ep": BUILDER_EP[ctx.target], **cfg.model_dump(mode="json"), "session": resolved_session_options(cfg)}
    if ctx.recipe.quantize.engine == "gguf":
        k["gguf_native"] = 1
    if getattr(ctx, "rai_env", None) is not None:
        k["builder"] = ctx.rai_env.builder_id
    return k


def estimate(ctx, in_dir: Path) -> float | None:
    """Rough seconds: the builder reads, repacks and writes about 8 M parameters/s on 2 cores."""
    from ..hf_folder import safetensors_params

    params = safetensors_params(in_dir)
    return params / 8e6 * 2 / physical_cores() if params else None


def describe(ctx, in_dir: Path, out_dir: Path) -> list[str]:
    rai_env = getattr(ctx, "rai_env", None)
    cfg = ctx.recipe.build_for(ctx.target) if rai_env is not None else config_for(ctx)
    fixes = config_fixes(json.loads((in_dir / "config.json").read_text())) if (in_dir / "config.json").is_file() else []
    lines = [
        "$ "
        + " ".join(
            builder_argv(in_dir, out_dir, ctx.target, cfg, out_dir.parent / (out_dir.name + ".cache"), fixes, rai_env)
        )
    ]
    if rai_env is not None:
        lines += ["  " + ln for ln in rai_env.build_lines({**window_options(in_dir), **cfg.extra_options}, fixes)]
    elif fixes:
        lines.append(f"  the builder reads the config with fixes (in memory, the folder is not changed): {fixes}")
    session = resolved_session_options(cfg)
    if session:
        lines.append(f"  then genai_config.json session_options += {session}")
    if cfg.float32_logits:
        lines.append("  then model.onnx: a Cast makes the logits output float32 (graph pass)")
    if ctx.recipe.quantize.engine == "gguf":
        lines.append("  then the GGUF's own blocks replace the builder's int4 weights (oga_npu.gguf.native)")
    if cfg.direct_decode:
        lines.append("  then model.engine.onnx beside it: one step input, on-device greedy token (direct decoding)")
    return lines


def run_stage(ctx, in_dir: Path, out_dir: Path, log_path: Path) -> dict:
    gguf = gguf_of(in_dir) if ctx.recipe.quantize.engine == "gguf" else None
    rai_env = getattr(ctx, "rai_env", None) if BUILDER_EP[ctx.target] == "dml" else None
    # in a Ryzen AI env the env's builder options are chosen (and the dropped ones recorded) by rai_env
    cfg = ctx.recipe.build_for(ctx.target) if rai_env is not None else config_for(ctx)
    return run(in_dir, out_dir, ctx.target, cfg, log_path, ctx.tool_env(), gguf, rai_env)
