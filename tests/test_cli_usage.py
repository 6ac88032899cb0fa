"""The CLI's error boundary, in-process: usage errors exit 2 with the usage line, the
environment's errors are one `Error:` line plus a fix, "unexpected" is for bugs only."""

from __future__ import annotations

import errno

import pytest
from conftest import call

from oga_npu.cli._output import StageProgress


@pytest.mark.parametrize(
    "argv",
    [
        ["chta"],  # a mistyped command
        ["run", "-m", "m", "--temp", "0.5", "Hi"],  # an unknown option
        ["prepare", "src", "--dry-run", "true"],  # a value after a flag
        ["run", "-m", "m", "-n", "abc", "Hi"],  # not a number
    ],
)
def test_usage_errors_exit_2_with_the_usage_line(capsys, argv):
    code, out, err = call(capsys, *argv)
    assert code == 2, err
    assert "Usage: oga-npu" in err and "Error: " in err
    assert "unexpected" not in err.lower().replace("unexpected extra argument", "")
    if "--temp" in argv:
        assert "did you mean --temperature" in err
    if "true" in argv:
        assert "--dry-run is a flag" in err


def test_bare_command_prints_help_and_exits_0(capsys):
    code, out, err = call(capsys)
    assert code == 0 and "Usage: oga-npu" in out and "prepare" in out and not err


def test_flags_show_without_a_type(capsys):
    code, out, _ = call(capsys, "prepare", "--help")
    assert code == 0
    assert "--force" in out and "--dry-run" in out
    assert "<bool>" not in out


@pytest.mark.parametrize(
    "err_no, words",
    [
        (errno.ENOSPC, "no space left"),
        (errno.EACCES, "permission denied"),
        (errno.EPERM, "permission denied"),
        (errno.ENAMETOOLONG, "file name too long"),
        (errno.ENOENT, "no such file"),
    ],
)
def test_os_errors_are_one_line_with_the_path_and_a_fix(capsys, monkeypatch, err_no, words):
    from oga_npu.store import ModelStore

    path = "/data/models/" + "x" * 300 if err_no == errno.ENAMETOOLONG else "/data/models/cache.bin"

    def boom(self):
        raise OSError(err_no, "os message", path)

    monkeypatch.setattr(ModelStore, "entries", boom)
    code, out, err = call(capsys, "models")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 2, err
    assert lines[0].startswith("Error: ") and words in lines[0] and path[:40] in lines[0]
    assert lines[1].startswith("Fix: ") and "unexpected" not in err
    assert len(lines[0]) < 250  # a 300-character name is shortened


def test_real_os_errors_missing_template_and_long_name(capsys, tmp_path):
    code, _, err = call(capsys, "run", "-m", str(tmp_path), "--chat-template", str(tmp_path / "nope.jinja"), "Hi")
    assert code == 1 and "nope.jinja" in err and "Fix: " in err and "unexpected" not in err
    long = tmp_path / ("n" * 300)
    code, _, err = call(capsys, "run", "-m", str(long), "Hi")
    assert code == 1 and "unexpected" not in err and "Fix: " in err
    assert len(err.strip().splitlines()) == 2


def test_a_bug_still_says_unexpected(capsys, monkeypatch):
    from oga_npu.store import ModelStore

    monkeypatch.setattr(ModelStore, "entries", lambda self: 1 / 0)
    code, _, err = call(capsys, "models")
    assert code == 1 and "unexpected ZeroDivisionError" in err


def test_mistyped_model_path_points_at_models(capsys, tmp_path, monkeypatch):
    models = tmp_path / "models"
    (models / "smollm2-135m-instruct-cpu").mkdir(parents=True)
    (models / "smollm2-135m-instruct-cpu" / "genai_config.json").write_text("{}")
    for cmd in (
        ["run", "-m", str(models / "smollm2-135m-instrct-cpu"), "Hi"],
        ["chat", "-m", str(models / "smollm2-135m-instrct-cpu")],
    ):
        code, _, err = call(capsys, *cmd)
        assert code == 1 and "does not exist" in err and "oga-npu models" in err, err
        assert "did you mean" in err and "smollm2-135m-instruct-cpu" in err
    code, out, err = call(capsys, "doctor", "-m", str(models / "nope"))
    assert code == 1 and "nope does not exist" in out and "oga-npu models" in out


