"""`oga-npu hello`: AMD's Ryzen AI hello-world as a command.

A 4-layer CNN (3->32->64->128->256 channels, 3x3 convolutions, ReLU, +1 at the end) on a
1x3x224x224 input, exported to ONNX (opset 17), quantized with Quark for ONNX to XINT8
(random calibration data, as AMD's example does), run on the CPU provider and then, where
the VitisAI provider and a Ryzen AI NPU are present, on the NPU with a fresh compile cache.
Reports each time, the speedup and how closely the INT8 output matches the FP32 model.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

CHANNELS = (3, 32, 64, 128, 256)
INPUT_SHAPE = (1, 3, 224, 224)


@dataclass
class HelloResult:
    workdir: str  # "" when the files went to a removed temporary folder
    fp32_cpu_ms: float
    int8_cpu_ms: float
    int8_npu_ms: float | None
    npu_skipped: str | None
    agreement_cosine: float  # INT8 vs FP32 output, 1.0 = identical direction
    agreement_rel_error: float  # mean |int8 - fp32| / mean |fp32|
    npu_vs_cpu_max_abs: float | None = None
    quantize_seconds: float = 0.0
    providers: list[str] = field(default_factory=list)
    runs: int = 10  # the times above are the mean of this many runs, per run


def build_fp32(path: Path, seed: int = 0) -> Path:
    import torch

    class CNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = torch.nn.ModuleList(
                torch.nn.Conv2d(a, b, 3, padding=1) for a, b in zip(CHANNELS, CHANNELS[1:])
            )

        def forward(self, x):
            for c in self.convs:
                x = torch.relu(c(x))
            return x + 1

    torch.manual_seed(seed)
    model = CNN().eval()
    torch.onnx.export(
        model,
        (torch.rand(*INPUT_SHAPE),),
        str(path),
        opset_version=17,
        input_names=["input"],
        output_names=["output"],
        dynamo=False,
    )
    return path


class _RandomReader:
    """Random calibration data, as AMD's hello-world does."""

    def __init__(self, n: int = 8, seed: int = 0):
        rng = np.random.default_rng(seed)
        self._it = iter([{"input": rng.random(INPUT_SHAPE, dtype=np.float32)} for _ in range(n)])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        pass


def quantize_xint8(fp32: Path, int8: Path) -> Path:
    from quark.onnx import XINT8_QCONFIG, ModelQuantizer

    ModelQuantizer(XINT8_QCONFIG).quantize_model(str(fp32), str(int8), _RandomReader())
    return int8


def time_session(sess, feed, runs: int = 10) -> tuple[float, np.ndarray]:
    out = sess.run(None, feed)[0]
    t0 = time.perf_counter()
    for _ in range(runs):
        out = sess.run(None, feed)[0]
    return (time.perf_counter() - t0) / runs * 1e3, out


def npu_provider_options(kind: str, cache_dir: Path) -> dict:
    opts = {"cache_dir": str(cache_dir), "cache_key": "oga_npu_hello"}
    if kind == "phoenix":
        rai = os.environ.get("RYZEN_AI_INSTALLATION_PATH", "")
        xclbins = sorted(Path(rai).rglob("*phoenix*/**/*.xclbin")) if rai else []
        opts["target"] = "X1"
        if xclbins:
            opts["xclbin"] = str(xclbins[0])
    return opts


def why_no_npu() -> tuple[str | None, str | None]:
    """(npu kind, reason the NPU run is skipped or None)."""
    import onnxruntime as ort

    from .devices import find_npus

    npus = find_npus()
    has_vitis = "VitisAIExecutionProvider" in ort.get_available_providers()
    if not npus and not has_vitis:
        return None, "no Ryzen AI NPU (PCI 1022:1502/17F0) and no VitisAI execution provider in this onnxruntime"
    if not npus:
        return None, "no Ryzen AI NPU found on this machine"
    if not has_vitis:
        return npus[0].kind, (
            "the VitisAI execution provider is not in this onnxruntime "
            "(install Ryzen AI Software's onnxruntime-vitisai)"
        )
    return npus[0].kind, None


