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
from dataclasses import dataclass
from pathlib import Path

from ..architectures import config_fixes
from ..errors import ToolFailed
from ..recipe import BuildConfig
from ..threads import physical_cores
from ..tools import python_module_argv, run_tool, tool_env

BUILDER_MODULE = "onnxruntime_genai.models.builder"
BUILDER_NAME = "onnxruntime-genai model builder"  # as a failure names it, with builder_version()
SHIM_MODULE = "oga_npu.prepare.build"  # main() below: the builder with config fixes applied
# The builder's execution provider for each prepare target.
BUILDER_EP = {"cpu": "cpu", "webgpu": "webgpu", "dml": "dml", "hybrid": "dml", "npu": "cpu"}
REQUIRED_FILES = ("genai_config.json",)


def builder_argv(in_dir: Path, out_dir: Path, target: str, opts: BuildOptions, cache_dir: Path, fixes=()) -> list[str]:
    """The builder's command line; with config fixes, the builder runs under this module's
    main(), which applies them to the config object it loads (see oga_npu.architectures).
    With opts.rai_env (oga_npu.ryzenai), the Ryzen AI release's own builder in its env."""
    cfg = opts.builder_cfg
    args = ["-i", str(in_dir), "-o", str(out_dir), "-p", cfg.precision, "-e", BUILDER_EP[target], "-c", str(cache_dir)]
    if opts.rai_env is not None:
        return opts.rai_env.builder_argv(args, opts.extra(in_dir))[0]
    if fixes:
        argv = python_module_argv(SHIM_MODULE, *[x for f in fixes for x in ("--fix", f)], "--", *args)
    else:
        argv = python_module_argv(BUILDER_MODULE, *args)
    extra = opts.extra(in_dir)
    if extra:
        argv.append("--extra_options")
        argv += [f"{k}={_opt(v)}" for k, v in sorted(extra.items())]
    return argv


@dataclass(frozen=True)
class BuildOptions:
    """The build stage's effective options for one target, worked out in one place
    (`options(ctx)`): the stage key, the plan's lines, the run, prepare's notes and the
    folder's runtime requirement all read them."""

    recipe_cfg: BuildConfig  # the recipe's build config for the target
    cfg: BuildConfig  # the same with only the builder options the target runtime can run
    left_out: tuple[str, ...]  # a note per builder option the target runtime cannot run
    session: dict  # genai_config.json session_options += this ("auto" threads resolved)
    rai_env: object | None = None  # oga_npu.ryzenai.RaiEnv whose own builder runs (-e dml)

    @property
    def builder_cfg(self) -> BuildConfig:
        """What the builder is given: in a Ryzen AI env the recipe's own options (the env
        chooses, and records, which of them its builder leaves out)."""
        return self.recipe_cfg if self.rai_env is not None else self.cfg

    def extra(self, in_dir: Path) -> dict:
        """--extra_options: what the model's sliding window needs, then the recipe's."""
        return {**window_options(in_dir), **self.builder_cfg.extra_options}

    def fixes(self, in_dir: Path) -> list[str]:
        """The config fixes (oga_npu.architectures) for the model in in_dir/config.json."""
        return config_fixes(json.loads((Path(in_dir) / "config.json").read_text()))


def options(ctx) -> BuildOptions:
    from ..capabilities import builder_options_for

    recipe_cfg = ctx.recipe.build_for(ctx.target)
    kept, left_out = builder_options_for(recipe_cfg.extra_options, getattr(ctx, "oga_version", ""))
    cfg = recipe_cfg if kept == recipe_cfg.extra_options else recipe_cfg.model_copy(update={"extra_options": kept})
    rai_env = getattr(ctx, "rai_env", None) if BUILDER_EP[ctx.target] == "dml" else None
    return BuildOptions(recipe_cfg, cfg, tuple(left_out), resolved_session_options(cfg), rai_env)


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
    opts: BuildOptions,
    log_path: Path,
    env=None,
    gguf: Path | None = None,
    kernels: str = "onnxruntime",
) -> dict:
    """kernels (a .gguf source): "onnxruntime" (gguf-native) or "ggml" (gguf-ggml: the custom-op
    library is made or found first, so a machine that cannot build it fails before the builder)."""
    lib = ensure_kernels(log_path) if gguf is not None and kernels == "ggml" else None
    cache = out_dir.parent / (out_dir.name + ".cache")
    fixes = opts.fixes(in_dir)
    env = env or tool_env()
    rai_env = opts.rai_env
    if rai_env is not None:  # its Python and builder; our fixes are for the 0.18 builder (RaiEnv.build_detail)
        env = rai_env.child_env(env)
    argv = builder_argv(in_dir, out_dir, target, opts, cache, [] if rai_env else fixes)
    version = builder_version(opts)
    try:
        result = run_tool(argv, name=BUILDER_NAME, env=env, log_path=log_path, version=version)
    except ToolFailed as e:
        raise builder_failed(e) from e
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    _check_written(out_dir, argv, log_path, version)
    config_path = out_dir / "genai_config.json"
    config = json.loads(config_path.read_text())
    model_file = out_dir / config["model"]["decoder"].get("filename", "model.onnx")
    passes, skipped, native = _graph_passes(model_file, config, opts.builder_cfg, gguf, in_dir, log_path, lib)
    _finish_config(config_path, config, opts.session, passes)
    library = install_kernels(lib, out_dir, config_path) if lib is not None else None
    from ..capabilities import fix_tokenizer_config

    tok_class = fix_tokenizer_config(out_dir, in_dir)  # transformers 5's class name: 0.9.2/0.11.2 refuse it
    if tok_class:
        passes.append("tokenizer_class")
    detail = {
        "argv": argv,
        "seconds": round(result.seconds, 2),
        "session_options": opts.session,
        "config_fixes": fixes,
        "graph_passes": passes,
        "graph_passes_skipped": skipped,
        "provider": providers_in_config(config),
    }
    if native is not None:
        detail["gguf_ggml" if lib is not None else "gguf_native"] = native
    if library is not None:
        detail["ggml_kernels"] = library
    if rai_env is not None:
        detail.update(rai_env.build_detail(opts.extra(in_dir), fixes))
    if tok_class:
        detail["tokenizer_class"] = tok_class
    return detail


