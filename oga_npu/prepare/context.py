"""What the stages read (StageContext) and what prepare returns (PrepareResult)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..recipe import Recipe
from ..tools import network_env, tool_env
from ..workdir import LOGS_DIR


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


def noop(*_a) -> None:
    pass
