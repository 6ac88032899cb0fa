"""The Ryzen AI stages in the release's environment (oga_npu.ryzenai), per release, with fake
envs (tests/rai_env.py); model_benchmark per release; the Linux NPU runtime checks.

No test here runs an NPU: the env's Python, onnx_utils, model_generate and model_benchmark are
fakes that record their argv and environment, and the Linux checks read monkeypatched paths,
limits and host names."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli
from rai_env import PINS, env_for, make_rai_env, path_head

from oga_npu import ryzenai, ryzenai_folders
from oga_npu.errors import PreflightError, ProviderError

RELEASES = ("1.6", "1.7", "1.7.1", "1.8")
HYBRID_RECIPE = (
    (Path(__file__).resolve().parent.parent / "oga_npu" / "recipes" / "cpu-fast.toml").read_text()
    + """
[build.hybrid]
precision = "int4"
extra_options = { accuracy_level = 4, block_size = 32, prune_lm_head = true, windowed_kv_cache = false }
"""
)


def calls(log: Path, tool: str) -> list[dict]:
    rows = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return [r for r in rows if r["tool"] == tool and r["argv"][:1] != ["--version"]]


@pytest.fixture(scope="module")
def hybrid_base(tmp_path_factory, tiny_hf, tiny_hybrid16):
    """The tiny model prepared for hybrid once, in a 1.8 env, with a recipe whose DML build
    has options in 0.18's names (renamed or left out for older builders). It starts from the
    quantize stage of conftest's hybrid prepare (this recipe quantizes as cpu-fast does: the
    same key), so Quark runs once for both."""
    root = tmp_path_factory.mktemp("rai")
    recipe = root / "rai-test.toml"
    recipe.write_text(HYBRID_RECIPE)
    env18 = make_rai_env(root, "1.8")
    out = root / "base"
    shutil.copytree(tiny_hybrid16[1] / "stages" / "quantize", out / "stages" / "quantize")
    shutil.copy2(tiny_hybrid16[1] / "prepare.json", out / "prepare.json")
    r = run_cli(
        "prepare",
        str(tiny_hf),
        "--target",
        "hybrid",
        "--recipe",
        str(recipe),
        "--output",
        str(out),
        "--skip-device-check",
        "--rai-env",
        str(env18),
        env=env_for(env18),
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    assert "quantize … already done" in r.stderr
    return root, recipe, out


def from_base(hybrid_base, tmp_path: Path, target: str, recipe: Path, env: Path, start: str, **env_extra):
    """prepare a copy of the base folder for `target` from stage `start` (its quantize stage is
    reused: the recipes below change nothing before the build)."""
    root, _, base = hybrid_base
    out = tmp_path / target
    shutil.copytree(base, out)
    source = json.loads((base / "prepare.json").read_text())["source"]
    return out, run_cli(
        "prepare",
        source,
        "--target",
        target,
        "--recipe",
        str(recipe),
        "--output",
        str(out),
        "--skip-device-check",
        "--from",
        start,
        "--rai-env",
        str(env),
        env=env_for(env, **env_extra),
        cwd=root,
    )


# The builder options each release's onnxruntime-genai gets (0.9.2/0.11.2: no prune_lm_head).
EXPECTED_OPTIONS = {
    "0.9.2": ["int4_accuracy_level=4", "int4_block_size=32"],
    "0.11.2": ["int4_accuracy_level=4", "int4_block_size=32"],
    "0.14.0": ["int4_accuracy_level=4", "int4_block_size=32", "prune_lm_head=true"],
}


@pytest.mark.parametrize("release", RELEASES)
def test_hybrid_runs_each_stage_in_the_release_env(tmp_path, hybrid_base, tiny_hf, release):
    root, recipe, base = hybrid_base
    out = tmp_path / "m"
    shutil.copytree(base, out)
    env = make_rai_env(tmp_path, release)
    log = tmp_path / "fake.jsonl"
    r = run_cli(
        "prepare",
        str(tiny_hf),
        "--target",
        "hybrid",
        "--recipe",
        str(recipe),
        "--output",
        str(out),
        "--skip-device-check",
        "--from",
        "build",
        "--rai-env",
        str(env),
        env=env_for(env),
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    assert "quantize … already done" in r.stderr  # Quark ran once, in oga-npu's own environment
    stages = out / "stages"
    (py,) = calls(log, "python")
    assert py["exe"] == str(env / "bin" / "python")
    assert py["argv"] == [
        "-m",
        "onnxruntime_genai.models.builder",
        "-i",
        str(stages / "quantize"),
        "-o",
        str(stages / "build.partial"),
        "-p",
        "int4",
        "-e",
        "dml",
        "-c",
        str(stages / "build.partial.cache"),
        "--extra_options",
        *EXPECTED_OPTIONS[PINS[release]],
    ]
    (ou,) = calls(log, "onnx_utils")
    (mg,) = calls(log, "model_generate")
    assert ou["exe"] == str(env / "bin" / "onnx_utils") and mg["exe"] == str(env / "bin" / "model_generate")
    assert ou["argv"] == [
        "vaiml",
        "--model-dir",
        str(stages / "build"),
        "--plugin_name",
        "oga_npu_ops",
        "--compile",
        "--ops_type",
        "bfp16",
        "--context_length",
        "4096",
    ]
    part, build = str(stages / "hybrid.partial"), str(stages / "build")
    if release in ("1.7.1", "1.8"):
        assert mg["argv"] == ["--hybrid", "--input", build, "--output", part]
    else:
        assert mg["argv"] == ["--hybrid", part, build]
    for call in (py, ou, mg):  # the env's folders first, nothing of oga-npu's own Python
        assert path_head(call) == str(env.resolve())
        assert str(env.resolve() / "bin") in call["env"]["PATH"].split(os.pathsep)
        assert call["env"]["CONDA_PREFIX"] == str(env.resolve())
        assert "PYTHONPATH" not in call["env"] and "VIRTUAL_ENV" not in call["env"]
    assert mg["env"]["DD_PLUGINS_ROOT"] == str(root / "dd_plugins")
    m = json.loads((out / "oga_npu_manifest.json").read_text())
    assert m["builder"]["onnxruntime-genai-directml-ryzenai"] == PINS[release]
    detail = m["stages"]["build"]["detail"]
    assert detail["builder"] == f"onnxruntime-genai-directml-ryzenai {PINS[release]}"
    left_out = ["windowed_kv_cache"] + (["prune_lm_head"] if ryzenai.vtuple(PINS[release]) < (0, 14) else [])
    assert sorted(detail["options_left_out"]) == sorted(left_out)
    assert m["stages"]["hybrid"]["detail"]["rai_version"] == release


def test_dml_builds_with_the_env_builder_when_there_is_one(tmp_path, hybrid_base, tiny_model):
    """From a copy of tiny_model, not of the hybrid base: dml quantizes as cpu does (lm_head
    kept, float32), so the cpu folder's quantize stage is the one a dml build reads."""
    env = make_rai_env(tmp_path, "1.8")
    root, recipe, _ = hybrid_base
    out, r = from_base((root, recipe, tiny_model), tmp_path, "dml", recipe, env, "build")
    assert r.returncode == 0, r.stderr
    assert "quantize … already done" in r.stderr
    (py,) = calls(tmp_path / "fake.jsonl", "python")
    assert py["exe"] == str(env / "bin" / "python") and py["argv"][py["argv"].index("-e") + 1] == "dml"
    # no env: oga-npu's own builder (the plan names this interpreter)
    r = run_cli(
        "prepare",
        json.loads((out / "prepare.json").read_text())["source"],
        "--target",
        "dml",
        "--dry-run",
        "--output",
        str(tmp_path / "d2"),
        env={"CONDA_PREFIX": "", "RYZEN_AI_INSTALLATION_PATH": ""},
    )
    assert r.returncode == 0, r.stderr
    assert f"$ {sys.executable} -m onnxruntime_genai.models.builder" in r.stdout and "Ryzen AI" not in r.stdout