def builder_version(opts: BuildOptions) -> str | None:
    """The onnxruntime-genai whose builder runs, for its failure's message: the Ryzen AI
    env's (with its distribution's name), else the one installed beside oga-npu."""
    if opts.rai_env is not None:
        oga = opts.rai_env.oga
        return f"{oga[1]} ({oga[0]})" if oga else None
    from importlib import metadata

    try:
        return metadata.version("onnxruntime-genai")
    except metadata.PackageNotFoundError:
        return None


def _check_written(out_dir: Path, argv: list[str], log_path: Path, version: str | None = None) -> None:
    missing = [f for f in REQUIRED_FILES if not (out_dir / f).is_file()]
    if missing or not list(out_dir.glob("*.onnx")):
        raise ToolFailed(
            BUILDER_NAME,
            argv,
            0,
            [f"builder exited 0 but wrote no {', '.join(missing) or '*.onnx'} in {out_dir}"],
            log_path,
            version,
        )


def _graph_passes(model_file: Path, config: dict, cfg: BuildConfig, gguf, in_dir: Path, log_path: Path, lib=None):
    """(passes run, passes skipped with why, the GGUF import's summary or None) on the built
    model. lib: the ggml kernel library (gguf-ggml's import pass), else None (gguf-native's)."""
    passes, skipped, native = [], {}, None
    if gguf is not None:  # before the other passes: they read the graph this one rewrites
        native = import_gguf(model_file, gguf, in_dir, log_path, ggml=lib is not None)
        passes.append("gguf_ggml" if lib is not None else "gguf_native")
    if cfg.float32_logits and cast_logits_to_float32(model_file):
        passes.append("float32_logits")
    if cfg.direct_decode:
        from ..webgpu.graphpass import GraphPassError, engine_graph

        try:
            engine_graph(model_file, int(config["model"]["vocab_size"]))
            passes.append("direct_decode")
        except GraphPassError as e:  # the model still runs on onnxruntime-genai's Generator
            skipped["direct_decode"] = str(e)
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(f"direct_decode skipped: {e}\n")
    return passes, skipped, native


def _finish_config(config_path: Path, config: dict, session: dict, passes: list[str]) -> None:
    """genai_config.json: the session options added, an unused sliding window removed."""
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


def import_gguf(model_file: Path, gguf: Path, hf_dir: Path, log_path: Path, ggml: bool = False) -> dict:
    """Replace the builder's int4 weights by the GGUF's own blocks: their exact form for
    onnxruntime's kernels (oga_npu.gguf.native), or the raw blocks for the ggml custom ops
    (oga_npu.gguf.ggml)."""
    import time

    hf_config = json.loads((hf_dir / "config.json").read_text())
    t0 = time.monotonic()
    if ggml:
        from ..gguf import ggml as ggml_pass
        from ..kernels import SUPPORTED

        rep = ggml_pass.import_weights(model_file, gguf, hf_config, SUPPORTED)
    else:
        from ..gguf.native import import_weights

        rep = import_weights(model_file, gguf, hf_config)
    summary = dict(
        rep.summary(), gguf=str(gguf), gguf_bytes=gguf.stat().st_size, seconds=round(time.monotonic() - t0, 2)
    )
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(f"{'gguf_ggml' if ggml else 'gguf_native'}: {json.dumps(summary)}\n")
        for node, kind in rep.nodes.items():
            f.write(f"  {node}: {kind}\n")
    return summary


