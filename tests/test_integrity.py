"""Integrity (issue 14): what is on disk is what was prepared, crashes are reported, offline
is offline, versions and disk space are checked up front, records say where they ran.
One test per fault case (../shared/fault-cases.md 13, 14, 2, 5, 7, 12, 39) plus dml on Linux,
WebGPU judged by a real session, and Ctrl+C during the source step."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

import pytest
from conftest import REPO, build_shared_lib, run_cli, smollm2_gguf

from oga_npu.errors import (
    DiskFullError,
    IncompleteModelError,
    ModelLoadError,
    StageInterrupted,
    ToolFailed,
    VersionError,
)
from oga_npu.workdir import MANIFEST, REQUEST, read_json, sha256_file, write_json_atomic

SEGV_ON_LOAD = r"""
#include <signal.h>
__attribute__((constructor)) static void boom(void) { raise(SIGSEGV); }
void *RegisterCustomOps(void *options, const void *api) { (void)options; (void)api; return 0; }
"""


def copy_of(src: Path, dst: Path) -> Path:
    """A prepared folder's copy (mtimes kept, as a backup or `cp -a` keeps them); no stages/logs."""
    return Path(shutil.copytree(src, dst, ignore=shutil.ignore_patterns("stages", "logs")))


def reseal(folder: Path, name: str) -> None:
    """Record `name`'s new content in the manifest, as if prepare had written it."""
    m = read_json(folder / MANIFEST)
    st = (folder / name).stat()
    m["files"][name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256_file(folder / name)}
    write_json_atomic(folder / MANIFEST, m)


def edit_config(folder: Path, change) -> None:
    p = folder / "genai_config.json"
    cfg = json.loads(p.read_text())
    change(cfg)
    p.write_text(json.dumps(cfg, indent=2))


@pytest.fixture
def copy(tiny_model, tmp_path) -> Path:
    return copy_of(tiny_model, tmp_path / "m")


# ---------------------------------------------------------------- case 13: content hashes


def test_case13_changed_files_are_refused_at_load_and_by_doctor(copy, monkeypatch):
    from oga_npu import workdir
    from oga_npu.model import load
    from oga_npu.workdir import folder_state

    manifest = read_json(copy / MANIFEST)
    assert all("sha256" in e and "mtime_ns" in e for e in manifest["files"].values())
    assert manifest["builder"]["onnxruntime-genai"] == version("onnxruntime-genai")
    assert manifest["runtime"]["onnxruntime"] == version("onnxruntime")
    # A copy with new mtimes but the same bytes loads (moved files are re-hashed, not refused),
    # and a manifest key other than "files" (eval's quality results) is no change to the folder.
    for f in copy.iterdir():
        if f.is_file():
            os.utime(f)
    write_json_atomic(copy / MANIFEST, {**manifest, "quality": {"perplexity": 12.5}})
    lm = load(copy)
    assert lm.content_hash == manifest["content_hash"] != manifest["key"]
    del lm

    # Weights are big: checked by size and mtime (SmolLM2's 80 MB model.onnx.data is not re-read).
    monkeypatch.setattr(workdir, "QUICK_HASH_LIMIT", 1 << 20)
    data = copy / "model.onnx.data"
    before = data.stat()
    with open(data, "r+b") as f:  # random bytes in place, same size (the fault campaign's damage)
        f.write(os.urandom(min(before.st_size, 4 << 20)))
    with pytest.raises(IncompleteModelError, match=r"model\.onnx\.data was changed since prepare") as e:
        load(copy)
    assert "--force" in e.value.fix
    # Same damage with the mtime put back: the load check cannot see it, doctor's full check does.
    os.utime(data, ns=(before.st_atime_ns, manifest["files"]["model.onnx.data"]["mtime_ns"]))
    assert folder_state(copy, verify="quick").state == "ready"
    st = folder_state(copy, verify="full")
    assert st.state == "damaged" and "model.onnx.data" in st.detail


