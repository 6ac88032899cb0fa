"""`oga-npu prepare`: a PrepareRequest from the options, prepare.prepare with stage progress,
the model folder on stdout (the plan with --dry-run)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._cli_utils import RaiEnvOption
from ._output import StageProgress

Source = Annotated[str, typer.Argument(metavar="SOURCE", help="Hugging Face id, local HF folder, or .gguf file.")]
Target = Annotated[str, typer.Option("--target", help="cpu | webgpu | dml | hybrid | npu")]
Recipe = Annotated[
    Optional[str],
    typer.Option(
        "--recipe",
        "-r",
        help="Recipe name (`oga-npu recipes` lists them) or a .toml path "
        "(default: gguf-native for a .gguf on cpu/webgpu, else default).",
    ),
]
Output = Annotated[
    Optional[Path],
    typer.Option(
        "--output",
        "-o",
        help="Model folder (default: <store>/<name>-<target> (a GGUF's name keeps its quantization), "
        "plus -<recipe> for a recipe other than the source's default; see `oga-npu models`).",
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Rebuild every stage, replacing a ready folder.")]
FromStage = Annotated[Optional[str], typer.Option("--from", help="Re-run from this stage on.")]
DryRun = Annotated[
    bool, typer.Option("--dry-run", help="Print every step (commands, paths, environment); touch nothing.")
]
CalibFile = Annotated[Optional[Path], typer.Option("--calib-file", help="Text file for AWQ/GPTQ calibration.")]
Trace = Annotated[bool, typer.Option("--trace", help="DD_PLUGINS_TRACING=1 for the Ryzen AI tools; logs kept.")]
RaiVersion = Annotated[
    Optional[str],
    typer.Option(
        "--rai-version",
        help="Ryzen AI release (1.6, 1.7, 1.7.1, 1.8); default: the Ryzen AI env's "
        "(its name, model-generate package or onnxruntime-genai pin).",
    ),
]
DdPlugins = Annotated[
    Optional[Path], typer.Option("--dd-plugins", help="Where compiled operator plugins go (default ./dd_plugins).")
]
SkipDeviceCheck = Annotated[
    bool, typer.Option("--skip-device-check", help="Build hybrid/npu models on a machine without the NPU.")
]
OgaVersion = Annotated[
    Optional[str],
    typer.Option(
        "--oga-version",
        help="The onnxruntime-genai the folder will run on (e.g. 0.11.2 for Ryzen AI 1.7): builder options it "
        "cannot run are left out. Default: the installed one; hybrid/npu: the Ryzen AI release's.",
    ),
]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="Print only the model folder.")]


def prepare(
    source: Source,
    target: Target = "cpu",
    recipe: Recipe = None,
    output: Output = None,
    force: Force = False,
    from_stage: FromStage = None,
    dry_run: DryRun = False,
    calib_file: CalibFile = None,
    trace: Trace = False,
    rai_version: RaiVersion = None,
    dd_plugins: DdPlugins = None,
    skip_device_check: SkipDeviceCheck = False,
    rai_env: RaiEnvOption = None,
    oga_version: OgaVersion = None,
    quiet: Quiet = False,
) -> None:
    """Quantize (Quark), build (OGA model builder) and validate a model for a target."""
    from ..errors import StageInterrupted

    try:  # typer turns a bare KeyboardInterrupt into a silent exit 130: say what happened
        from ..prepare import PrepareRequest
        from ..prepare import prepare as do_prepare

        req = PrepareRequest(
            source=source,
            target=target,
            recipe=recipe,
            output=output,
            force=force,
            from_stage=from_stage,
            dry_run=dry_run,
            calib_file=calib_file,
            trace=trace,
            rai_version=rai_version,
            dd_plugins=dd_plugins,
            skip_device_check=skip_device_check,
            rai_env=rai_env,
            oga_version=oga_version,
        )
        stage_progress = StageProgress(quiet or dry_run)
        try:
            result = do_prepare(req, stage_progress)
        finally:
            stage_progress.close()
    except KeyboardInterrupt as e:
        raise StageInterrupted("interrupted before the first stage started", "re-run the same command") from e
    if dry_run:
        print("\n".join(result.plan))
        return
    if not quiet:
        _report(result)
        tip = ggml_tip(source, target, recipe, result.manifest)
        if tip:
            print(tip, file=sys.stderr)
    print(result.output)


REPACKED = ("Q4_0", "Q4_K")  # the bulk types gguf-ggml repacks at load, as llama.cpp does on x86


def ggml_tip(source: str, target: str, recipe: str | None, manifest: dict | None) -> str | None:
    """A .gguf whose bulk is Q4_0 or Q4_K, prepared for the CPU by default (gguf-native) on a
    machine where gguf-ggml can run (its library built, or Linux with cmake and a C++ compiler to
    build it): the measured reason to pick it. gguf-native stays the default: no compiler needed, Windows too."""
    import os
    import shutil

    if recipe is not None or target != "cpu" or Path(source).suffix.lower() != ".gguf":
        return None
    if (manifest or {}).get("recipe") != "gguf-native":
        return None
    types = (manifest.get("stages", {}).get("build", {}).get("detail", {}).get("gguf_native") or {}).get("gguf_types")
    quantized = {t: n for t, n in (types or {}).items() if t not in ("F32", "F16", "BF16")}
    if not quantized or max(quantized, key=quantized.get) not in REPACKED:
        return None  # measured on Q4_0 / Q4_K_M files; other types have no repacked kernel (slower prefill)
    from ..kernels import built

    tools = all(shutil.which(t) for t in ("cmake", os.environ.get("CXX") or "c++"))
    if built() is None and not (sys.platform.startswith("linux") and tools):
        return None
    return (
        "tip: --recipe gguf-ggml runs this file with llama.cpp's own CPU kernels: about llama.cpp's speed "
        "(decode 0.93-1.15x) and half gguf-native's memory at 1B-3B on 16 cores (its kernel library builds once, a few "
        "minutes; docs/performance.md)"
    )


def _report(result) -> None:
    """On stderr: nothing to do, the validation's answer, and (on a terminal) the next command."""
    done = [r for r in result.stages if r.status == "done"]
    if not done:
        print(f"{result.output} is ready (every stage already done)", file=sys.stderr)
    validate = (result.manifest or {}).get("stages", {}).get("validate", {}).get("detail", {})
    if validate.get("answer"):
        print(
            f"validate: {validate['prompt']!r} -> {validate['answer'].strip()!r} ({validate['provider']})",
            file=sys.stderr,
        )
    if sys.stdout.isatty():  # a script that captures the path gives its own hint
        from ..store import ModelStore

        store = ModelStore()
        name = result.output.name if store.inside(result.output) else result.output
        print(f"next: oga-npu chat -m {name}", file=sys.stderr)
