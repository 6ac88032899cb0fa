"""`pip install "oga-npu[ryzenai]"` into a Ryzen AI env installs nothing over AMD's runtime.

AMD's onnxruntime-genai-directml-ryzenai comes from AMD's index: a stub distribution of that
name stands in for it, beside the public onnxruntime-genai 0.14.0 (Ryzen AI 1.8's version,
the same import name). Needs PyPI (pip's cache makes it cheap). The real install into such a
venv, and `oga-npu run`/`chat` there, run in scripts/test_oga_versions.sh (its 0.14.0 venv)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
from make_stub_wheel import make_stub_wheel

pytestmark = pytest.mark.slow


def _pip(py: Path, *args: str) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [str(py), "-m", "pip", "--disable-pip-version-check", *args], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


def _would_install(py: Path, spec: str, report: Path) -> dict[str, str]:
    _pip(py, "install", "-q", "--dry-run", "--report", str(report), "-e", spec)
    return {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in json.loads(report.read_text())["install"]}


def test_ryzenai_extra_leaves_amds_runtime_alone(tmp_path):
    venv = tmp_path / "rai-env"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    _pip(py, "install", "-q", "onnxruntime-genai==0.14.0")
    _pip(
        py,
        "install",
        "-q",
        "--no-deps",
        "--no-index",
        str(make_stub_wheel("onnxruntime-genai-directml-ryzenai", "0.14.0", tmp_path / "stub")),
    )
    plan = _would_install(py, f"{REPO}[ryzenai]", tmp_path / "ryzenai.json")
    assert "oga-npu" in plan
    assert not [n for n in plan if n.startswith("onnxruntime")], plan
    # The same check on the cpu extra does see a runtime going in: the assertion above can fail.
    cpu = _would_install(py, f"{REPO}[cpu]", tmp_path / "cpu.json")
    assert cpu.get("onnxruntime-genai", "").startswith("0.18"), cpu
    listed = {p["name"].lower(): p["version"] for p in json.loads(_pip(py, "list", "--format=json").stdout)}
    assert listed["onnxruntime-genai-directml-ryzenai"] == listed["onnxruntime-genai"] == "0.14.0", listed
