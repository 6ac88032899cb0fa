"""The run: a Plan's stages, resumed where they stopped, then the folder published.

Each stage runs in `stages/<name>.partial/` and is renamed into place with a done.json
marker holding its key (its inputs: the upstream key plus its own config), the tool
versions and the seconds it took. A re-run skips stages whose key matches. The model
folder's manifest is removed before anything changes and written last, so a folder
interrupted at any point is never taken for a ready one.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

from .. import tools as tools_mod
from .._version import __version__
from ..errors import DiskFullError, OutputExistsError, StageInterrupted, ToolFailed
from ..workdir import (
    LOGS_DIR,
    REQUEST,
    begin_stage,
    finish_stage,
    folder_state,
    partial_dir,
    prepare_lock,
    publish,
    stage_dir,
    stage_done,
    unpublish,
    write_json_atomic,
)
from . import build
from . import source as source_mod
from .checks import (
    check_architecture,
    check_disk,
    check_disk_up_front,
    check_output,
    effective_recipe,
    is_disk_full,
    preflight,
    read_config,
)
from .context import PrepareResult, Progress, StageContext, StageReport, noop
from .plan import Plan, estimate_line, file_key, stage_keys


def run(plan: Plan, progress: Progress = noop) -> PrepareResult:
    request, req = plan.request, plan.request.req
    out, notes, total = request.output, plan.notes, plan.total
    if plan.dry_run is not None:
        return PrepareResult(out, plan.dry_run.reports(), None, plan=plan.dry_run.lines(), notes=notes)
    tools, tool_versions = preflight(req.target, plan.stages, req.skip_device_check, plan.ctx.rai_env)
    state = folder_state(out, verify="quick")
    check_output(request, state)
    check_disk_up_front(request.src, out)
    resolved = _source_step(request.src, total, progress)
    if not plan.arch_checked:  # a hub model not yet in the cache: its config.json is known only now
        check_architecture(read_config(resolved.hf_dir), plan.ctx.recipe, req.target, notes)
    recipe = effective_recipe(plan.ctx.recipe, resolved.hf_dir, notes)
    for n in notes:
        progress("note", "source", 1, total, n)
    # builtin:calibration: the calibration half of the built-in text (oga_npu.textdata)
    calib = request.calib_text
    calib_key = "builtin:calibration" if calib == "builtin" else file_key(Path(calib))
    ctx = replace(
        plan.ctx, recipe=recipe, calib_key=calib_key, versions=plan.versions, tools=tools, tool_versions=tool_versions
    )
    keys, final_key = stage_keys(resolved.key, plan.stages, ctx)
    if state.state == "ready" and not req.force and not req.from_stage:
        if (state.manifest or {}).get("key") == final_key:
            reports = [StageReport(s.NAME, "skipped", 0.0, {"reason": "already done"}) for s in plan.stages]
            for i, s in enumerate(plan.stages, start=2):
                progress("skip", s.NAME, i, total, "already done")
            _expanded_form(out, state.manifest)
            return PrepareResult(out, reports, state.manifest, notes=notes)
        raise OutputExistsError(
            f"{out} is a ready model prepared with other settings (recipe, target or source)",
            "pass --force to rebuild it, or --output another folder",
        )
    check_disk(resolved.hf_dir, out)
    with prepare_lock(out):
        write_json_atomic(
            out / REQUEST,
            {
                "source": req.source,
                # as the user gave it (a name stays a name, a path the path given): the resume
                # command (workdir.resume_command) repeats it
                "recipe": req.recipe or request.recipe_name,
                "target": req.target,
                "oga_npu": __version__,
            },
        )
        unpublish(out)
        reports, model_dir = _run_stages(plan, ctx, keys, resolved.hf_dir, progress)
        manifest = publish(out, model_dir, _manifest(plan, ctx, resolved, final_key, model_dir, reports))
    _expanded_form(out, manifest)
    return PrepareResult(out, reports, manifest, notes=notes)


def _source_step(src, total: int, progress: Progress):
    """The source step (oga_npu.prepare.source.resolve): writes only to caches."""
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
    done = f"{resolved.hf_dir}" + (" (cached)" if resolved.cached else "")
    progress("done" if not resolved.cached else "skip", "source", 1, total, done)
    return resolved


def _run_stages(plan: Plan, ctx: StageContext, keys: dict, hf_dir: Path, progress: Progress):
    """(reports, the folder the last model-producing stage wrote). A stage whose done.json
    holds its key is skipped, unless --force, --from it, or a stage before it re-ran."""
    req, out = plan.request.req, ctx.output
    reports: list[StageReport] = []
    in_dir = model_dir = hf_dir
    redo = req.force
    for i, s in enumerate(plan.stages, start=2):
        if req.from_stage == s.NAME:
            redo = True
        done = stage_done(out, s.NAME)
        if done and done.get("key") == keys[s.NAME] and not redo:
            reports.append(StageReport(s.NAME, "skipped", 0.0, {"reason": "already done"}))
            progress("skip", s.NAME, i, plan.total, "already done")
        else:
            redo = True  # everything after a re-run stage re-runs too
            reports.append(_run_stage(s, i, plan.total, ctx, in_dir, keys[s.NAME], progress, _resume_fix(req, s.NAME)))
        if s.PRODUCES_MODEL:
            model_dir = stage_dir(out, s.NAME)
            in_dir = model_dir
    return reports, model_dir


def _resume_fix(req, stage: str) -> str:
    """What resumes an interrupted stage: the same command, unless it forced a rebuild."""
    if req.force or req.from_stage:
        flag = "--force" if req.force else f"--from {req.from_stage}"
        return f"re-run the same command without {flag} to resume at {stage} (with it, the stages run again)"
    return "re-run the same command to resume"


def _run_stage(
    s, i: int, total: int, ctx: StageContext, in_dir: Path, key: str, progress: Progress, resume: str
) -> StageReport:
    out = ctx.output
    progress("start", s.NAME, i, total, estimate_line(s, ctx, in_dir))
    part = begin_stage(out, s.NAME)
    log_path = out / LOGS_DIR / f"{s.NAME}.log"
    t0 = time.monotonic()

    def report(msg: str) -> None:
        progress("update", s.NAME, i, total, msg)

    try:
        with tools_mod.reporting(report):
            detail = s.run_stage(ctx, in_dir, part, log_path)
    except (KeyboardInterrupt, StageInterrupted) as e:  # (a tool's run: StageInterrupted naming it)
        tool = e.message.removesuffix(" interrupted") if isinstance(e, StageInterrupted) else ""
        tool = f" ({tool})" if tool and not tool.startswith(s.NAME) else ""
        raise StageInterrupted(
            f"interrupted during {s.NAME}{tool}; {partial_dir(out, s.NAME)} is left for the next run to clean", resume
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
    marker = {"stage": s.NAME, "key": key, "seconds": round(seconds, 2), "versions": ctx.versions, "detail": detail}
    finish_stage(out, s.NAME, part, marker)
    progress("done", s.NAME, i, total, _summary(s.NAME, detail, seconds))
    return StageReport(s.NAME, "done", seconds, detail)


def _manifest(plan: Plan, ctx: StageContext, resolved, final_key: str, model_dir: Path, reports) -> dict:
    from ..model import read_chat_template
    from ..store import model_info

    req, src, versions, out = plan.request.req, plan.request.src, ctx.versions, ctx.output
    hub = src.kind == "hub"
    stages = {r.name: (stage_done(out, r.name) or {}) for r in reports}
    kernels = ((stages.get("build") or {}).get("detail") or {}).get("ggml_kernels")
    return {
        "key": final_key,
        "source": req.source,
        "source_kind": src.kind,
        "source_key": resolved.key,
        # where the same weights come from for another runtime (vLLM, transformers)
        "hub_id": src.spec if hub else None,
        "revision": resolved.hf_dir.name if hub else None,  # a snapshot folder is named by its commit
        "chat_template": read_chat_template(model_dir),
        "recipe": ctx.recipe.name,
        "recipe_config": ctx.recipe.model_dump(mode="json", by_alias=True),
        "target": req.target,
        "versions": versions,
        "notes": plan.notes,
        "builder": _builder_versions(ctx, versions, ctx.tool_versions),
        "runtime": {k: versions.get(k) for k in ("onnxruntime-genai", "onnxruntime")},
        # the runtime it was built for, and the oldest that loads it (checked at load)
        "built_for": {"onnxruntime-genai": ctx.oga_version},
        "requires": {"onnxruntime-genai": folder_requirement(ctx)},
        "stages": stages,
        # gguf-ggml: the custom-op library copied into the folder (name, size, sha256)
        **({"kernels": kernels} if kernels else {}),
        # what `oga-npu models` and the server show: parameters, weight bits, context
        "model_info": model_info(model_dir, src.kind, src.spec, resolved.hf_dir if src.kind != "gguf" else None),
    }


def _expanded_form(out: Path, manifest: dict | None) -> None:
    """A gguf-native model's expanded form, made now so the first load is quick (oga_npu.gguf.expand)."""
    from ..gguf.expand import loadable

    loadable(out, manifest)


