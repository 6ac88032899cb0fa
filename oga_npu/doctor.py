"""`oga-npu devices` and `oga-npu doctor`: what this machine can prepare and run, and what
is wrong with an installation or a model folder (each problem with its fix)."""

from __future__ import annotations

import platform
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from . import devices
from .capabilities import RAI_OGA_PINS
from .recipe import TARGETS


def _pci_gpus(root: Path | None = None) -> list[dict]:
    root = root or devices.sysfs_root()
    out = []
    pci = root / "sys" / "bus" / "pci" / "devices"
    if not pci.is_dir():
        return out
    for dev in sorted(pci.iterdir()):
        cls = devices._read_hex(dev / "class")
        vendor = devices._read_hex(dev / "vendor")
        if cls is not None and (cls >> 16) == 0x03 and vendor is not None:
            name = {0x1002: "AMD", 0x10DE: "NVIDIA", 0x8086: "Intel"}.get(vendor, f"vendor 0x{vendor:04x}")
            device = devices._read_hex(dev / "device") or 0
            out.append({"vendor": name, "pci_id": f"{vendor:04x}:{device:04x}", "slot": dev.name})
    return out


def provider_status() -> dict:
    """Per provider: available only when this machine really gave it to us (WebGPU: an adapter
    obtained by a tiny session in a child process), else why not, in the loader's words."""
    import onnxruntime as ort

    from .model import PROVIDERS, provider_available

    st = {"onnxruntime": ort.get_available_providers()}
    oga = {}
    for p in PROVIDERS:
        ok, why = runnable(p, provider_available)
        oga[p] = {"available": ok, **({"why": why} if not ok else {})}
    st["onnxruntime_genai"] = oga
    return st


def runnable(provider: str, provider_available=None) -> tuple[bool, str]:
    """provider_available, and for WebGPU an adapter actually obtained in a child process."""
    if provider_available is None:
        from .model import provider_available
    ok, why = provider_available(provider)
    if ok and provider == "webgpu":
        from .probe import probe_webgpu

        r = probe_webgpu()
        if not r.ok:
            crash = f" (the probe died of {r.crash})" if r.crash else ""
            return False, f"the plugin lists an adapter but a WebGPU session could not get one{crash}: {r.message}"
    return ok, why


def devices_report() -> dict:
    from .bench import cpu_model

    mr = devices.machine_report()
    tools = {}
    for name, info in mr.tools.items():
        tools[name] = {"path": info["path"], "version": devices.tool_version(info["path"]) if info["path"] else None}
    xrt = devices.xrt_examine()
    prov = provider_status()
    oga = prov["onnxruntime_genai"]
    is_windows = mr.os == "Windows"
    hybrid_npu = any(n.supports_hybrid for n in mr.npus)
    can_prepare = {
        "cpu": True,
        "webgpu": True,
        "dml": True,
        "hybrid": _can_prepare_rai("hybrid"),
        "npu": _can_prepare_rai("npu"),
    }
    can_run = {
        "cpu": True,
        "webgpu": oga["webgpu"]["available"],
        "dml": oga["dml"]["available"],
        "hybrid": is_windows and hybrid_npu and oga["ryzenai"]["available"],
        "npu": (is_windows or linux_npu_ready()) and bool(mr.npus) and oga["ryzenai"]["available"],
    }
    npus = mr.to_dict()["npus"]
    summary = "no NPU, CPU only" if not npus else ", ".join(n["name"] + " NPU" for n in npus)
    return {
        "os": platform.platform(),
        "cpu": cpu_model(),
        "summary": summary,
        "npus": npus,
        "xrt_smi": xrt,
        "gpus": _pci_gpus(),
        "webgpu": webgpu_report(),
        "providers": prov,
        "ryzen_ai_tools": tools,
        "ryzen_ai_release": dict(zip(("version", "from"), devices.detect_rai_version())),
        "ryzen_ai_env": rai_env_info(),
        "runtime": runtime_report(),
        "targets": {t: {"prepare": can_prepare[t], "run": can_run[t]} for t in TARGETS},
    }


def _can_prepare_rai(target: str) -> bool:
    """A Ryzen AI env with what the target needs, on Windows (model_generate runs there only)."""
    from .errors import OgaNpuError
    from .ryzenai import check_host, require_env

    tools = ["onnx_utils", "model_generate"] if target == "hybrid" else ["model_generate"]
    try:
        check_host(target)
        require_env(target, None, None, tools, builder=target == "hybrid")
    except OgaNpuError:
        return False
    return True


def rai_env_info() -> dict | None:
    """The Ryzen AI env that prepare would use (oga_npu.ryzenai), or why it cannot be read."""
    from .errors import OgaNpuError
    from .ryzenai import find_env

    try:
        env = find_env()
    except OgaNpuError as e:
        return {"error": e.message, "fix": e.fix}
    return env.to_dict() if env is not None else None


