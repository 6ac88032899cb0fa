"""prepare end to end on a tiny random llama: stages, resume, kill -9, bad sources."""

import json
import os
import signal
import subprocess
import sys
import time

from conftest import REPO, call, run_cli

from oga_npu.workdir import MANIFEST, folder_state


def stage_lines(stderr: str) -> dict[str, str]:
    out = {}
    for ln in stderr.splitlines():
        if ln.startswith("[") and "] " in ln and " … " in ln:
            name = ln.split("] ", 1)[1].split(" … ")[0]
            out[name] = ln.split(" … ", 1)[1]
    return out


def test_tiny_prepare_makes_a_ready_folder(tiny_model):
    st = folder_state(tiny_model, check_hashes=True)
    assert st.state == "ready"
    for f in ("genai_config.json", "model.onnx", "model.onnx.data", "tokenizer.json", MANIFEST):
        assert (tiny_model / f).is_file(), f
    m = st.manifest
    assert m["target"] == "cpu" and m["recipe"] == "cpu-fast"
    # group size fallback: hidden 96 fits neither 128 nor 64
    assert m["recipe_config"]["quantize"]["group_size"] == 32
    assert any("using 32" in n for n in m["notes"])
    cfg = json.loads((tiny_model / "genai_config.json").read_text())
    assert cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] >= 1
    qcfg = json.loads((tiny_model / "stages" / "quantize" / "config.json").read_text())
    assert qcfg["quantization_config"]["quant_method"] == "quark"
    assert m["stages"]["validate"]["detail"]["generated_tokens"] >= 1


def test_rerun_skips_every_stage(tiny_model, tiny_hf, session_home):
    before = (tiny_model / MANIFEST).stat().st_mtime_ns
    t0 = time.monotonic()
    r = run_cli("prepare", str(tiny_hf), "--recipe", "cpu-fast", "--output", str(tiny_model))
    assert r.returncode == 0, r.stderr
    lines = stage_lines(r.stderr)
    assert lines["quantize"] == lines["build"] == lines["validate"] == "already done"
    assert (tiny_model / MANIFEST).stat().st_mtime_ns == before
    assert time.monotonic() - t0 < 30
    assert r.stdout.strip() == str(tiny_model)


def test_from_stage_resumes_there(tmp_path, tiny_model, tiny_hf, capsys, inprocess_tools):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_model, out)
    code, _, err = call(
        capsys, "prepare", str(tiny_hf), "--recipe", "cpu-fast", "--output", str(out), "--from", "build"
    )
    assert code == 0, err
    lines = stage_lines(err)
    assert lines["quantize"] == "already done"
    assert lines["build"].startswith("done")
    assert folder_state(out).state == "ready"


def test_ready_folder_with_other_recipe_needs_force(tmp_path, tiny_model, tiny_hf):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_model, out)
    r = run_cli("prepare", str(tiny_hf), "--recipe", "default", "--output", str(out), "--dry-run")
    assert r.returncode == 0
    assert "the real run would stop" in r.stdout and "quantize: would run" in r.stdout
    r = run_cli("prepare", str(tiny_hf), "--recipe", "default", "--output", str(out))
    assert r.returncode == 1
    assert "--force" in r.stderr
    assert folder_state(out).state == "ready"  # nothing lost


def test_dry_run_shows_the_plan_against_the_disk(tmp_path, tiny_model, tiny_hf):
    """A ready folder: every stage 'already done', as the real run then says; a missing
    validate stage: only it would run; the spec path is the real run's."""
    import shutil

    from oga_npu.prepare import PrepareRequest, prepare

    def plan(out, **kw):
        return prepare(PrepareRequest(source=str(tiny_hf), recipe="cpu-fast", output=out, dry_run=True, **kw)).plan

    lines = plan(tiny_model)
    for stage in ("quantize", "build", "validate"):
        assert any(ln.startswith("[") and f"] {stage}: already done" in ln for ln in lines), lines
    out = tmp_path / "copy"
    shutil.copytree(tiny_model, out)
    shutil.rmtree(out / "stages" / "validate")
    (out / MANIFEST).unlink()
    lines = plan(out)
    assert any("] build: already done" in ln for ln in lines)
    assert any("] validate: would run" in ln for ln in lines)
    lines = plan(out, from_stage="build")
    assert any("] quantize: already done" in ln for ln in lines)
    assert any("] build: would run" in ln for ln in lines)
    fresh = plan(tmp_path / "new")
    assert any("] quantize: would run" in ln for ln in fresh)
    assert any(f"--spec {tmp_path / 'new' / 'stages' / 'quantize_spec.json'}" in ln for ln in fresh)
    assert not (tmp_path / "new").exists()


def test_dry_run_builder_command_matches_the_target_runtime(tmp_path, tiny_hf):
    """For an older target runtime the dry run's builder command leaves out what the note
    says is left out (the real run's argv), and keeps it for the newest."""
    from oga_npu.prepare import PrepareRequest, prepare

    def builder_line(**kw):
        req = PrepareRequest(source=str(tiny_hf), recipe="cpu-fast", output=tmp_path / "o", dry_run=True, **kw)
        lines = prepare(req).plan
        return next(ln for ln in lines if "onnxruntime_genai.models.builder" in ln), lines

    old, lines = builder_line(oga_version="0.11.2")
    assert any("prune_lm_head left out" in ln for ln in lines), lines
    assert "prune_lm_head" not in old and "accuracy_level=4" in old
    new, _ = builder_line()
    assert "prune_lm_head=true" in new


def test_dry_run_prints_plan_and_writes_nothing(tmp_path, tiny_hf):
    out = tmp_path / "dry"
    r = run_cli("prepare", str(tiny_hf), "--output", str(out), "--dry-run")
    assert r.returncode == 0, r.stderr
    assert not out.exists()
    text = r.stdout
    assert "onnxruntime_genai.models.builder" in text and "-e cpu" in text
    assert "awq" in text and "using 32" in text
    assert "nothing was written" in text


