"""Issue 20 item 8, one test each: prepare's lock between create and pid write, every missing
file named, a git-lfs pointer in a folder with a manifest named as a pointer, a tool killed
by a signal, eval on a folder whose manifest cannot be written. (The native crash's log path
is in test_integrity's case 14 tests; /v1/completions' param "prompt" in
test_server_hardening.)"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from oga_npu.errors import IncompleteModelError, LockedError, ToolFailed


def test_an_empty_fresh_lock_is_another_prepare_starting_not_a_dead_one(tmp_path):
    from oga_npu.workdir import LOCK, LOCK_GRACE_S, prepare_lock

    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK).write_text("")  # created, its pid not yet written
    with pytest.raises(LockedError, match="starting"):
        with prepare_lock(out):
            pass
    assert (out / LOCK).exists()  # not stolen
    old = time.time() - LOCK_GRACE_S - 60
    os.utime(out / LOCK, (old, old))  # left empty by a prepare killed in that window
    with prepare_lock(out):
        assert (out / LOCK).read_text() == str(os.getpid())
    assert not (out / LOCK).exists()


def _copy(tiny_model: Path, dst: Path) -> Path:
    return Path(shutil.copytree(tiny_model, dst, ignore=shutil.ignore_patterns("stages", "logs")))


def test_every_missing_file_is_named(tiny_model, tmp_path):
    from oga_npu.model import load

    d = _copy(tiny_model, tmp_path / "m")
    (d / "model.onnx.data").unlink()
    (d / "tokenizer.json").unlink()
    with pytest.raises(IncompleteModelError) as e:
        load(d)
    assert "model.onnx.data" in e.value.message and "tokenizer.json" in e.value.message
    assert "are missing" in e.value.message


def test_a_git_lfs_pointer_in_a_prepared_folder_is_named_as_one(tiny_model, tmp_path):
    from oga_npu.model import load

    d = _copy(tiny_model, tmp_path / "m")
    (d / "model.onnx.data").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1234567\n"
    )
    with pytest.raises(IncompleteModelError) as e:
        load(d)
    assert "model.onnx.data is a git-lfs pointer file" in e.value.message and "git lfs pull" in e.value.message
    assert "bytes, the manifest says" not in e.value.message


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_tool_killed_by_a_signal_says_so(tmp_path):
    from oga_npu.tools import run_tool

    with pytest.raises(ToolFailed) as e:
        run_tool(
            [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"],
            name="quark",
            log_path=tmp_path / "tool.log",
        )
    assert "was killed by SIGKILL" in e.value.message and "exit code" not in e.value.message
    assert str(tmp_path / "tool.log") in e.value.fix


def test_eval_prints_the_perplexity_when_the_manifest_cannot_be_written(tiny_model, tmp_path, capsys, monkeypatch):
    """A read-only folder (simulated: the tests may run as root, who writes anyway)."""
    from oga_npu import cli, workdir

    d = _copy(tiny_model, tmp_path / "ro")

    def read_only(*_a, **_k):
        raise PermissionError(13, "Permission denied", str(d / "oga_npu_manifest.json"))

    monkeypatch.setattr(workdir, "update_manifest", read_only)
    capsys.readouterr()
    try:
        cli.main(["eval", "-m", str(d), "--ref", "none", "--window", "32", "--windows", "1"])
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "perplexity" in out and "oga (cpu)" in out
    assert "Warning: the result was not recorded" in err and "Permission denied" in err
