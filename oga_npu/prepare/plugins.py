"""Plugins stage: compile bfp16 operator plugins for the model's new operator shapes.

Input: the DML model folder from the build stage. Output: `transaction-plugin/<name>.zip`
(checked: a non-empty zip), installed into `dd_plugins/` (or `--dd-plugins DIR`), whose
path later tools get as DD_PLUGINS_ROOT. Tool: `onnx_utils vaiml --model-dir <dml folder>
--plugin_name <name> --compile --ops_type bfp16` (Ryzen AI 1.6+, "Compiling Operators for
OGA Models"), the one of the Ryzen AI env (oga_npu.ryzenai), with the env's folders first
on PATH. On by default for `--target hybrid`; `compile_ops = "never"` turns it off (and
model_generate then gets the quantized folder).
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from ..errors import ToolFailed
from ..tools import run_tool

NAME = "plugins"
PRODUCES_MODEL = False
TOOL = "onnx_utils"
ZIP_DIR = "transaction-plugin"


def applies(ctx) -> bool:
    mode = ctx.recipe.hybrid.compile_ops
    return ctx.target == "hybrid" and mode != "never"


def key(ctx) -> dict:
    return {"plugin_name": ctx.recipe.hybrid.plugin_name, "ops_type": "bfp16", "rai": ctx.rai_version}


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
    ]


def describe(ctx, in_dir: Path, out_dir: Path) -> list[str]:
    name = ctx.recipe.hybrid.plugin_name
    return [
        "$ " + " ".join(argv(ctx, in_dir)) + f"   (cwd {out_dir})",
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


def run_stage(ctx, in_dir: Path, out_dir: Path, log_path: Path) -> dict:
    a = argv(ctx, in_dir)
    run_tool(a, name=TOOL, env=ctx.rai_tool_env(), cwd=out_dir, log_path=log_path, version=ctx.tool_versions.get(TOOL))
    name = ctx.recipe.hybrid.plugin_name
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
    return {"zip": str(installed), "entries": entries, "dd_plugins_root": str(ctx.dd_plugins)}
