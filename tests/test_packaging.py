"""A wheel install works from any directory; the README's commands run in any order."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the sources, installed with --target (no deps: the
    dependencies come from this environment, the package and its recipes from the wheel)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("oga_npu",):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy2(REPO / name, src / name)
    wheels = tmp_path_factory.mktemp("wheels")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    r = subprocess.run(
        pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)],
        capture_output=True,
        text=True,
        cwd=src,
    )
    assert r.returncode == 0, r.stderr
    wheel = next(wheels.glob("oga_npu-*.whl"))
    target = tmp_path_factory.mktemp("site")
    r = subprocess.run(
        pip + ["install", "--no-deps", "--target", str(target), str(wheel)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return target


def cli(target: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OGA_NPU_RECIPES")}
    env["PYTHONPATH"] = str(target)  # the installed copy only: the checkout is not on the path
    return subprocess.run(
        [sys.executable, "-m", "oga_npu", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_wheel_lists_recipes_and_plans_from_an_empty_directory(installed, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    r = subprocess.run(
        [sys.executable, "-c", "import oga_npu; print(oga_npu.__file__)"],
        capture_output=True,
        text=True,
        cwd=empty,
        env={**os.environ, "PYTHONPATH": str(installed)},
    )
    assert Path(r.stdout.strip()).is_relative_to(installed), r.stdout + r.stderr
    r = cli(installed, empty, "recipes")
    assert r.returncode == 0, r.stderr
    for name in ("default", "cpu-fast", "builder-int4"):
        assert any(line.startswith(name + " ") and str(installed) in line for line in r.stdout.splitlines()), r.stdout
    r = cli(installed, empty, "prepare", "HuggingFaceTB/SmolLM2-135M-Instruct", "--recipe", "cpu-fast", "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "quantize: would run" in r.stdout and "nothing was written" in r.stdout
    assert list(empty.iterdir()) == []
    r = cli(installed, empty, "models", "--available", "--json")  # the catalog ships in the wheel
    assert r.returncode == 0 and any(row["target"] == "hybrid" for row in json.loads(r.stdout)), r.stderr


def test_default_output_names_let_recipes_run_in_any_order(tmp_path, tiny_model, tiny_hf, monkeypatch):
    """quickstart.sh passes no --output: a default-recipe folder and a cpu-fast one get
    different names, so either order works (a ready folder is never overwritten)."""
    from oga_npu.prepare import PrepareRequest, prepare
    from oga_npu.prepare import source as source_mod
    from oga_npu.prepare.request import default_output

    assert (
        "--output" not in (REPO / "scripts" / "quickstart.sh").read_text().split("oga-npu prepare", 1)[1].split("\n")[0]
    )
    monkeypatch.setenv("OGA_NPU_MODELS", str(tmp_path / "models"))
    src = source_mod.classify(str(tiny_hf))
    fast = default_output(src, "cpu", "cpu-fast")
    assert fast != default_output(src, "cpu", "default") == tmp_path / "models" / f"{src.name}-cpu"
    shutil.copytree(tiny_model, fast)  # as if `quickstart.sh --recipe cpu-fast` ran first
    again = prepare(PrepareRequest(source=str(tiny_hf), recipe="cpu-fast", dry_run=True))
    assert again.output == fast and not any("would stop" in ln for ln in again.plan)
    assert sum("already done" in ln for ln in again.plan) == 3
    other = prepare(PrepareRequest(source=str(tiny_hf), recipe="default", dry_run=True))
    assert other.output != fast and not any("would stop" in ln for ln in other.plan)


def test_wheel_carries_the_chat_page(installed):
    """Every file the page loads (/web/NAME in index.html) is in the wheel and served (web.FILES)."""
    import re

    from oga_npu.server import web

    page = installed / "oga_npu" / "server" / "web"
    html = (page / "index.html").read_text()
    names = set(re.findall(r'"/web/([^"]+)"', html))
    assert {"app.js", "markdown.js", "style.css"} <= names
    for name in names | set(web.FILES):
        assert (page / name).is_file(), name
    assert names <= set(web.FILES)


def test_wheel_store_is_the_per_user_data_folder(installed, tmp_path):
    """A wheel install has no checkout: its model store is $XDG_DATA_HOME/oga-npu/models
    (OGA_NPU_MODELS unset), the same from any directory."""
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "OGA_NPU_RECIPES", "OGA_NPU_MODELS")}
    env.update(PYTHONPATH=str(installed), XDG_DATA_HOME=str(tmp_path / "data"))
    r = subprocess.run(
        [sys.executable, "-m", "oga_npu", "models", "--where"],
        capture_output=True,
        text=True,
        cwd=empty,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(tmp_path / "data" / "oga-npu" / "models")
    r = subprocess.run(
        [sys.executable, "-m", "oga_npu", "models"], capture_output=True, text=True, cwd=empty, env=env, timeout=300
    )
    assert r.returncode == 0 and "(the per-user data folder; OGA_NPU_MODELS overrides)" in r.stderr, r.stderr
    assert list(empty.iterdir()) == []
