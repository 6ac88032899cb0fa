"""`prepare`: source -> stages (oga_npu.prepare.STAGES) -> published model folder.

Each stage runs in `stages/<name>.partial/` and is renamed into place with a done.json
marker holding its key (its inputs: the upstream key plus its own config), the tool
versions and the seconds it took. A re-run skips stages whose key matches. The model
folder's manifest is removed before anything changes and written last, so a folder
interrupted at any point is never taken for a ready one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import tools as tools_mod
from ._version import __version__
from .devices import detect_rai_version
from .errors import (
    DiskFullError,
    OutputExistsError,
    PreflightError,
    RecipeError,
    StageInterrupted,
    ToolFailed,
    VersionError,
)
from .gguf.header import gguf_header
from .prepare import STAGES
from .prepare import source as source_mod
from .recipe import (
    DEFAULT_RECIPE,
    GGUF_NATIVE_TARGETS,
    TARGETS,
    Recipe,
    default_recipe_for,
    fitting_group_size,
    load_recipe,
)
from .tools import network_env, tool_env
from .versions import REQUIRED_VERSIONS, installed_versions
from .workdir import (
    LOGS_DIR,
    REQUEST,
    begin_stage,
    finish_stage,
    folder_state,
    models_dir,
    partial_dir,
    prepare_lock,
    publish,
    stage_dir,
    stage_done,
    unpublish,
    write_json_atomic,
)

log = logging.getLogger(__name__)

DISK_FACTOR = 3.0  # quantized copy + ONNX weights + headroom, times the source weights
GGUF_CACHE_FACTOR = 1.1  # the fp32 safetensors a GGUF is dequantized to, plus tokenizer and headroom


@dataclass(frozen=True)
class PrepareRequest:
    source: str
    target: str = "cpu"
    recipe: str | None = None  # None: default_recipe_for(source kind, target)
    output: Path | None = None
    force: bool = False
    from_stage: str | None = None
    dry_run: bool = False
    calib_file: Path | None = None
    trace: bool = False
    rai_version: str | None = None
    dd_plugins: Path | None = None
    skip_device_check: bool = False
    rai_env: Path | None = None  # the Ryzen AI release's env (oga_npu.ryzenai finds one otherwise)
    oga_version: str | None = None  # the onnxruntime-genai the folder is for (None: capabilities.target_oga_version)


@dataclass(frozen=True)
class StageContext:
    """What stages read: typed, frozen, no shared mutable state."""

    target: str
    recipe: Recipe
    output: Path
    calib_text: str
    calib_key: str
    versions: dict
    trace: bool = False
    env_extra: dict = field(default_factory=dict)
    rai_version: str = "1.6"
    rai_source: str = "default"
    dd_plugins: Path = Path("dd_plugins")
    tools: dict = field(default_factory=dict)  # name -> resolved path
    tool_versions: dict = field(default_factory=dict)  # name -> version string
    rai_env: object | None = None  # oga_npu.ryzenai.RaiEnv: where AMD's stages run
    oga_version: str = ""  # the onnxruntime-genai the folder is built to run on ("": the newest)

    def tool_path(self, name: str) -> str:
        return self.tools.get(name) or name

    def collect_traces(self, stage_out: Path, stage: str) -> list[str]:
        """Copy tool logs (and with --trace, trace files) from a stage folder into logs/<stage>/."""
        dest = self.output / LOGS_DIR / stage
        kept = []
        for f in sorted(stage_out.rglob("*")):
            if not f.is_file() or f.name == "done.json":
                continue
            is_trace = "trace" in f.name.lower() and f.suffix != ".zip"
            if f.suffix == ".log" or is_trace:
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, dest / f.name)
                kept.append(f.name)
                if is_trace:  # traces are not part of the model
                    f.unlink()
        return kept

    def tool_env(self, **extra: str) -> dict[str, str]:
        # Child Python tools flush line by line, so the stage log follows them live.
        env = {"PYTHONUNBUFFERED": "1", **network_env(), **self.env_extra}
        if self.trace:
            env["DD_PLUGINS_TRACING"] = "1"
        env.update(extra)
        return tool_env(env)

    def rai_tool_env(self, **extra: str) -> dict[str, str]:
        """tool_env for a program of the Ryzen AI env (its folders first, no oga-npu Python)."""
        env = self.tool_env(**extra)
        return self.rai_env.child_env(env) if self.rai_env is not None else env


@dataclass
class StageReport:
    name: str
    status: str  # done | skipped (already done) | planned
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)


@dataclass
class PrepareResult:
    output: Path
    stages: list[StageReport]
    manifest: dict | None = None
    plan: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


Progress = Callable[[str, str, int, int, str], None]  # (event, stage, index, total, message)


def _noop(*_a) -> None:
    pass


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


def default_output(source: source_mod.Source, target: str, recipe: str = DEFAULT_RECIPE) -> Path:
    """<store>/<name>-<target>, plus -<recipe> when it is not the source's default recipe
    (gguf-native for a .gguf on cpu/webgpu, else default), so a second recipe never
    collides with a folder made by the first. A GGUF's name keeps its quantization
    (<name>-q4_1-cpu), and a folder holding another source's model is passed over
    (<name>-<target>-2, ...): two sources never share a default folder."""
    from .store import ModelStore, source_base_name

    tail = (
        ""
        if recipe in ("", default_recipe_for(source.kind, target))
        else "-" + re.sub(r"[^\w.-]+", "-", Path(recipe).stem).lower()
    )
    base = source_base_name(source.kind, source.spec, source.name)
    return ModelStore(models_dir()).default_folder(f"{base}-{target}{tail}", source.spec)


def another_source(state, source: str) -> str | None:
    """The source an oga-npu folder holds when it is not `source` (None: free, or the same)."""
    from .store import held_source, norm_source

    if state.state not in ("ready", "incomplete", "damaged"):
        return None
    held = held_source(state.path)
    return held if held is not None and norm_source(held) != norm_source(source) else None


def another_source_fix(out: Path, src: source_mod.Source, target: str, recipe: str) -> str:
    """Never --force: that would destroy the other model."""
    from .store import ModelStore

    free = default_output(src, target, recipe)
    rm = f"oga-npu rm {out.name}" if ModelStore().inside(out) else f"oga-npu rm --outside-store {out}"
    return (
        f"pass --output with another folder (without --output prepare uses {free}); to replace that model, "
        f"remove it first: {rm}"
    )


def effective_recipe(recipe: Recipe, hf_dir: Path | None, notes: list[str]) -> Recipe:
    """Apply the group-size fallback when the model's layer widths are known."""
    if recipe.quantize.engine != "quark" or hf_dir is None or not (hf_dir / "config.json").is_file():
        return recipe
    from .prepare.quantize import layer_input_widths

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
    from .architectures import UNTESTED, check, runtime_needs

    if config is None:
        return False
    arch, cell = check(config, recipe, target)
    if cell.status == UNTESTED:
        notes.append(
            f"{arch.hf_architectures[0]} with recipe {recipe.name} for {target} is not verified here ({cell.how})"
        )
    needs = runtime_needs(config)
    if needs.sliding_window:
        log.info("sliding window %s on %s layers", needs.sliding_window, needs.sliding_layers)
    return True


