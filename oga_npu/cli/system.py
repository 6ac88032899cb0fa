"""This machine and this install: `devices`, `doctor`, `hello` (AMD's NPU hello-world), `env`,
and what prepare knows: `recipes`, `architectures`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import OgaNpuError
from ._cli_utils import AsJson
from ._output import StageProgress

Pmode = Annotated[
    Optional[str],
    typer.Option("--pmode", help="Set the NPU power mode with xrt-smi: default|powersaver|balanced|performance|turbo."),
]
DoctorModel = Annotated[
    Optional[str],
    typer.Option("--model", "-m", metavar="NAME|DIR", help="Also check this model (a name in the store or a folder)."),
]
Workdir = Annotated[
    Optional[Path],
    typer.Option(
        "--workdir",
        help="Where the ONNX files and Quark's reports go (default: a temporary folder, removed after).",
    ),
]
Runs = Annotated[int, typer.Option("--runs", help="Timed runs per session.")]
ArchJson = Annotated[bool, typer.Option("--json", help="JSON: every cell with its status and how it was verified.")]
Reasons = Annotated[bool, typer.Option("--reasons", help="Say why each refused or untested cell is so.")]


def devices_cmd(as_json: AsJson = False, pmode: Pmode = None) -> None:
    """What this machine can prepare and run: NPU, GPUs, providers, Ryzen AI tools."""
    from ..devices import set_power_mode
    from ..doctor import devices_report

    if pmode:
        after = set_power_mode(pmode)
        print(f"NPU power mode: {after or pmode}")
        return
    rep = devices_report()
    if as_json:
        print(json.dumps(rep, indent=2, default=str))
        return
    _print_hardware(rep)
    _print_software(rep)


def _print_hardware(rep: dict) -> None:
    """devices: the machine, the NPU (xrt-smi's view of it), the GPUs and WebGPU."""
    from ..doctor import webgpu_line

    print(f"machine: {rep['os']}, {rep['cpu']}")
    print(f"NPU: {rep['summary']}")
    for n in rep["npus"]:
        print(
            f"  {n['name']} (PCI {n['pci_id']}, rev 0x{n['revision']:02x}) driver {n.get('driver') or '-'} "
            f"{n.get('driver_version') or ''}"
        )
    x = rep["xrt_smi"]
    print(
        "xrt-smi: "
        + (
            "not found"
            if not x
            else f"firmware {x.get('firmware')}, XRT {x.get('xrt_version')}, power mode {x.get('power_mode')}"
        )
    )
    print("GPUs: " + (", ".join(f"{g['vendor']} {g['pci_id']}" for g in rep["gpus"]) or "none found on PCI"))
    print(webgpu_line(rep["webgpu"]))


def _print_software(rep: dict) -> None:
    """devices: the runtimes and their providers, the Ryzen AI tools and env, what each target can do."""
    print(f"onnxruntime-genai: {rep['runtime']['description']}")
    print("onnxruntime providers: " + ", ".join(rep["providers"]["onnxruntime"]))
    oga = rep["providers"]["onnxruntime_genai"]
    print(
        "onnxruntime-genai providers: " + ", ".join(f"{p} {'yes' if v['available'] else 'no'}" for p, v in oga.items())
    )
    if not oga["webgpu"]["available"]:
        print(f"  webgpu cannot run: {oga['webgpu'].get('why')}")
    tools = rep["ryzen_ai_tools"]
    print(
        "Ryzen AI tools: "
        + ", ".join(f"{t} {v['version'] or ''}".strip() if v["path"] else f"{t} not found" for t, v in tools.items())
    )
    env = rep.get("ryzen_ai_env")
    print(
        "Ryzen AI env: "
        + (
            "none found (--rai-env, a ryzen-ai-X.Y.Z conda env, RYZEN_AI_INSTALLATION_PATH)"
            if not env
            else f"{env['error']} ({env['fix']})"
            if "error" in env
            else f"{env['prefix']}: Ryzen AI {env['release']}, {env['onnxruntime_genai']}"
        )
    )
    print(
        "targets:  "
        + "  ".join(
            f"{t}: prepare {'yes' if v['prepare'] else 'no'}, run {'yes' if v['run'] else 'no'};"
            for t, v in rep["targets"].items()
        )
    )


def doctor(model: DoctorModel = None) -> None:
    """Check versions, disk space and (with -m) a model folder; print a fix for each problem."""
    from ..doctor import doctor as run_doctor
    from ..errors import ModelNotFoundError
    from ..store import ModelStore

    folder = None
    if model is not None:
        try:
            folder = ModelStore().resolve(model)
        except ModelNotFoundError:
            folder = Path(model)  # doctor reports the missing folder with the others
    rep = run_doctor(folder)
    for c in rep.checks:
        print(f"ok       {c}")
    for n in rep.notes:
        print(f"note     {n}")
    for p in rep.problems:
        print(f"PROBLEM  {p.what}\n         fix: {p.fix}")
    if rep.problems:
        raise typer.Exit(1)


def hello(workdir: Workdir = None, runs: Runs = 10, as_json: AsJson = False) -> None:
    """AMD's hello-world: a small CNN, Quark XINT8, CPU vs NPU (NPU where present)."""
    from dataclasses import asdict

    from ..hello import run_hello

    steps = StageProgress()
    try:
        r = run_hello(workdir, runs, steps)
    finally:
        steps.close()
    if as_json:
        print(json.dumps(asdict(r), indent=2))
        return
    print(f"times are per run, the mean of {r.runs} runs:")
    print(f"FP32 on CPU:  {r.fp32_cpu_ms:8.2f} ms")
    print(f"XINT8 on CPU: {r.int8_cpu_ms:8.2f} ms")
    if r.int8_npu_ms is not None:
        print(
            f"XINT8 on NPU: {r.int8_npu_ms:8.2f} ms  (speedup {r.int8_cpu_ms / r.int8_npu_ms:.1f}x over CPU; "
            f"max |NPU - CPU| {r.npu_vs_cpu_max_abs:.4f})"
        )
    else:
        print(f"XINT8 on NPU: skipped: {r.npu_skipped}")
    print(f"INT8 vs FP32 output: cosine {r.agreement_cosine:.5f}, mean relative error {r.agreement_rel_error:.4f}")
    print(f"models: {r.workdir}" if r.workdir else "models: not kept (--workdir DIR keeps them)")


def recipes() -> None:
    """List the recipes prepare can use."""
    from ..recipe import list_recipes, load_recipe

    for name, path in list_recipes().items():
        try:
            desc = load_recipe(str(path)).description
        except OgaNpuError as e:
            desc = f"(invalid: {e.message})"
        print(f"{name:<12} {desc}  [{path}]")


def architectures(as_json: ArchJson = False, reasons: Reasons = False) -> None:
    """Which model architectures prepare handles: architecture x recipe x target."""
    from ..architectures import render, table

    print(json.dumps(table(), indent=2) if as_json else render(reasons=reasons))


def env() -> None:
    """Versions of oga-npu, OGA, ORT, Quark and the Ryzen AI tools."""
    from ..versions import installed_versions

    for k, v in installed_versions().items():
        print(f"{k}: {v or 'not installed'}")
    import shutil

    for tool in ("onnx_utils", "model_generate", "model_benchmark", "xrt-smi"):
        print(f"{tool}: {shutil.which(tool) or 'not found'}")
    from ..doctor import rai_env_info

    rai = rai_env_info()
    print(
        "ryzen-ai env: "
        + (
            "not found"
            if rai is None
            else rai.get("error") or f"{rai['prefix']} (Ryzen AI {rai['release']}, {rai['onnxruntime_genai']})"
        )
    )
