"""The Ryzen AI release environment: finding it, describing it, and what each release needs.

oga-npu runs in its own environment (Quark, torch, transformers 5, the public
onnxruntime-genai). AMD's stages run in the release's environment (the `ryzen-ai-X.Y.Z`
conda env its installer makes, or the venv of `install_ryzen_ai.sh` on Linux): its Python
runs its onnxruntime-genai builder for `-e dml`, and its `onnx_utils`, `model_generate` and
`model_benchmark` run with its folders first on PATH. Found, in order: `--rai-env PATH`,
the active conda env (CONDA_PREFIX, when its name is `ryzen-ai-*` or it holds AMD's
onnxruntime-genai), RYZEN_AI_INSTALLATION_PATH when it holds a Python. The release comes
from `--rai-version`, the env's name, its `model-generate` package, or the onnxruntime-genai
version AMD pins per release. Nothing here starts a process: the env is read from its files.

Linux (Ryzen AI 1.8): NPU-only models run through the RyzenAI EP once XRT is set up, the
amdxdna driver's /dev/accel/accel0 is there and the memlock limit is raised (linux_npu_checks;
which folder runs where, and the library it loads: oga_npu.ryzenai_folders);
`model_generate` does not run on Linux, so models are made on Windows.
OGA_NPU_HOST_OS (a test hook, like OGA_NPU_SYSFS_ROOT) overrides the host OS name.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .errors import PreflightError
from .ryzenai_releases import RELEASES, Release, release, vtuple

DEFAULT_RELEASE_HINT = "ryzen-ai-1.8.0"
# AMD's onnxruntime-genai first: the distribution whose builder and runtime a release uses.
OGA_DISTRIBUTIONS = (
    "onnxruntime-genai-directml-ryzenai",
    "onnxruntime-genai-directml",
    "onnxruntime-genai",
    "onnxruntime-genai-cuda",
)
ENV_FIX = (
    f"install Ryzen AI Software 1.6+ (Windows 11) and pass its conda env folder with --rai-env "
    f"(e.g. %USERPROFILE%\\miniforge3\\envs\\{DEFAULT_RELEASE_HINT}), or run `conda activate "
    f"{DEFAULT_RELEASE_HINT}` before oga-npu"
)
RELEASE_RE = re.compile(r"ryzen[-_ ]?ai[-_ \\/]*(?:software[-_ \\/]*)?(\d+\.\d+(?:\.\d+)?)", re.I)


# onnxruntime-genai 0.18 renamed the builder's int4_* options; 0.14 and older know only the old names.
OLD_BUILDER_NAMES = {
    "accuracy_level": "int4_accuracy_level",
    "block_size": "int4_block_size",
    "is_symmetric": "int4_is_symmetric",
    "op_types_to_quantize": "int4_op_types_to_quantize",
    "nodes_to_exclude": "int4_nodes_to_exclude",
    "algo_config": "int4_algo_config",
}
RENAMED_IN = (0, 18)
# Builder options and the first onnxruntime-genai that knows them.
BUILDER_OPTION_SINCE = {"windowed_kv_cache": (0, 18), "enable_dml_graph": (0, 18), "prune_lm_head": (0, 14)}


def host_os() -> str:
    return os.environ.get("OGA_NPU_HOST_OS") or platform.system()


# ---------------------------------------------------------------- the environment


def _site_packages(prefix: Path) -> list[Path]:
    return [
        p for p in [prefix / "Lib" / "site-packages", *sorted(prefix.glob("lib/python3*/site-packages"))] if p.is_dir()
    ]


def installed_distributions(prefix: Path) -> dict[str, str]:
    """name -> version of the packages in an environment, from its *.dist-info folders."""
    out = {}
    for sp in _site_packages(prefix):
        for d in sp.glob("*.dist-info"):
            name, _, version = d.name[: -len(".dist-info")].partition("-")
            if version:
                out[name.lower().replace("_", "-")] = version
    return out


def _python_in(prefix: Path) -> Path | None:
    for rel in ("python.exe", "bin/python", "bin/python3", "Scripts/python.exe"):
        p = prefix / rel
        if p.is_file():
            return p
    return None


@dataclass(frozen=True)
class RaiEnv:
    prefix: Path
    release: Release
    source: str  # how the env was found
    release_source: str  # how its release was told
    python: Path | None
    packages: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def oga(self) -> tuple[str, str] | None:
        """(distribution, version) of the onnxruntime-genai in the env (AMD's first)."""
        return next(((d, self.packages[d]) for d in OGA_DISTRIBUTIONS if d in self.packages), None)

    @property
    def builder_id(self) -> str:
        oga = self.oga
        return f"{oga[0]} {oga[1]}" if oga else "none"

    def path_dirs(self) -> list[Path]:
        """The folders conda activation puts first on PATH (Windows and POSIX layouts)."""
        rels = ("", "Library/mingw-w64/bin", "Library/usr/bin", "Library/bin", "Scripts", "bin")
        return [self.prefix / r if r else self.prefix for r in rels if (self.prefix / r).is_dir()]

    def tool(self, name: str) -> str | None:
        dirs = [d for d in self.path_dirs() if d != self.prefix] + [self.prefix]
        return shutil.which(name, path=os.pathsep.join(map(str, dirs)))

    def child_env(self, base: dict[str, str]) -> dict[str, str]:
        """The environment of a process that runs in this env: its folders first on PATH, and
        nothing of oga-npu's own Python (PYTHONPATH, PYTHONHOME, VIRTUAL_ENV)."""
        env = {k: v for k, v in base.items() if k.upper() not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        path_key = next((k for k in env if k.upper() == "PATH"), "PATH")
        env[path_key] = os.pathsep.join([*map(str, self.path_dirs()), env.get(path_key, "")]).rstrip(os.pathsep)
        env["CONDA_PREFIX"] = str(self.prefix)
        env["CONDA_DEFAULT_ENV"] = self.prefix.name
        return env

    def builder_options(self, options: dict) -> tuple[dict, list[str]]:
        """The builder options in the names this env's onnxruntime-genai knows, and the ones
        it does not know at all (left out)."""
        oga = vtuple(self.oga[1]) if self.oga else vtuple(self.release.oga)
        new_names = oga >= RENAMED_IN
        to_new = {v: k for k, v in OLD_BUILDER_NAMES.items()}
        out, dropped = {}, []
        for k, v in options.items():
            name = to_new.get(k, k) if new_names else OLD_BUILDER_NAMES.get(k, k)
            since = BUILDER_OPTION_SINCE.get(to_new.get(k, k))
            if since and oga < since:
                dropped.append(k)
                continue
            out[name] = v
        return out, dropped

    def builder_argv(self, args: list[str], options: dict) -> tuple[list[str], list[str]]:
        """`<env python> -m onnxruntime_genai.models.builder ARGS [--extra_options K=V ...]`."""
        from .tools import python_module_argv

        opts, dropped = self.builder_options(options)
        argv = python_module_argv("onnxruntime_genai.models.builder", *args, python=str(self.python))
        if opts:
            argv.append("--extra_options")
            argv += [f"{k}={_opt(v)}" for k, v in sorted(opts.items())]
        return argv, dropped

    def build_detail(self, options: dict, fixes: list[str]) -> dict:
        """What the -e dml build in this env does differently from oga-npu's: its builder, the
        options it does not know (left out), our config fixes for the 0.18 builder (not applied)."""
        _, dropped = self.builder_options(options)
        d = {"builder": self.builder_id, "rai_env": str(self.prefix), "python": str(self.python)}
        if dropped:
            d["options_left_out"] = dropped
        if fixes:
            d["config_fixes_not_applied"] = list(fixes)
        return d

    def build_lines(self, options: dict, fixes: list[str]) -> list[str]:
        d = self.build_detail(options, fixes)
        lines = [f"in {self.describe()}"]
        if d.get("options_left_out"):
            lines.append(f"builder options {d['options_left_out']} left out: {d['builder']} does not know them")
        if d.get("config_fixes_not_applied"):
            lines.append(f"config fixes {d['config_fixes_not_applied']} (for the 0.18 builder) are not applied there")
        return lines

    def describe(self) -> str:
        return (
            f"Ryzen AI {self.release.version} env {self.prefix} ({self.source}; release from "
            f"{self.release_source}; builder {self.builder_id})"
        )

    def builder_needs(self) -> list[str]:
        """The builder's own imports that the env lacks (torch, and onnx_ir: builder.py imports it
        at line 21 in 0.9.2 and 0.11.2, 18 in 0.14.0, and no wheel declares it): a fresh 1.6/1.7 env
        has neither (AMD's oga_model_prepare.rst 1.6 and 1.7: `pip install onnx_ir`,
        `pip install torch==2.7.1` in the env before the build)."""
        need = [("torch", "torch==2.7.1"), ("onnx-ir", "onnx_ir")]
        missing = [pin for dist, pin in need if dist not in self.packages]
        if not missing:
            return []
        return [
            f"the builder in {self.prefix} needs {' and '.join(m.split('==')[0] for m in missing)}, which this env "
            f"lacks (AMD's prepare page: in the env, pip install {' '.join(missing)})"
        ]

    def problems(self, tools: list[str], builder: bool) -> list[str]:
        """What this env lacks for the given tools and the -e dml build."""
        out = []
        if builder:
            if self.python is None:
                out.append(f"no Python in {self.prefix} (python.exe or bin/python)")
            if self.oga is None:
                out.append(
                    f"no onnxruntime-genai in {self.prefix} (AMD's onnxruntime-genai-directml-ryzenai "
                    "holds the builder)"
                )
            elif self.packages:
                out += self.builder_needs()
        for t in tools:
            if self.tool(t) is None:
                out.append(f"{t} not found in {self.prefix} (Scripts/, bin/)")
        return out

    def to_dict(self) -> dict:
        return {
            "prefix": str(self.prefix),
            "release": self.release.version,
            "source": self.source,
            "release_source": self.release_source,
            "python": str(self.python) if self.python else None,
            "onnxruntime_genai": self.builder_id,
        }


def _opt(v) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


def _candidates(explicit: Path | None) -> list[tuple[Path, str]]:
    if explicit is not None:
        return [(Path(explicit).expanduser(), "--rai-env")]
    out = []
    conda = os.environ.get("CONDA_PREFIX")
    if conda:
        name = os.environ.get("CONDA_DEFAULT_ENV") or Path(conda).name
        amd = "onnxruntime-genai-directml-ryzenai" in installed_distributions(Path(conda))
        if RELEASE_RE.search(name) or RELEASE_RE.search(Path(conda).name) or amd:
            out.append((Path(conda), f"conda env {name} (CONDA_PREFIX)"))
    rai = os.environ.get("RYZEN_AI_INSTALLATION_PATH")
    if rai and _python_in(Path(rai)) is not None:
        out.append((Path(rai), "RYZEN_AI_INSTALLATION_PATH"))
    return out


def _release_of(prefix: Path, packages: dict, explicit: str | None) -> tuple[Release, str]:
    if explicit:
        return release(explicit), "--rai-version"
    for text in (
        prefix.name,
        os.environ.get("CONDA_DEFAULT_ENV", "") if str(prefix) == os.environ.get("CONDA_PREFIX") else "",
        str(prefix),
    ):
        m = RELEASE_RE.search(text)
        if m:
            return release(m.group(1)), f"the env's name ({m.group(0)})"
    if "model-generate" in packages:
        return release(packages["model-generate"]), f"model-generate {packages['model-generate']}"
    amd = packages.get("onnxruntime-genai-directml-ryzenai")
    if amd:
        matches = [r for r in RELEASES.values() if vtuple(r.oga) == vtuple(amd)]  # AMD's 0.9.2.1 is 0.9.2
        if len(matches) == 1:
            return matches[0], f"onnxruntime-genai-directml-ryzenai {amd}"
        if matches:
            raise PreflightError(
                f"{prefix} holds onnxruntime-genai-directml-ryzenai {amd}, which Ryzen AI "
                f"{' and '.join(r.version for r in matches)} both pin",
                f"pass --rai-version {' or '.join(r.version for r in matches)}",
            )
    rai = os.environ.get("RYZEN_AI_INSTALLATION_PATH", "")
    m = RELEASE_RE.search(rai) or re.search(r"(\d+\.\d+(?:\.\d+)?)[\\/]*$", rai)
    if rai and m:
        return release(m.group(1)), "RYZEN_AI_INSTALLATION_PATH"
    raise PreflightError(
        f"cannot tell which Ryzen AI release {prefix} is (not in its name, no model-generate or "
        "AMD onnxruntime-genai package)",
        "pass --rai-version 1.6, 1.7, 1.7.1 or 1.8",
    )


def find_env(explicit: Path | None = None, rai_version: str | None = None) -> RaiEnv | None:
    """The Ryzen AI env (None when there is none); PreflightError when --rai-env is not one."""
    for prefix, source in _candidates(explicit):
        if not prefix.is_dir():
            raise PreflightError(f"--rai-env {prefix} is not a folder", ENV_FIX)
        packages = installed_distributions(prefix)
        rel, rel_source = _release_of(prefix, packages, rai_version)
        notes = ()
        if vtuple(rel.version) > max(vtuple(v) for v in RELEASES):
            notes = (f"Ryzen AI {rel.version} is newer than the releases oga-npu knows (1.6-1.8): using 1.8's forms",)
        return RaiEnv(prefix.resolve(), rel, source, rel_source, _python_in(prefix.resolve()), packages, notes)
    return None


def not_found_message() -> str:
    rai = os.environ.get("RYZEN_AI_INSTALLATION_PATH")
    where = f"RYZEN_AI_INSTALLATION_PATH={rai} holds no Python" if rai else "RYZEN_AI_INSTALLATION_PATH is not set"
    return f"no Ryzen AI environment found (no --rai-env, no active ryzen-ai-X.Y.Z conda env, {where})"


def require_env(target: str, explicit: Path | None, rai_version: str | None, tools: list[str], builder: bool) -> RaiEnv:
    """The env for a Ryzen AI target, checked for the tools and builder it needs; else one
    PreflightError naming what is missing and the fix (raised before anything is written)."""
    env = find_env(explicit, rai_version)
    if env is None:
        raise PreflightError(
            f"--target {target} runs AMD's tools in the Ryzen AI release's environment: " + not_found_message(), ENV_FIX
        )
    missing = env.problems(tools, builder)
    if missing:
        raise PreflightError(
            f"the Ryzen AI {env.release.version} env {env.prefix} cannot run --target {target}: " + "; ".join(missing),
            f"repair it with AMD's installer (Ryzen AI Software {env.release.version}), or pass "
            "--rai-env with a complete one",
        )
    return env


def check_host(target: str) -> None:
    """model_generate runs on Windows only: a hybrid or NPU model is made there."""
    if target not in ("hybrid", "npu") or host_os() == "Windows":
        return
    if target == "npu":
        raise PreflightError(
            f"--target npu needs model_generate, which runs only on Windows (this is {host_os()}); "
            "Ryzen AI 1.8 runs NPU models on Linux but does not make them",
            "prepare it on a Windows 11 PC with Ryzen AI 1.8 (oga-npu prepare MODEL --target npu), "
            "copy the folder here, then oga-npu run -m FOLDER (nothing was written)",
        )
    raise PreflightError(
        f"--target hybrid needs model_generate, which runs only on Windows (this is {host_os()}); "
        "hybrid models also run on Windows 11 only",
        "prepare and run it on a Windows 11 PC with Ryzen AI Software (nothing was written)",
    )


# ---------------------------------------------------------------- Linux NPU runtime (Ryzen AI 1.8)

XRT_ROOT = Path("/opt/xilinx/xrt")
ACCEL_NODE = "dev/accel/accel0"


@dataclass
class Check:
    ok: bool
    what: str
    fix: str = ""


def _accel_node() -> Path:
    from .devices import sysfs_root

    return sysfs_root() / ACCEL_NODE


def memlock_limit() -> int | None:
    """The soft RLIMIT_MEMLOCK in bytes (-1 = unlimited); None where there is no such limit."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    return -1 if soft == resource.RLIM_INFINITY else soft


def linux_npu_checks() -> list[Check]:
    """What AMD's Linux page (Ryzen AI 1.8) needs before an NPU model runs, each with its fix
    (the library the folder loads: oga_npu.ryzenai_folders.library_checks)."""
    out = []
    xrt = os.environ.get("XILINX_XRT")
    setup = XRT_ROOT / "setup.sh"
    if xrt and Path(xrt).is_dir():
        out.append(Check(True, f"XRT set up (XILINX_XRT={xrt})"))
    elif setup.is_file():
        out.append(
            Check(False, "XRT is installed but not set up in this shell (XILINX_XRT is not set)", f"source {setup}")
        )
    else:
        out.append(
            Check(
                False,
                f"XRT is not installed ({setup} is missing)",
                "install Ryzen AI 1.8 for Linux (install_ryzen_ai.sh), then source /opt/xilinx/xrt/setup.sh",
            )
        )
    node = _accel_node()
    if node.exists():
        out.append(Check(True, f"NPU device {node} (amdxdna)"))
    else:
        out.append(
            Check(
                False,
                f"no NPU device {node}: the amdxdna driver is not loaded",
                "install the amdxdna driver from Ryzen AI 1.8 for Linux (a Strix/Krackan NPU and a "
                "supported kernel), then reboot or `sudo modprobe amdxdna`",
            )
        )
    lim = memlock_limit()
    if lim == -1:
        out.append(Check(True, "memlock limit: unlimited"))
    elif lim is not None:
        out.append(
            Check(
                False,
                f"memlock limit is {lim // 1024} KiB; the NPU runtime needs it unlimited",
                "ulimit -l unlimited in this shell (or `* - memlock unlimited` in "
                "/etc/security/limits.conf, then log in again)",
            )
        )
    return out


def plugins_root(manifest: dict | None) -> Path | None:
    """Where a compiled-op model's operator plugins are (the plugins stage's dd_plugins folder,
    recorded in the manifest), for DD_PLUGINS_ROOT wherever the model runs; None when the
    model was prepared without the op-compile flow or the folder is gone."""
    detail = (((manifest or {}).get("stages") or {}).get("plugins") or {}).get("detail") or {}
    root = detail.get("dd_plugins_root")
    return Path(root) if isinstance(root, str) and Path(root).is_dir() else None