def _read_config(hf_dir: Path) -> dict | None:
    p = hf_dir / "config.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def prepare(req: PrepareRequest, progress: Progress = _noop) -> PrepareResult:
    if req.target not in TARGETS:
        raise RecipeError(f"unknown target '{req.target}'", f"use one of: {', '.join(TARGETS)}")
    src = source_mod.classify(req.source)
    recipe_name = req.recipe or default_recipe_for(src.kind, req.target)
    recipe = load_recipe(recipe_name)
    if recipe.quantize.engine == "gguf":
        check_gguf_native(recipe, src, req.target)
    out = Path(req.output) if req.output else default_output(src, req.target, recipe_name)
    calib_text = str(req.calib_file) if req.calib_file else recipe.calibration.text
    if req.calib_file and not Path(req.calib_file).is_file():
        raise RecipeError(f"calibration file not found: {req.calib_file}", "pass an existing text file to --calib-file")
    notes: list[str] = []
    # The architecture table first: a combination that cannot work stops here, nothing written.
    arch_checked = check_architecture(source_mod.peek_config(src), recipe, req.target, notes)
    dd_plugins = Path(req.dd_plugins or "dd_plugins").absolute()
    probe = StageContext(req.target, recipe, out, calib_text, "", {}, req.trace, dd_plugins=dd_plugins)
    stages = [s for s in STAGES if s.applies(probe)]
    rai_env, rai_version, rai_source = _rai_env(req, stages, notes)
    from .capabilities import target_oga_version

    # the runtime the folder is for: --oga-version, else the Ryzen AI env's own, else the release's pin / installed
    env_oga = rai_env.oga[1] if rai_env is not None and rai_env.oga else None
    oga_version = target_oga_version(req.target, rai_version, req.oga_version or env_oga)
    probe = StageContext(
        req.target,
        recipe,
        out,
        calib_text,
        "",
        {},
        req.trace,
        rai_version=rai_version,
        rai_source=rai_source,
        dd_plugins=dd_plugins,
        rai_env=rai_env,
        oga_version=oga_version,
    )
    for s in stages:
        if hasattr(s, "check_release"):
            s.check_release(probe)
    names = [s.NAME for s in stages]
    if "build" in names:  # options the target runtime cannot run are left out, and prepare says so
        from .prepare import build

        notes += build.options(probe).left_out
    if req.from_stage and req.from_stage not in names:
        raise RecipeError(f"unknown stage '{req.from_stage}' for --from", f"use one of: {', '.join(names)}")

    versions = installed_versions()
    check_versions(versions, needs_quark=any(s.NAME == "quantize" for s in stages))
    if req.dry_run:
        return _dry_run(req, probe, src, stages, notes)

    tools, tool_versions = preflight(req.target, stages, req.skip_device_check, rai_env)
    state = folder_state(out, verify="quick")
    held = another_source(state, req.source)
    if held is not None and not req.force:
        raise OutputExistsError(
            f"{out} holds another model (prepared from {held})", another_source_fix(out, src, req.target, recipe_name)
        )
    if state.state == "damaged" and not req.force:
        # Published files are hard links into stages/: in-place damage reached them too.
        raise OutputExistsError(
            f"{out} was changed since prepare ({state.detail})", "pass --force to rebuild it from the source"
        )
    if state.state == "foreign":
        raise OutputExistsError(
            f"{out} exists and is not an oga-npu model folder ({state.detail})",
            "pass --output with a new folder, or remove it",
        )

    total = len(stages) + 1
    _check_disk_up_front(src, out)
    progress("start", "source", 1, total, source_mod.plan(src))
    try:
        with interrupt_flag() as hit:
            resolved = source_mod.resolve(src)
    except (KeyboardInterrupt, Exception) as e:
        # Libraries importing lazily (transformers, numpy) can turn Ctrl+C into an ImportError.
        if isinstance(e, KeyboardInterrupt) or hit.is_set():
            raise StageInterrupted(
                "interrupted during source; nothing was written to the output folder",
                "re-run the same command to start again",
            ) from e
        if not is_disk_full(e):
            raise
        raise DiskFullError(
            f"no space left on the disk while preparing the source in {source_mod.home()}",
            "free some space (or set OGA_NPU_HOME to a cache on another disk) and re-run the same command",
        ) from e
    progress(
        "done" if not resolved.cached else "skip",
        "source",
        1,
        total,
        f"{resolved.hf_dir}" + (" (cached)" if resolved.cached else ""),
    )
    if not arch_checked:  # a hub model not yet in the cache: its config.json is known only now
        check_architecture(_read_config(resolved.hf_dir), recipe, req.target, notes)
    recipe = effective_recipe(recipe, resolved.hf_dir, notes)
    for n in notes:
        progress("note", "source", 1, total, n)
    # builtin:calibration: the calibration half of the built-in text (oga_npu.textdata)
    calib_key = "builtin:calibration" if calib_text == "builtin" else _file_key(Path(calib_text))
    ctx = StageContext(
        req.target,
        recipe,
        out,
        calib_text,
        calib_key,
        versions,
        req.trace,
        rai_version=rai_version,
        rai_source=rai_source,
        dd_plugins=dd_plugins,
        tools=tools,
        tool_versions=tool_versions,
        rai_env=rai_env,
        oga_version=oga_version,
    )

    # Keys chain: a change upstream invalidates everything after it.
    keys, upstream = {}, _key(resolved.key)
    for s in stages:
        upstream = keys[s.NAME] = _key(upstream, s.NAME, s.key(ctx))
    final_key = upstream

    if state.state == "ready" and not req.force and not req.from_stage:
        if (state.manifest or {}).get("key") == final_key:
            reports = [StageReport(s.NAME, "skipped", 0.0, {"reason": "already done"}) for s in stages]
            for i, s in enumerate(stages, start=2):
                progress("skip", s.NAME, i, total, "already done")
            _expanded_form(out, state.manifest)
            return PrepareResult(out, reports, state.manifest, notes=notes)
        raise OutputExistsError(
            f"{out} is a ready model prepared with other settings (recipe, target or source)",
            "pass --force to rebuild it, or --output another folder",
        )
    _check_disk(resolved.hf_dir, out)

    reports: list[StageReport] = []
    with prepare_lock(out):
        write_json_atomic(
            out / REQUEST,
            {"source": req.source, "recipe": recipe.path or recipe_name, "target": req.target, "oga_npu": __version__},
        )
        unpublish(out)
        in_dir, model_dir = resolved.hf_dir, resolved.hf_dir
        redo = req.force
        for i, s in enumerate(stages, start=2):
            if req.from_stage == s.NAME:
                redo = True
            done = stage_done(out, s.NAME)
            if done and done.get("key") == keys[s.NAME] and not redo:
                reports.append(StageReport(s.NAME, "skipped", 0.0, {"reason": "already done"}))
                progress("skip", s.NAME, i, total, "already done")
            else:
                redo = True  # everything after a re-run stage re-runs too
                progress("start", s.NAME, i, total, _estimate_line(s, ctx, in_dir))
                part = begin_stage(out, s.NAME)
                log_path = out / LOGS_DIR / f"{s.NAME}.log"
                t0 = time.monotonic()

                def report(msg: str, _s=s.NAME, _i=i) -> None:
                    progress("update", _s, _i, total, msg)

                try:
                    with tools_mod.reporting(report):
                        detail = s.run_stage(ctx, in_dir, part, log_path)
                except KeyboardInterrupt as e:
                    raise StageInterrupted(
                        f"interrupted during {s.NAME}; {partial_dir(out, s.NAME)} is left for the next run to clean",
                        "re-run the same command to resume",
                    ) from e
                except (OSError, ToolFailed) as e:
                    if not is_disk_full(e):
                        raise
                    raise DiskFullError(
                        f"no space left on the disk during {s.NAME} ({out}); the finished stages "
                        f"and {partial_dir(out, s.NAME).name} are kept",
                        f"free some space and re-run the same command: it resumes at {s.NAME}",
                    ) from e
                seconds = time.monotonic() - t0
                finish_stage(
                    out,
                    s.NAME,
                    part,
                    {
                        "stage": s.NAME,
                        "key": keys[s.NAME],
                        "seconds": round(seconds, 2),
                        "versions": versions,
                        "detail": detail,
                    },
                )
                reports.append(StageReport(s.NAME, "done", seconds, detail))
                progress("done", s.NAME, i, total, _summary(s.NAME, detail, seconds))
            if s.PRODUCES_MODEL:
                model_dir = stage_dir(out, s.NAME)
                in_dir = model_dir
        from .model import read_chat_template
        from .store import model_info

        hub = src.kind == "hub"
        manifest = {
            "key": final_key,
            "source": req.source,
            "source_kind": src.kind,
            "source_key": resolved.key,
            # where the same weights come from for another runtime (vLLM, transformers)
            "hub_id": src.spec if hub else None,
            "revision": resolved.path.name if hub else None,
            "chat_template": read_chat_template(model_dir),
            "recipe": recipe.name,
            "recipe_config": recipe.model_dump(mode="json", by_alias=True),
            "target": req.target,
            "versions": versions,
            "notes": notes,
            "builder": _builder_versions(ctx, versions, tool_versions),
            "runtime": {k: versions.get(k) for k in ("onnxruntime-genai", "onnxruntime")},
            # the runtime it was built for, and the oldest that loads it (checked at load)
            "built_for": {"onnxruntime-genai": oga_version},
            "requires": {"onnxruntime-genai": folder_requirement(ctx)},
            "stages": {r.name: (stage_done(out, r.name) or {}) for r in reports},
            # what `oga-npu models` and the server show: parameters, weight bits, context
            "model_info": model_info(model_dir, src.kind, src.spec, resolved.hf_dir if src.kind != "gguf" else None),
        }
        manifest = publish(out, model_dir, manifest)
    _expanded_form(out, manifest)
    return PrepareResult(out, reports, manifest, notes=notes)