@pytest.mark.parametrize("name", ["model.onnx", "genai_config.json"])
def test_case13_small_files_are_hashed_at_every_load(copy, name):
    from oga_npu.model import load

    p = copy / name
    st = p.stat()
    if name == "genai_config.json":  # eos_token_id edited, size kept
        text = p.read_text()
        assert '"eos_token_id": 2' in text
        p.write_text(text.replace('"eos_token_id": 2', '"eos_token_id": 3'))
    else:  # one changed byte
        raw = bytearray(p.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        p.write_bytes(bytes(raw))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))  # even with the mtime restored
    with pytest.raises(IncompleteModelError, match=rf"{name} was changed since prepare"):
        load(copy)


# ---------------------------------------------------------------- case 14: native crashes


@pytest.fixture
def crashing(tiny_model, tmp_path) -> Path:
    """A folder whose genai_config loads a custom-ops library that segfaults on load."""
    lib = build_shared_lib(SEGV_ON_LOAD, tmp_path / "libsegv.so")
    if lib is None:
        pytest.skip("no C compiler (cc/gcc) to build the crashing custom-ops library")
    d = copy_of(tiny_model, tmp_path / "crash")
    for name in (MANIFEST, REQUEST):  # a foreign OGA folder: no manifest to refuse the edit
        (d / name).unlink()
    edit_config(
        d, lambda c: c["model"]["decoder"].setdefault("session_options", {}).__setitem__("custom_ops_library", str(lib))
    )
    return d


def test_case14_native_crash_ends_in_one_line(crashing):
    for args, stdin in ((("run", "Hello", "-n", "2"), None), (("chat",), "Hello\n")):
        r = run_cli(*args, "-m", str(crashing), input=stdin, timeout=300)
        assert r.returncode == 1, (r.returncode, r.stderr)
        last = r.stderr.strip().splitlines()[-1]
        assert last.startswith("Error: native crash (SIGSEGV) while loading"), r.stderr
        assert str(crashing) in last and "provider cpu" in last and f"oga-npu doctor -m {crashing}" in last
        log = Path(last.split("the Python stacks at the crash: ", 1)[1].split(";", 1)[0])  # issue 20 item 8
        assert log.is_file() and "Segmentation fault" in log.read_text(), last


def test_case14_doctor_probes_in_a_child_and_reports_the_signal(crashing, tiny_model):
    from oga_npu.doctor import doctor

    rep = doctor(crashing)
    crash = [p.what for p in rep.problems if "native crash" in p.what]
    assert crash and "SIGSEGV" in crash[0] and "while loading" in crash[0], rep
    log = Path(crash[0].split("(log: ", 1)[1].rstrip(")"))
    assert log.is_file() and "Segmentation fault" in log.read_text()
    assert not any("loads and generates" in c for c in rep.checks)
    good = doctor(tiny_model)  # the same probe passes on the intact folder
    assert any("loads and generates" in c for c in good.checks), good.problems


def test_supervised_run_streams_and_ctrl_c_still_exits_130(tiny_model):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    p = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oga_npu",
            "run",
            "Count to one thousand",
            "-m",
            str(tiny_model),
            "-n",
            "400",
            "--raw",
            "-t",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )  # no controlling terminal: as a script or service runs it
    # greedy: the random-weight model does not stop early (sampled, it drew EOS within a few
    # tokens now and then, finished before the signal, and the parent died of it in Python's exit)
    first = p.stdout.read(1)  # output streams through the supervising parent
    assert first
    time.sleep(0.05)
    assert p.poll() is None, "the run ended before the signal: the test needs a longer generation"
    p.send_signal(signal.SIGINT)  # to the parent alone (no terminal): it passes it on
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    assert b"native crash" not in err


# ---------------------------------------------------------------- case 2: offline is offline


def test_case2_offline_prepare_looks_up_no_name(tiny_model, netguard, tmp_path):
    """tiny_model was prepared with HF_HUB_OFFLINE=1 under an LD_PRELOAD shim that logs every
    name lookup and internet connect of every process (Python or native)."""
    lib, log = netguard
    if lib is None:
        pytest.skip("no C compiler (cc/gcc) to build the network guard")
    probe_log = tmp_path / "probe.log"  # the guard sees a lookup in a child process
    subprocess.run(
        [sys.executable, "-c", "import socket\ntry: socket.getaddrinfo('example.org', 443)\nexcept OSError: pass"],
        env=dict(os.environ, LD_PRELOAD=str(lib), OGA_NPU_NETLOG=str(probe_log)),
        check=True,
    )
    assert "getaddrinfo example.org" in probe_log.read_text()
    assert (tiny_model / MANIFEST).is_file()
    assert not log.exists() or log.read_text() == "", f"prepare's processes went to the network:\n{log.read_text()}"