def test_the_fake_builder_refuses_0_18_names_in_an_older_env(tmp_path):
    """What the renaming above protects against: the 0.14 builder knows only int4_* names."""
    env = make_rai_env(tmp_path, "1.8")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "config.json").write_text("{}")
    p = subprocess.run(
        [
            str(env / "bin" / "python"),
            "-m",
            "onnxruntime_genai.models.builder",
            "-i",
            str(tmp_path / "in"),
            "-o",
            str(tmp_path / "out"),
            "-p",
            "int4",
            "-e",
            "dml",
            "--extra_options",
            "block_size=32",
        ],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 1 and "unknown extra option 'block_size'" in p.stderr


def test_hybrid_without_operator_compilation_hands_model_generate_the_quantized_folder(tmp_path, hybrid_base):
    recipe = tmp_path / "no-ops.toml"
    recipe.write_text(HYBRID_RECIPE + '\n[hybrid]\ncompile_ops = "never"\n')
    env = make_rai_env(tmp_path, "1.8")
    out, r = from_base(hybrid_base, tmp_path, "hybrid", recipe, env, "hybrid")
    assert r.returncode == 0, r.stderr
    assert "quantize … already done" in r.stderr and "build" not in r.stderr and "plugins" not in r.stderr
    log = tmp_path / "fake.jsonl"
    assert calls(log, "python") == [] and calls(log, "onnx_utils") == []  # model_generate builds it itself
    (mg,) = calls(log, "model_generate")
    assert mg["argv"] == [
        "--hybrid",
        "--input",
        str(out / "stages" / "quantize"),
        "--output",
        str(out / "stages" / "hybrid.partial"),
    ]


@pytest.mark.parametrize(
    "release,variant,ok",
    [
        ("1.8", "full_fusion", True),
        ("1.7.1", "full_fusion", True),  # the variants are documented from 1.7.1 (oga_model_prepare.rst@1.7.1)
        ("1.7.1", "default", True),  # --basic: "safe default for new or untested models"
        ("1.7", "full_fusion", False),
        ("1.6", "default", True),
    ],
)
def test_npu_variant_per_release(tmp_path, hybrid_base, release, variant, ok):
    recipe = tmp_path / "npu.toml"
    recipe.write_text(HYBRID_RECIPE + f'\n[hybrid]\nnpu_variant = "{variant}"\n')
    env = make_rai_env(tmp_path, release)
    out, r = from_base(hybrid_base, tmp_path, "npu", recipe, env, "hybrid")
    log = tmp_path / "fake.jsonl"
    if not ok:
        assert r.returncode == 1 and f"not in Ryzen AI {release}" in r.stderr and "came with 1.7.1" in r.stderr
        assert not (out / "stages" / "hybrid.partial").exists() and calls(log, "model_generate") == []
        return
    assert r.returncode == 0, r.stderr
    (mg,) = calls(log, "model_generate")
    part, quant = str(out / "stages" / "hybrid.partial"), str(out / "stages" / "quantize")
    flag = "--basic" if variant == "default" else f"--{variant}"
    expected = {
        "1.8": ["--npu", flag, "--input", quant, "--output", part],
        "1.7.1": ["--npu", flag, "--input", quant, "--output", part],
        "1.6": ["--npu", part, quant, "--optimize", "decode"],
    }[release]
    assert mg["argv"] == expected and mg["exe"] == str(env / "bin" / "model_generate")


def test_release_from_the_active_conda_env(tmp_path, hybrid_base):
    root, recipe, base = hybrid_base
    env = make_rai_env(tmp_path, "1.7.1")
    out = tmp_path / "m"
    shutil.copytree(base, out)
    r = run_cli(
        "prepare",
        json.loads((base / "prepare.json").read_text())["source"],
        "--target",
        "hybrid",
        "--recipe",
        str(recipe),
        "--output",
        str(out),
        "--skip-device-check",
        "--from",
        "hybrid",
        env=env_for(env, CONDA_PREFIX=env, CONDA_DEFAULT_ENV=env.name),
        cwd=root,
    )
    assert r.returncode == 0, r.stderr
    (mg,) = calls(tmp_path / "fake.jsonl", "model_generate")
    assert "--input" in mg["argv"] and mg["exe"] == str(env / "bin" / "model_generate")


@pytest.mark.parametrize("release, missing", [("1.6", "torch and onnx_ir"), ("1.7", "torch and onnx_ir")])
def test_a_fresh_env_without_the_builders_imports_names_them(tmp_path, tiny_hf, release, missing):
    """A fresh 1.6/1.7 env has no torch / onnx_ir, which its builder imports (AMD's
    oga_model_prepare.rst, branches 1.6 and 1.7: `pip install onnx_ir`, `pip install torch==2.7.1`
    in the env): refused up front, naming them and the pip line, nothing written."""
    env = make_rai_env(tmp_path, release, builder_deps=False)
    out = tmp_path / "m"
    r = run_cli(
        "prepare",
        str(tiny_hf),
        "--target",
        "hybrid",
        "--output",
        str(out),
        "--skip-device-check",
        "--rai-env",
        str(env),
        "--rai-version",
        release,
        env=env_for(env),
        cwd=tmp_path,
    )
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert r.returncode == 1 and len(err) == 1, r.stderr
    assert f"needs {missing}" in err[0] and "pip install torch==2.7.1" in err[0], err[0]
    assert not out.exists()


def test_broken_env_one_line_nothing_written(tmp_path, tiny_hf):
    env = make_rai_env(tmp_path, "1.8", python=False, packages=False)
    out = tmp_path / "m"
    r = run_cli(
        "prepare",
        str(tiny_hf),
        "--target",
        "hybrid",
        "--output",
        str(out),
        "--skip-device-check",
        "--rai-env",
        str(env),
        env=env_for(env),
        cwd=tmp_path,
    )
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and "no Python in" in err[0] and "no onnxruntime-genai in" in err[0]
    assert "Fix:" in r.stderr or "fix" in r.stderr.lower()
    assert not out.exists() and not (tmp_path / "dd_plugins").exists()
    r = run_cli(
        "prepare",
        str(tiny_hf),
        "--target",
        "hybrid",
        "--output",
        str(out),
        "--rai-env",
        str(tmp_path / "nope"),
        env=env_for(env),
        cwd=tmp_path,
    )
    assert r.returncode == 1 and "is not a folder" in r.stderr and not out.exists()


def test_npu_prepare_on_linux_stops_before_any_work(tmp_path, tiny_hf):
    env = make_rai_env(tmp_path, "1.8")
    out = tmp_path / "npu"
    r = run_cli(
        "prepare",
        str(tiny_hf),
        "--target",
        "npu",
        "--output",
        str(out),
        "--skip-device-check",
        "--rai-env",
        str(env),
        env=env_for(env, OGA_NPU_HOST_OS="Linux"),
        cwd=tmp_path,
    )
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and "model_generate, which runs only on Windows" in err[0]
    assert "Windows 11 PC with Ryzen AI 1.8" in r.stderr
    assert not out.exists() and not (tmp_path / "fake.jsonl").exists()
    # the plan still shows, saying where the real run stops
    r = run_cli(
        "prepare",
        str(tiny_hf),
        "--target",
        "npu",
        "--dry-run",
        "--rai-env",
        str(env),
        env=env_for(env, OGA_NPU_HOST_OS="Linux"),
        cwd=tmp_path,
    )
    assert r.returncode == 0 and "the real run would stop here" in r.stdout and not out.exists()


# ---------------------------------------------------------------- finding and reading an env


def test_find_env_sources_and_releases(tmp_path, monkeypatch):
    for k in ("CONDA_PREFIX", "CONDA_DEFAULT_ENV", "RYZEN_AI_INSTALLATION_PATH"):
        monkeypatch.delenv(k, raising=False)
    assert ryzenai.find_env() is None
    e18 = make_rai_env(tmp_path, "1.8")
    monkeypatch.setenv("CONDA_PREFIX", str(e18))
    monkeypatch.setenv("CONDA_DEFAULT_ENV", e18.name)
    env = ryzenai.find_env()
    assert env.release.version == "1.8" and env.python == e18 / "bin" / "python"
    assert env.oga == ("onnxruntime-genai-directml-ryzenai", "0.14.0") and env.tool("model_generate")
    # a conda env that is not Ryzen AI's is not taken
    other = tmp_path / "myenv"
    other.mkdir()
    monkeypatch.setenv("CONDA_PREFIX", str(other))
    monkeypatch.setenv("CONDA_DEFAULT_ENV", "myenv")
    assert ryzenai.find_env() is None
    # RYZEN_AI_INSTALLATION_PATH with a Python (Linux's venv); its release from the model-generate package
    monkeypatch.delenv("CONDA_PREFIX")
    venv = make_rai_env(tmp_path, "1.8", name="venv")
    monkeypatch.setenv("RYZEN_AI_INSTALLATION_PATH", str(venv))
    env = ryzenai.find_env()
    assert env.source == "RYZEN_AI_INSTALLATION_PATH" and env.release_source == "model-generate 1.8.0"
    # 1.6 from its onnxruntime-genai pin; 0.11.2 is both 1.7 and 1.7.1: asks
    e16 = make_rai_env(tmp_path, "1.6", name="a")
    assert ryzenai.find_env(e16).release.version == "1.6"
    e17 = make_rai_env(tmp_path, "1.7", name="b")
    with pytest.raises(PreflightError, match="1.7 and 1.7.1 both pin") as ei:
        ryzenai.find_env(e17)
    assert ei.value.fix == "pass --rai-version 1.7 or 1.7.1"
    assert ryzenai.find_env(e17, "1.7.1").release.io_flags


def test_release_rules():
    assert ryzenai.release("1.8.0").benchmark_one_length and not ryzenai.release("1.7.1").benchmark_one_length
    assert ryzenai.release("1.7.0").version == "1.7" and ryzenai.release("1.7.2").version == "1.7.1"
    assert ryzenai.release("1.9").io_flags and ryzenai.release("1.9").version == "1.9"
    with pytest.raises(PreflightError, match="older than 1.6"):
        ryzenai.release("1.5")


def test_child_env_has_nothing_of_our_python(tmp_path):
    env = ryzenai.find_env(make_rai_env(tmp_path, "1.8"))
    child = env.child_env({"PATH": "/usr/bin", "PYTHONPATH": "/x", "VIRTUAL_ENV": "/v", "HOME": "/h"})
    assert child["PATH"].split(os.pathsep)[:2] == [str(env.prefix), str(env.prefix / "bin")]
    assert child["PATH"].endswith("/usr/bin") and child["HOME"] == "/h"
    assert "PYTHONPATH" not in child and "VIRTUAL_ENV" not in child and child["CONDA_PREFIX"] == str(env.prefix)


def test_builder_option_names_per_onnxruntime_genai(tmp_path):
    opts = {"block_size": 32, "int4_is_symmetric": False, "prune_lm_head": True, "enable_dml_graph": True}
    old = ryzenai.find_env(make_rai_env(tmp_path, "1.8"))
    assert old.builder_options(opts) == (
        {"int4_block_size": 32, "int4_is_symmetric": False, "prune_lm_head": True},
        ["enable_dml_graph"],
    )
    new = ryzenai.find_env(make_rai_env(tmp_path, "1.8", name="new", oga="0.18.0"))
    assert new.builder_options(opts) == (
        {"block_size": 32, "is_symmetric": False, "prune_lm_head": True, "enable_dml_graph": True},
        [],
    )


# ---------------------------------------------------------------- model_benchmark per release


@pytest.mark.parametrize("release", ["1.7.1", "1.8"])
def test_model_benchmark_per_release(tmp_path, tiny_model, release):
    env = make_rai_env(tmp_path, release)
    j = tmp_path / "mb.jsonl"
    r = run_cli(
        "bench",
        "-m",
        str(tiny_model),
        "--model-benchmark",
        "-l",
        "128,256",
        "-g",
        "16",
        "-r",
        "3",
        "--json",
        str(j),
        "--rai-env",
        str(env),
        env=env_for(env),
    )
    assert r.returncode == 0, r.stderr
    mb = calls(tmp_path / "fake.jsonl", "model_benchmark")
    assert all(c["exe"] == str(env / "bin" / "model_benchmark") and "PYTHONPATH" not in c["env"] for c in mb)
    if release == "1.8":  # one length per call, no prompt file
        assert [c["argv"][c["argv"].index("-l") + 1] for c in mb] == ["128", "256"]
        assert not any("-f" in c["argv"] for c in mb)
    else:
        (c,) = mb
        assert c["argv"][c["argv"].index("-l") + 1] == "128, 256" and "-f" in c["argv"]
    recs = [json.loads(x) for x in j.read_text().splitlines()]
    assert [x["prompt_tokens"] for x in recs] == [128, 256]
    assert {x["meta"]["rai_version"] for x in recs} == {release}


def test_fake_model_benchmark_enforces_1_8_rules(tmp_path, tiny_model):
    env = make_rai_env(tmp_path, "1.8")
    tool = str(env / "bin" / "model_benchmark")
    for extra, msg in (
        (["-l", "128, 256"], "Error: Failed to parse option value as number: 128, 256"),
        (["-f", "p.txt", "-l", "128"], "Error: Unknown option: -f"),
        (["--prompt_file", "p.txt", "-l", "128"], "Error: --prompt_length, --prompt, and --prompt_file are mutually"),
    ):
        (tmp_path / "p.txt").write_text("a prompt")
        p = subprocess.run([tool, "-i", str(tiny_model), *extra], capture_output=True, text=True, cwd=tmp_path)
        assert p.returncode == 1 and p.stderr.startswith(msg) and "Usage:" in p.stderr, p.stderr
    # the older release's flags against a 1.8 tool: one line naming the tool's complaint
    r = run_cli(
        "bench",
        "-m",
        str(tiny_model),
        "--model-benchmark",
        "-l",
        "128,256",
        "--rai-env",
        str(env),
        "--rai-version",
        "1.7.1",
        env=env_for(env),
    )
    assert r.returncode == 1 and "Unknown option: -f" in r.stderr


# ---------------------------------------------------------------- Linux NPU runtime (Ryzen AI 1.8)


@pytest.fixture
def linux_host(monkeypatch, tmp_path):
    """A Linux host where every piece of AMD's NPU setup is there (each test removes one)."""
    monkeypatch.setattr(ryzenai, "host_os", lambda: "Linux")
    xrt = tmp_path / "xrt"
    xrt.mkdir()
    (xrt / "setup.sh").write_text("export XILINX_XRT=/opt/xilinx/xrt\n")
    monkeypatch.setattr(ryzenai, "XRT_ROOT", xrt)
    monkeypatch.setenv("XILINX_XRT", str(xrt))
    root = tmp_path / "sysroot"
    (root / "dev" / "accel").mkdir(parents=True)
    (root / "dev" / "accel" / "accel0").write_text("")
    monkeypatch.setenv("OGA_NPU_SYSFS_ROOT", str(root))
    monkeypatch.setattr(ryzenai, "memlock_limit", lambda: -1)
    ep = tmp_path / "deployment" / "lib" / "libonnxruntime_providers_ryzenai.so"  # AMD's Linux layout
    ep.parent.mkdir(parents=True)
    ep.write_bytes(b"\0")
    monkeypatch.setenv("RYZENAI_EP_PATH", str(ep))
    monkeypatch.setenv("LD_LIBRARY_PATH", str(ep.parent))
    return root


def test_linux_checks_name_each_fix(linux_host, monkeypatch):
    assert all(c.ok for c in ryzenai_folders.linux_checks())
    monkeypatch.delenv("XILINX_XRT")
    (linux_host / "dev" / "accel" / "accel0").unlink()
    monkeypatch.setattr(ryzenai, "memlock_limit", lambda: 8 * 1024 * 1024)
    monkeypatch.delenv("RYZENAI_EP_PATH")
    bad = {c.what: c.fix for c in ryzenai_folders.linux_checks() if not c.ok}
    fixes = " | ".join(bad.values())
    assert len(bad) == 4
    assert f"source {ryzenai.XRT_ROOT / 'setup.sh'}" in fixes
    assert "amdxdna" in fixes and "ulimit -l unlimited" in fixes and "RYZENAI_EP_PATH" in fixes
    assert any("8192 KiB" in w for w in bad)


def test_memlock_limit_reads_rlimit(monkeypatch):
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _r: (65536, resource.RLIM_INFINITY))
    assert ryzenai.memlock_limit() == 65536
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    assert ryzenai.memlock_limit() == -1


