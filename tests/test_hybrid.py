"""The Ryzen AI hybrid/NPU flow with a fake Ryzen AI env (tests/rai_env.py: its python is the
fake builder, its bin/ the fake vendor tools of tests/fake_tools)."""

import json
import shutil
import time
import zipfile

import pytest
from conftest import run_cli, smollm2_gguf
from rai_env import fake_env, make_rai_env

from oga_npu.workdir import MANIFEST, folder_state


def calls(tmp_path, tool=None) -> list[dict]:
    log = tmp_path / "fake.jsonl"
    rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return [r for r in rows if (tool is None or r["tool"] == tool) and r["argv"][:1] != ["--version"]]


@pytest.fixture(scope="module")
def hybrid_base(tiny_hybrid16):
    """A tiny model prepared for hybrid with the fakes (RAI 1.6 form, traced): conftest's session
    prepare, whose quantize stage test_ryzenai's base reuses."""
    return tiny_hybrid16


def test_hybrid_with_fakes_makes_a_ready_folder(hybrid_base):
    root, out = hybrid_base
    assert folder_state(out).state == "ready"
    for f in (
        "model_jit.onnx",
        "model_jit.onnx.data",
        "model_jit.bin",
        "model_jit.pb.bin",
        "genai_config.json",
        "tokenizer.json",
    ):
        assert (out / f).is_file(), f
    cfg = json.loads((out / "genai_config.json").read_text())
    assert cfg["model"]["decoder"]["session_options"]["custom_ops_library"]  # the RAI 1.6 form
    # the plugin zip landed in dd_plugins/ of the working directory, as a real zip
    z = root / "dd_plugins" / "oga_npu_ops.zip"
    assert zipfile.ZipFile(z).namelist()
    m = json.loads((out / MANIFEST).read_text())
    # not run here, and says why: a 1.6 (custom ops) model needs Ryzen AI 1.6's onnxruntime-genai
    assert "0.9.2.x" in m["stages"]["validate"]["detail"]["skipped"]


def test_hybrid_quantizes_as_amd_does_and_records_it(hybrid_base):
    # AMD (oga_model_prepare.rst 1.6-1.8): --exclude_layers [], --data_type float16 for an fp32
    # checkpoint; the folder AMD's builder reads carries the legacy RoPE keys (builder_compat)
    _, out = hybrid_base
    d = json.loads((out / MANIFEST).read_text())["stages"]["quantize"]["detail"]
    assert d["exclude_layers"] == [] and d["data_type"] == "float16" and d["strict_rope"] is True
    assert (d["algorithm"], d["calibration"], d["group_size"]) == ("none", None, 32)
    qcfg = json.loads((out / "stages" / "quantize" / "config.json").read_text())
    assert "lm_head" not in json.dumps(qcfg["quantization_config"].get("exclude", []))
    assert qcfg["rope_theta"] == qcfg["rope_parameters"]["rope_theta"]


def test_exact_argv_and_environment_16(hybrid_base):
    root, out = hybrid_base
    (onnx_utils,) = calls(root, "onnx_utils")
    assert onnx_utils["argv"] == [
        "vaiml",
        "--model-dir",
        str(out / "stages" / "build"),
        "--plugin_name",
        "oga_npu_ops",
        "--compile",
        "--ops_type",
        "bfp16",
        "--context_length",
        "4096",
    ]
    assert onnx_utils["env"]["DD_PLUGINS_TRACING"] == "1"
    (mg,) = calls(root, "model_generate")
    assert mg["argv"] == ["--hybrid", str(out / "stages" / "hybrid.partial"), str(out / "stages" / "build")]
    assert mg["env"]["DD_PLUGINS_ROOT"] == str(root / "dd_plugins")
    assert mg["env"]["DD_PLUGINS_TRACING"] == "1"
    assert (out / "logs" / "hybrid" / "model_generate_trace.json").is_file()
    assert not (out / "model_generate_trace.json").exists()  # traces are kept in logs, not in the model


