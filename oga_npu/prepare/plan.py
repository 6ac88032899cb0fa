"""The plan: which stages run for a request, with what they read, as data.

`make_plan(request, stages)` resolves the request (oga_npu.prepare.request), runs the
preflight checks that need no tool and write nothing (oga_npu.prepare.checks), picks the
stages that apply, the Ryzen AI env and release, the runtime the folder is for and the
build stage's effective builder options (oga_npu.prepare.build.options). For a dry run it
adds typed rows, one per step, compared against what is on disk; `DryRun.lines()` is the
text `oga-npu prepare --dry-run` prints.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import versions as versions_mod
from ..errors import RecipeError
from ..workdir import LOGS_DIR, folder_state, partial_dir, stage_dir, stage_done
from . import build
from . import source as source_mod
from .checks import check_architecture, check_versions, effective_recipe, ryzen_ai_env
from .context import StageContext, StageReport
from .request import PrepareRequest, Request, resolve


@dataclass(frozen=True)
class StageRow:
    """One stage of a dry run: what the real run would do with what is on disk."""

    index: int
    name: str
    status: str  # would run | already done
    folder: Path  # stages/<name>, where its result goes
    partial: Path  # stages/<name>.partial, where it is written first
    log: Path
    estimate: str = ""  # 'estimate about 3 min' when the stage can say
    commands: tuple[str, ...] = ()  # the stage's own lines (its tool's command line, ...)


@dataclass(frozen=True)
class DryRun:
    """What `prepare --dry-run` shows, as typed rows; lines() is the text."""

    source: str
    output: Path
    target: str
    recipe: str
    total: int
    notes: tuple[str, ...]  # the plan's notes, then what the disk and the source say
    source_step: str  # source_mod.plan: the download, the dequantize or the folder used in place
    stages: tuple[StageRow, ...]
    env: dict  # tool environment variables of note
    env_added: dict  # those oga-npu sets (not inherited as they are)
    rai_env: str | None = None  # the Ryzen AI env AMD's stages run in

    def lines(self) -> list[str]:
        lines = [f"prepare {self.source} -> {self.output}  (target {self.target}, recipe {self.recipe})"]
        lines += [f"note: {n}" for n in self.notes]
        lines.append(f"[1/{self.total}] source: {self.source_step}")
        for r in self.stages:
            if r.status == "already done":
                lines.append(f"[{r.index}/{self.total}] {r.name}: already done ({r.folder})")
                continue
            est = f" ({r.estimate})" if r.estimate else ""
            lines.append(
                f"[{r.index}/{self.total}] {r.name}: {r.status}{est}: writes {r.partial} then renames it to {r.folder}"
            )
            lines += ["    " + ln for ln in r.commands]
            lines.append(f"    log: {r.log}")
        lines.append(
            "environment for tools: "
            + (", ".join(f"{k}={v}" for k, v in sorted(self.env.items())) or "inherited, nothing added")
        )
        if self.env_added:
            lines.append("  added by oga-npu: " + ", ".join(f"{k}={v}" for k, v in sorted(self.env_added.items())))
        if self.rai_env is not None:
            lines.append(
                f"AMD's stages run in the {self.rai_env}: its folders first on PATH, "
                "PYTHONPATH/PYTHONHOME/VIRTUAL_ENV removed"
            )
        lines.append(f"publish: link the model files into {self.output} and write oga_npu_manifest.json last")
        lines.append("dry run: nothing was written")
        return lines

    def reports(self) -> list[StageReport]:
        return [StageReport("source", "planned")] + [
            StageReport(r.name, "skipped" if r.status == "already done" else "planned") for r in self.stages
        ]


@dataclass
class Plan:
    request: Request
    stages: tuple  # the stage modules that apply (oga_npu.prepare.STAGES), in order
    ctx: StageContext  # what they read, as known before the source step (no tools, no calibration key)
    notes: list[str] = field(default_factory=list)
    versions: dict = field(default_factory=dict)  # installed package versions (checked)
    arch_checked: bool = True  # False: the architecture table is read once the source is resolved
    build_options: build.BuildOptions | None = None  # the build stage's effective options, when it runs
    dry_run: DryRun | None = None  # the rows a dry run prints (None: a real run)

    @property
    def total(self) -> int:
        return len(self.stages) + 1


def make_plan(prep: PrepareRequest, all_stages) -> Plan:
    from ..capabilities import target_oga_version

    request = resolve(prep)
    recipe, notes = request.recipe, []
    # The architecture table first: a combination that cannot work stops here, nothing written.
    arch_checked = check_architecture(source_mod.peek_config(request.src), recipe, prep.target, notes)
    probe = StageContext(
        prep.target, recipe, request.output, request.calib_text, "", {}, prep.trace, dd_plugins=request.dd_plugins
    )
    stages = tuple(s for s in all_stages if s.applies(probe))
    rai_env, rai_version, rai_source = ryzen_ai_env(prep, stages, notes)
    # the runtime the folder is for: --oga-version, else the Ryzen AI env's own, else the release's pin / installed
    env_oga = rai_env.oga[1] if rai_env is not None and rai_env.oga else None
    oga_version = target_oga_version(prep.target, rai_version, prep.oga_version or env_oga)
    ctx = replace(probe, rai_version=rai_version, rai_source=rai_source, rai_env=rai_env, oga_version=oga_version)
    for s in stages:
        if hasattr(s, "check_release"):
            s.check_release(ctx)
    names = [s.NAME for s in stages]
    build_opts = build.options(ctx) if build.NAME in names else None
    if build_opts is not None:  # options the target runtime cannot run are left out, and prepare says so
        notes += build_opts.left_out
    if prep.from_stage and prep.from_stage not in names:
        raise RecipeError(f"unknown stage '{prep.from_stage}' for --from", f"use one of: {', '.join(names)}")
    versions = versions_mod.installed_versions()  # looked up here at each call: doctor reads the same
    check_versions(versions, needs_quark=any(s.NAME == "quantize" for s in stages))
    plan = Plan(request, stages, ctx, notes, versions, arch_checked, build_opts)
    if prep.dry_run:
        plan.dry_run = dry_run_rows(plan)
    return plan


def stage_keys(source_key: str, stages, ctx) -> tuple[dict, str]:
    """({stage: key}, the folder's key). Keys chain: a change upstream invalidates everything after it."""
    keys, upstream = {}, _key(source_key)
    for s in stages:
        upstream = keys[s.NAME] = _key(upstream, s.NAME, s.key(ctx))
    return keys, upstream


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_key(p: Path) -> str:
    from ..workdir import file_fingerprint

    return f"{p.name}:{file_fingerprint(p)}"


def estimate_line(stage, ctx, in_dir: Path) -> str:
    """'estimate about 3 min' for stages that can say (from the model's size and the recipe),
    with work done once per machine named beside it ('+ about 2 min compiling the kernel
    library, once')."""
    secs = _stage_call(getattr(stage, "estimate", None), ctx, in_dir)
    once = _stage_call(getattr(stage, "once", None), ctx)
    if not secs and not once:
        return ""
    factor, busy = _busy_factor()
    parts = [_about(secs * factor)] if secs and secs * factor >= 20 else []
    if once:
        parts.append(f"{_about(once[1] * factor)} {once[0]}")
    return f"estimate {' + '.join(parts)}{busy}" if parts else ""


def _stage_call(fn, *args):
    try:
        return fn(*args) if fn else None
    except (OSError, ValueError, KeyError):
        return None


def _busy_factor() -> tuple[float, str]:
    """A machine busy with other work runs the stage slower, about by load / cores."""
    try:
        from ..threads import physical_cores

        load, cores = os.getloadavg()[0], physical_cores()
        if load > cores + 0.5:
            return load / cores, f", the CPU is busy: load {load:.0f} on {cores} cores"
    except (OSError, AttributeError):  # no load average (Windows)
        pass
    return 1.0, ""


def _about(secs: float) -> str:
    return f"about {max(1, round(secs / 60))} min" if secs >= 90 else f"about {secs:.0f} s"


def dry_run_rows(plan: Plan) -> DryRun:
    request, probe, notes = plan.request, plan.ctx, plan.notes
    src, out, calib_text = request.src, request.output, request.calib_text
    hf_guess = _hf_guess(src)
    recipe = effective_recipe(probe.recipe, hf_guess, notes)
    calib_key = (
        "builtin"
        if calib_text == "builtin"
        else (file_key(Path(calib_text)) if Path(calib_text).is_file() else calib_text)
    )
    # as the stages will see it, less what the real run knows only then (tool versions, package versions)
    ctx = StageContext(
        request.target,
        recipe,
        out,
        calib_text,
        calib_key,
        {},
        probe.trace,
        rai_version=probe.rai_version,
        rai_source=probe.rai_source,
        dd_plugins=probe.dd_plugins,
        tools=_planned_tools(plan),
        rai_env=probe.rai_env,
        oga_version=probe.oga_version,
    )
    status = _disk_status(request, ctx, plan.stages)
    extra = []
    if hf_guess is None and src.kind != "folder" and recipe.quantize.engine != "gguf":  # gguf: the file's blocks
        extra.append(
            f"the group size is checked against the model's widths after the source step "
            f"(recipe: {recipe.quantize.group_size})"
        )
    if status.get("_stop"):
        extra.append(status["_stop"])
    in_dir = hf_guess or Path("<source hf folder>")
    rows = []
    for i, s in enumerate(plan.stages, start=2):
        rows.append(_stage_row(i, s, ctx, in_dir, status.get(s.NAME, "would run")))
        if s.PRODUCES_MODEL:
            in_dir = stage_dir(out, s.NAME)
    env = {k: v for k, v in ctx.tool_env().items() if k.startswith(("DD_PLUGINS", "OGA_NPU", "HF_", "RYZEN"))}
    return DryRun(
        request.req.source,
        out,
        request.target,
        recipe.name,
        plan.total,
        (*notes, *extra),
        source_mod.plan(src),
        tuple(rows),
        env,
        {k: v for k, v in env.items() if os.environ.get(k) != v},
        ctx.rai_env.describe() if ctx.rai_env is not None else None,
    )


def _stage_row(i: int, s, ctx: StageContext, in_dir: Path, status: str) -> StageRow:
    out = ctx.output
    row = StageRow(
        i, s.NAME, status, stage_dir(out, s.NAME), partial_dir(out, s.NAME), out / LOGS_DIR / f"{s.NAME}.log"
    )
    if status == "already done":
        return row
    est = estimate_line(s, ctx, in_dir) if in_dir.exists() else ""
    return replace(row, estimate=est, commands=tuple(s.describe(ctx, in_dir, row.partial)))


def _hf_guess(src) -> Path | None:
    """The HF folder the source step gives, when it is known without running it."""
    if src.kind == "folder":
        return Path(src.spec).expanduser().resolve()
    if src.kind == "gguf":
        cached = source_mod.gguf_cache_of(src.spec)
        return cached if (cached / "config.json").is_file() else None
    return None


def _planned_tools(plan: Plan) -> dict:
    from ..devices import find_rai_tool

    tools, rai_env = {}, plan.ctx.rai_env
    for s in plan.stages:
        if hasattr(s, "TOOL"):
            found = rai_env.tool(s.TOOL) if rai_env is not None else find_rai_tool(s.TOOL)
            tools[s.TOOL] = found or s.TOOL  # not found: ryzen_ai_env noted why the real run would stop
    return tools


def _disk_status(request: Request, ctx: StageContext, stages) -> dict:
    """Per stage, what the real run would do with what is on disk: 'already done' or
    'would run' (the same keys as the run; a hub source is compared by the manifest)."""
    req, out = request.req, request.output
    state = folder_state(out)
    if state.state in ("missing", "empty"):
        return {}
    if state.state == "foreign":
        return {"_stop": f"{out} exists and is not an oga-npu model folder: the real run would stop"}
    held = request.held_source(state)
    if held is not None and not req.force:
        return {
            "_stop": f"{out} holds another model (prepared from {held}): the real run would stop "
            f"({request.another_source_fix()})"
        }
    manifest = state.manifest or {}
    same_source = request.same_source(str((state.request or manifest).get("source", "")))
    source_key = request.source_key_on_disk()
    if request.src.kind == "hub":  # its key names the downloaded revision; trust the folder's record for the same id
        source_key = manifest.get("source_key") if same_source else None
    if source_key is None:
        return {}
    keys, final_key = stage_keys(source_key, stages, ctx)
    status: dict = {}
    if state.state == "ready" and not req.force and not req.from_stage and manifest.get("key") != final_key:
        status["_stop"] = (
            f"{out} is a ready model prepared with other settings: the real run would stop "
            "(pass --force to rebuild it, or --output another folder)"
        )
    redo = req.force
    for s in stages:
        if req.from_stage == s.NAME:
            redo = True
        done = stage_done(out, s.NAME)
        if done and done.get("key") == keys[s.NAME] and not redo:
            status[s.NAME] = "already done"
        else:
            redo = True
            status[s.NAME] = "would run"
    return status