def linux_npu_ready() -> bool:
    """Ryzen AI 1.8 runs NPU-only models on Linux once XRT, the device and memlock are set up."""
    from .ryzenai import host_os
    from .ryzenai_folders import linux_checks

    return host_os() == "Linux" and all(c.ok for c in linux_checks())


def runtime_report() -> dict:
    """The installed onnxruntime-genai: distribution, version, the Ryzen AI releases that pin it."""
    from .capabilities import VERIFIED_OGA, base_version, installed_runtime

    rt = installed_runtime()
    return {
        "distribution": rt.distribution,
        "version": rt.version,
        "ryzen_ai_releases": rt.releases,
        "amd_build": rt.is_ryzenai,
        "verified": base_version(rt.version or "") in VERIFIED_OGA,
        "description": rt.describe(),
    }


def webgpu_report() -> dict:
    """The WebGPU adapters the plugin EP finds, or why there are none."""
    from dataclasses import asdict

    from .webgpu import ep as webgpu

    ok, why = webgpu.available()
    found = webgpu.adapters() if ok else []
    return {"adapters": [{**asdict(a), "name": a.name} for a in found], **({"why": why} if not ok else {})}


def webgpu_line(rep: dict) -> str:
    if not rep["adapters"]:
        return f"WebGPU adapters: none ({rep.get('why', 'not found')})"
    parts = []
    for a in rep["adapters"]:
        meta = ", ".join(f"{k}={v}" for k, v in sorted(a["metadata"].items()))
        parts.append(a["name"] + (f" [{meta}]" if meta else ""))
    return "WebGPU adapters: " + "; ".join(parts)


@dataclass
class Problem:
    what: str
    fix: str


@dataclass
class DoctorReport:
    checks: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # neither ok nor a problem (prepare not set up here)


def doctor(model: Path | None = None, min_free_gb: float = 10.0) -> DoctorReport:
    from packaging.version import Version

    from .capabilities import judge_runtime
    from .versions import PREPARE_PACKAGES, REQUIRED_VERSIONS, installed_versions

    rep = DoctorReport()
    v = installed_versions()
    # The runtime is judged by what the installed onnxruntime-genai needs, not by one pin.
    rt_checks, rt_problems = judge_runtime()
    rep.checks += rt_checks
    rep.problems += [Problem(w, f) for w, f in rt_problems]
    prepare_missing = []
    for name, (lo, hi) in REQUIRED_VERSIONS.items():
        found = v.get(name)
        fits = found is not None and Version(lo) <= Version(found) < Version(hi)
        if name in PREPARE_PACKAGES:  # only prepare needs these: a run-only install is fine
            if fits:
                rep.checks.append(f"prepare: {name} {found} (expected >={lo},<{hi})")
            else:
                prepare_missing.append(f"{name} >={lo},<{hi} (found {found or 'none'})")
            continue
        if not fits:
            rep.problems.append(
                Problem(
                    f"{name}: expected >={lo},<{hi}, found {found or 'none'}",
                    "pip install -e . in a fresh virtual environment",
                )
            )
        else:
            rep.checks.append(f"{name} {found} (expected >={lo},<{hi})")
    if prepare_missing:
        rep.notes.append(
            "prepare is not set up in this environment (run, chat, serve and bench do not need it): "
            "it needs " + ", ".join(prepare_missing) + "; install it in its own venv: "
            'pip install "oga-npu[cpu,prepare]" (README: two environments)'
        )
    probe = model if model and model.exists() else Path.cwd()
    free = shutil.disk_usage(probe).free / 1e9
    if free < min_free_gb:
        rep.problems.append(
            Problem(
                f"only {free:.1f} GB free in {probe} (a 1-3B model's prepare needs about {min_free_gb:.0f} GB)",
                "free disk space or prepare with --output elsewhere",
            )
        )
    else:
        rep.checks.append(f"{free:.0f} GB free in {probe}")
    _linux_npu(rep, model)
    if model is not None:
        _check_model(model, rep, v)
    return rep


def _linux_npu(rep: DoctorReport, model: Path | None) -> None:
    """What AMD's Linux page needs for NPU models (oga_npu.ryzenai_folders.doctor_checks)."""
    import json

    from .ryzenai_folders import doctor_checks

    cfg = None
    if model is not None and (model / "genai_config.json").is_file():
        try:
            cfg = json.loads((model / "genai_config.json").read_text(encoding="utf-8"))
        except ValueError:
            cfg = None
    for c in doctor_checks(cfg, model):
        if c.ok:
            rep.checks.append(c.what)
        else:
            rep.problems.append(Problem(c.what, c.fix))


