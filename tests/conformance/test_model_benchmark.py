"""model_benchmark as AMD ships it: output format, command line, location and environment.

Sources (each assertion names its own):
  OGA     microsoft/onnxruntime-genai benchmark/c/main.cpp, options.cpp at v0.9.2 (fc6f8d7e),
          v0.11.2 (25962b07), v0.14.0 (b7a6ec30)
  LINUX   amd/ryzen-ai-documentation docs/llm_linux.rst, branch 1.8 (0860e4dd); draft b087e6e (Jul 2025)
  HYBRID  amd/ryzen-ai-documentation docs/hybrid_oga.rst, branches 1.6 (0b781294), 1.7.1 (42a517bc), 1.8
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from oga_npu.bench import BenchConfig
from oga_npu.model_benchmark import (
    child_env,
    find_model_benchmark,
    model_benchmark_argvs,
    parse_model_benchmark,
    raw_results,
)

FAKE = Path(__file__).resolve().parent.parent / "fake_tools" / "model_benchmark"

# LINUX@1.8 lines 90-117 (the doc's 1-space indent removed, its 8 spaces back to the tab that
# draft 4d313fc still shows as ^I): the byte layout of one result of AMD's build.
PUBLISHED = (
    "-----------------------------\n"
    "Prompt Number of Tokens: 128\n"
    "\n"
    "Batch size: 1, prompt tokens: 128, tokens to generate: 128\n"
    "Prompt processing (time to first token):\n"
    "\tavg (us):       169860\n"
    "\tavg (tokens/s): 753.562\n"
    "\tp50 (us):       169022\n"
    "\tstddev (us):    6108.17\n"
    "\tn:              5 * 128 token(s)\n"
    "Token generation:\n"
    "\tavg (us):       20354.1\n"
    "\tavg (tokens/s): 49.1301\n"
    "\tp50 (us):       19964.9\n"
    "\tstddev (us):    4411.67\n"
    "\tn:              635 * 1 token(s)\n"
    "Token sampling:\n"
    "\tavg (us):       192.274\n"
    "\tavg (tokens/s): 5200.91\n"
    "\tp50 (us):       202.417\n"
    "\tstddev (us):    76.6932\n"
    "\tn:              5 * 1 token(s)\n"
    "E2E generation (entire generation loop):\n"
    "\tavg (ms):       2755.09\n"
    "\tp50 (ms):       2747.84\n"
    "\tstddev (ms):    14.0296\n"
    "\tn:              5\n"
    "Peak working set size (bytes): 3543330816\n"
)


def fake(tmp_path, *args, version="1.8.0", **env):
    model = tmp_path / "m"
    model.mkdir(exist_ok=True)
    (model / "genai_config.json").write_text("{}")
    e = dict(os.environ, FAKE_TOOL_VERSION=version, **env)
    e.pop("OGA_NPU_FAKE_LOG", None)
    argv = [sys.executable, str(FAKE), *[a.replace("MODEL", str(model)) for a in args]]
    return subprocess.run(argv, capture_output=True, text=True, env=e, cwd=tmp_path)


def layout(text: str) -> list[str]:
    """Each line with its numbers replaced: what must match byte for byte apart from values."""
    import re

    number = r"(?<![\w.])(?:inf|[-+]?\d[\d.]*(?:e[-+]\d+)?)(?![\w.])"
    return [re.sub(number, "V", ln) for ln in text.splitlines()]


# ---------------------------------------------------------------- output


def test_published_sample_parses():
    """LINUX@1.8 sample -> the record; TTFT = Prompt processing avg (OGA main.cpp times only
    AppendTokenSequences there); the first token's GenerateNextToken is Token sampling."""
    (r,) = parse_model_benchmark(PUBLISHED, "m")
    assert (r.prompt_tokens, r.gen_tokens, r.reps) == (128, 128, 5)
    assert (r.ttft_avg_ms, r.ttft_p50_ms, r.ttft_std_ms) == pytest.approx((169.860, 169.022, 6.10817))
    assert r.prefill_tps == pytest.approx(753.562) and r.decode_tps_avg == pytest.approx(49.1301)
    assert r.decode_tps_p50 == pytest.approx(1e6 / 19964.9)
    assert (r.sampling_avg_ms, r.sampling_p50_ms, r.sampling_std_ms) == pytest.approx((0.192274, 0.202417, 0.0766932))
    assert (r.e2e_avg_s, r.e2e_p50_s, r.e2e_std_s) == pytest.approx((2.75509, 2.74784, 0.0140296))
    assert r.peak_rss_mb == pytest.approx(3543.330816)
    raw = r.meta["model_benchmark"]
    # OGA main.cpp: n of generation = R*(G-1) * B, sampling n = R * B, E2E n = R
    assert raw["generation"]["n"] == 635 and raw["sampling"]["n"] == 5 and raw["e2e"]["n"] == 5


