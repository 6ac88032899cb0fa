"""A fake Ryzen AI release environment folder, built by a test.

`make_rai_env(root, "1.8")` writes `root/ryzen-ai-1.8.0/` in the POSIX layout of a conda or
venv env: `bin/python` (tests/fake_tools/fake_env_python: the builder, recording its argv
and environment), `bin/onnx_utils`, `bin/model_generate`, `bin/model_benchmark` (the fakes
of tests/fake_tools, told the env's release), and the dist-info folders of the packages
the release ships (AMD's onnxruntime-genai at the version it pins; model-generate in 1.8)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

FAKE_TOOLS = Path(__file__).resolve().parent / "fake_tools"
PINS = {"1.6": "0.9.2", "1.7": "0.11.2", "1.7.1": "0.11.2", "1.8": "0.14.0"}
TOOLS = ("onnx_utils", "model_generate", "model_benchmark")


def _wrapper(path: Path, target: Path, release: str, oga: str) -> None:
    path.write_text(
        "#!/bin/sh\n"
        f'FAKE_EXE="$0" FAKE_TOOL_VERSION="${{FAKE_TOOL_VERSION:-{release}.0}}" '
        f'FAKE_OGA_VERSION="{oga}" exec "{sys.executable}" "{target}" "$@"\n'
    )
    path.chmod(0o755)


def make_rai_env(
    root: Path,
    release: str,
    name: str | None = None,
    tools=TOOLS,
    python: bool = True,
    oga: str | None = None,
    packages: bool = True,
    builder_deps: bool = True,
) -> Path:
    oga = oga or PINS[release]
    prefix = Path(root) / (name or f"ryzen-ai-{release}" + (".0" if release.count(".") == 1 else ""))
    (prefix / "bin").mkdir(parents=True, exist_ok=True)
    if python:
        _wrapper(prefix / "bin" / "python", FAKE_TOOLS / "fake_env_python", release, oga)
    for t in tools:
        _wrapper(prefix / "bin" / t, FAKE_TOOLS / t, release, oga)
    sp = prefix / "lib" / "python3.12" / "site-packages"
    sp.mkdir(parents=True, exist_ok=True)
    if packages:
        (sp / f"onnxruntime_genai_directml_ryzenai-{oga}.dist-info").mkdir(exist_ok=True)
        for dist in ("torch-2.7.1", "onnx_ir-0.1.12") if builder_deps else ():  # what AMD's prepare page installs
            (sp / f"{dist}.dist-info").mkdir(exist_ok=True)
        (sp / "onnxruntime_vitisai-1.23.0.dist-info").mkdir(exist_ok=True)
        if release == "1.8":
            (sp / "model_generate-1.8.0.dist-info").mkdir(exist_ok=True)
    return prefix


def env_for(prefix: Path, **extra) -> dict:
    """Environment for run_cli: the host taken for Windows (model_generate runs there), the
    fake tools' log, and nothing of the env on PATH (oga-npu must find it itself)."""
    env = {"OGA_NPU_HOST_OS": "Windows", "OGA_NPU_FAKE_LOG": str(Path(prefix).parent / "fake.jsonl")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def path_head(call: dict) -> str:
    return call["env"]["PATH"].split(os.pathsep)[0]


def fake_env(tmp_path, release="1.6", **extra) -> dict:
    """The active conda env is a fake Ryzen AI env with no release in its name (--rai-version
    or CONDA_DEFAULT_ENV tell oga-npu) and 1.6's packages (so the quantize and build stages of
    the base folder stay valid); its fake tools keep the rules of `release` (FAKE_TOOL_VERSION).
    The host is taken for Windows, where model_generate runs."""
    rai = make_rai_env(tmp_path, "1.6", name="rai-env")
    env = {
        "FAKE_TOOL_VERSION": f"{release}.0",
        "CONDA_PREFIX": str(rai),
        "OGA_NPU_HOST_OS": "Windows",
        "OGA_NPU_FAKE_LOG": str(tmp_path / "fake.jsonl"),
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env
