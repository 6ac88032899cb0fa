"""Speculative decoding (n-gram lookup, draft model) through onnxruntime-genai: greedy output
is the target's own. A tiny random llama built with full logits (prune_lm_head off)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, run_cli

from oga_npu import speculative
from oga_npu.errors import GenerationError
from oga_npu.generate import GenerationOptions, stream_generate
from oga_npu.model import load

og = pytest.importorskip("onnxruntime_genai")
pytestmark = pytest.mark.skipif(not speculative.supported(og), reason="onnxruntime-genai without the speculative API")

# Prompts that repeat, so the n-gram lookup finds continuations in them; the test uses the one
# whose plain greedy run has the longest stretch without a near-tie (see _agreeing_prefix).
PROMPTS = [list(range(b + 5, b + 21)) * 4 for b in (700, 100, 1800, 400, 1300)]
PROMPT = PROMPTS[0]


@pytest.fixture(scope="module")
def full_logits_model(tmp_path_factory, tiny_hf, session_home) -> Path:
    d = tmp_path_factory.mktemp("spec")
    recipe_text = (REPO / "oga_npu" / "recipes" / "builder-int4.toml").read_text()
    text = recipe_text.replace("prune_lm_head = true", "prune_lm_head = false")
    recipe = d / "builder-int4-full.toml"
    recipe.write_text(text)
    out = d / "tiny-full"
    # The real pipeline in this process, its builder and validate too (conftest.tools_in_process):
    # the child-process prepare is tiny_model's.
    from conftest import tools_in_process

    from oga_npu.prepare import PrepareRequest, prepare

    with pytest.MonkeyPatch.context() as mp, tools_in_process(mp):
        mp.setenv("OGA_NPU_HOME", str(session_home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        prepare(PrepareRequest(str(tiny_hf), recipe=str(recipe), output=out))
    return out


def _reference(model_dir: Path, n: int, prompt: list[int]) -> tuple[list[int], list[float]]:
    """Plain greedy tokens and, per step, the gap between the best and second-best logit."""
    m = og.Model(str(model_dir))
    p = og.GeneratorParams(m)
    p.set_search_options(do_sample=False, top_k=1, max_length=len(prompt) + n)
    g = og.Generator(m, p)
    g.append_tokens(np.array([prompt], dtype=np.int32))
    toks, gaps = [], []
    while not g.is_done():
        top2 = np.sort(g.get_logits()[0, -1])[-2:]
        gaps.append(float(top2[1] - top2[0]))
        g.generate_next_token()
        toks.append(int(g.get_next_tokens()[0]))
    return toks, gaps


def _agreeing_prefix(gaps: list[float], tol: float = 5e-3) -> int:
    """Steps before the first near-tie: multi-token verification sums in another order than a
    one-token step, so where a random model's two best logits are closer than rounding the
    argmax may differ legitimately. Up to there the outputs must be equal."""
    return next((i for i, g in enumerate(gaps) if g < tol), len(gaps))


def _tokens(lm, prompt, opts) -> list[int]:
    return [ev.token for ev in stream_generate(lm, prompt, opts) if ev.token is not None]


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_greedy_output_unchanged_with_speculation(full_logits_model, method):
    n = 40
    runs = [(prompt, *_reference(full_logits_model, n, prompt)) for prompt in PROMPTS]
    prompt, ref, gaps = max(runs, key=lambda r: _agreeing_prefix(r[2]))
    k = _agreeing_prefix(gaps)
    assert k >= 12, f"the tiny model has near-ties early for every prompt ({gaps[: k + 1]}): add prompts"
    lm = load(full_logits_model)
    spec = speculative.parse(
        "ngram" if method == "ngram" else None, full_logits_model if method == "draft" else None, draft_tokens=4
    )
    speculative.attach(lm, spec)
    out = _tokens(lm, prompt, GenerationOptions(max_tokens=n, temperature=0.0, ignore_eos=True))
    assert out[:k] == ref[:k]
    assert len(out) == n


def test_speculation_really_drafts_and_accepts(full_logits_model):
    """The options reach onnxruntime-genai: drafts are proposed and some accepted (else the
    equality above would hold trivially)."""
    m = og.Model(str(full_logits_model))
    p = og.GeneratorParams(m)
    p.set_search_options(do_sample=False, top_k=1, max_length=len(PROMPT) + 40)
    p.set_speculative_options(**speculative.Speculation("ngram").options())
    g = og.Generator(m, p)
    g.append_tokens(np.array([PROMPT], dtype=np.int32))
    while not g.is_done():
        g.generate_next_token()
    st = g.get_speculative_stats()
    assert st["draft_tokens_proposed"] > 0 and st["draft_tokens_accepted"] > 0


def test_pruned_logits_model_is_refused_with_the_fix(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    for seq, pruned in (("sequence_length", False), (1, True)):
        d = tmp_path / f"m{pruned}"
        d.mkdir()
        out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", seq, 10])
        inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch_size", seq, 10])
        g = helper.make_graph([helper.make_node("Identity", ["x"], ["logits"])], "g", [inp], [out])
        onnx.save(helper.make_model(g), str(d / "model.onnx"))
        (d / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"filename": "model.onnx"}}}))
        (d / "oga_npu_manifest.json").write_text(json.dumps({"recipe": "gguf-native"}))
        assert speculative.pruned_logits(d) is pruned
        if pruned:
            with pytest.raises(GenerationError) as e:
                speculative.check_target(d)
            assert "prune_lm_head" in str(e.value) and "recipes/gguf-native.toml" in e.value.fix
        else:
            speculative.check_target(d)


def test_flags_refused_in_one_line(monkeypatch):
    assert speculative.parse(None, None) is None
    with pytest.raises(GenerationError):
        speculative.parse("ngram", Path("x"))
    with pytest.raises(GenerationError):
        speculative.parse("medusa", None)
    with pytest.raises(GenerationError):
        speculative.parse("ngram", None, draft_tokens=17)

    from dataclasses import replace

    from oga_npu import capabilities as caps_mod

    # onnxruntime-genai before 0.18: no set_speculative_options (what capabilities() reports)
    old = replace(caps_mod.capabilities(), speculative=False)
    monkeypatch.setattr(caps_mod, "capabilities", lambda: old)
    with pytest.raises(GenerationError) as e:
        speculative.parse("ngram", None)
    assert "0.18" in str(e.value)


def test_draft_with_another_vocabulary_is_refused(tmp_path, full_logits_model):
    other = tmp_path / "other"
    other.mkdir()
    cfg = json.loads((full_logits_model / "genai_config.json").read_text())
    cfg["model"]["vocab_size"] = cfg["model"]["vocab_size"] + 1
    (other / "genai_config.json").write_text(json.dumps(cfg))
    with pytest.raises(GenerationError) as e:
        speculative.compose_draft(full_logits_model, other, tmp_path / "comp")
    assert "vocabulary" in str(e.value)


def test_cli_run_with_ngram(full_logits_model):
    r = run_cli(
        "run",
        "hello hello hello",
        "-m",
        str(full_logits_model),
        "--raw",
        "-n",
        "6",
        "-t",
        "0",
        "--speculative",
        "ngram",
    )
    assert r.returncode == 0, r.stderr
    r = run_cli("run", "hello", "-m", str(full_logits_model), "--speculative", "medusa")
    assert r.returncode != 0 and "unknown --speculative" in r.stderr
