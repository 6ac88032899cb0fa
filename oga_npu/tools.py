"""The one place that starts external programs.

Every tool call goes through `run_tool`: argv built by the caller from typed fields,
the environment passed explicitly (a copy of os.environ plus additions), all output
appended to the stage log, the stderr tail kept for the error message.
"""

from __future__ import annotations

import codecs
import collections
import contextlib
import contextvars
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StageInterrupted, ToolFailed, ToolNotFound, ToolTimeout

DEFAULT_TAIL_LINES = 20
# Documented switches that keep the libraries we start from phoning home: ONNX Runtime's and
# onnxruntime-genai's 1DS telemetry (it resolved mobile.events.data.microsoft.com in the
# builder), the Hugging Face hub's, and DO_NOT_TRACK for the rest.
NO_TELEMETRY_ENV = {"ORT_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}
# With HF_HUB_OFFLINE set, every library that could download is told so too.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}

# Set by the pipeline around a stage: every tool run inside it reports a one-line summary
# of its own progress (tqdm bars, Quark/builder status lines) through this callback.
_reporter: contextvars.ContextVar = contextvars.ContextVar("oga_npu_tool_reporter", default=None)


@contextlib.contextmanager
def reporting(report):
    """Summaries of tool output go to `report(text)` while the block runs."""
    token = _reporter.set(report)
    try:
        yield
    finally:
        _reporter.reset(token)


def report_progress(text: str) -> None:
    """A status of work done in this process (not a tool's output) on the stage's progress line."""
    report = _reporter.get()
    if report:
        report(text)


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# tqdm: "AWQ:  23%|██▎       | 7/30 [01:05<03:35,  9.37s/it]"
_TQDM = re.compile(
    r"^\s*(?P<desc>[^|]*?):?\s*(?P<pct>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)"
    r"(?:\s*\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:?]+))?"
)
_STATUS = re.compile(
    r"^(\[QUARK-(INFO|WARNING)\]:\s*|(Reading|Unpacking|Saving|Loading|Writing|Building|Quantiz|"
    r"Compil|Generat|Export|Processing|Running)\w*\b)",
    re.IGNORECASE,
)


# ninja / cmake --build: "[12/31] Building CXX object ggml/src/..."
_NINJA = re.compile(r"^\[(?P<n>\d+)/(?P<total>\d+)\]\s+(Building|Linking)\b")


def summarize_output(frame: str) -> str | None:
    """A short status from one line (or tqdm frame) of a tool's output, None for noise."""
    text = _ANSI.sub("", frame).strip()
    if not text:
        return None
    m = _NINJA.match(text)
    if m:
        return f"compiling {m['n']}/{m['total']}"
    m = _TQDM.match(text)
    if m:
        desc = m["desc"].strip() or "progress"
        eta = m["eta"] if m["eta"] and "?" not in m["eta"] and int(m["n"]) < int(m["total"]) else None
        return f"{desc} {m['n']}/{m['total']}" + (f", ETA {eta}" if eta else "")
    if _STATUS.match(text) and len(text) < 160:
        return re.sub(r"^\[QUARK-(INFO|WARNING)\]:\s*", "Quark: ", text).rstrip(":")
    return None


@dataclass
class ToolResult:
    argv: list[str]
    code: int
    seconds: float
    tail: list[str] = field(default_factory=list)
    log_path: Path | None = None


def tool_env(extra: dict[str, str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of the environment plus explicit additions (never mutates os.environ)."""
    env = dict(os.environ if base is None else base)
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def path_prepend(env: dict[str, str], key: str, dirs: list[Path]) -> dict[str, str]:
    """A copy of env with dirs first on the search-path variable `key` (PATH, LD_LIBRARY_PATH;
    Windows spells PATH in any case: the key already there is kept)."""
    key = next((k for k in env if k.upper() == key.upper()), key)
    old = env.get(key, "")
    return tool_env({key: os.pathsep.join([*map(str, dirs), *([old] if old else [])])}, base=env)


def hf_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() not in ("", "0", "false", "no", "off")


def network_env() -> dict[str, str]:
    """Additions for every process we start: no telemetry; with HF_HUB_OFFLINE, offline everywhere."""
    return {**NO_TELEMETRY_ENV, **(OFFLINE_ENV if hf_offline() else {})}


def find_tool(name: str, hint: str, path: str | None = None) -> str:
    """Absolute path of `name` on PATH (or in the given search path), else ToolNotFound."""
    found = shutil.which(name, path=path)
    if not found:
        raise ToolNotFound(f"{name} not found on PATH", hint)
    return found


def python_module_argv(module: str, *args: str, python: str | None = None) -> list[str]:
    """argv that runs a Python module with this interpreter (or another environment's `python`)."""
    return [python or sys.executable, "-m", module, *args]


class _Output:
    """A child's stdout and stderr, read by two threads: appended to the log, each frame
    summarized for the reporter, stderr's last lines kept (`tail`) for the error message."""

    def __init__(self, log, tail_lines: int, report) -> None:
        self.log = log
        self.report = report
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def start(self, proc: subprocess.Popen) -> None:
        self.threads = [
            threading.Thread(target=self.pump, args=(proc.stdout, False), daemon=True),
            threading.Thread(target=self.pump, args=(proc.stderr, True), daemon=True),
        ]
        for t in self.threads:
            t.start()

    def join(self, timeout: float | None = None) -> None:
        for t in self.threads:
            t.join(timeout)

    def pump(self, stream, is_err: bool) -> None:
        # Read what is there, not whole lines: tqdm redraws a line with \r and writes its
        # newline only at the end, so its frames reach the reporter as they come.
        frames = _Frames(self, is_err)
        read = getattr(stream, "read1", stream.read)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")  # a character split across reads
        for chunk in iter(lambda: read(65536), b""):
            text = decoder.decode(chunk)
            if self.log is not None:
                with self.lock:
                    self.log.write(text)
                    self.log.flush()
            frames.feed(text)
        frames.frame_done()
        frames.line_done()
        stream.close()


class _Frames:
    """One stream's frames (text up to a carriage return or a newline) as they come: each one
    summarized for the reporter; of stderr, the last non-blank frame of each line goes to the tail."""

    def __init__(self, out: _Output, is_err: bool) -> None:
        self.out, self.is_err = out, is_err
        self.buf, self.last = "", ""  # the unterminated frame; the newest non-blank frame of this line

    def feed(self, text: str) -> None:
        for piece in re.split(r"([\r\n])", text):
            if piece == "\r":
                self.frame_done()
            elif piece == "\n":
                self.frame_done()
                self.line_done()
            else:
                self.buf += piece

    def frame_done(self) -> None:
        if self.buf.strip():
            self.last = self.buf
            if self.out.report is not None:
                summary = summarize_output(self.buf)
                if summary:
                    self.out.report(summary)
        self.buf = ""

    def line_done(self) -> None:
        if self.is_err and self.last.strip():  # tqdm: only the last frame of a line in the tail
            self.out.tail.append(self.last)
        self.last = ""


def _open_log(log_path: Path | None, argv: list[str], cwd: Path | None):
    """The stage log, opened for appending, headed by the command line (None: no log)."""
    if log_path is None:
        return None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - run_tool closes it on every exit
    log.write(f"$ {' '.join(argv)}\n")
    if cwd:
        log.write(f"# cwd: {cwd}\n")
    log.flush()
    return log


def _popen(argv: list[str], name: str, cwd: Path | None, env: dict[str, str] | None, log) -> subprocess.Popen:
    try:
        return subprocess.Popen(
            argv,
            cwd=str(cwd) if cwd else None,
            env=env if env is not None else tool_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
    except FileNotFoundError as e:
        if log:
            log.close()
        raise ToolNotFound(
            f"{name} could not be started: {e.strerror}: {argv[0]}", f"install {name} or put it on PATH"
        ) from e


def run_tool(
    argv: list[str],
    *,
    name: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
    timeout: float | None = None,
    version: str | None = None,
    tail_lines: int = DEFAULT_TAIL_LINES,
) -> ToolResult:
    """Run argv; stdout and stderr go to log_path; raise ToolFailed on non-zero exit.

    Ctrl+C terminates the child and raises StageInterrupted.
    """
    name = name or Path(argv[0]).name
    log = _open_log(log_path, argv, cwd)
    out = _Output(log, tail_lines, _reporter.get())
    start = time.monotonic()
    proc = _popen(argv, name, cwd, env, log)
    out.start(proc)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop(proc)
        out.join(5)
        if log:
            log.close()
        tail = list(out.tail) + [f"timed out after {timeout:.0f} s"]
        raise ToolTimeout(name, argv, -1, tail, log_path, version) from None
    except KeyboardInterrupt:
        _stop(proc)
        out.join(5)
        if log:
            log.write("# interrupted by Ctrl+C\n")
            log.close()
        raise StageInterrupted(f"{name} interrupted", "re-run the same command to resume") from None
    out.join()
    seconds = time.monotonic() - start
    if log:
        log.write(f"# exit code {code} after {seconds:.1f} s\n")
        log.close()
    if code != 0:
        raise ToolFailed(name, argv, code, list(out.tail), log_path, version)
    return ToolResult(argv=argv, code=code, seconds=seconds, tail=list(out.tail), log_path=log_path)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGINT if os.name != "nt" else signal.CTRL_BREAK_EVENT)
        proc.wait(5)
    except Exception:  # noqa: BLE001 - escalate to kill whatever went wrong
        proc.kill()
        proc.wait()


def capture(argv: list[str], *, env: dict[str, str] | None = None, timeout: float = 30) -> tuple[int, str, str]:
    """Run a short query command (e.g. `tool --version`) and return (code, stdout, stderr)."""
    try:
        p = subprocess.run(
            argv,
            env=env if env is not None else tool_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        return 127, "", f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, "", f"{argv[0]}: timed out after {timeout} s"
    return p.returncode, p.stdout, p.stderr


def fork_supervised() -> int | None:
    """POSIX: fork this process. The child gets None and goes on with the command (nothing is
    imported twice: a few ms); the parent waits and gets the child's exit code (negative: the
    signal that killed it). A terminal's Ctrl+C reaches the child itself (same foreground
    process group), so the parent ignores it; SIGINT sent to the parent alone, and SIGTERM,
    are passed on."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        return None

    def pass_on(signum, _frame):
        if signum == signal.SIGINT and _terminal_foreground():
            return  # the terminal sent it to the whole group: the child has it already
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, pass_on)
    _, status = os.waitpid(pid, 0)  # retried on EINTR (PEP 475)
    return os.waitstatus_to_exitcode(status)


def run_supervised(argv: list[str], env: dict[str, str]) -> int:
    """Where there is no fork (Windows): run argv on this terminal (stdio inherited) and wait."""
    proc = subprocess.Popen(argv, env=env)
    old = signal.signal(signal.SIGINT, lambda *_: None)  # the console sends Ctrl+C to both
    try:
        return proc.wait()
    finally:
        signal.signal(signal.SIGINT, old)


def _terminal_foreground() -> bool:
    """Whether this process group is the foreground group of a controlling terminal."""
    if os.name == "nt":
        return True
    try:
        fd = os.open("/dev/tty", os.O_RDONLY)
    except OSError:
        return False
    try:
        return os.tcgetpgrp(fd) == os.getpgrp()
    except OSError:
        return False
    finally:
        os.close(fd)
