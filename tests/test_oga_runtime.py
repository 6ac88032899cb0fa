"""The runtime on the installed onnxruntime-genai: load, generate, KV reuse, chat, bench, eval,
serve. The main suite runs it on 0.18; scripts/test_oga_versions.sh runs it again in a venv per
version a Ryzen AI release pins (0.9.2, 0.11.2, 0.14.0), on folders prepared once by the main
venv (OGA_NPU_VERSION_FOLDERS). What a version lacks is read from capabilities.py, so each
test asserts what that version can do, and says so in /v1/models and /v1/stats."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import run_cli

from oga_npu import capabilities as caps_mod
from oga_npu.capabilities import Runtime, base_version, capabilities, installed_runtime
from oga_npu.errors import RuntimeMissingError, VersionError

FOLDERS = os.environ.get("OGA_NPU_VERSION_FOLDERS")


@pytest.fixture(scope="module")
def folder(request) -> Path:
    """A folder every supported runtime loads (built for the oldest); in the main suite the
    tiny cpu-fast model built for the installed runtime."""
    if FOLDERS:
        return Path(FOLDERS) / "cpu-fast-oldest"
    return request.getfixturevalue("tiny_model")


@pytest.fixture(scope="module")
def lm(folder):
    from oga_npu.model import load

    return load(folder)


def test_the_runtime_is_detected_from_its_distribution_and_api():
    import onnxruntime_genai as og

    rt = installed_runtime()
    assert rt.distribution in caps_mod.OGA_DISTRIBUTIONS and rt.version
    want = os.environ.get("OGA_NPU_EXPECT_OGA")  # set by test_oga_versions.sh: the venv holds what it says
    if want:
        assert base_version(rt.version) == want, rt
    dist = os.environ.get("OGA_NPU_EXPECT_DIST")  # AMD's name where its stub stands beside the public wheel
    if dist:
        assert rt.distribution == dist, rt
        assert ("Ryzen AI 1.8's runtime" in rt.describe()) == (dist == caps_mod.RYZENAI_DISTRIBUTION), rt.describe()
    c = capabilities()
    assert c.rewind == hasattr(og.Generator, "rewind_to")
    assert c.guidance == hasattr(og.GeneratorParams, "set_guidance")
    assert c.eos_token_ids == hasattr(og.Tokenizer, "eos_token_ids")
    assert c.speculative == hasattr(og.GeneratorParams, "set_speculative_options")
    releases = caps_mod.releases_for(rt.version)
    assert ("Ryzen AI " + "/".join(releases)) in rt.describe() if releases else "Ryzen AI" not in rt.describe()


def test_ryzen_ai_releases_of_each_pinned_version():
    assert caps_mod.releases_for("0.9.2") == ["1.6"]
    assert caps_mod.releases_for("0.11.2") == ["1.7", "1.7.1"]
    assert caps_mod.releases_for("0.14.0") == ["1.8"]
    assert caps_mod.releases_for("0.18.0") == []
    amd = Runtime("onnxruntime-genai-directml-ryzenai", "0.14.0")
    assert amd.describe() == "onnxruntime-genai-directml-ryzenai 0.14.0 (Ryzen AI 1.8's runtime)"
    assert (
        Runtime("onnxruntime-genai", "0.11.2").describe()
        == "onnxruntime-genai 0.11.2 (the version Ryzen AI 1.7/1.7.1 pins)"
    )


def test_greedy_generation_is_repeatable_and_whole(lm):
    from oga_npu.generate import GenerationOptions, generate

    opts = GenerationOptions(max_tokens=8, temperature=0)
    a, ev = generate(lm, "Hello there", opts)
    b, _ = generate(lm, "Hello there", opts)
    assert a == b and ev.generated_tokens >= 1 and ev.finish_reason in ("stop", "length")
    assert ev.prompt_tokens > 2 and lm.eos_token_ids  # genai_config's ids where the tokenizer has none


def test_chat_turns_reuse_the_kv_cache_where_the_runtime_can(lm):
    from oga_npu.chat import ChatSession
    from oga_npu.generate import GenerationOptions
    from oga_npu.kvcache import reuse_support

    s = ChatSession(lm, GenerationOptions(max_tokens=6, temperature=0))
    for q in ("Hello, who are you?", "Tell me more."):
        "".join(e.text for e in s.send(q))
    ok, why = reuse_support(lm)
    assert ok == capabilities().rewind, why
    assert (s.last.cached_tokens > 0) == ok
    assert s.last.cached_tokens < s.last.prompt_tokens


def test_without_rewind_every_turn_prefills_in_full_and_says_so(lm, monkeypatch):
    from dataclasses import replace

    from oga_npu.chat import ChatSession
    from oga_npu.generate import GenerationOptions
    from oga_npu.kvcache import reuse_support

    no_rewind = replace(capabilities(), rewind=False)
    monkeypatch.setattr(caps_mod, "capabilities", lambda: no_rewind)
    ok, why = reuse_support(lm)
    assert not ok and "rewind_to" in why and no_rewind.version in why
    s = ChatSession(lm, GenerationOptions(max_tokens=4, temperature=0))
    for q in ("Hello", "And again"):
        text = "".join(e.text for e in s.send(q))
    assert s.last.cached_tokens == 0 and s.last.generated_tokens >= 1, text


def test_run_and_chat_from_the_cli(folder, tmp_path):
    r = run_cli("run", "-m", str(folder), "Hello", "--max-tokens", "4", "--temperature", "0")
    assert r.returncode == 0 and r.stdout.strip(), r.stderr
    r = run_cli("chat", "-m", str(folder), "-n", "4", "--temperature", "0", input="hi\nmore please\n")
    assert r.returncode == 0, r.stderr


def test_bench_and_eval(folder, tmp_path):
    out = tmp_path / "b.jsonl"
    r = run_cli("bench", "-m", str(folder), "-l", "16,32", "-g", "4", "-r", "1", "-w", "0", "--json", str(out))
    assert r.returncode == 0, r.stderr
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["prompt_tokens"] for x in recs] == [16, 32] and all(x["decode_tps_avg"] for x in recs)
    # on a copy: eval records its result in the folder's manifest
    copy = tmp_path / "m"
    shutil.copytree(folder, copy)
    r = run_cli("eval", "-m", str(copy), "--ref", "none", "--window", "32", "--windows", "1", "--json")
    assert r.returncode == 0, r.stderr
    row = json.loads(r.stdout)[0]
    assert row["tokens"] == 31 and 1 < row["perplexity"] < float("inf")


def test_serve_reports_reuse_and_guidance_and_answers(folder):
    from serverutil import ServerProcess

    s = ServerProcess(folder)
    try:
        s.wait_ready()
        code, text = s.get("/v1/models")
        models = json.loads(text)
        info = models["data"][0]
        assert code == 200 and info["kv_reuse"] == capabilities().rewind, info
        assert info["guided_output"] or info["guided_output_note"]
        body = {"model": info["id"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}
        code, _, out = s.post("/v1/chat/completions", body)
        assert code == 200 and out["choices"][0]["message"]["content"] is not None, out
        code, text = s.get("/v1/stats")
        stats = json.loads(text)
        st = stats["models"][info["id"]]
        assert st["kv_reuse"] == info["kv_reuse"] and "kv_reuse_note" in st
        code, _, out = s.post("/v1/chat/completions", {**body, "response_format": {"type": "json_object"}})
        if info["guided_output"]:
            # guided: a JSON object with a member, cut by max_tokens (4 here) or complete
            choice = out["choices"][0]
            text = choice["message"]["content"] or ""
            assert code == 200 and text.lstrip().startswith("{"), out
            if choice["finish_reason"] == "stop":
                obj = json.loads(text)  # a member where the runtime's grammar takes minProperties
                assert isinstance(obj, dict) and (obj or not capabilities().min_properties), text
        else:
            assert code == 400 and info["guided_output_note"] in out["error"]["message"], out
    finally:
        s.stop()


def test_no_guidance_in_the_runtime_is_a_400_that_says_so(lm, monkeypatch):
    from dataclasses import replace

    from oga_npu.server.errors import ApiError
    from oga_npu.server.models import ServedModel, guidance_available
    from oga_npu.server.plan import chat_plan
    from oga_npu.server.schemas import ChatRequest

    monkeypatch.setattr(caps_mod, "capabilities", lambda: replace(capabilities(), guidance=False))
    sm = ServedModel("m", lm)
    try:
        assert not sm.guidance and "set_guidance" in sm.guidance_note
        req = ChatRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}
        )
        with pytest.raises(ApiError) as e:
            chat_plan(req, sm.guidance, sm.guidance_note)
        assert e.value.status == 400 and "set_guidance" in e.value.message
        assert sm.info()["guided_output"] is False and "set_guidance" in sm.info()["guided_output_note"]
    finally:
        sm.executor.shutdown()
        sm.prep.shutdown()
    assert guidance_available(lm) is False


def test_no_runtime_installed_is_one_line_naming_the_extra(folder, monkeypatch):
    from oga_npu.model import load, provider_available

    monkeypatch.setattr(caps_mod, "installed_runtime", lambda: Runtime(None, None))
    with pytest.raises(RuntimeMissingError) as e:
        load(folder)
    assert "no onnxruntime-genai is installed" in e.value.message and "oga-npu[cpu]" in e.value.fix
    assert provider_available("cpu")[0] is False


def test_a_folder_for_a_newer_runtime_is_refused_naming_both(folder, tmp_path, monkeypatch):
    """A folder whose manifest needs 0.14 (prune_lm_head) on 0.11.2: one line, both versions,
    the prepare command for this runtime; doctor says the same."""
    from oga_npu.doctor import doctor
    from oga_npu.model import load
    from oga_npu.workdir import MANIFEST, update_manifest

    copy = tmp_path / "newer"
    shutil.copytree(folder, copy)
    assert update_manifest(copy, requires={"onnxruntime-genai": "0.14.0"})
    monkeypatch.setattr(caps_mod, "installed_runtime", lambda: Runtime("onnxruntime-genai", "0.11.2"))
    with pytest.raises(VersionError) as e:
        load(copy)
    assert "needs onnxruntime-genai 0.14.0 or newer" in e.value.message and "0.11.2" in e.value.message
    assert "--oga-version 0.11.2" in e.value.fix and "--force" in e.value.fix
    rep = doctor(copy)
    assert any("needs onnxruntime-genai 0.14.0" in p.what for p in rep.problems), rep.problems
    assert json.loads((copy / MANIFEST).read_text())["requires"]["onnxruntime-genai"] == "0.14.0"


def test_doctor_and_devices_judge_the_runtime_by_what_it_needs():
    """The issue's case: on 0.14.0 doctor said "onnxruntime 1.32: expected >=1.31,<1.32" and
    "amd-quark: found none" for a setup that runs. The runtime is judged by its own
    requirements; prepare's packages are a note."""
    from oga_npu.doctor import doctor, runtime_report

    rt = installed_runtime()
    rep = doctor()
    assert any(c.startswith(f"runtime {rt.describe()}") for c in rep.checks), rep.checks
    pinned = ("onnxruntime:", "onnxruntime-genai:", "amd-quark:", "transformers:")
    assert not [p.what for p in rep.problems if p.what.startswith(pinned)], rep.problems
    assert runtime_report()["ryzen_ai_releases"] == rt.releases
    r = run_cli("devices")
    assert r.returncode == 0 and f"onnxruntime-genai: {rt.describe()}" in r.stdout, r.stdout + r.stderr


def test_speculation_on_a_runtime_without_it_is_one_line_naming_the_version():
    """--speculative on an onnxruntime-genai without set_speculative_options (older than 0.18):
    refused up front with the installed version, not an AttributeError mid-generation."""
    from oga_npu import speculative
    from oga_npu.errors import GenerationError

    if capabilities().speculative:
        assert speculative.parse("ngram", None).method == "ngram"
        return
    with pytest.raises(GenerationError) as e:
        speculative.parse("ngram", None)
    assert capabilities().version.split("+")[0] in e.value.message and "0.18" in e.value.message