def ensure_kernels(log_path: Path) -> Path:
    """The ggml kernel library (oga_npu.kernels), built into the cache when it is not there yet
    (KernelBuildError, one line and its fix, when this machine cannot build it)."""
    from ..kernels import ensure
    from ..tools import report_progress

    log_path.parent.mkdir(parents=True, exist_ok=True)  # the builder's run makes it, after this

    def progress(msg: str) -> None:  # to the log, and the stage's line: a first build takes minutes
        f.write(f"kernels: {msg}\n")
        report_progress(f"kernel library: {msg.rstrip(' .')} (once)")

    with open(log_path, "a", encoding="utf-8") as f:
        lib = ensure(progress=progress)
        f.write(f"kernels: {lib}\n")
    return Path(lib)


def install_kernels(lib: Path, out_dir: Path, config_path: Path) -> dict:
    """The library copied into the folder and named (relative) in genai_config.json; its identity."""
    from ..gguf.ggml_folder import install

    return install(lib, out_dir, config_path)


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


# ---------------------------------------------------------------- stage protocol (see oga_npu.prepare)

NAME = "build"
PRODUCES_MODEL = True


def applies(ctx) -> bool:
    # model_generate runs the release's builder itself on the quantized folder: --npu always,
    # --hybrid when no operator is compiled (onnx_utils vaiml needs the DML folder).
    return not (ctx.target == "npu" or (ctx.target == "hybrid" and ctx.recipe.hybrid.compile_ops == "never"))


def key(ctx) -> dict:
    opts = options(ctx)
    k = {"ep": BUILDER_EP[ctx.target], **opts.cfg.model_dump(mode="json"), "session": opts.session}
    if ctx.recipe.quantize.engine == "gguf":
        k["gguf_native"] = 1
        if ctx.recipe.quantize.kernels != "onnxruntime":  # (unchanged keys for gguf-native's folders)
            k["gguf_kernels"] = ctx.recipe.quantize.kernels
    if opts.rai_env is not None:
        k["builder"] = opts.rai_env.builder_id
    return k


def estimate(ctx, in_dir: Path) -> float | None:
    """Rough seconds: the builder reads, repacks and writes about 8 M parameters/s on 2 cores."""
    from ..hf_folder import safetensors_params

    params = safetensors_params(in_dir)
    return params / 8e6 * 2 / physical_cores() if params else None


# gguf-ggml's kernel library, built the first time (oga_npu.kernels): measured about 2.5 min on
# 2 cores and 33 s on 16 (docs/performance.md); seconds = a + b / cores through those two.
KERNEL_BUILD_S = (16.0, 267.0)


def once(ctx) -> tuple[str, float] | None:
    """(what, rough seconds) of work this stage does once per machine, not per model: gguf-ggml's
    kernel library while it is not built (the estimate line adds it)."""
    q = ctx.recipe.quantize
    if q.engine != "gguf" or q.kernels != "ggml":
        return None
    from ..kernels import built

    if built() is not None:
        return None
    a, b = KERNEL_BUILD_S
    return "compiling the kernel library, once", a + b / physical_cores()


def describe(ctx, in_dir: Path, out_dir: Path) -> list[str]:
    opts = options(ctx)
    fixes = opts.fixes(in_dir) if (in_dir / "config.json").is_file() else []
    cache = out_dir.parent / (out_dir.name + ".cache")
    lines = ["$ " + " ".join(builder_argv(in_dir, out_dir, ctx.target, opts, cache, fixes))]
    if opts.rai_env is not None:
        lines += ["  " + ln for ln in opts.rai_env.build_lines(opts.extra(in_dir), fixes)]
    elif fixes:
        lines.append(f"  the builder reads the config with fixes (in memory, the folder is not changed): {fixes}")
    if opts.session:
        lines.append(f"  then genai_config.json session_options += {opts.session}")
    cfg = opts.builder_cfg
    if cfg.float32_logits:
        lines.append("  then model.onnx: a Cast makes the logits output float32 (graph pass)")
    if ctx.recipe.quantize.engine == "gguf" and ctx.recipe.quantize.kernels == "ggml":
        lines.append("  first the ggml kernel library (oga_npu.kernels), built into the cache when missing")
        lines.append("  then each MatMulNBits a GgmlMatMul over the GGUF's raw blocks, the embedding a GgmlGather")
        lines.append("  then the library copied into the folder and named in genai_config.json (relative)")
    elif ctx.recipe.quantize.engine == "gguf":
        lines.append("  then the GGUF's own blocks replace the builder's int4 weights (oga_npu.gguf.native)")
    if cfg.direct_decode:
        lines.append("  then model.engine.onnx beside it: one step input, on-device greedy token (direct decoding)")
    return lines


def run_stage(ctx, in_dir: Path, out_dir: Path, log_path: Path) -> dict:
    gguf = gguf_of(in_dir) if ctx.recipe.quantize.engine == "gguf" else None
    return run(in_dir, out_dir, ctx.target, options(ctx), log_path, ctx.tool_env(), gguf, ctx.recipe.quantize.kernels)