def test_exponent_ttft_is_read_in_full():
    """OGA main.cpp writes `float` with std::cout's default format (%.6g): a 1.234567 s TTFT
    prints `1.23457e+06` us and is 1234.57 ms (the old parser's `[\\d.]+` read 1.23457 us)."""
    text = PUBLISHED.replace("avg (us):       169860", "avg (us):       1.23457e+06", 1)
    (r,) = parse_model_benchmark(text, "m")
    assert r.ttft_avg_ms == pytest.approx(1234.57)
    assert format(1.234567e6, ".6g") == "1.23457e+06"  # what the fake prints for it


def test_inf_and_nan_are_none():
    """OGA main.cpp: avg (tokens/s) = 1e6f / avg; a zero average prints `inf` (MSVC nan: `-nan(ind)`)."""
    text = PUBLISHED.replace("5200.91", "inf").replace("76.6932", "-nan(ind)")
    (r,) = parse_model_benchmark(text, "m")
    sampling = r.meta["model_benchmark"]["sampling"]
    assert sampling["avg_tps"] is None and r.sampling_std_ms is None and r.sampling_avg_ms == pytest.approx(0.192274)


def test_upstream_results_without_amds_header():
    """OGA main.cpp alone (no AMD line): each `Batch size: B, prompt tokens: N, tokens to
    generate: G` starts a result; N there is the real encoded prompt length."""
    body = PUBLISHED.split("\n\n", 1)[1]
    two = body + body.replace("prompt tokens: 128", "prompt tokens: 256")
    assert [r.prompt_tokens for r in parse_model_benchmark(two, "m")] == [128, 256]


def test_verbose_prompt_and_output_are_skipped():
    """OGA main.cpp --verbose: `[PROMPT BEGIN]<text>[PROMPT END]`, `[OUTPUT BEGIN]<text>[OUTPUT END]`
    (multi-line text) before the Batch size line; nothing in them is a result."""
    noise = (
        "Running warmup iterations (1)...\n[PROMPT BEGIN]Batch size: 9, prompt tokens: 9, tokens to generate: 9\n"
        "Token generation:\n\tavg (us):       1\n[PROMPT END]\n[OUTPUT BEGIN]x[OUTPUT END]\nRunning iterations (5)...\n"
    )
    text = PUBLISHED.replace("\n\nBatch size", "\n\n" + noise + "Batch size")
    (r,) = parse_model_benchmark(text, "m")
    assert r.prompt_tokens == 128 and r.decode_tps_avg == pytest.approx(49.1301)


def test_old_npu_build_trailer():
    """LINUX draft b087e6e (RAI 1.5 npu-llm build): CPU utilisation `inf`, a 28-dash line,
    `Peak working set size (megabytes)` (and `... after initialization`), Total runtime."""
    trailer = (
        "Peak CPU utilization (%): inf\nAvg CPU utilization (%): inf\n" + "-" * 28 + "\n"
        "Model create time (ms): 3634\nPeak working set size (megabytes) after initialization: 4039\n"
        "Peak working set size (megabytes): 4172\n  \nTotal runtime (ms): 68011  \n"
    )
    text = PUBLISHED.replace("Peak working set size (bytes): 3543330816\n", trailer)
    (r,) = parse_model_benchmark(text, "m")
    assert r.peak_rss_mb == 4172 and r.e2e_avg_s == pytest.approx(2.75509)


