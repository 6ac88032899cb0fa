"""Two prepares of one GGUF share its dequantize cache : the cache has its
own lock, so the second waits for the first's dequantize and then uses its result (before,
one of them died with "SafetensorError ... No such file or directory")."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import gguf_models
from conftest import REPO


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    full = dict(os.environ)
    full["PYTHONPATH"] = str(REPO) + os.pathsep + full.get("PYTHONPATH", "")
    full.update(env)
    return subprocess.Popen(
        [sys.executable, "-m", "oga_npu", *args], stdout=subprocess.DEVNULL, stderr=open(log, "w"), env=full
    )


def test_two_prepares_of_one_gguf_wait_for_one_dequantize(tmp_path, monkeypatch):
    from oga_npu.prepare.source import gguf_cache_dir, is_converted
    from oga_npu.workdir import file_lock

    home = tmp_path / "home"
    env = {"OGA_NPU_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    src = gguf_models.write_gguf(tmp_path / "tiny-llama.Q8_0.gguf", "llama", "Q8_0")
    monkeypatch.setenv("OGA_NPU_HOME", str(home))  # the test's view of the same cache
    cache = gguf_cache_dir(src.resolve())
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    # The test holds the cache's lock, so both prepares reach it and wait: a race made certain.
    with file_lock(cache.with_name(cache.name + ".lock")):
        procs = [
            _start(["prepare", str(src), "-o", str(tmp_path / "A")], env, logs[0]),
            _start(["prepare", str(src), "--recipe", "builder-int4", "-o", str(tmp_path / "B")], env, logs[1]),
        ]
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if all("waiting for it" in f.read_text() for f in logs) or any(p.poll() is not None for p in procs):
                break
            time.sleep(0.2)
        assert all("waiting for it" in f.read_text() for f in logs), [f.read_text()[-2000:] for f in logs]
        assert not is_converted(cache)
    codes = [p.wait(900) for p in procs]
    errs = [f.read_text() for f in logs]
    assert codes == [0, 0], [e[-3000:] for e in errs]
    # one dequantized, the other used its result
    assert sum("(cached)" in e for e in errs) == 1, errs
    assert is_converted(cache)
    for out in ("A", "B"):
        assert (tmp_path / out / "oga_npu_manifest.json").is_file()