@pytest.mark.parametrize("release,form", [("1.7.1", "new"), ("1.8", "new"), ("1.7", "old")])
def test_release_forms(tmp_path, hybrid_base, release, form):
    root, base = hybrid_base
    out = tmp_path / "m"
    shutil.copytree(base, out)
    r = run_cli(
        "prepare",
        str(json.loads((base / "prepare.json").read_text())["source"]),
        "--target",
        "hybrid",
        "--recipe",
        "cpu-fast",
        "--output",
        str(out),
        "--skip-device-check",
        "--from",
        "hybrid",
        "--rai-version",
        release,
        env=fake_env(tmp_path, release),
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    (mg,) = calls(tmp_path, "model_generate")
    part, build = str(out / "stages" / "hybrid.partial"), str(out / "stages" / "build")
    if form == "new":
        assert mg["argv"] == ["--hybrid", "--input", build, "--output", part]
        cfg = json.loads((out / "genai_config.json").read_text())
        ry = cfg["model"]["decoder"]["session_options"]["provider_options"][0]["RyzenAI"]
        assert ry["external_data_file"] == "model_jit.pb.bin"
    else:
        assert mg["argv"] == ["--hybrid", part, build]
    assert "DD_PLUGINS_TRACING" not in mg["env"]  # no --trace this time
    # quantize and build are reused; plugins are recompiled for another release's compiler
    assert "quantize … already done" in r.stderr and "build … already done" in r.stderr
    assert len(calls(tmp_path, "onnx_utils")) == 1


def test_release_from_conda_env_name(tmp_path, hybrid_base):
    root, base = hybrid_base
    out = tmp_path / "m"
    shutil.copytree(base, out)
    r = run_cli(
        "prepare",
        json.loads((base / "prepare.json").read_text())["source"],
        "--target",
        "hybrid",
        "--recipe",
        "cpu-fast",
        "--output",
        str(out),
        "--skip-device-check",
        "--from",
        "hybrid",
        env=fake_env(tmp_path, "1.7.1", CONDA_DEFAULT_ENV="ryzen-ai-1.7.1"),
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    (mg,) = calls(tmp_path, "model_generate")
    assert "--input" in mg["argv"]


def test_failing_tool_one_line_then_resume(tmp_path, hybrid_base):
    root, base = hybrid_base
    out = tmp_path / "m"
    shutil.copytree(base, out)
    src = json.loads((base / "prepare.json").read_text())["source"]
    args = [
        "prepare",
        src,
        "--target",
        "hybrid",
        "--recipe",
        "cpu-fast",
        "--output",
        str(out),
        "--skip-device-check",
        "--from",
        "hybrid",
        "--rai-version",
        "1.8",
    ]
    r = run_cli(
        *args,
        env=fake_env(
            tmp_path,
            "1.8",
            FAKE_MODEL_GENERATE_EXIT=3,
            FAKE_MODEL_GENERATE_STDERR="loading model\\nERROR: partition failed: op X",
        ),
        cwd=root,
    )
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1
    assert "model_generate" in err[0] and "exit code 3" in err[0] and "partition failed: op X" in err[0]
    assert str(out / "logs" / "hybrid.log") in r.stderr
    assert folder_state(out).state == "incomplete"  # no ready output is left
    r = run_cli("run", "-m", str(out), "hi")
    assert r.returncode == 1 and "incomplete" in r.stderr
    # the re-run resumes at the failed stage
    r = run_cli(*args[:-4], "--rai-version", "1.8", env=fake_env(tmp_path, "1.8"), cwd=root)
    assert r.returncode == 0, r.stderr
    assert "[5/6] hybrid … done" in r.stderr and "[3/6] build … already done" in r.stderr
    assert folder_state(out).state == "ready"


def test_tool_exit_0_without_output_is_a_failure(tmp_path, hybrid_base):
    root, base = hybrid_base
    out = tmp_path / "m"
    shutil.copytree(base, out)
    src = json.loads((base / "prepare.json").read_text())["source"]
    r = run_cli(
        "prepare",
        src,
        "--target",
        "hybrid",
        "--recipe",
        "cpu-fast",
        "--output",
        str(out),
        "--skip-device-check",
        "--from",
        "hybrid",
        env=fake_env(tmp_path, FAKE_MODEL_GENERATE_BROKEN=1),
        cwd=root,
    )
    assert r.returncode == 1 and "model_jit.onnx (model.decoder.filename in genai_config.json) is missing" in r.stderr


def test_without_tools_fails_fast_and_writes_nothing(tmp_path, tiny_hf):
    out = tmp_path / "m"
    t0 = time.monotonic()
    r = run_cli(
        "prepare",
        str(tiny_hf),
        "--target",
        "hybrid",
        "--output",
        str(out),
        cwd=tmp_path,
        env={"OGA_NPU_HOST_OS": "Windows", "CONDA_PREFIX": "", "RYZEN_AI_INSTALLATION_PATH": ""},
    )
    assert time.monotonic() - t0 < 5  # a child Python start included; the check itself is instant
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and "no Ryzen AI environment found" in err[0]
    assert "Ryzen AI Software" in r.stderr and "--rai-env" in r.stderr
    # an env without the tools: each missing one named, in one line
    bare = make_rai_env(tmp_path, "1.8", tools=())
    r = run_cli(
        "prepare",
        str(tiny_hf),
        "--target",
        "hybrid",
        "--output",
        str(out),
        "--rai-env",
        str(bare),
        cwd=tmp_path,
        env={"OGA_NPU_HOST_OS": "Windows"},
    )
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and "onnx_utils not found" in err[0] and "model_generate not found" in err[0]
    assert not out.exists() and not (tmp_path / "dd_plugins").exists()


def test_phoenix_npu_is_refused_with_the_reason(tmp_path, tiny_hf):
    sysfs = tmp_path / "sysfs"
    dev = sysfs / "sys" / "bus" / "pci" / "devices" / "0000:c5:00.1"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x1022\n")
    (dev / "device").write_text("0x1502\n")
    (dev / "revision").write_text("0x00\n")
    r = run_cli(
        "prepare",
        str(tiny_hf),
        "--target",
        "hybrid",
        "--output",
        str(tmp_path / "m"),
        env=fake_env(tmp_path, OGA_NPU_SYSFS_ROOT=sysfs),
        cwd=tmp_path,
    )
    assert r.returncode == 1
    assert "Phoenix/Hawk Point" in r.stderr and "Strix or Krackan" in r.stderr
    assert not (tmp_path / "m").exists()


def test_npu_target_uses_model_generate_npu(tmp_path, hybrid_base):
    """From a copy of the hybrid folder, --from hybrid: the quantize stage model_generate --npu
    reads is the hybrid build's (reused, not quantized again)."""
    _, base = hybrid_base
    out = tmp_path / "npu"
    shutil.copytree(base, out)
    r = run_cli(
        "prepare",
        json.loads((base / "prepare.json").read_text())["source"],
        "--target",
        "npu",
        "--recipe",
        "cpu-fast",
        "--output",
        str(out),
        "--skip-device-check",
        "--from",
        "hybrid",
        "--rai-version",
        "1.6",
        env=fake_env(tmp_path),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "quantize … already done" in r.stderr
    (mg,) = calls(tmp_path, "model_generate")
    # the 1.6 form (oga_model_prepare.rst@1.6): model_generate --npu <out> <in> --optimize decode
    part, quant = str(out / "stages" / "hybrid.partial"), str(out / "stages" / "quantize")
    assert mg["argv"] == ["--npu", part, quant, "--optimize", "decode"]
    cfg = json.loads((out / "genai_config.json").read_text())
    assert (out / cfg["model"]["decoder"]["filename"]).is_file()  # the NPU graph is not model_jit.onnx
    assert calls(tmp_path, "onnx_utils") == []  # no plugin compile for NPU-only


def test_trace_summary(hybrid_base):
    root, out = hybrid_base
    r = run_cli("trace", str(out))
    assert r.returncode == 0, r.stderr
    assert "[plugins] exit 0" in r.stdout and "[hybrid] exit 0" in r.stdout
    assert "oga_npu_ops/oga_npu_ops.json" in r.stdout
    assert "logs/hybrid/model_generate_trace.json" in r.stdout
    line = next(ln for ln in r.stdout.splitlines() if "com.amd:MatMulNBits" in ln)
    before, after = (int(x) for x in line.split()[-2:])
    assert before == 0 and after > 0


@pytest.mark.slow
def test_smollm2_hybrid_dry_run_lists_every_step(tmp_path):
    gguf = smollm2_gguf()
    r = run_cli("prepare", str(gguf), "--target", "hybrid", "--dry-run", "--trace", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "quantize" in out and "-e dml" in out
    assert "onnx_utils vaiml --model-dir" in out and "--ops_type bfp16" in out
    assert "model_generate --hybrid" in out
    assert "DD_PLUGINS_ROOT=" in out and "DD_PLUGINS_TRACING=1" in out
    assert list(tmp_path.iterdir()) == []  # nothing written