def test_fake_prints_the_published_layout(tmp_path):
    """The fake's result for -l 128 -g 128 -r 5 has the LINUX@1.8 sample's lines, value for value
    apart; numbers in %.6g (OGA main.cpp)."""
    p = fake(tmp_path, "-i", "MODEL", "-l", "128", "-g", "128", "-r", "5")
    assert p.returncode == 0, p.stderr
    assert layout(p.stdout) == layout(PUBLISHED)
    assert "\tn:              635 * 1 token(s)\n" in p.stdout and "\tn:              5 * 1 token(s)\n" in p.stdout


def test_fake_2048_prints_an_exponent_and_it_parses(tmp_path):
    """1 ms per prompt token: 2048 tokens print `2.048e+06` us (%.6g) -> 2048 ms."""
    p = fake(tmp_path, "-i", "MODEL", "-l", "2048", "-g", "16", "-r", "2", "--verbose")
    assert "\tavg (us):       2.048e+06\n" in p.stdout and "[OUTPUT BEGIN]" in p.stdout
    (r,) = parse_model_benchmark(p.stdout, "m")
    assert r.ttft_avg_ms == pytest.approx(2048.0) and r.reps == 2 and r.gen_tokens == 16


def test_fake_amd_list_gives_one_result_per_length(tmp_path):
    """HYBRID@1.6/1.7.1: `-f <prompt_file> -l "128, 256"` (AMD's build takes a list)."""
    (tmp_path / "p.txt").write_text("some text")
    p = fake(tmp_path, "-i", "MODEL", "-f", "p.txt", "-l", "128, 256", "--verbose", version="1.7.1")
    assert p.returncode == 0, p.stderr
    assert [r["requested"] for r in raw_results(p.stdout)] == [128, 256]


@pytest.mark.parametrize(
    "args,said",
    [
        # OGA options.cpp@v0.14.0 ParseNumber: the whole string must be a number
        (["-l", "128, 256"], "Error: Failed to parse option value as number: 128, 256"),
        # OGA options.cpp@v0.14.0: no -f (only --prompt_file); HYBRID@1.8 never uses -f
        (["-f", "p.txt", "-l", "128"], "Error: Unknown option: -f"),
        # OGA options.cpp@v0.14.0 enforces it; HYBRID@1.8 "These options are mutually exclusive."
        (["--prompt_file", "p.txt", "-l", "128"], "Error: --prompt_length, --prompt, and --prompt_file are mutually"),
        # OGA options.cpp: unknown flags, model_benchmark has no --version
        (["--version"], "Error: Unknown option: --version"),
    ],
)
def test_fake_1_8_refuses_as_upstream(tmp_path, args, said):
    """OGA options.cpp: `Error: <what>` then the usage on stderr, exit 1 (PrintHelpAndExit(.., 1))."""
    (tmp_path / "p.txt").write_text("x")
    p = fake(tmp_path, "-i", "MODEL", *args)
    assert p.returncode == 1 and p.stderr.startswith(said) and "Usage: " in p.stderr and p.stdout == ""


def test_fake_missing_model_is_an_exception(tmp_path):
    """OGA main.cpp catches and prints `Exception: <what>`, exit 1; src/config.cpp ParseConfig:
    `Error opening <dir>/genai_config.json`."""
    p = fake(tmp_path, "-i", str(tmp_path / "nope"), "-l", "128")
    assert p.returncode == 1 and p.stderr == f"Exception: Error opening {tmp_path / 'nope' / 'genai_config.json'}\n"


# ---------------------------------------------------------------- command line per release


