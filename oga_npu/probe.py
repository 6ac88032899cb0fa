"""Child-process probes: what would crash the caller is tried here first.

    python -m oga_npu.probe model DIR [PROVIDER]   load DIR and generate a few tokens
    python -m oga_npu.probe webgpu                 obtain a WebGPU adapter from a tiny session

Run through `probe_model` / `probe_webgpu` (via tools.capture): a native crash ends the
child, never the caller, and comes back as its signal plus what was running (loading or
generating, from guard's status file).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

PROBE_TOKENS = 4
PROBE_TIMEOUT_S = 300
# Lines in a failed probe's stderr that name the cause, best first: the Vulkan loader's own
# words, then Dawn's/ORT's.
CAUSE_RES = (
    re.compile(r"vkCreateInstance|\bICD\b|libvulkan|cannot open shared object", re.I),
    re.compile(r"adapter|Vulkan|Failed to", re.I),
    re.compile(r"error", re.I),
)


@dataclass
class ProbeResult:
    ok: bool
    crash: str | None = None  # 'SIGSEGV', '0xC0000409', ... when the child died of a signal
    phase: str | None = None  # what was running when it failed (loading, generating with)
    message: str = ""  # the cause (the loader's own words where there are some)
    info: dict | None = None  # what a successful probe reports
    log: Path | None = None  # a crashed probe's stderr (with faulthandler's Python stacks)


def _cause(err: str) -> str:
    lines = [ln.strip() for ln in err.splitlines() if ln.strip()]
    errors = [ln[len("Error: ") :] for ln in lines if ln.startswith("Error: ")]
    if errors:
        return errors[-1]
    for cause in CAUSE_RES:
        hits = [ln for ln in lines if cause.search(ln) and not ln.startswith(("File ", "Traceback"))]
        if hits:
            return hits[0][:400]
    return (lines or ["no output"])[-1][:400]


def _run(args: list[str], timeout: float) -> ProbeResult:
    from .guard import STATUS_ENV, read_status, signal_name
    from .tools import capture, network_env, tool_env

    with tempfile.TemporaryDirectory(prefix="oga-npu-probe-") as d:
        status = Path(d) / "status.json"
        code, out, err = capture(
            [sys.executable, "-X", "faulthandler", "-m", "oga_npu.probe", *args],
            env=tool_env({**network_env(), STATUS_ENV: str(status)}),
            timeout=timeout,
        )
        st = read_status(status)
    sig = signal_name(code)
    if code == 0:
        try:
            info = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            info = {}
        return ProbeResult(True, info=info)
    log = None
    if sig:
        from .guard import _crash_log_path

        log = _crash_log_path()
        try:
            log.write_text(err, encoding="utf-8")
        except OSError:
            log = None
        err = "\n".join(
            ln
            for ln in err.splitlines()
            if not ln.startswith(("Fatal Python error", "Thread 0x", "Current thread", "  File "))
        )
    return ProbeResult(
        False, sig, st.get("phase"), _cause(err) if not sig else (_cause(err) if err.strip() else ""), log=log
    )


def probe_model(path: Path, provider: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> ProbeResult:
    """Load `path` and generate a few tokens in a child process."""
    return _run(["model", str(path), *([provider] if provider else [])], timeout)


def probe_webgpu(timeout: float = 120) -> ProbeResult:
    """Obtain a WebGPU adapter by running a one-node model on the WebGPU EP, in a child process."""
    return _run(["webgpu"], timeout)


def _model(path: str, provider: str | None) -> dict:
    from .generate import GenerationOptions, stream_generate
    from .model import load

    lm = load(path, provider=provider)
    n = 0
    for ev in stream_generate(lm, "Hello", GenerationOptions(max_tokens=PROBE_TOKENS), raw=True):
        n = ev.generated_tokens
    return {"provider": lm.provider, "decoder": lm.decoder, "tokens": n}


def _webgpu() -> dict:
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from .webgpu import ep as webgpu

    lib = webgpu.library_path()
    if lib is None:
        raise RuntimeError(f"the WebGPU plugin EP is not installed ({webgpu.INSTALL_HINT})")
    ort.register_execution_provider_library(webgpu.EP_NAME, lib)
    devices = [d for d in ort.get_ep_devices() if d.ep_name == webgpu.EP_NAME]
    if not devices:
        raise RuntimeError("the WebGPU EP lists no device")
    g = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])],
        "probe",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4])],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    so = ort.SessionOptions()
    so.add_provider_for_devices(devices[:1], {})
    sess = ort.InferenceSession(m.SerializeToString(), sess_options=so)
    if webgpu.EP_NAME not in sess.get_providers():
        raise RuntimeError(f"the session runs on {sess.get_providers()}, not WebGPU")
    x = np.arange(4, dtype=np.float32)
    out = sess.run(None, {"a": x, "b": x})[0]
    if not np.allclose(out, 2 * x):
        raise RuntimeError(f"WebGPU computed {out.tolist()} for 2*{x.tolist()}")
    d = devices[0].device
    return {"adapter": f"{d.vendor} {str(d.type).split('.')[-1]}".strip(), "providers": sess.get_providers()}


def main(argv: list[str]) -> int:
    from .errors import OgaNpuError

    try:
        if argv[:1] == ["model"] and len(argv) >= 2:
            info = _model(argv[1], argv[2] if len(argv) > 2 else None)
        elif argv[:1] == ["webgpu"]:
            info = _webgpu()
        else:
            print("usage: python -m oga_npu.probe model DIR [PROVIDER] | webgpu", file=sys.stderr)
            return 2
    except OgaNpuError as e:
        print(f"Error: {e.message}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the probe reports any failure as its cause
        print(f"Error: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", file=sys.stderr)
        return 1
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