@pytest.fixture(scope="module")
def npu_folder(tmp_path_factory, hybrid_base):
    """An NPU-only folder made by the fake 1.8 model_generate (on a host taken for Windows)."""
    root = tmp_path_factory.mktemp("npu")
    env = make_rai_env(root, "1.8")
    out, r = from_base(hybrid_base, root, "npu", hybrid_base[1], env, "hybrid")
    assert r.returncode == 0, r.stderr
    return out


def test_npu_folder_on_linux_goes_to_the_ryzenai_ep(linux_host, npu_folder, monkeypatch):
    import onnxruntime_genai as og

    from oga_npu import model as model_mod

    seen = {}

    class Stop(Exception):
        pass

    def fake_config(path):  # onnxruntime-genai takes the folder's RyzenAI provider from here: stop there
        seen["config"] = path
        raise Stop("RyzenAI EP reached")

    monkeypatch.setattr(og, "Config", fake_config)
    with pytest.raises(Exception, match="RyzenAI EP reached"):
        model_mod.load(npu_folder)
    assert seen["config"] == str(npu_folder)
    cfg = json.loads((npu_folder / "genai_config.json").read_text())
    assert model_mod.configured_providers(cfg) == ["ryzenai"]  # no provider swap, no CPU fallback
    # each missing piece of AMD's setup stops it before onnxruntime-genai, naming the fix
    monkeypatch.setattr(ryzenai, "memlock_limit", lambda: 65536)
    with pytest.raises(ProviderError, match="ulimit -l unlimited"):
        model_mod.load(npu_folder)
    # a hybrid folder does not run on Linux at all: the same config with the hybrid backend
    # (hybrid_opt_token_backend "gpu", what classes a folder before the manifest's target)
    cfg = json.loads((npu_folder / "genai_config.json").read_text())
    for opts in cfg["model"]["decoder"]["session_options"]["provider_options"]:
        opts.get("RyzenAI", {})["hybrid_opt_token_backend"] = "gpu"
    assert ryzenai_folders.runtime_problem(cfg, {"target": "hybrid"}).startswith("this is a hybrid")