def test_missing_source_path(tmp_path):
    out = tmp_path / "out"
    r = run_cli("prepare", str(tmp_path / "nope" / "model.gguf"), "--output", str(out))
    assert r.returncode == 1
    assert r.stderr.count("Error:") == 1 and "not found" in r.stderr
    assert not out.exists()
    r = run_cli("prepare", "./no/such/folder", "--output", str(out))
    assert r.returncode == 1 and "source not found" in r.stderr and not out.exists()


def test_unknown_hub_id_offline_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "out"
    r = run_cli("prepare", "nobody-xyz/not-a-model", "--output", str(out), env={"HF_HUB_OFFLINE": "1"})
    assert r.returncode == 1
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(errors) == 1 and "HF_HUB_OFFLINE" in errors[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert not (tmp_path / "models").exists()


def test_foreign_output_folder_is_refused(tmp_path, tiny_hf):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    r = run_cli("prepare", str(tiny_hf), "--recipe", "cpu-fast", "--output", str(out))
    assert r.returncode == 1 and "not an oga-npu model folder" in r.stderr
    assert (out / "notes.txt").read_text() == "keep me"


def test_lock_held_by_live_process_fails_fast(tmp_path, tiny_hf):
    out = tmp_path / "locked"
    out.mkdir()
    (out / "prepare.json").write_text("{}")
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(str(holder.pid))
        r = run_cli("prepare", str(tiny_hf), "--recipe", "cpu-fast", "--output", str(out))
        assert r.returncode == 1 and f"pid {holder.pid}" in r.stderr
    finally:
        holder.kill()
        holder.wait()


def test_kill_9_during_build_then_run_refuses_then_rerun_completes(tmp_path, tiny_model, tiny_hf, session_home):
    """The prepare killed here starts where a fresh one stands once its quantize stage is done
    (tiny_model's, copied: each stage is renamed into place when it ends, so what a later kill
    can leave is the same; Quark's run is not spent twice)."""
    import shutil

    out = tmp_path / "killed"
    out.mkdir()
    shutil.copy2(tiny_model / "prepare.json", out / "prepare.json")
    shutil.copytree(tiny_model / "stages" / "quantize", out / "stages" / "quantize")
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "oga_npu", "prepare", str(tiny_hf), "--recipe", "cpu-fast", "--output", str(out)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "stages" / "build.partial").exists():
            assert proc.poll() is None, "prepare ended before the build stage started"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert folder_state(out).state == "incomplete"
    r = run_cli("run", "-m", str(out), "hello")
    assert r.returncode == 1
    assert "incomplete" in r.stderr and "oga-npu prepare" in r.stderr
    r = run_cli("models")
    r = run_cli("prepare", str(tiny_hf), "--recipe", "cpu-fast", "--output", str(out))
    assert r.returncode == 0, r.stderr
    lines = stage_lines(r.stderr)
    assert lines["quantize"] == "already done" and lines["build"].startswith("done")
    assert not (out / "stages" / "build.partial").exists()
    r = run_cli("run", "-m", str(out), "hello", "-n", "4")
    assert r.returncode == 0, r.stderr


def test_awq_recipe_on_tiny_llama(tmp_path, tiny_hf, capsys, inprocess_tools):
    """The CLI and its tools in this process (conftest.call, inprocess_tools): Quark's import is
    paid once for the session, not by a child of this test."""
    out = tmp_path / "awq"
    calib = tmp_path / "calib.txt"
    calib.write_text("The quick brown fox jumps over the lazy dog. " * 200)
    code, _, err = call(
        capsys, "prepare", str(tiny_hf), "--recipe", "default", "--output", str(out), "--calib-file", str(calib)
    )
    assert code == 0, err
    m = json.loads((out / MANIFEST).read_text())
    stats = m["stages"]["quantize"]["detail"]
    assert stats["algorithm"] == "awq" and stats["calibration_tokens"] == 16 * 128
    assert m["recipe_config"]["quantize"]["group_size"] == 32


def test_models_lists_state(tmp_path, tiny_model):
    import shutil

    root = tmp_path / "models"
    root.mkdir(exist_ok=True)
    shutil.copytree(tiny_model, root / "ok-cpu")
    shutil.copytree(tiny_model, root / "broken-cpu")
    (root / "broken-cpu" / MANIFEST).unlink()
    r = run_cli("models", str(root))
    assert r.returncode == 0
    rows = {ln.split()[0].split("/")[-1]: ln for ln in r.stdout.splitlines()[1:]}
    assert rows["ok-cpu"].endswith("ready") and "cpu-fast" in rows["ok-cpu"]
    assert rows["broken-cpu"].endswith("incomplete")


def test_hub_source_records_its_revision(tmp_path, tiny_hf, monkeypatch, inprocess_tools):
    """A hub id prepares from the snapshot huggingface_hub returns (its folder is named by the
    commit) and the manifest records the repo and that revision (it used to stop at the
    manifest, after every stage had run). builder-int4: no quantize stage, no Quark run (the
    revision is the source step's, the same for every recipe)."""
    import shutil

    import huggingface_hub

    from oga_npu.prepare import PrepareRequest, prepare

    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / "0123456789abcdef"
    shutil.copytree(tiny_hf, snap)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(snap))
    res = prepare(PrepareRequest("org/tiny", recipe="builder-int4", output=tmp_path / "out"))
    assert res.manifest["hub_id"] == "org/tiny" and res.manifest["revision"] == "0123456789abcdef"
    assert folder_state(tmp_path / "out").state == "ready"
