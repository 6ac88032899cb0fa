"""Plugins stage: compile bfp16 operator plugins for the model's new operator shapes.

Input: the DML model folder from the build stage. Output: `transaction-plugin/<name>.zip`
(checked: a non-empty zip), installed into `dd_plugins/` (or `--dd-plugins DIR`), whose
path later tools get as DD_PLUGINS_ROOT; the manifest's plugins stage records it as
`dd_plugins_root` (read by oga_npu.ryzenai.plugins_root). Tool: `onnx_utils vaiml --model-dir
<dml folder> --plugin_name <name> --compile --ops_type bfp16 --context_length M` (Ryzen AI
1.6+, docs/oga_op_prepare.rst "Compiling Operators for OGA Models"), the one of the Ryzen AI
env (oga_npu.ryzenai), with the env's folders first on PATH, in the stage folder (the tool
writes <plugin>/, vitisai_config.json and ops_cache_dir/ into its working directory).

What the tool does (ryzenai_onnx_utils vaiml source, public copy; AMD documents only the
command): `--context_length` takes 2048 (default), 3072 or 4096 and compiles the attention
operators for M up to it, so M is the smallest of those >= the recipe's max_seq_length (4096
at most: longer prompts are prefilled in chunks); a folder without model.onnx prints
`Error: 'model.onnx' not found in <dir>` to stdout and exits 1; a graph without the
attention/projection attributes it needs prints `Warning: Cannot generate OPS JSON ...`,
writes a null <plugin>.json and exits 0 - a failure here. On by default for `--target
hybrid`; `compile_ops = "never"` (AMD's plain flow) turns it off and model_generate gets the
quantized folder.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from ..errors import ToolFailed, ToolTimeout
from ..tools import run_tool

NAME = "plugins"
PRODUCES_MODEL = False
TOOL = "onnx_utils"
ZIP_DIR = "transaction-plugin"
CONTEXT_LENGTHS = (2048, 3072, 4096)  # onnx_utils vaiml --context_length choices (default 2048)
NO_OPS_JSON = "Cannot generate OPS JSON"


def applies(ctx) -> bool:
    mode = ctx.recipe.hybrid.compile_ops
    return ctx.target == "hybrid" and mode != "never"


def context_length(max_seq_length: int) -> int:
    """--context_length: the smallest value the tool accepts that covers min(max_seq_length, 4096)."""
    want = min(max_seq_length, CONTEXT_LENGTHS[-1])
    return next(c for c in CONTEXT_LENGTHS if c >= want)


def key(ctx) -> dict:
    return {
        "plugin_name": ctx.recipe.hybrid.plugin_name,
        "ops_type": "bfp16",
        "context_length": context_length(ctx.recipe.hybrid.max_seq_length),
        "rai": ctx.rai_version,
    }


def argv(ctx, model_dir: Path) -> list[str]:
    return [
        ctx.tool_path(TOOL),
        "vaiml",
        "--model-dir",
        str(model_dir),
        "--plugin_name",
        ctx.recipe.hybrid.plugin_name,
        "--compile",
        "--ops_type",
        "bfp16",
        "--context_length",
        str(context_length(ctx.recipe.hybrid.max_seq_length)),
    ]


def describe(ctx, in_dir: Path, out_dir: Path) -> list[str]:
    name, n = ctx.recipe.hybrid.plugin_name, ctx.recipe.hybrid.max_seq_length
    m = context_length(n)
    why = f"the smallest of {'/'.join(map(str, CONTEXT_LENGTHS))} covering the recipe's max_seq_length {n}"
    if n > m:
        why = f"the largest it accepts; the recipe's max_seq_length {n} is prefilled in chunks"
    return [
        "$ " + " ".join(argv(ctx, in_dir)) + f"   (cwd {out_dir})",
        f"  --context_length {m}: {why} (the tool's default 2048 compiles attention only up to M=2048)",
        f"  then check {out_dir / ZIP_DIR / (name + '.zip')} and install it as {ctx.dd_plugins / (name + '.zip')}",
    ]


def check_zip(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(path)
    if path.stat().st_size == 0 or not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a zip file")
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if not names:
        raise ValueError(f"{path} is an empty zip")
    return names


def output_tail(log_path: Path | None, n: int = 8) -> list[str]:
    """The last lines of this run's output (stdout and stderr) in the stage log: vaiml prints
    its errors to stdout, which the stderr tail of a failed tool misses."""
    if log_path is None or not log_path.is_file():
        return []
    lines = log_path.read_text(errors="replace").splitlines()
    start = max((i for i, line in enumerate(lines) if line.startswith("$ ")), default=-1) + 1
    return [line for line in lines[start:] if line.strip() and not line.startswith("# ")][-n:]


def ops_json_problem(out_dir: Path, name: str, tail: list[str]) -> str | None:
    """The tool's exit-0 failure: no operator list (null <plugin>.json, the warning in its output)."""
    ops_json = out_dir / name / f"{name}.json"
    warned = any(NO_OPS_JSON in line for line in tail)
    if warned or (ops_json.is_file() and ops_json.read_text().strip() == "null"):
        return f"exited 0 but wrote no operator list ({ops_json} is null): the graph lacks what vaiml needs"
    return None


def run_stage(ctx, in_dir: Path, out_dir: Path, log_path: Path) -> dict:
    a = argv(ctx, in_dir)
    env, version = ctx.rai_tool_env(), ctx.tool_versions.get(TOOL)
    try:
        run_tool(a, name=TOOL, env=env, cwd=out_dir, log_path=log_path, version=version)
    except ToolTimeout:
        raise
    except ToolFailed as e:
        raise ToolFailed(TOOL, a, e.code, output_tail(log_path) or e.tail, log_path, version) from None
    name = ctx.recipe.hybrid.plugin_name
    tail = output_tail(log_path)
    problem = ops_json_problem(out_dir, name, tail)
    if problem:
        raise ToolFailed(TOOL, a, 0, [*tail, problem], log_path, version)
    candidates = [out_dir / ZIP_DIR / f"{name}.zip", in_dir / ZIP_DIR / f"{name}.zip"]
    zip_path = next((c for c in candidates if c.is_file()), candidates[0])
    try:
        entries = check_zip(zip_path)
    except (FileNotFoundError, ValueError) as e:
        msg = f"no plugin zip at {zip_path}" if isinstance(e, FileNotFoundError) else str(e)
        raise ToolFailed(TOOL, a, 0, [f"exited 0 but {msg}"], log_path) from e
    if zip_path.parent != out_dir / ZIP_DIR:
        (out_dir / ZIP_DIR).mkdir(exist_ok=True)
        shutil.copy2(zip_path, out_dir / ZIP_DIR / zip_path.name)
    ctx.dd_plugins.mkdir(parents=True, exist_ok=True)
    installed = ctx.dd_plugins / zip_path.name
    tmp = installed.with_name(installed.name + ".tmp")
    shutil.copy2(zip_path, tmp)
    os.replace(tmp, installed)
    ctx.collect_traces(out_dir, NAME)
    return {
        "zip": str(installed),
        "entries": entries,
        "context_length": context_length(ctx.recipe.hybrid.max_seq_length),
        "dd_plugins_root": str(ctx.dd_plugins),
    }