def _noop(*_a) -> None:
    pass


def run_hello(workdir: Path | None = None, runs: int = 10, progress=_noop) -> HelloResult:
    """Everything is written inside `workdir` (Quark's quantized_info.csv and its temp
    files included); without one, inside a temporary folder that is removed at the end.
    `progress(event, step, index, total, message)` hears of each step (as prepare's stages)."""
    import shutil

    keep = workdir is not None
    work = Path(workdir) if keep else Path(tempfile.mkdtemp(prefix="oga-npu-hello-"))
    try:
        return _run(work, runs, progress, keep)
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _run(work: Path, runs: int, progress, keep: bool) -> HelloResult:
    import onnxruntime as ort

    from .tools import python_module_argv, reporting, run_tool, tool_env

    work.mkdir(parents=True, exist_ok=True)
    total = 4
    progress("start", "build", 1, total, "the CNN as FP32 ONNX")
    fp32 = build_fp32(work / "hello_fp32.onnx")
    progress("done", "build", 1, total, "")
    t0 = time.monotonic()
    # Quark prints its reports to stdout and writes quantized_info.csv into its working
    # directory: run it as a child in the work folder, its temp files there too.
    int8 = work / "hello_xint8.onnx"
    tmp = work / "tmp"
    tmp.mkdir(exist_ok=True)
    progress("start", "quantize", 2, total, "Quark XINT8, random calibration data")
    with reporting(lambda msg: progress("update", "quantize", 2, total, msg)):
        run_tool(
            python_module_argv("oga_npu.hello", "quantize", str(fp32), str(int8)),
            name="Quark ONNX quantize (XINT8)",
            cwd=work,
            env=tool_env({"PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp), "TEMP": str(tmp), "TMP": str(tmp)}),
            log_path=work / "quantize.log",
        )
    shutil_rm(tmp)
    qsecs = time.monotonic() - t0
    progress("done", "quantize", 2, total, "")
    progress("start", "cpu", 3, total, f"FP32 and XINT8 on the CPU, {runs} timed runs each")
    feed = {"input": np.random.default_rng(1).random(INPUT_SHAPE, dtype=np.float32)}
    cpu = ["CPUExecutionProvider"]
    fp32_ms, ref = time_session(ort.InferenceSession(str(fp32), providers=cpu), feed, runs)
    int8_ms, out = time_session(ort.InferenceSession(str(int8), providers=cpu), feed, runs)
    progress("done", "cpu", 3, total, "")
    a, b = out.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    cos = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    rel = float(np.abs(a - b).mean() / np.abs(b).mean())
    kind, skipped = why_no_npu()
    npu_ms = npu_diff = None
    if skipped is None:
        progress("start", "npu", 4, total, f"XINT8 on the NPU (compile, then {runs} timed runs)")
        cache = work / "npu_cache"
        shutil_rm(cache)
        sess = ort.InferenceSession(
            str(int8),
            providers=["VitisAIExecutionProvider"],
            provider_options=[npu_provider_options(kind or "strix", cache)],
        )
        npu_ms, npu_out = time_session(sess, feed, runs)
        npu_diff = float(np.abs(npu_out - out).max())
        progress("done", "npu", 4, total, "")
    else:
        progress("skip", "npu", 4, total, "skipped")
    return HelloResult(
        str(work) if keep else "",
        fp32_ms,
        int8_ms,
        npu_ms,
        skipped,
        cos,
        rel,
        npu_diff,
        round(qsecs, 1),
        ort.get_available_providers(),
        runs,
    )


def shutil_rm(path: Path) -> None:
    import shutil

    if path.exists():
        shutil.rmtree(path)


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 4 and sys.argv[1] == "quantize":
        quantize_xint8(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit("usage: python -m oga_npu.hello quantize FP32.onnx INT8.onnx")
