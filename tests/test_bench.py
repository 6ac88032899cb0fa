"""bench and eval on the tiny model; model_benchmark parsing with the fake."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import FAKE_TOOLS, REPO, call, run_cli

from oga_npu.bench import BenchRecord
from oga_npu.model_benchmark import parse_model_benchmark


def test_sweep_writes_table_json_csv_plot(tmp_path, tiny_model, capsys):
    """In process (conftest.call; the SIGINT test below runs the real child process)."""
    j, c, p = tmp_path / "r.jsonl", tmp_path / "r.csv", tmp_path / "r.png"
    code, out, err = call(
        capsys,
        "bench",
        "-m",
        str(tiny_model),
        "-l",
        "16,64,600",
        "-g",
        "8",
        "-r",
        "2",
        "-w",
        "1",
        "--json",
        str(j),
        "--csv",
        str(c),
        "--plot",
        str(p),
    )
    assert code == 0, err
    recs = [json.loads(x) for x in j.read_text().splitlines()]
    assert [x["prompt_tokens"] for x in recs] == [16, 64, 600]
    ok = recs[:2]
    for x in ok:
        assert x["skipped"] is None and x["reps"] == 2 and x["gen_tokens"] == 8
        assert x["ttft_avg_ms"] > 0 and x["decode_tps_avg"] > 0
        assert abs(x["prefill_tps"] - x["prompt_tokens"] / (x["ttft_avg_ms"] / 1e3)) < 1e-6 * x["prefill_tps"] + 1e-9
        meta = x["meta"]
        assert meta["provider"] == "cpu" and meta["oga"] and meta["ort"] and meta["model_hash"]
        assert meta["recipe"] == "cpu-fast" and meta["ignore_eos"] is True
    # 600 + 8 > the tiny model's 512-token context: skipped with the reason, sweep went on
    assert "context 512" in recs[2]["skipped"]
    rows = c.read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("model,provider,prompt_tokens")
    assert p.stat().st_size > 10_000 and p.read_bytes()[:4] == b"\x89PNG"
    assert "skipped" in out and "prefill" in out
    code, out, _ = call(capsys, "bench", "compare", str(j), str(j))
    assert code == 0 and "1.00" in out


def test_sigint_mid_sweep_keeps_finished_points(tmp_path, tiny_model):
    j, c = tmp_path / "r.jsonl", tmp_path / "r.csv"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "oga_npu",
            "bench",
            "-m",
            str(tiny_model),
            "-l",
            "16,32,48,64,80,96,112,128,144,160",
            "-g",
            "200",
            "-r",
            "3",
            "-w",
            "0",
            "--json",
            str(j),
            "--csv",
            str(c),
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (j.exists() and j.read_text().strip()):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = j.read_text().splitlines()
    assert 1 <= len(lines) < 10
    for ln in lines:
        assert json.loads(ln)["ttft_avg_ms"] > 0  # every kept point is whole
    rows = c.read_text().splitlines()
    assert len(rows) == len(lines) + 1 and all(r.count(",") == rows[0].count(",") for r in rows)
    assert "finished points are kept" in err


MB_SAMPLE = """Prompt Number of Tokens: 1024
Batch size: 1, prompt tokens: 1024, tokens to generate: 128
Prompt processing (time to first token):
\tavg (us):       512000.00
\tavg (tokens/s): 2000.00
\tp50 (us):       510000.00
\tstddev (us):    4000.00
\tn:              5 * 1024 token(s)
Token generation:
\tavg (us):       25000.00
\tavg (tokens/s): 40.00
\tp50 (us):       24000.00
\tstddev (us):    2500.00
\tn:              635 * 1 token(s)
Token sampling:
\tavg (us):       30.00
\tavg (tokens/s): 33333.33
\tp50 (us):       29.00
\tstddev (us):    2.00
\tn:              640 * 1 token(s)
E2E generation (entire generation loop):
\tavg (ms):       3700.00
\tp50 (ms):       3690.00
\tstddev (ms):    12.00
\tn:              5
Peak working set size (bytes): 2147483648
"""


def test_parse_model_benchmark_output():
    (r,) = parse_model_benchmark(MB_SAMPLE, "m")
    assert (r.prompt_tokens, r.gen_tokens, r.reps) == (1024, 128, 5)
    assert r.ttft_avg_ms == 512.0 and r.ttft_p50_ms == 510.0 and r.ttft_std_ms == 4.0
    assert r.prefill_tps == 2000.0 and r.decode_tps_avg == 40.0 and r.decode_tps_p50 == pytest.approx(1e6 / 24000)
    assert r.decode_tps_std == pytest.approx(4.0)
    assert r.e2e_avg_s == 3.7 and r.e2e_std_s == 0.012 and r.peak_rss_mb == pytest.approx(2147.483648)
    assert r.source == "model_benchmark"


def test_model_benchmark_flag_runs_the_tool_and_parses(tmp_path, tiny_model):
    j = tmp_path / "mb.jsonl"
    env = {"PATH": str(FAKE_TOOLS) + os.pathsep + os.environ["PATH"], "OGA_NPU_FAKE_LOG": str(tmp_path / "f.jsonl")}
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
        "-w",
        "1",
        "--json",
        str(j),
        "--rai-version",
        "1.7.1",
        env=env,
    )
    assert r.returncode == 0, r.stderr
    call = [json.loads(x) for x in (tmp_path / "f.jsonl").read_text().splitlines() if "--version" not in x][-1]
    argv = call["argv"]
    assert argv[:2] == ["-i", str(tiny_model)] and "-f" in argv
    assert argv[argv.index("-l") + 1] == "128, 256" and argv[argv.index("-g") + 1] == "16"
    recs = [BenchRecord(**json.loads(x)) for x in j.read_text().splitlines()]
    assert [x.prompt_tokens for x in recs] == [128, 256]
    assert recs[1].ttft_avg_ms == pytest.approx(256.0) and recs[1].decode_tps_avg == pytest.approx(50.0)
    # RAI 1.8: --prompt_file and -l are mutually exclusive, so no -f
    r = run_cli(
        "bench", "-m", str(tiny_model), "--model-benchmark", "-l", "128", "-g", "16", "--rai-version", "1.8", env=env
    )
    assert r.returncode == 0, r.stderr
    call = [json.loads(x) for x in (tmp_path / "f.jsonl").read_text().splitlines() if "--version" not in x][-1]
    assert "-f" not in call["argv"]


def test_model_benchmark_missing_is_one_line(tiny_model):
    r = run_cli("bench", "-m", str(tiny_model), "--model-benchmark", "-l", "128")
    assert r.returncode == 1 and "model_benchmark not found" in r.stderr


def test_bad_lengths(tiny_model):
    r = run_cli("bench", "-m", str(tiny_model), "-l", "12x")
    assert r.returncode == 1 and "bad prompt lengths" in r.stderr


def test_eval_reports_perplexity_and_reference(tiny_model, tiny_hf, capsys):
    # in process (conftest.call): the transformers reference needs torch, already imported here
    code, out, err = call(capsys, "eval", "-m", str(tiny_model), "--window", "128", "--windows", "2", "--json")
    assert code == 0, err
    rows = json.loads(out)
    assert rows[0]["engine"] == "oga (cpu)" and rows[0]["tokens"] == 254
    assert rows[1]["engine"] == "transformers fp32" and rows[1]["model"] == str(tiny_hf)
    # a random-weight model is near-uniform over the vocabulary: both perplexities are huge and close
    assert rows[0]["perplexity"] > 1000 and abs(rows[0]["perplexity"] / rows[1]["perplexity"] - 1) < 0.3


def test_eval_of_a_full_logits_build_matches_the_pruned_one(tmp_path, tiny_hf, tiny_model, capsys, inprocess_tools):
    """prune_lm_head (the default) keeps the last position's logits only; eval then scores
    one token per step. A build that keeps every position's logits must agree. The CLI and its
    builder and validate tools run in this process (conftest.call, inprocess_tools): the
    child-process prepare is tiny_model's, eval as a child is test_smollm2's damaged-model case."""
    recipe = tmp_path / "full.toml"
    recipe.write_text(
        (REPO / "oga_npu" / "recipes" / "cpu-fast.toml").read_text().replace(", prune_lm_head = true", "")
    )
    assert "prune_lm_head" not in recipe.read_text()
    full = tmp_path / "full"
    # From a copy of tiny_model: the quantize stage (its key has no build options) is reused,
    # the builder runs again with the full-logits options.
    shutil.copytree(tiny_model, full)
    code, _, err = call(
        capsys, "prepare", str(tiny_hf), "--recipe", str(recipe), "--output", str(full), "--from", "build"
    )
    assert code == 0, err
    assert "quantize … already done" in err and "build … done" in err, err
    args = ["--window", "64", "--windows", "2", "--ref", "none", "--json"]
    rows = []
    for m in (tiny_model, full):
        code, out, err = call(capsys, "eval", "-m", str(m), *args)
        assert code == 0, err
        rows.append(json.loads(out)[0])
    assert rows[0]["tokens"] == rows[1]["tokens"] == 126
    assert abs(rows[0]["perplexity"] / rows[1]["perplexity"] - 1) < 1e-3


def test_plot_ticks_are_plain_lengths_and_legends_name_the_runs(tmp_path, monkeypatch):
    import json as _json
    from dataclasses import asdict

    import matplotlib.pyplot as plt

    from oga_npu import cli
    from oga_npu.bench import BenchRecord

    def recs(model, label=None):
        meta = {"label": label} if label else {}
        return [
            BenchRecord(
                model,
                "cpu",
                n,
                16,
                2,
                1,
                ttft_avg_ms=n / 10,
                ttft_std_ms=1.0,
                decode_tps_avg=50.0,
                decode_tps_std=1.0,
                meta=meta,
            )
            for n in (128, 256, 512)
        ]

    files = []
    for name, r in (("a.jsonl", recs("/m/smol-awq", "AWQ run")), ("b.jsonl", recs("/m/smol-fast"))):
        f = tmp_path / name
        f.write_text("".join(_json.dumps(asdict(x)) + "\n" for x in r))
        files.append(str(f))
    figs = []
    monkeypatch.setattr(plt, "close", lambda fig=None: figs.append(fig))
    try:
        cli.main(["bench", "plot", *files, "-o", str(tmp_path / "p.png")])
    except SystemExit as e:
        assert not e.code
    assert (tmp_path / "p.png").is_file()
    fig = figs[-1]
    fig.canvas.draw()
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["128", "256", "512"]
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["AWQ run", "smol-fast"]


def test_model_benchmark_from_amds_install_folder(tmp_path, tiny_model):
    """Windows: %RYZEN_AI_INSTALLATION_PATH%\\LLM\\example\\model_benchmark.exe, run with the install's
    deployment\\ first on PATH (ryzen-ai-documentation hybrid_oga.rst 1.6-1.8); its log parsed,
    the 2048-token TTFT printed as 2.048e+06 us read as 2048 ms."""
    root = tmp_path / "RyzenAI" / "1.8.0"
    exe = root / "LLM" / "example" / "model_benchmark.exe"
    exe.parent.mkdir(parents=True)
    (root / "deployment").mkdir()
    exe.write_text(
        f'#!/bin/sh\nFAKE_TOOL_VERSION=1.8.0 exec "{sys.executable}" "{FAKE_TOOLS / "model_benchmark"}" "$@"\n'
    )
    exe.chmod(0o755)
    log, j = tmp_path / "f.jsonl", tmp_path / "mb.jsonl"
    env = {"OGA_NPU_HOST_OS": "Windows", "RYZEN_AI_INSTALLATION_PATH": str(root), "OGA_NPU_FAKE_LOG": str(log)}
    r = run_cli("bench", "-m", str(tiny_model), "--model-benchmark", "-l", "2048", "-g", "8", "--json", str(j), env=env)
    assert r.returncode == 0, r.stderr
    (call,) = [json.loads(x) for x in log.read_text().splitlines()]
    assert call["argv"][:4] == ["-i", str(tiny_model), "-l", "2048"]
    assert call["env"]["PATH"].split(os.pathsep)[0] == str(root / "deployment")
    (rec,) = [json.loads(x) for x in j.read_text().splitlines()]
    assert rec["ttft_avg_ms"] == pytest.approx(2048.0) and rec["meta"]["rai_version"] == "1.8"
