"""AMD's hybrid and NPU model folders: which kind a folder is, which onnxruntime-genai runs
it, where that runtime finds the library it loads, and what the process needs before OGA
opens it. Read from genai_config.json (and oga-npu's manifest), never from file names alone.

Two forms (AMD's ryzen-ai-documentation, hybrid_oga.rst per release branch):
- Ryzen AI 1.6: no execution provider; `session_options.custom_ops_library` names AMD's
  onnx_custom_ops.dll (relative), loaded by AMD's onnxruntime-genai-directml-ryzenai 0.9.2.x.
  OGA 0.9.2 (src/models/model.cpp) resolves a relative name against the model folder, then
  the working directory, then hands it to the OS library search; Lemonade (fix #530) puts
  `<env>\\Lib\\site-packages\\onnxruntime_genai` on PATH for that search.
- Ryzen AI 1.7+: `provider_options: [{"RyzenAI": {...}}]`. OGA 0.12+ (src/ryzenai/interface.cpp)
  loads the EP library from RYZENAI_EP_PATH, else on Windows beside onnxruntime-genai.dll,
  beside onnxruntime.dll, beside the executable, then the working directory; on Linux
  `$CWD/libonnxruntime_providers_ryzenai.so`.
"Models from earlier releases are not compatible with this version" (hybrid_oga.rst 1.7, 1.8);
"Linux does not support Hybrid flow" (llm_linux.rst 1.8).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path

from . import ryzenai
from .ryzenai import Check

log = logging.getLogger(__name__)

EP_FILE = {"Windows": "onnxruntime_providers_ryzenai.dll", "Linux": "libonnxruntime_providers_ryzenai.so"}
# onnx_custom_ops.dll's own dependencies, which Lemonade (#530) requires beside it.
CUSTOM_OPS_DEPS = ("libutf8_validity.dll", "abseil_dll.dll")
RAI16_OGA = (0, 9, 2)  # AMD's onnxruntime-genai-directml-ryzenai 0.9.2.x (Ryzen AI 1.6 / 1.6.1)
LINUX_16_EDIT = (
    "edit it as AMD's Linux page says (llm_linux.rst, 1.6.1/1.7): custom_ops_library "
    '"deployment/lib/libonnx_custom_ops.so", "hybrid_dbg_use_aie_rope": "0" under config_entries, '
    "and slashes for the backslashes of .cache/MatMulNBits_2_0_meta.json"
)
_dll_dirs: list = []  # os.add_dll_directory handles, kept for the process's life


# ---------------------------------------------------------------- what the folder is


def _session_options(config: dict | None) -> dict:
    return ((config or {}).get("model", {}).get("decoder", {}) or {}).get("session_options", {}) or {}


def ryzenai_options(config: dict | None) -> dict | None:
    """The `RyzenAI` entry of provider_options (None when the folder names no such provider)."""
    for entry in _session_options(config).get("provider_options", []) or []:
        for k, v in entry.items():
            if k.lower() == "ryzenai":
                return v or {}
    return None


def token_backend(config: dict | None) -> str | None:
    """hybrid_opt_token_backend: "gpu" = hybrid, "npu" = NPU-only (config_entries or RyzenAI options)."""
    so = _session_options(config)
    value = (so.get("config_entries") or {}).get("hybrid_opt_token_backend")
    value = value or (ryzenai_options(config) or {}).get("hybrid_opt_token_backend")
    return str(value).lower() if value else None


def folder_form(config: dict | None) -> str | None:
    """ "ep" (1.7+: the RyzenAI provider), "custom_ops" (1.6: AMD's onnx_custom_ops library, no
    provider), or None for a folder that is not AMD's hybrid/NPU form."""
    if ryzenai_options(config) is not None:
        return "ep"
    so = _session_options(config)
    lib = str(so.get("custom_ops_library") or "")
    if "onnx_custom_ops" in lib or so.get("custom_allocator") == "ryzen_mm":
        return "custom_ops"
    return None


def folder_kind(config: dict, manifest: dict | None = None) -> str:
    """hybrid | npu: the token backend the config names, else the manifest's target, else the
    form (a RyzenAI provider without a backend is AMD's hybrid config), else the model file
    (model_jit.onnx and <Name>_jit.onnx are AMD's hybrid files; fusion.onnx its NPU one)."""
    backend = token_backend(config)
    if backend in ("gpu", "npu"):
        return "hybrid" if backend == "gpu" else "npu"
    target = (manifest or {}).get("target")
    if target in ("hybrid", "npu"):
        return target
    if folder_form(config) == "ep":
        return "hybrid"
    name = str(config.get("model", {}).get("decoder", {}).get("filename") or "")
    return "hybrid" if name.endswith("_jit.onnx") else "npu"


