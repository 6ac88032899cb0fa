"""Native crashes reported in one line, never silently.

A segfault or abort inside onnxruntime(-genai) kills the Python process before any
handler runs. So `run` and `chat` fork before loading (on Windows: start themselves once
more); the child runs the command on the same terminal (streaming and Ctrl+C behave as
before) and the parent only waits. The child notes what it is doing (`phase`: loading or
generating, the folder, the provider) in a small status file; when the child dies of a
signal the parent prints one line from it.
`oga-npu doctor -m` uses the same status file for its load-and-generate probe.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from pathlib import Path

STATUS_ENV = "OGA_NPU_STATUS"  # set in the child: where it notes its phase
CRASH_LOG_ENV = "OGA_NPU_CRASH_LOG"  # set in the child: where faulthandler writes the stacks of a crash
SUPERVISE_ENV = "OGA_NPU_SUPERVISE"  # "0" turns the supervising parent off
SUPERVISED_COMMANDS = ("run", "chat")
CRASH_SIGNALS = {
    getattr(signal, n)
    for n in ("SIGSEGV", "SIGABRT", "SIGBUS", "SIGILL", "SIGFPE", "SIGTRAP", "SIGSYS")
    if hasattr(signal, n)
}
WINDOWS_CRASH_MIN = 0xC0000000  # NTSTATUS codes (0xC0000005 access violation, 0xC0000409 ...)


_status_path: str | None = None  # set in a forked child
_crash_file = None  # the open crash log (faulthandler writes into it at the crash)


def enable_crash_log(path: str) -> None:
    """In the child: a native crash writes every thread's Python stack to `path`."""
    global _crash_file
    import faulthandler

    try:
        _crash_file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - open for the process's life (faulthandler)
        faulthandler.enable(_crash_file, all_threads=True)
    except OSError:
        _crash_file = None


def phase(what: str, model: Path | str | None = None, provider: str | None = None) -> None:
    """Note what this process is doing for a supervising parent (no-op when there is none)."""
    path = _status_path or os.environ.get(STATUS_ENV)
    if not path:
        return
    data = {"phase": what}
    if model is not None:
        data["model"] = str(model)
    if provider is not None:
        data["provider"] = provider
    try:
        old = json.loads(Path(path).read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        old = {}
    try:
        Path(path).write_text(json.dumps({**old, **data}), encoding="utf-8")
    except OSError:
        pass


def read_status(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}


def signal_name(code: int) -> str | None:
    """The crash a return code means ('SIGSEGV', '0xC0000409'), None for a normal exit."""
    if code < 0 and -code in CRASH_SIGNALS:
        return signal.Signals(-code).name
    if code >= WINDOWS_CRASH_MIN:
        return f"0x{code:08X}"
    return None


def crash_line(sig: str, status: dict, fallback_model: str | None = None, log: Path | None = None) -> str:
    """The one line a crash ends with: what ran, the provider, the folder, the log, the next step."""
    what = status.get("phase", "starting")
    model = status.get("model") or fallback_model or "the model"
    prov = status.get("provider") or "its configured provider"
    nxt = (
        f"run `oga-npu doctor -m {model}` (it loads and generates in a child process), or try "
        f"`--provider cpu`; OGA_NPU_SUPERVISE=0 shows the raw crash"
    )
    where = f"; the Python stacks at the crash: {log}" if log is not None else ""
    return f"Error: native crash ({sig}) while {what} {model} on provider {prov}{where}; next: {nxt}"


def _crash_log_path() -> Path:
    import time

    try:
        from .workdir import home

        d = home() / "logs"
        d.mkdir(parents=True, exist_ok=True)
    except OSError:
        d = Path(tempfile.gettempdir())
    return d / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def should_supervise(args: list[str]) -> bool:
    if _status_path or os.environ.get(STATUS_ENV) or os.environ.get(SUPERVISE_ENV, "1") == "0":
        return False
    cmd = next((a for a in args if not a.startswith("-")), None)
    return cmd in SUPERVISED_COMMANDS and not any(a in ("-h", "--help") for a in args)


def _model_arg(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a in ("-m", "--model") and i + 1 < len(args):
            return args[i + 1]
        if a.startswith("--model="):
            return a.split("=", 1)[1]
    return None


def supervise(args: list[str]) -> int | None:
    """Run the command under a supervising parent. Returns None in the process that should
    go on with the command, and the exit code to leave with in the parent."""
    global _status_path
    from .tools import fork_supervised, network_env, run_supervised, tool_env

    fd, path = tempfile.mkstemp(prefix="oga-npu-status-", suffix=".json")
    os.close(fd)
    status = Path(path)
    crash_log = _crash_log_path()
    try:
        if hasattr(os, "fork"):
            code = fork_supervised()
            if code is None:  # the child: note phases in the file, run the command
                _status_path = path
                enable_crash_log(str(crash_log))
                return None
        else:
            code = run_supervised(
                [sys.executable, "-m", "oga_npu", *args],
                tool_env({**network_env(), STATUS_ENV: path, CRASH_LOG_ENV: str(crash_log)}),
            )
        sig = signal_name(code)
        if sig is not None:
            has_log = crash_log.is_file() and crash_log.stat().st_size > 0
            print(
                crash_line(sig, read_status(status), _model_arg(args), crash_log if has_log else None),
                file=sys.stderr,
                flush=True,
            )
            if not has_log:
                crash_log.unlink(missing_ok=True)
            return 1
        crash_log.unlink(missing_ok=True)
        if code < 0:  # killed from outside (SIGINT, SIGTERM, ...): the usual 128 + signal
            return 128 - code
        return code
    finally:
        if _status_path is None:  # the parent cleans up after the child
            status.unlink(missing_ok=True)
