import sys

import pytest

from oga_npu.errors import StageInterrupted, ToolFailed, ToolNotFound
from oga_npu.tools import find_tool, run_tool, tool_env


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_output_goes_to_log_and_env_is_explicit(tmp_path, monkeypatch):
    monkeypatch.setenv("OGA_NPU_PARENT_ONLY", "parent")
    log = tmp_path / "logs" / "x.log"
    env = tool_env({"OGA_NPU_X": "42"}, base={"PATH": "/usr/bin:/bin"})
    res = run_tool(
        py(
            "import os,sys; print('out', os.environ.get('OGA_NPU_X'), os.environ.get('OGA_NPU_PARENT_ONLY'));"
            "print('err line', file=sys.stderr)"
        ),
        env=env,
        log_path=log,
    )
    text = log.read_text()
    assert "out 42 None" in text and "err line" in text and "exit code 0" in text
    assert res.tail == ["err line"]


def test_tool_env_does_not_touch_os_environ(monkeypatch):
    import os

    monkeypatch.delenv("OGA_NPU_Y", raising=False)
    env = tool_env({"OGA_NPU_Y": "1"})
    assert env["OGA_NPU_Y"] == "1" and "OGA_NPU_Y" not in os.environ


def test_failure_carries_code_tail_and_log(tmp_path):
    log = tmp_path / "t.log"
    with pytest.raises(ToolFailed) as e:
        run_tool(
            py("import sys\nfor i in range(30): print(f'line {i}', file=sys.stderr)\nsys.exit(3)"),
            name="faketool",
            log_path=log,
            version="1.2",
        )
    err = e.value
    assert err.code == 3 and err.log_path == log
    assert err.tail[-1] == "line 29" and len(err.tail) == 20
    assert "faketool 1.2 failed with exit code 3" in err.message and "line 29" in err.message
    assert str(log) in err.fix


def test_missing_tool():
    with pytest.raises(ToolNotFound, match="no_such_tool_xyz"):
        find_tool("no_such_tool_xyz", "install it")
    with pytest.raises(ToolNotFound):
        run_tool(["/nonexistent/no_such_tool_xyz"])


def test_timeout(tmp_path):
    with pytest.raises(ToolFailed, match="timed out"):
        run_tool(py("import time; time.sleep(30)"), timeout=1, log_path=tmp_path / "t.log")


def test_ctrl_c_stops_the_child(tmp_path, monkeypatch):
    import subprocess

    real_wait = subprocess.Popen.wait
    calls = {"n": 0}

    def wait(self, timeout=None):
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt
        return real_wait(self, timeout)

    monkeypatch.setattr(subprocess.Popen, "wait", wait)
    with pytest.raises(StageInterrupted):
        run_tool(py("import time; time.sleep(30)"), log_path=tmp_path / "t.log")
    assert "interrupted" in (tmp_path / "t.log").read_text()


def test_tool_progress_reaches_the_reporter_while_the_tool_runs(tmp_path):
    """tqdm frames (\\r, no newline until the end) are summarized as they come, with the ETA."""
    import sys
    import time

    from oga_npu.tools import reporting, run_tool

    script = (
        "import sys, time\n"
        "for i in range(4):\n"
        "    sys.stderr.write(f'\\rAWQ: {i*25}%|##  | {i}/4 [00:0{i}<00:0{4-i}, 1.00s/it]'); sys.stderr.flush()\n"
        "    time.sleep(0.3)\n"
        "sys.stderr.write('\\rAWQ: 100%|####| 4/4 [00:04<00:00, 1.00s/it]\\n')\n"
        "print('\\x1b[32m[QUARK-INFO]: Export done\\x1b[0m')\n"
    )
    got = []
    t0 = time.monotonic()
    with reporting(lambda msg: got.append((time.monotonic() - t0, msg))):
        res = run_tool([sys.executable, "-c", script], log_path=tmp_path / "t.log")
    msgs = [m for _, m in got]
    assert "AWQ 1/4, ETA 00:03" in msgs and "AWQ 4/4" in msgs and "Quark: Export done" in msgs
    first = next(t for t, m in got if m.startswith("AWQ 1/4"))
    assert first < res.seconds - 0.4  # reported while the tool still ran, not at its end
    assert res.tail == ["AWQ: 100%|####| 4/4 [00:04<00:00, 1.00s/it]"]  # the tail keeps a bar's last frame
    assert "AWQ: 50%" in (tmp_path / "t.log").read_text()  # the log keeps everything


def test_progress_lines_summarize_a_cmake_build_and_reach_the_stage_line():
    """A first gguf-ggml prepare compiles ggml for minutes: ninja's "[n/N] Building ..." lines
    become "compiling n/N" on the stage's progress line, and work done in the process itself
    (oga_npu.kernels' own steps) reaches the same line; outside a stage nothing is reported."""
    from oga_npu import tools

    assert tools.summarize_output("[12/31] Building CXX object ggml/src/ggml-cpu/quants.c.o") == "compiling 12/31"
    assert tools.summarize_output("[31/31] Linking CXX static library ggml/src/libggml.a") == "compiling 31/31"
    assert tools.summarize_output("-- Configuring done") is None
    seen: list[str] = []
    tools.report_progress("nobody listens")
    with tools.reporting(seen.append):
        tools.report_progress("kernel library: building ggml (once)")
    tools.report_progress("after")
    assert seen == ["kernel library: building ggml (once)"]