def test_chat_unknown_slash_command_is_not_sent(capsys, monkeypatch):
    import io

    from oga_npu.chat import repl

    class Session:
        sent: list = []
        notices: list = []
        last = None
        lm = None

        def send(self, msg):
            self.sent.append(msg)
            return iter(())

    s = Session()
    monkeypatch.setattr("sys.stdin", io.StringIO("/foo\n/usr/bin is a folder?\n/exit\n"))
    repl(s)
    err = capsys.readouterr().err
    assert "unknown command /foo, /help lists them" in err
    assert s.sent == ["/usr/bin is a folder?"]


def test_stage_progress_plain_lines_keep_coming(capsys, monkeypatch):
    """Off a terminal: a short stage prints one line; a long one a line at start and then
    at least every EVERY_S seconds, with the stage's latest progress and the estimate."""
    import time

    monkeypatch.setattr(StageProgress, "FIRST_S", 0.1)
    monkeypatch.setattr(StageProgress, "EVERY_S", 0.2)
    p = StageProgress(tty=False)
    p("start", "source", 1, 4, "dequantize x.gguf")
    p("skip", "source", 1, 4, "/cache/x (cached)")
    p("start", "quantize", 2, 4, "estimate about 3 min")
    p("update", "quantize", 2, 4, "AWQ 7/30, ETA 02:10")
    time.sleep(0.75)
    p("update", "quantize", 2, 4, "AWQ 9/30, ETA 01:50")
    time.sleep(0.3)
    p("done", "quantize", 2, 4, "")
    time.sleep(0.3)
    lines = capsys.readouterr().err.splitlines()
    assert sum("[1/4] source" in ln for ln in lines) == 1
    beats = [ln for ln in lines if ln.startswith("[2/4] quantize") and "estimate about 3 min" in ln]
    assert len(beats) >= 3 and "AWQ 7/30, ETA 02:10" in beats[0] and "AWQ 9/30" in beats[-1]
    assert lines[-1].startswith("[2/4] quantize … done")


def test_devices_lines_have_no_nested_parentheses(capsys):
    code, out, _ = call(capsys, "devices")
    assert code == 0 and "WebGPU adapters:" in out
    for line in out.splitlines():
        depth = deepest = 0
        for ch in line:
            depth += (ch == "(") - (ch == ")")
            deepest = max(deepest, depth)
        assert deepest <= 1, line


def test_serve_on_a_port_in_use_is_one_error_before_the_banner(capsys, tmp_path):
    """Not the banner and then uvicorn's `[Errno 98]` (exit 3): the port is checked first,
    nothing is loaded, and the fix names a free port."""
    import socket

    model = tmp_path / "m"
    model.mkdir()
    (model / "genai_config.json").write_text('{"model": {"context_length": 2048}}')
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        code, out, err = call(capsys, "serve", "-m", str(model), "--port", str(port))
    lines = err.strip().splitlines()
    assert code == 1 and out == "" and len(lines) == 2, err
    assert lines[0] == f"Error: port {port} on 127.0.0.1 is in use"
    assert lines[1].startswith("Fix: pass --port ") and f"or stop the program listening on {port}" in lines[1]
    assert "oga-npu serve:" not in err and "Errno" not in err


def test_serve_connection_limits_come_from_options_and_the_environment(capsys, monkeypatch, tmp_path):
    from oga_npu.server import ConnLimits

    seen = {}
    monkeypatch.setattr("oga_npu.server.serve", lambda folders, **kw: seen.update(kw) or 0)
    monkeypatch.setenv("OGA_NPU_MAX_CONNECTIONS", "50")
    code, _, err = call(
        capsys, "serve", "--models-dir", str(tmp_path), "--header-timeout", "3", "--keep-alive-timeout", "2"
    )
    assert code == 0, err
    assert seen["limits"] == ConnLimits(header_timeout=3, keep_alive=2, max_connections=50)
    for opt, bad in (("--header-timeout", "0"), ("--keep-alive-timeout", "-1"), ("--max-connections", "0")):
        code, _, err = call(capsys, "serve", "--models-dir", str(tmp_path), opt, bad)
        assert code == 2 and opt in err, err