def test_argv_per_release():
    """HYBRID@1.6 and @1.7.1: `-i DIR -f FILE -l "<list>"`; HYBRID@1.8: `-l N` (one length)
    and --prompt_file exclusive with it, so one call per length and no prompt file."""
    cfg = BenchConfig(lengths=(128, 256), gen_tokens=16, reps=3, warmups=1)
    for rai in ("1.6", "1.7", "1.7.1"):
        (argv,) = model_benchmark_argvs("mb", Path("M"), cfg, Path("P"), rai)
        assert argv[:7] == ["mb", "-i", "M", "-f", "P", "-l", "128, 256"]
    argvs = model_benchmark_argvs("mb", Path("M"), cfg, Path("P"), "1.8.0")
    assert [a[:5] for a in argvs] == [["mb", "-i", "M", "-l", "128"], ["mb", "-i", "M", "-l", "256"]]
    assert not any("-f" in a or "--prompt_file" in a for a in argvs)


# ---------------------------------------------------------------- where it is, its environment


def _exe(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_windows_location_and_path(tmp_path, monkeypatch):
    """HYBRID@1.6/1.7.1/1.8: `%RYZEN_AI_INSTALLATION_PATH%\\LLM\\example\\model_benchmark.exe`,
    its DLLs from `%RYZEN_AI_INSTALLATION_PATH%\\deployment` (copied beside it: on PATH here)."""
    root = tmp_path / "RyzenAI" / "1.8.0"
    exe = _exe(root / "LLM" / "example" / "model_benchmark.exe")
    (root / "deployment").mkdir()
    monkeypatch.setenv("OGA_NPU_HOST_OS", "Windows")
    monkeypatch.setenv("RYZEN_AI_INSTALLATION_PATH", str(root))
    assert find_model_benchmark() == (str(exe), root)
    env = child_env({"PATH": "/usr/bin"}, root, None)
    assert env["PATH"].split(os.pathsep) == [str(root / "deployment"), "/usr/bin"]
    assert "RYZENAI_EP_PATH" not in env and "LD_LIBRARY_PATH" not in env


def test_linux_location_and_libraries(tmp_path, monkeypatch):
    """LINUX@1.8: `<TARGET-PATH>/venv/LLM/examples/model_benchmark`, `export LD_LIBRARY_PATH=
    /lib/x86_64-linux-gnu:deployment/lib:$LD_LIBRARY_PATH`, `export RYZENAI_EP_PATH=$PWD/deployment/
    lib/libonnxruntime_providers_ryzenai.so` (deployment/ copied from the venv)."""
    venv = tmp_path / "venv"
    exe = _exe(venv / "LLM" / "examples" / "model_benchmark")
    (venv / "deployment" / "lib").mkdir(parents=True)
    monkeypatch.setenv("OGA_NPU_HOST_OS", "Linux")
    monkeypatch.delenv("RYZEN_AI_INSTALLATION_PATH", raising=False)
    monkeypatch.setenv("VIRTUAL_ENV", str(venv))
    assert find_model_benchmark() == (str(exe), venv)
    env = child_env({"LD_LIBRARY_PATH": "/opt/x"}, venv, None)
    lib = venv / "deployment" / "lib"
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == ["/lib/x86_64-linux-gnu", str(lib), "/opt/x"]
    assert env["RYZENAI_EP_PATH"] == str(lib / "libonnxruntime_providers_ryzenai.so")
    # a RYZENAI_EP_PATH the user set is kept
    assert child_env({"RYZENAI_EP_PATH": "/mine.so"}, venv, None)["RYZENAI_EP_PATH"] == "/mine.so"


def test_compiled_op_model_gets_dd_plugins_root(tmp_path):
    """A model made with compiled operators (ryzenai.plugins_root(manifest)) runs with DD_PLUGINS_ROOT."""
    plugins = tmp_path / "dd_plugins"
    assert child_env({}, None, plugins)["DD_PLUGINS_ROOT"] == str(plugins)
    assert "DD_PLUGINS_ROOT" not in child_env({}, None, None)