def _expanded_form(out: Path, manifest: dict | None) -> None:
    """A gguf-native model's expanded form, made now so the first load is quick (oga_npu.gguf.expand)."""
    from .gguf.expand import loadable

    loadable(out, manifest)


def folder_requirement(ctx: StageContext) -> str:
    """The oldest onnxruntime-genai the folder needs: what its builder options need, and for
    a Ryzen AI model its release's own pin (models do not cross releases)."""
    from .capabilities import RAI_OGA_PINS, min_oga_for, older
    from .prepare import build

    need = min_oga_for(build.options(ctx).cfg.extra_options) if build.applies(ctx) else min_oga_for({})
    pin = RAI_OGA_PINS.get(ctx.rai_version) if ctx.target in ("hybrid", "npu") else None
    return pin if pin and older(need, pin) else need


def _plan_status(req, ctx: StageContext, src, stages, out: Path) -> dict:
    """Per stage, what the real run would do with what is on disk: 'already done' or
    'would run' (the same keys as `prepare`; a hub source is compared by the manifest)."""
    state = folder_state(out)
    if state.state in ("missing", "empty"):
        return {}
    if state.state == "foreign":
        return {"_stop": f"{out} exists and is not an oga-npu model folder: the real run would stop"}
    held = another_source(state, req.source)
    if held is not None and not req.force:
        fix = another_source_fix(out, src, req.target, req.recipe or default_recipe_for(src.kind, req.target))
        return {"_stop": f"{out} holds another model (prepared from {held}): the real run would stop ({fix})"}
    manifest = state.manifest or {}
    same_source = _norm_source(str((state.request or manifest).get("source", ""))) == _norm_source(req.source)
    if src.kind == "folder":
        source_key = "folder:" + source_mod.folder_fingerprint(Path(src.spec).expanduser().resolve())
    elif src.kind == "gguf":
        source_key = "gguf:" + source_mod.gguf_cache_dir(Path(src.spec).expanduser().resolve()).name
    else:  # a hub id: its key names the downloaded revision; trust the folder's record for the same id
        source_key = manifest.get("source_key") if same_source else None
    if source_key is None:
        return {}
    keys, upstream = {}, _key(source_key)
    for s in stages:
        upstream = keys[s.NAME] = _key(upstream, s.NAME, s.key(ctx))
    out_status: dict = {}
    if state.state == "ready" and not req.force and not req.from_stage and manifest.get("key") != upstream:
        out_status["_stop"] = (
            f"{out} is a ready model prepared with other settings: the real run would stop "
            "(pass --force to rebuild it, or --output another folder)"
        )
    redo = req.force
    for s in stages:
        if req.from_stage == s.NAME:
            redo = True
        done = stage_done(out, s.NAME)
        if done and done.get("key") == keys[s.NAME] and not redo:
            out_status[s.NAME] = "already done"
        else:
            redo = True
            out_status[s.NAME] = "would run"
    return out_status