# ---------------------------------------------------------------- the runtime


def runtime_family(rt) -> str:
    """What the installed onnxruntime-genai loads: "custom_ops" (AMD's 0.9.2.x), "ep" (AMD's
    0.11.2+, public 0.12+), "none" (public < 0.12: no RyzenAI EP code)."""
    v = ryzenai.vtuple(rt.version or "0")
    if rt.is_ryzenai and v == RAI16_OGA:
        return "custom_ops"
    if (rt.is_ryzenai and v >= (0, 11, 2)) or v >= (0, 12):
        return "ep"
    return "none"


def _made_with(manifest: dict | None) -> str | None:
    stages = (manifest or {}).get("stages") or {}
    return ((stages.get("hybrid") or {}).get("detail") or {}).get("rai_version")


def release_problem(config: dict, manifest: dict | None) -> str | None:
    """Why the installed onnxruntime-genai cannot run this folder's form (None: it can)."""
    from .capabilities import installed_runtime

    rt = installed_runtime()
    family, form = runtime_family(rt), folder_form(config)
    not_compatible = "AMD: models from earlier releases are not compatible with a later release (hybrid_oga.rst)"
    if form == "custom_ops" and family != "custom_ops":
        return (
            f"this is a Ryzen AI 1.6 model (custom_ops_library, no RyzenAI provider): it runs on Ryzen AI "
            f"1.6's onnxruntime-genai-directml-ryzenai 0.9.2.x, not on {rt.describe()}; {not_compatible} "
            "(fix: run it in a Ryzen AI 1.6 env, or download the model's 1.7/1.8 release, "
            "e.g. amd/<name>-onnx-ryzenai-1.7-hybrid)"
        )
    if form == "ep" and family == "custom_ops":
        return (
            f"this is a Ryzen AI 1.7+ model (RyzenAI provider); {rt.describe()} has no RyzenAI provider; "
            f"{not_compatible} (fix: run it in the env of the release that made it)"
        )
    if form == "ep" and family == "none":
        return (
            f"{rt.describe()} has no RyzenAI execution provider (public onnxruntime-genai has it from 0.12; "
            "Ryzen AI 1.7's is AMD's onnxruntime-genai-directml-ryzenai 0.11.2) (fix: run it in the "
            "Ryzen AI conda env, or install onnxruntime-genai 0.12 or newer)"
        )
    made = _made_with(manifest)
    if made and rt.is_ryzenai and rt.releases and ryzenai.release(made).version not in rt.releases:
        return (
            f"this model was made with Ryzen AI {made}; {rt.describe()} is another release's runtime; "
            f"{not_compatible} (fix: run it in the Ryzen AI {made} env, or prepare it again there)"
        )
    return None


# ---------------------------------------------------------------- where the library is


def oga_dirs() -> list[tuple[str, Path]]:
    """Where OGA 0.12+ looks for the EP on Windows before the working directory, in its order:
    beside onnxruntime-genai.dll, beside onnxruntime.dll, beside the executable."""
    out = []
    for label, name, sub in (("onnxruntime-genai", "onnxruntime_genai", ""), ("onnxruntime", "onnxruntime", "capi")):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for loc in (spec.submodule_search_locations or []) if spec else []:
            out.append((label, Path(loc) / sub if sub else Path(loc)))
    out.append(("the Python executable", Path(sys.executable).parent))
    return out


def find_ep(host: str) -> tuple[Path | None, str]:
    """(the EP library OGA would load, where it was found) or (None, where OGA looked)."""
    name = EP_FILE.get(host, EP_FILE["Linux"])
    env = os.environ.get("RYZENAI_EP_PATH")
    if env:
        p = Path(env)
        if p.is_file():
            return p, "RYZENAI_EP_PATH"
        return None, f"RYZENAI_EP_PATH={env} is not a file (onnxruntime-genai loads that path and looks nowhere else)"
    places = [*(oga_dirs() if host == "Windows" else []), ("the working directory", Path.cwd())]
    for label, d in places:
        if (d / name).is_file():
            return d / name, f"beside {label}" if label != "the working directory" else label
    return None, f"{name} is not found: RYZENAI_EP_PATH is not set and it is not in " + ", ".join(
        str(d) for _, d in places
    )


def ep_fix(host: str) -> str:
    if host == "Windows":
        return (
            "install Ryzen AI Software's onnxruntime-genai-directml-ryzenai in this env (the EP lies beside "
            "onnxruntime-genai), or set RYZENAI_EP_PATH to the full path of onnxruntime_providers_ryzenai.dll"
        )
    return (
        "export RYZENAI_EP_PATH=$PWD/deployment/lib/libonnxruntime_providers_ryzenai.so "
        "(AMD's Linux page, llm_linux.rst 1.7.1/1.8), or start oga-npu where that library is"
    )