# ---------------------------------------------------------------- case 5: versions


def test_case5_versions_checked_in_dry_run_and_shown_by_doctor(monkeypatch, tiny_hf):
    from oga_npu import doctor, versions
    from oga_npu.prepare import PrepareRequest, prepare

    rep = doctor.doctor()
    for name in ("onnx", "numpy", "protobuf"):
        assert any(c.startswith(f"{name} {version(name)} (expected >=") for c in rep.checks), rep.checks
    real = versions.installed_versions()
    monkeypatch.setattr(versions, "installed_versions", lambda: {**real, "onnx": "1.10.0", "numpy": "1.21.0"})
    with pytest.raises(VersionError) as e:
        prepare(PrepareRequest(str(tiny_hf), recipe="cpu-fast", dry_run=True))
    assert "onnx: expected >=1.17,<2, found 1.10.0" in e.value.message
    assert "numpy: expected >=1.26,<3, found 1.21.0" in e.value.message
    rep = doctor.doctor()
    assert {"onnx", "numpy"} <= {p.what.split(":")[0] for p in rep.problems}


# ---------------------------------------------------------------- case 7: disk space


def test_case7_gguf_cache_and_output_checked_up_front(tmp_path, monkeypatch):
    from oga_npu.prepare import PrepareRequest, prepare

    gguf = smollm2_gguf()
    home = tmp_path / "home"
    monkeypatch.setenv("OGA_NPU_HOME", str(home))
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=300_000_000))
    t0 = time.monotonic()
    with pytest.raises(DiskFullError) as e:
        prepare(PrepareRequest(str(gguf), recipe="cpu-fast", output=tmp_path / "out"))
    assert "the GGUF cache" in e.value.message and "the output" in e.value.message
    assert "OGA_NPU_HOME" in e.value.fix
    assert not (home / "gguf").exists() and time.monotonic() - t0 < 30  # refused before dequantizing


@pytest.mark.parametrize("how", ["oserror", "tool"])
def test_case7_disk_full_mid_stage_is_one_line_and_keeps_the_stage(tiny_hf, tmp_path, monkeypatch, how):
    from oga_npu.prepare import PrepareRequest, prepare, quantize

    def full(ctx, in_dir, out_dir, log_path):
        (out_dir / "model-00001.safetensors").write_bytes(b"half")
        if how == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise ToolFailed(
            "quark",
            ["quark"],
            1,
            [
                "Traceback (most recent call last):",
                '  File "x.py", line 1',
                "OSError: [Errno 28] No space left on device",
            ],
            log_path,
        )

    monkeypatch.setattr(quantize, "run_stage", full)
    out = tmp_path / "out"
    with pytest.raises(DiskFullError) as e:
        prepare(PrepareRequest(str(tiny_hf), recipe="cpu-fast", output=out))
    assert "\n" not in e.value.message and "during quantize" in e.value.message
    assert "Traceback" not in e.value.message and "re-run the same command" in e.value.fix
    assert (out / "stages" / "quantize.partial" / "model-00001.safetensors").is_file()


# ---------------------------------------------------------------- case 12: unknown config key


def test_case12_unknown_config_key_names_runtime_and_builder_versions(copy):
    from oga_npu.model import load

    edit_config(copy, lambda c: c["model"].__setitem__("future_key", 1))
    reseal(copy, "genai_config.json")
    with pytest.raises(ModelLoadError) as e:
        load(copy)
    v = version("onnxruntime-genai")
    assert f"runtime onnxruntime-genai {v}" in e.value.message
    assert f"built with onnxruntime-genai {v}" in e.value.message and "future_key" in e.value.message


# ---------------------------------------------------------------- case 39: records