def _probe(model: Path, prov: str, rep: DoctorReport) -> None:
    """Load and generate in a child process: a native crash is reported, not suffered."""
    from .probe import PROBE_TOKENS, probe_model

    r = probe_model(model, prov)
    if r.ok:
        info = r.info or {}
        rep.checks.append(
            f"{model}: provider {info.get('provider', prov)}: loads and generates "
            f"{info.get('tokens', PROBE_TOKENS)} tokens (in a child process)"
        )
    elif r.crash:
        what = r.phase or "starting"
        rep.problems.append(
            Problem(
                f"{model}: native crash ({r.crash}) while {what} on provider {prov}"
                + (f": {r.message}" if r.message else "")
                + (f" (log: {r.log})" if r.log else ""),
                "check genai_config.json's session_options (custom_ops_library, provider "
                "libraries) and the runtime install; try --provider cpu",
            )
        )
    else:
        rep.problems.append(
            Problem(
                f"{model}: does not load and generate on provider {prov}: {r.message}",
                "see the message; OGA_NPU_DEBUG=1 oga-npu run ... shows the traceback",
            )
        )


def _check_model(model: Path, rep: DoctorReport, versions: dict) -> None:
    from .gguf.ggml_folder import FIX as KERNELS_FIX
    from .model import check_folder, missing_model_fix
    from .workdir import folder_state

    if not model.exists():
        rep.problems.append(Problem(f"{model} does not exist", missing_model_fix(model)))
        return
    st = folder_state(model, verify="full")
    _check_manifest(model, st, rep)
    folder = check_folder(model)
    for p in folder.problems:
        fix = (
            "run `git lfs pull` in the model's repository"
            if "git-lfs" in p
            else KERNELS_FIX
            if "kernel library" in p
            else ("re-run prepare for this folder" if st.request else "copy the missing file into the folder")
        )
        rep.problems.append(Problem(f"{model}: {p}", fix))
    if folder.config:
        _check_provider(model, folder, st, rep)


def _check_manifest(model: Path, st, rep: DoctorReport) -> None:
    """The folder against its manifest (state, sizes, hashes)."""
    from .workdir import resume_command

    if st.state == "incomplete":
        rep.problems.append(
            Problem(
                f"{model} is incomplete ({st.detail or 'prepare did not finish'})",
                f"re-run prepare: {resume_command(st)}",
            )
        )
    elif st.state == "damaged":
        rep.problems.append(
            Problem(
                f"{model} does not match its manifest: {st.detail}",
                f"re-run prepare to rebuild it: {resume_command(st)} --force",
            )
        )
    elif st.state == "ready":
        files = (st.manifest or {}).get("files", {})
        unhashed = [n for n, e in files.items() if "sha256" not in e]
        rep.checks.append(
            f"{model}: manifest matches every file (sizes and sha256 of all {len(files)} files)"
            if not unhashed
            else f"{model}: manifest matches every file's size; {len(unhashed)} big files have no hash "
            "(prepared by an older oga-npu: re-run prepare with --force to hash them)"
        )


def _check_provider(model: Path, folder, st, rep: DoctorReport) -> None:
    """The folder's provider here: runnable, probed, decoding path, runtime versions."""
    from .capabilities import runtime_mismatch
    from .model import configured_providers

    prov = configured_providers(folder.config)[0]
    ok, why = runnable(prov)
    if not ok:
        rep.problems.append(
            Problem(
                f"{model}: provider {prov} cannot run on this machine: {why}",
                f"run it where {prov} is available, or re-run prepare with --target cpu",
            )
        )
    elif st.state not in ("incomplete", "damaged") and not folder.problems and not runtime_mismatch(st):
        _probe(model, prov, rep)  # (a folder for a newer runtime is reported below, not probed)
    if prov == "webgpu":
        from .webgpu.engine import ENGINE_FILE, engine_available

        rep.checks.append(
            f"{model}: decoding direct ({ENGINE_FILE}, greedy steps chained on the GPU)"
            if engine_available(model)
            else f"{model}: decoding through onnxruntime-genai's Generator (no {ENGINE_FILE}: "
            "re-run prepare --target webgpu for direct decoding)"
        )
    _check_versions(model, st, prov, rep)


def _check_versions(model: Path, st, prov: str, rep: DoctorReport) -> None:
    """The installed runtime against what the folder needs (and a Ryzen AI release's pin)."""
    from .capabilities import base_version, folder_min_oga, installed_runtime, runtime_mismatch

    rt = installed_runtime()
    now = rt.version
    need = folder_min_oga(st.manifest)
    bad = runtime_mismatch(st)
    if bad:
        rep.problems.append(Problem(*bad))
    elif need and now:
        rep.checks.append(f"{model}: needs onnxruntime-genai {need} or newer; {rt.describe()} is installed")
    rai = ((st.manifest or {}).get("stages", {}).get("hybrid", {}).get("detail", {}) or {}).get("rai_version")
    if prov == "ryzenai":
        pin = RAI_OGA_PINS.get(rai or "", None)
        if pin and now and base_version(now) != pin:
            rep.problems.append(
                Problem(
                    f"{model} is a Ryzen AI {rai} model; that release pins onnxruntime-genai {pin}, {now} is installed",
                    f"run it in Ryzen AI {rai}'s conda env (onnxruntime-genai {pin})",
                )
            )
