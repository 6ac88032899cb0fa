"""`oga-npu trace DIR`: what a prepare run did, from its logs, markers and ONNX graphs.

For each stage: the commands with exit code and duration (from logs/<stage>.log), the
plugin zip's contents, and how the model's nodes split by op type and domain before
(the build stage's graph) and after hybrid generation (the graph genai_config.json names), counted from the
graphs themselves.
"""

from __future__ import annotations

import collections
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .workdir import LOGS_DIR, read_json, stage_dir

CMD_RE = re.compile(r"^\$ (.+)$")
EXIT_RE = re.compile(r"^# exit code (-?\d+) after ([\d.]+) s$")


@dataclass
class Command:
    stage: str
    argv: str
    exit_code: int | None = None
    seconds: float | None = None


@dataclass
class TraceSummary:
    commands: list[Command] = field(default_factory=list)
    plugin_zip: str | None = None
    plugin_entries: list[str] = field(default_factory=list)
    graphs: dict[str, dict[str, int]] = field(default_factory=dict)  # label -> "domain:op" -> count
    trace_files: list[str] = field(default_factory=list)


def parse_log(path: Path, stage: str) -> list[Command]:
    cmds: list[Command] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = CMD_RE.match(line)
        if m:
            cmds.append(Command(stage, m.group(1)))
            continue
        m = EXIT_RE.match(line)
        if m and cmds:
            cmds[-1].exit_code, cmds[-1].seconds = int(m.group(1)), float(m.group(2))
    return cmds


def count_nodes(onnx_path: Path) -> dict[str, int]:
    import onnx

    m = onnx.load(str(onnx_path), load_external_data=False)
    c = collections.Counter(f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in m.graph.node)
    return dict(sorted(c.items()))


def summarize(model_dir: Path) -> TraceSummary:
    s = TraceSummary()
    logs = model_dir / LOGS_DIR
    order = ["quantize", "build", "plugins", "hybrid", "validate"]
    if logs.is_dir():
        for f in sorted(logs.glob("*.log"), key=lambda p: order.index(p.stem) if p.stem in order else 99):
            s.commands += parse_log(f, f.stem)
        s.trace_files = sorted(
            str(p.relative_to(model_dir)) for p in logs.rglob("*") if p.is_file() and "trace" in p.name.lower()
        )
    plug = read_json(stage_dir(model_dir, "plugins") / "done.json")
    if plug:
        zip_path = Path(plug["detail"]["zip"])
        local = stage_dir(model_dir, "plugins") / "transaction-plugin" / zip_path.name
        z = local if local.is_file() else zip_path
        s.plugin_zip = str(zip_path)
        if z.is_file():
            with zipfile.ZipFile(z) as zf:
                s.plugin_entries = [f"{i.filename} ({i.file_size} B)" for i in zf.infolist()]
    for label, folder, name in (
        ("before (build)", stage_dir(model_dir, "build"), None),
        ("after (hybrid)", stage_dir(model_dir, "hybrid"), None),
    ):
        if not folder.is_dir():
            continue
        cfg = read_json(folder / "genai_config.json") or {}
        fname = name or cfg.get("model", {}).get("decoder", {}).get("filename", "model.onnx")
        if (folder / fname).is_file():
            try:
                s.graphs[label] = count_nodes(folder / fname)
            except Exception as e:  # noqa: BLE001 - an unreadable graph is reported, not fatal
                s.graphs[label] = {f"(unreadable: {type(e).__name__})": 0}
    if not s.graphs and (model_dir / "genai_config.json").is_file():
        cfg = read_json(model_dir / "genai_config.json") or {}
        fname = cfg.get("model", {}).get("decoder", {}).get("filename", "model.onnx")
        if (model_dir / fname).is_file():
            s.graphs["model"] = count_nodes(model_dir / fname)
    return s


def render(s: TraceSummary) -> str:
    out = ["commands:"]
    for c in s.commands:
        code = "running/killed" if c.exit_code is None else f"exit {c.exit_code}"
        secs = f"{c.seconds:.1f} s" if c.seconds is not None else "-"
        out.append(f"  [{c.stage}] {code}, {secs}: {c.argv}")
    if not s.commands:
        out.append("  (no logs)")
    if s.plugin_zip:
        out.append(f"plugin zip: {s.plugin_zip}")
        out += [f"  {e}" for e in s.plugin_entries]
    if s.trace_files:
        out.append("trace files:")
        out += [f"  {t}" for t in s.trace_files]
    labels = list(s.graphs)
    if labels:
        keys = sorted({k for g in s.graphs.values() for k in g})
        w = max(len(k) for k in keys + ["node (domain:op)"])
        out.append("nodes by op type:")
        out.append(f"  {'node (domain:op)':<{w}}  " + "  ".join(f"{lab:>16}" for lab in labels))
        for k in keys:
            out.append(f"  {k:<{w}}  " + "  ".join(f"{s.graphs[lab].get(k, 0):>16}" for lab in labels))
        out.append(f"  {'total':<{w}}  " + "  ".join(f"{sum(s.graphs[lab].values()):>16}" for lab in labels))
    return "\n".join(out)