def _search_dirs(host: str) -> list[tuple[str, Path]]:
    """The library search a bare custom_ops_library name falls to: on Windows the env's
    onnxruntime_genai folder (put on PATH at load, as Lemonade does), the executable's, PATH."""
    if host == "Windows":
        dirs = [d for d in oga_dirs() if d[0] != "onnxruntime"]
        var = os.environ.get("PATH", "")
    else:
        dirs, var = [], os.environ.get("LD_LIBRARY_PATH", "")
    return dirs + [("PATH" if host == "Windows" else "LD_LIBRARY_PATH", Path(e)) for e in var.split(os.pathsep) if e]


def find_custom_ops(config: dict, folder: Path | None, host: str) -> tuple[Path | None, str]:
    """custom_ops_library resolved as OGA 0.9.2 does: absolute as is; relative against the
    model folder, then the working directory; a bare name then through the library search."""
    raw = str(_session_options(config).get("custom_ops_library") or "onnx_custom_ops.dll")
    rel = Path(raw.replace("\\", "/"))
    if rel.is_absolute():
        return (rel, "its absolute path") if rel.is_file() else (None, f"{raw} does not exist")
    places = [("the model folder", folder), ("the working directory", Path.cwd())]
    if len(rel.parts) == 1:
        places += _search_dirs(host)
    for label, d in places:
        if d is not None and (d / rel).is_file():
            return d / rel, label
    where = ", ".join(str(d) for _, d in places if d is not None)
    return None, f"custom_ops_library {raw} is not found (looked in {where})"


def _custom_ops_checks(config: dict, folder: Path | None, host: str) -> list[Check]:
    raw = str(_session_options(config).get("custom_ops_library") or "")
    if host != "Windows" and raw.lower().endswith(".dll"):
        return [Check(False, f"genai_config.json loads {raw}, AMD's Windows library", LINUX_16_EDIT)]
    lib, where = find_custom_ops(config, folder, host)
    if lib is None:
        fix = (
            "run in Ryzen AI 1.6's conda env (its site-packages\\onnxruntime_genai holds onnx_custom_ops.dll), "
            "or give custom_ops_library its absolute path (hybrid_oga.rst 1.6)"
            if host == "Windows"
            else "start oga-npu in the folder holding deployment/ (llm_linux.rst), or make the path absolute"
        )
        return [Check(False, where, fix)]
    out = [Check(True, f"custom ops library {lib} ({where})")]
    if host == "Windows":
        dirs = [lib.parent, *(d for _, d in _search_dirs(host))]
        missing = [n for n in CUSTOM_OPS_DEPS if not any((d / n).is_file() for d in dirs)]
        if missing:
            out.append(
                Check(
                    False,
                    f"{', '.join(missing)} (what {lib.name} loads) not found beside it or on PATH",
                    "repair the Ryzen AI 1.6 install (its onnxruntime_genai folder ships them)",
                )
            )
    return out


def ld_library_check(lib: Path) -> Check:
    """AMD's Linux page puts deployment/lib (the library's folder) on LD_LIBRARY_PATH; the
    loader reads it when the process starts, so it is checked, never set here."""
    d = lib.resolve().parent
    entries = [e for e in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if e]
    if any((Path.cwd() / e).resolve() == d for e in entries):
        return Check(True, f"LD_LIBRARY_PATH holds {d}")
    return Check(
        False,
        f"LD_LIBRARY_PATH does not hold {d}, the folder of {lib.name} and the libraries it loads "
        "(AMD's Linux page: export LD_LIBRARY_PATH=/lib/x86_64-linux-gnu:deployment/lib:$LD_LIBRARY_PATH)",
        f"export LD_LIBRARY_PATH={d}:$LD_LIBRARY_PATH before starting oga-npu",
    )


def library_checks(config: dict | None, folder: Path | None, host: str) -> list[Check]:
    """Whether the library the folder's form loads is where its runtime looks (the EP when
    there is no folder), and on Linux whether its folder is on LD_LIBRARY_PATH."""
    if folder_form(config) == "custom_ops":
        out = _custom_ops_checks(config or {}, folder, host)
        lib = None
        if out[0].ok:
            lib, _ = find_custom_ops(config or {}, folder, host)
    else:
        lib, where = find_ep(host)
        out = [Check(True, f"RyzenAI EP: {lib} ({where})") if lib else Check(False, where, ep_fix(host))]
    if host == "Linux" and lib is not None:
        out.append(ld_library_check(lib))
    return out


# ---------------------------------------------------------------- can it run here