@contextlib.contextmanager
def interrupt_flag():
    """An Event set when SIGINT arrives (Ctrl+C still raises KeyboardInterrupt as usual)."""
    hit = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield hit
        return
    old = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        hit.set()
        if callable(old):
            old(signum, frame)
        elif old != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)
    try:
        yield hit
    finally:
        signal.signal(signal.SIGINT, old)


def check_gguf_native(recipe: Recipe, src: source_mod.Source, target: str) -> None:
    if src.kind != "gguf":
        raise RecipeError(
            f"recipe {recipe.name} keeps a GGUF file's own quantization; {src.spec} is a {src.describe()}",
            "prepare a .gguf file with it, or pick another recipe (--recipe default)",
        )
    if target not in GGUF_NATIVE_TARGETS:
        raise RecipeError(
            f"recipe {recipe.name} is for --target {' or '.join(GGUF_NATIVE_TARGETS)}; {target} needs "
            "AMD's flow, which takes Quark's uint4 AWQ",
            "use --recipe default (or cpu-fast) for this target",
        )


def _norm_source(s: str) -> str:
    from .store import norm_source

    return norm_source(s)


def _file_key(p: Path) -> str:
    from .workdir import file_fingerprint

    return f"{p.name}:{file_fingerprint(p)}"