def test_case39_bench_and_eval_records_carry_versions_device_and_hash(tiny_model, tmp_path):
    import csv

    from typer.testing import CliRunner

    from oga_npu.bench import CSV_META_FIELDS, RECORD_META, BenchConfig, RecordSink, cpu_model, sweep
    from oga_npu.cli import app
    from oga_npu.model import load

    j, c = tmp_path / "r.jsonl", tmp_path / "r.csv"
    lm = load(tiny_model)
    sweep(lm, BenchConfig((8,), 2, 1, 0), "The quick brown fox. " * 10, RecordSink(j, c))
    meta = json.loads(j.read_text().splitlines()[0])["meta"]
    want = {
        "oga_npu": version("oga-npu"),
        "oga": version("onnxruntime-genai"),
        "ort": version("onnxruntime"),
        "quark": version("amd-quark"),
        "rai_version": None,
        "npu_driver": None,
        "npu_power_mode": None,
        "device": cpu_model(),
        "provider": "cpu",
        "model_hash": read_json(tiny_model / MANIFEST)["content_hash"],
    }
    assert set(RECORD_META) <= set(meta) and {k: meta[k] for k in want} == want
    row = next(csv.DictReader(c.open()))
    assert all(k in row for k in CSV_META_FIELDS)
    assert (row["oga"], row["ort"], row["quark"], row["model_hash"]) == (
        want["oga"],
        want["ort"],
        want["quark"],
        want["model_hash"],
    )
    r = CliRunner().invoke(
        app, ["eval", "-m", str(tiny_model), "--ref", "none", "--window", "16", "--windows", "1", "--json"]
    )
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert {k: rows[0]["meta"][k] for k in want} == want


# ---------------------------------------------------------------- providers judged by this machine


def test_doctor_does_not_say_dml_runs_on_linux(copy):
    import onnxruntime_genai as og

    from oga_npu.doctor import doctor

    if og.is_dml_available():
        pytest.skip("this onnxruntime-genai has DirectML")
    edit_config(
        copy,
        lambda c: c["model"]["decoder"]
        .setdefault("session_options", {})
        .__setitem__("provider_options", [{"dml": {}}]),
    )
    reseal(copy, "genai_config.json")
    rep = doctor(copy)
    assert not any("provider dml" in c for c in rep.checks), rep.checks
    assert any("provider dml cannot run on this machine" in p.what and "Windows" in p.what for p in rep.problems)


def test_webgpu_runs_only_when_a_session_gets_an_adapter(monkeypatch, tmp_path):
    """An adapter listed in-process is not enough (the loader may fail on the first session)."""
    from oga_npu import doctor
    from oga_npu.webgpu import ep as webgpu

    monkeypatch.setattr(webgpu, "library_path", lambda: str(tmp_path / "libwebgpu_ep.so"))
    monkeypatch.setattr(webgpu, "vulkan_loader_present", lambda: True)
    monkeypatch.setattr(webgpu, "adapters", lambda: [webgpu.Adapter("NVIDIA", "GPU", {}, 0x10DE, 0x2335)])
    monkeypatch.setenv("VK_ICD_FILENAMES", str(tmp_path / "none.json"))  # no Vulkan driver for the child
    monkeypatch.setenv("VK_DRIVER_FILES", str(tmp_path / "none.json"))
    st = doctor.provider_status()["onnxruntime_genai"]["webgpu"]
    assert st["available"] is False
    assert "could not get one" in st["why"] and len(st["why"].split(": ", 1)[1]) > 10


# ---------------------------------------------------------------- Ctrl+C during the source step


def test_ctrl_c_in_the_source_step_is_interrupted_not_an_import_error(tiny_hf, tmp_path, monkeypatch):
    """transformers imports lazily: Ctrl+C there surfaced as its ImportError (or numpy's)."""
    from oga_npu.prepare import PrepareRequest, prepare, source

    def resolve(src):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt as e:
            raise ImportError("numpy.core.multiarray failed to import") from e
        raise AssertionError("no SIGINT")

    monkeypatch.setattr(source, "resolve", resolve)
    with pytest.raises(StageInterrupted, match="interrupted during source"):
        prepare(PrepareRequest(str(tiny_hf), recipe="cpu-fast", output=tmp_path / "o"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
