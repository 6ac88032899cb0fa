"""Preflight: what prepare checks before anything long runs or anything is written.

Package versions, the architecture table, the recipe's group size against the model, the
Ryzen AI env and release, the vendor tools and the NPU, the output folder's state, disk space.
Each raises the oga_npu.errors error a user sees (a dry run notes some instead).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from ..devices import detect_rai_version
from ..errors import DiskFullError, OutputExistsError, PreflightError, RecipeError, VersionError
from ..gguf.header import gguf_header
from ..recipe import AMD_TARGETS, Recipe, fitting_group_size
from ..versions import REQUIRED_VERSIONS
from . import source as source_mod

log = logging.getLogger(__name__)

DISK_FACTOR = 3.0  # quantized copy + ONNX weights + headroom, times the source weights
GGUF_CACHE_FACTOR = 1.1  # the fp32 safetensors a GGUF is dequantized to, plus tokenizer and headroom


def check_versions(versions: dict, needs_quark: bool = True) -> None:
    from packaging.version import Version

    bad = []
    for name, (lo, hi) in REQUIRED_VERSIONS.items():
        if name == "amd-quark" and not needs_quark:
            continue
        found = versions.get(name)
        if found is None:
            bad.append(f"{name}: expected >={lo},<{hi}, found none")
        elif not (Version(lo) <= Version(found) < Version(hi)):
            bad.append(f"{name}: expected >={lo},<{hi}, found {found}")
    if bad:
        raise VersionError(
            "wrong package versions for prepare: " + "; ".join(bad),
            'pip install -e ".[cpu,prepare]" in a fresh virtual environment (see README; prepare '
            "builds with onnxruntime-genai 0.18, --oga-version picks the runtime the folder is for)",
        )


def effective_recipe(recipe: Recipe, hf_dir: Path | None, notes: list[str]) -> Recipe:
    """Apply the group-size fallback when the model's layer widths are known."""
    if recipe.quantize.engine != "quark" or hf_dir is None or not (hf_dir / "config.json").is_file():
        return recipe
    from .quantize import layer_input_widths

    cfg = json.loads((hf_dir / "config.json").read_text())
    widths = layer_input_widths(cfg)
    g = recipe.quantize.group_size
    fit = fitting_group_size(g, widths)
    if fit is None:
        raise RecipeError(
            f"no Quark group size (128/64/32) divides this model's layer widths {widths}",
            "use a recipe with algorithm = 'none' and a builder-side int4 (or another model)",
        )
    if fit != g:
        notes.append(
            f"group size {g} does not divide this model's layer widths {sorted(set(widths))}; using {fit} instead"
        )
        return recipe.with_group_size(fit)
    return recipe


def check_architecture(config: dict | None, recipe: Recipe, target: str, notes: list[str]) -> bool:
    """Refuse (ArchitectureError) what oga_npu.architectures marks as refused. Returns whether
    the config was known (False: check again once the source is resolved)."""
    from ..architectures import UNTESTED, check, runtime_needs

    if config is None:
        return False
    arch, cell = check(config, recipe, target)
    if target in AMD_TARGETS:  # AMD's builder (0.9.2-0.14.0) reads the quantized folder
        from .builder_compat import refusal

        err = refusal(config)
        if err is not None:
            raise err
    if cell.status == UNTESTED:
        notes.append(
            f"{arch.hf_architectures[0]} with recipe {recipe.name} for {target} is not verified here ({cell.how})"
        )
    needs = runtime_needs(config)
    if needs.sliding_window:
        log.info("sliding window %s on %s layers", needs.sliding_window, needs.sliding_layers)
    return True


def read_config(hf_dir: Path) -> dict | None:
    p = hf_dir / "config.json"
    return json.loads(p.read_text()) if p.is_file() else None


def ryzen_ai_env(req, stages, notes: list[str]):
    """(RaiEnv or None, release, where the release came from) for the target. hybrid/npu need
    the env (checked here, before anything is written; a dry run notes what is missing); dml
    uses it when there is one, else oga-npu's own builder."""
    from .. import ryzenai

    if req.target not in ("hybrid", "npu", "dml"):
        return None, "1.6", "not a Ryzen AI target"
    if req.target == "dml":
        env = ryzenai.find_env(req.rai_env, req.rai_version)
        missing = env.problems([], builder=True) if env is not None else []
        if missing and not req.dry_run:
            raise PreflightError(
                f"the Ryzen AI {env.release.version} env {env.prefix} cannot build --target dml: " + "; ".join(missing),
                "repair it with AMD's installer, pass --rai-env with a complete "
                "one, or leave the env (deactivate it) to build with oga-npu's own builder",
            )
    else:  # the host first (model_generate runs on Windows only), then the env; a dry run notes both
        env = None
        tools = [s.TOOL for s in stages if hasattr(s, "TOOL")]
        for check in (
            lambda: ryzenai.check_host(req.target),
            lambda: ryzenai.require_env(
                req.target, req.rai_env, req.rai_version, tools, any(s.NAME == "build" for s in stages)
            ),
        ):
            try:
                env = check() or env
            except PreflightError as e:
                if not req.dry_run:
                    raise
                notes.append(f"the real run would stop here: {e.message}")
    if env is None:
        version, source = detect_rai_version(req.rai_version)
        return None, ryzenai.release(version).version if req.rai_version else version, source
    notes.extend(env.notes)
    return env, env.release.version, f"{env.release_source}; {env.source}"