def _estimate_line(stage, ctx, in_dir: Path) -> str:
    """'estimate: about 3 min' for stages that can say (from the model's size and the recipe)."""
    est = getattr(stage, "estimate", None)
    try:
        secs = est(ctx, in_dir) if est else None
    except (OSError, ValueError, KeyError):
        secs = None
    if not secs:
        return ""
    busy = ""
    try:  # a machine busy with other work runs the stage slower, about by load / cores
        from .threads import physical_cores

        load, cores = os.getloadavg()[0], physical_cores()
        if load > cores + 0.5:
            secs *= load / cores
            busy = f", the CPU is busy: load {load:.0f} on {cores} cores"
    except (OSError, AttributeError):  # no load average (Windows)
        pass
    if secs < 20:
        return ""
    when = f"about {max(1, round(secs / 60))} min" if secs >= 90 else f"about {secs:.0f} s"
    return f"estimate {when}{busy}"


def _summary(name: str, detail: dict, seconds: float) -> str:
    if name == "validate" and "answer" in detail:
        return f"{detail['answer'].strip()[:60]!r} ({seconds:.0f} s)"
    if detail.get("skipped"):
        return f"skipped: {detail['skipped']}"
    return f"done ({seconds:.0f} s)"


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


def _check_disk_up_front(src, out: Path) -> None:
    """Before any long step: the GGUF cache ($OGA_NPU_HOME) and the output against estimates."""
    if src.kind != "gguf":
        return
    gguf = Path(src.spec).expanduser().resolve()
    cache = source_mod.gguf_cache_dir(gguf)
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