def folder_requirement(ctx: StageContext) -> str:
    """The oldest onnxruntime-genai the folder needs: what its builder options need, and for
    a Ryzen AI model its release's own pin (models do not cross releases)."""
    from ..capabilities import RAI_OGA_PINS, min_oga_for, older

    need = min_oga_for(build.options(ctx).cfg.extra_options) if build.applies(ctx) else min_oga_for({})
    pin = RAI_OGA_PINS.get(ctx.rai_version) if ctx.target in ("hybrid", "npu") else None
    return pin if pin and older(need, pin) else need


def _builder_versions(ctx: StageContext, versions: dict, tool_versions: dict) -> dict:
    """The builder that made the folder: the Ryzen AI env's (its onnxruntime-genai) or ours."""
    if ctx.rai_env is not None:  # the env's builder ran, or model_generate ran it on the quantized folder
        oga = ctx.rai_env.oga
        return {**({oga[0]: oga[1]} if oga else {}), **tool_versions}
    return {"onnxruntime-genai": versions.get("onnxruntime-genai"), **tool_versions}


def _summary(name: str, detail: dict, seconds: float) -> str:
    if name == "validate" and "answer" in detail:
        return f"{detail['answer'].strip()[:60]!r} ({seconds:.0f} s)"
    if detail.get("skipped"):
        return f"skipped: {detail['skipped']}"
    return f"done ({seconds:.0f} s)"


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