def preflight(target: str, stages, skip_device_check: bool = False, rai_env=None) -> tuple[dict, dict]:
    """Find every vendor tool the target needs (in the Ryzen AI env) and check the device,
    before any long step.

    Returns (tool paths, tool versions); raises PreflightError listing every missing piece."""
    from ..devices import INSTALL_HINT, find_npus, find_rai_tool, tool_version

    need = [t for s in stages for t in ([s.TOOL] if hasattr(s, "TOOL") else [])]
    problems, tools, versions = [], {}, {}
    for t in dict.fromkeys(need):
        path = rai_env.tool(t) if rai_env is not None else find_rai_tool(t)
        if path is None:
            problems.append(f"{t} not found (PATH, RYZEN_AI_INSTALLATION_PATH, conda env): {INSTALL_HINT}")
        else:
            tools[t] = path
            versions[t] = tool_version(path)
    if target in ("hybrid", "npu") and not skip_device_check:
        npus = find_npus()
        if not npus:
            problems.append("no Ryzen AI NPU found (PCI 1022:17F0); pass --skip-device-check on a build machine")
        elif target == "hybrid" and not any(n.supports_hybrid for n in npus):
            n = npus[0]
            problems.append(
                f"the NPU is {n.name} (PCI {n.pci_id}, rev 0x{n.revision:02x}): OGA hybrid models need "
                "Strix or Krackan; Phoenix/Hawk Point are not supported for OGA LLMs"
            )
    if problems:
        raise PreflightError(
            f"--target {target} cannot run here:\n  - " + "\n  - ".join(problems),
            "install what is missing (nothing was written)",
        )
    return tools, versions


def check_output(request, state) -> None:
    """The output folder (a workdir.FolderState) may be written: free, or this source's model."""
    out = request.output
    held = request.held_source(state)
    if held is not None and not request.req.force:
        raise OutputExistsError(f"{out} holds another model (prepared from {held})", request.another_source_fix())
    if state.state == "damaged" and not request.req.force:
        # Published files are hard links into stages/: in-place damage reached them too.
        raise OutputExistsError(
            f"{out} was changed since prepare ({state.detail})", "pass --force to rebuild it from the source"
        )
    if state.state == "foreign":
        raise OutputExistsError(
            f"{out} exists and is not an oga-npu model folder ({state.detail})",
            "pass --output with a new folder, or remove it",
        )


def is_disk_full(e: BaseException) -> bool:
    """ENOSPC from Python, or a tool/library that died of it (its message or stderr tail says so)."""
    import errno

    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    text = " ".join(getattr(e, "tail", []) or []) + " " + str(e)
    return any(
        m in text
        for m in (
            "No space left on device",
            "ENOSPC",
            "StorageFull",
            "os error 28",
            "There is not enough space on the disk",
        )
    )


def _free_bytes(path: Path) -> tuple[Path, int]:
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    return probe, shutil.disk_usage(probe).free


def gguf_fp32_bytes(gguf: Path) -> int:
    """Size of the fp32 weights a GGUF dequantizes to, from the tensor shapes in its header."""
    try:
        return gguf_header(gguf)[1] * 4
    except (OSError, ValueError):  # unreadable: assume 4-bit weights -> fp32
        return gguf.stat().st_size * 8


def check_disk_up_front(src, out: Path) -> None:
    """Before any long step: the GGUF cache ($OGA_NPU_HOME) and the output against estimates."""
    if src.kind != "gguf":
        return
    gguf = Path(src.spec).expanduser().resolve()
    cache = source_mod.gguf_cache_of(src.spec)
    weights = gguf_fp32_bytes(gguf)
    needs = {}
    if not source_mod.is_converted(cache):
        needs["the GGUF cache"] = (cache, int(weights * GGUF_CACHE_FACTOR))
    needs["the output"] = (out, int(weights * DISK_FACTOR))
    _require_space(needs)


def _require_space(needs: dict[str, tuple[Path, int]]) -> None:
    """needs: what -> (path, bytes). Needs on one file system add up."""
    by_dev: dict = {}
    for what, (path, need) in needs.items():
        probe, free = _free_bytes(path)
        key = probe.stat().st_dev
        entry = by_dev.setdefault(key, [probe, free, 0, []])
        entry[2] += need
        entry[3].append(f"{what} {path}")
    for probe, free, need, whats in by_dev.values():
        if need and free < need:
            hint = " (set OGA_NPU_HOME to a cache on another disk)" if any("GGUF cache" in w for w in whats) else ""
            raise DiskFullError(
                f"not enough disk space for {' and '.join(whats)}: about {need / 1e9:.1f} GB needed "
                f"in {probe}, {free / 1e9:.1f} GB free",
                f"free some space, or pass --output on another disk{hint}",
            )


def check_disk(hf_dir: Path, out: Path) -> None:
    weights = sum(p.stat().st_size for p in hf_dir.glob("*.safetensors"))
    _require_space({"the output": (out, int(weights * DISK_FACTOR))})