def test_run_of_an_npu_folder_on_linux_says_what_is_missing(npu_folder, tmp_path):
    root = tmp_path / "sysroot"
    root.mkdir()
    r = run_cli(
        "run",
        "-m",
        str(npu_folder),
        "hi",
        env={
            "OGA_NPU_HOST_OS": "Linux",
            "OGA_NPU_SYSFS_ROOT": str(root),
            "RYZENAI_EP_PATH": str(npu_folder / "genai_config.json"),
            "XILINX_XRT": "",
        },
    )
    assert r.returncode == 1
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(err) == 1 and "provider ryzenai is not available" in err[0]
    assert "amdxdna" in err[0] and "XRT" in err[0]


def test_doctor_linux_npu_checks(linux_host, monkeypatch):
    from oga_npu import doctor as doctor_mod

    dev = linux_host / "sys" / "bus" / "pci" / "devices" / "0000:c5:00.1"
    dev.mkdir(parents=True)
    for f, v in (("vendor", "0x1022"), ("device", "0x17f0"), ("revision", "0x10")):
        (dev / f).write_text(v + "\n")
    rep = doctor_mod.doctor(min_free_gb=0)
    assert any("XRT set up" in c for c in rep.checks) and any("memlock limit: unlimited" in c for c in rep.checks)
    monkeypatch.setattr(ryzenai, "memlock_limit", lambda: 65536)
    monkeypatch.delenv("XILINX_XRT")
    rep = doctor_mod.doctor(min_free_gb=0)
    probs = {p.what: p.fix for p in rep.problems}
    assert any("memlock" in w for w in probs) and "ulimit -l unlimited" in " ".join(probs.values())
    assert any("XRT is installed but not set up" in w for w in probs)
    # no NPU, no XRT, no EP: one line says the checks were skipped, no problem reported
    shutil.rmtree(dev)
    monkeypatch.delenv("RYZENAI_EP_PATH")
    rep = doctor_mod.doctor(min_free_gb=0)
    assert any("Linux NPU checks" in c and "skipped" in c for c in rep.checks)
    assert not any("memlock" in p.what for p in rep.problems)