def _check_disk(hf_dir: Path, out: Path) -> None:
    weights = sum(p.stat().st_size for p in hf_dir.glob("*.safetensors"))
    _require_space({"the output": (out, int(weights * DISK_FACTOR))})


def _rai_env(req: PrepareRequest, stages, notes: list[str]):
    """(RaiEnv or None, release, where the release came from) for the target. hybrid/npu need
    the env (checked here, before anything is written; a dry run notes what is missing); dml
    uses it when there is one, else oga-npu's own builder."""
    from . import ryzenai

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


def _builder_versions(ctx: StageContext, versions: dict, tool_versions: dict) -> dict:
    """The builder that made the folder: the Ryzen AI env's (its onnxruntime-genai) or ours."""
    if ctx.rai_env is not None:  # the env's builder ran, or model_generate ran it on the quantized folder
        oga = ctx.rai_env.oga
        return {**({oga[0]: oga[1]} if oga else {}), **tool_versions}
    return {"onnxruntime-genai": versions.get("onnxruntime-genai"), **tool_versions}


def preflight(target: str, stages, skip_device_check: bool = False, rai_env=None) -> tuple[dict, dict]:
    """Find every vendor tool the target needs (in the Ryzen AI env) and check the device,
    before any long step.

    Returns (tool paths, tool versions); raises PreflightError listing every missing piece."""
    from .devices import INSTALL_HINT, find_npus, find_rai_tool, tool_version

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