def linux_checks(config: dict | None = None, folder: Path | None = None) -> list[Check]:
    """AMD's Linux NPU setup (XRT, the device, memlock) and the library the folder loads."""
    return [*ryzenai.linux_npu_checks(), *library_checks(config, folder, "Linux")]


def runtime_problem(config: dict, manifest: dict | None, folder: Path | None = None) -> str | None:
    """Why this AMD folder cannot run here (None: it may): a hybrid model on Linux, a runtime
    of another release, the library its runtime loads not where it looks, AMD's Linux setup."""
    host = ryzenai.host_os()
    if host != "Windows" and folder_kind(config, manifest) == "hybrid":
        return (
            f"this is a hybrid (NPU + iGPU) model: AMD's Linux page says 'Linux does not support Hybrid flow' "
            f"(this is {host}) (fix: run it on Windows 11, or use the model's NPU-only release on Linux)"
        )
    why = release_problem(config, manifest)
    if why:
        return why
    checks = linux_checks(config, folder) if host == "Linux" else library_checks(config, folder, host)
    bad = [c for c in checks if not c.ok]
    return "; ".join(f"{c.what} (fix: {c.fix})" for c in bad) or None


def available(config: dict | None = None, folder: Path | None = None, manifest: dict | None = None):
    """provider_available("ryzenai"): for a folder, everything runtime_problem checks; without
    one, whether the installed runtime has the RyzenAI EP and can find its library."""
    from .capabilities import installed_runtime

    if config is not None and folder_form(config) is not None:
        why = runtime_problem(config, manifest, folder)
        return not why, why or ""
    rt = installed_runtime()
    if runtime_family(rt) == "none":
        return False, f"{rt.describe()} has no RyzenAI execution provider (onnxruntime-genai 0.12+ or AMD's)"
    host = ryzenai.host_os()
    if runtime_family(rt) == "custom_ops":
        return True, ""  # Ryzen AI 1.6 loads each folder's custom ops library (checked per folder)
    lib, where = find_ep(host)
    return (True, "") if lib else (False, f"the RyzenAI execution provider: {where} (fix: {ep_fix(host)})")


def doctor_checks(model_config: dict | None = None, folder: Path | None = None) -> list[Check]:
    """Linux NPU checks for `doctor`: run where an NPU, XRT or the RyzenAI EP is there or an
    AMD folder is being checked; elsewhere one line says they were skipped."""
    from .devices import find_npus

    if ryzenai.host_os() != "Linux":
        return []
    npus = find_npus()
    amd = folder_form(model_config) is not None
    if not (npus or amd or os.environ.get("XILINX_XRT") or os.environ.get("RYZENAI_EP_PATH")):
        return [Check(True, "no Ryzen AI NPU here: the Linux NPU checks (XRT, /dev/accel/accel0, memlock) are skipped")]
    checks = linux_checks(model_config if amd else None, folder)
    if npus and not any(n.supports_hybrid for n in npus):
        checks.append(
            Check(
                False,
                f"the NPU is {npus[0].name}: Ryzen AI LLMs need Strix or Krackan",
                "run NPU models on a Strix/Krackan PC",
            )
        )
    return checks


# ---------------------------------------------------------------- before OGA opens it


def prepare_process(config: dict, manifest: dict | None, folder: Path) -> None:
    """What the process needs before onnxruntime-genai creates the model: DD_PLUGINS_ROOT for a
    compiled-op model (kept when the user set it), and on Windows the env's onnxruntime_genai
    folder on the DLL search path when a 1.6 folder's custom ops library is found there."""
    root = ryzenai.plugins_root(manifest)
    if root is not None:
        if os.environ.get("DD_PLUGINS_ROOT"):
            log.debug(
                "DD_PLUGINS_ROOT=%s kept (set by the user; the model's plugins are in %s)",
                os.environ["DD_PLUGINS_ROOT"],
                root,
            )
        else:
            os.environ["DD_PLUGINS_ROOT"] = str(root)
            log.debug("DD_PLUGINS_ROOT=%s set for this process (the model's compiled-op plugins)", root)
    if folder_form(config) != "custom_ops" or ryzenai.host_os() != "Windows":
        return
    lib, where = find_custom_ops(config, folder, "Windows")
    if lib is None or where != "onnxruntime-genai":
        return
    path = os.environ.get("PATH", "")
    if str(lib.parent) not in path.split(os.pathsep):
        os.environ["PATH"] = str(lib.parent) + os.pathsep + path
        log.debug("%s put first on PATH for %s (as Lemonade does for Ryzen AI 1.6)", lib.parent, lib.name)
    if hasattr(os, "add_dll_directory"):
        _dll_dirs.append(os.add_dll_directory(str(lib.parent)))