def _dry_run(req, probe: StageContext, src, stages, notes) -> PrepareResult:
    from .devices import find_rai_tool

    recipe, out, calib_text = probe.recipe, probe.output, probe.calib_text
    hf_guess = None
    if src.kind == "folder":
        hf_guess = Path(src.spec).expanduser().resolve()
    elif src.kind == "gguf":
        cached = source_mod.gguf_cache_dir(Path(src.spec).expanduser().resolve())
        hf_guess = cached if (cached / "config.json").is_file() else None
    recipe = effective_recipe(recipe, hf_guess, notes)
    tools = {}
    for s in stages:
        if hasattr(s, "TOOL"):
            found = probe.rai_env.tool(s.TOOL) if probe.rai_env is not None else find_rai_tool(s.TOOL)
            tools[s.TOOL] = found or s.TOOL  # not found: _rai_env noted why the real run would stop
    calib_key = (
        "builtin"
        if calib_text == "builtin"
        else (_file_key(Path(calib_text)) if Path(calib_text).is_file() else calib_text)
    )
    ctx = StageContext(
        req.target,
        recipe,
        out,
        calib_text,
        calib_key,
        {},
        req.trace,
        rai_version=probe.rai_version,
        rai_source=probe.rai_source,
        dd_plugins=probe.dd_plugins,
        tools=tools,
        rai_env=probe.rai_env,
    )
    status = _plan_status(req, ctx, src, stages, out)
    lines = [f"prepare {req.source} -> {out}  (target {req.target}, recipe {recipe.name})"]
    lines += [f"note: {n}" for n in notes]
    if hf_guess is None and src.kind != "folder" and recipe.quantize.engine != "gguf":  # gguf: the file's blocks
        lines.append(
            f"note: the group size is checked against the model's widths after the source step "
            f"(recipe: {recipe.quantize.group_size})"
        )
    if status.get("_stop"):
        lines.append(f"note: {status['_stop']}")
    total = len(stages) + 1
    lines.append(f"[1/{total}] source: {source_mod.plan(src)}")
    in_dir = hf_guess or Path("<source hf folder>")
    reports = [StageReport("source", "planned")]
    for i, s in enumerate(stages, start=2):
        part = partial_dir(out, s.NAME)
        what = status.get(s.NAME, "would run")
        if what == "already done":
            lines.append(f"[{i}/{total}] {s.NAME}: already done ({stage_dir(out, s.NAME)})")
        else:
            est = _estimate_line(s, ctx, in_dir) if in_dir.exists() else ""
            lines.append(
                f"[{i}/{total}] {s.NAME}: {what}"
                + (f" ({est})" if est else "")
                + f": writes {part} then renames it to {stage_dir(out, s.NAME)}"
            )
            lines += ["    " + ln for ln in s.describe(ctx, in_dir, part)]
            lines.append(f"    log: {out / LOGS_DIR / (s.NAME + '.log')}")
        reports.append(StageReport(s.NAME, "skipped" if what == "already done" else "planned"))
        if s.PRODUCES_MODEL:
            in_dir = stage_dir(out, s.NAME)
    extra_env = {
        k: v
        for k, v in ctx.tool_env().items()
        if k.startswith(("DD_PLUGINS", "OGA_NPU", "HF_", "RYZEN")) and os.environ.get(k) != v
    }
    env_all = {k: v for k, v in ctx.tool_env().items() if k.startswith(("DD_PLUGINS", "OGA_NPU", "HF_", "RYZEN"))}
    lines.append(
        "environment for tools: "
        + (", ".join(f"{k}={v}" for k, v in sorted(env_all.items())) or "inherited, nothing added")
    )
    if extra_env:
        lines.append("  added by oga-npu: " + ", ".join(f"{k}={v}" for k, v in sorted(extra_env.items())))
    if ctx.rai_env is not None:
        lines.append(
            f"AMD's stages run in the {ctx.rai_env.describe()}: its folders first on PATH, "
            "PYTHONPATH/PYTHONHOME/VIRTUAL_ENV removed"
        )
    lines.append(f"publish: link the model files into {out} and write oga_npu_manifest.json last")
    lines.append("dry run: nothing was written")
    return PrepareResult(out, reports, None, plan=lines, notes=notes)
