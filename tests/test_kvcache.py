"""KV reuse between turns (oga_npu/kvcache.py), in process on the tiny model."""

from __future__ import annotations

import pytest

from oga_npu.chat import ChatSession
from oga_npu.generate import GenerationOptions, encode, render_prompt, stream_generate
from oga_npu.kvcache import MIN_CAPACITY, PromptCache, common_prefix, reuse_support
from oga_npu.model import load


@pytest.fixture(scope="module")
def lm(tiny_model):
    return load(tiny_model)


def _answer(lm, prompt, opts, cache=None):
    evs = list(stream_generate(lm, prompt, opts, cache=cache))
    return "".join(e.text for e in evs), [e.token for e in evs if e.token is not None], evs[-1]


def test_chat_turns_reuse_the_cache(lm):
    """Turn N prefills only the new message. (The answers' equality with full prefills is
    checked on SmolLM2 in test_smollm2.py: on this random model the logits are nearly
    flat, and the runtime's decode-step and prefill kernels round differently, so a
    regenerated history can flip a near-tie.)"""
    opts = GenerationOptions(max_tokens=12, temperature=0)
    reused = ChatSession(lm, opts)
    cached = []
    for q in ["Hello, who are you?", "Tell me more.", "And then?"]:
        "".join(e.text for e in reused.send(q))
        cached.append(reused.last.cached_tokens)
    assert cached[0] == 0 and cached[1] > 0 and cached[2] > cached[1]
    assert cached[2] < reused.last.prompt_tokens  # the new message is prefilled
    assert reused.cache.stats.hits == 2 and reused.cache.stats.misses == 1


def test_a_shared_prefilled_prefix_gives_exactly_the_fresh_answer(lm):
    opts = GenerationOptions(max_tokens=12, temperature=0)
    cache = PromptCache(lm)
    system = {"role": "system", "content": "You are a terse assistant. " * 8}
    _answer(lm, [system, {"role": "user", "content": "first question"}], opts, cache)
    msgs = [system, {"role": "user", "content": "second question, a different one"}]
    text, toks, last = _answer(lm, msgs, opts, cache)
    ref_text, ref_toks, ref_last = _answer(lm, msgs, opts)
    assert last.cached_tokens > 40 and ref_last.cached_tokens == 0
    assert (text, toks) == (ref_text, ref_toks)


def test_a_different_prefix_prefills_in_full_and_equals_fresh(lm):
    opts = GenerationOptions(max_tokens=10, temperature=0)
    cache = PromptCache(lm)
    _answer(lm, [{"role": "user", "content": "first conversation"}], opts, cache)
    other = [{"role": "system", "content": "Another system prompt."}, {"role": "user", "content": "second"}]
    text, toks, last = _answer(lm, other, opts, cache)
    ref_text, ref_toks, _ = _answer(lm, other, opts)
    # only the template's first tokens can match ("<|im_start|>system\\n"): the rest is prefilled
    ids = encode(lm, render_prompt(lm, other))
    assert last.cached_tokens <= 3 and last.cached_tokens < len(ids)
    assert (text, toks) == (ref_text, ref_toks)
    # the same prompt again: all but the last prompt token come from the cache
    text2, toks2, last2 = _answer(lm, other, opts, cache)
    assert last2.cached_tokens == len(ids) - 1 and toks2 == ref_toks


def test_sampling_with_a_seed_never_reuses_so_it_repeats(lm):
    opts = GenerationOptions(max_tokens=10, temperature=0.9, seed=7)
    cache = PromptCache(lm)
    msgs = [{"role": "user", "content": "pick some words"}]
    t1, k1, l1 = _answer(lm, msgs, opts, cache)
    t2, k2, l2 = _answer(lm, msgs, opts, cache)
    assert k1 == k2 and l2.cached_tokens == 0
    # without a seed, sampling settings equal: reused
    unseeded = GenerationOptions(max_tokens=5, temperature=0.9)
    _answer(lm, msgs, unseeded, cache)
    _, _, l4 = _answer(lm, msgs, unseeded, cache)
    assert l4.cached_tokens > 0
    # other sampling settings than the cached Generator's: a fresh one
    _, _, l5 = _answer(lm, msgs, GenerationOptions(max_tokens=5, temperature=0.5), cache)
    assert l5.cached_tokens == 0


def test_a_stream_closed_mid_answer_leaves_a_usable_cache(lm):
    opts = GenerationOptions(max_tokens=20, temperature=0)
    cache = PromptCache(lm)
    msgs = [{"role": "user", "content": "a long answer please"}]
    it = stream_generate(lm, msgs, opts, cache=cache)
    for _, _ev in zip(range(3), it):
        pass
    it.close()  # what a dropped client does
    text, toks, last = _answer(lm, msgs, opts, cache)
    ref_text, ref_toks, _ = _answer(lm, msgs, opts)
    assert last.cached_tokens > 0 and toks == ref_toks


def test_common_prefix_and_provider_support(lm):
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert reuse_support(lm) == (True, "onnxruntime-genai rewind_to + append_tokens")
    for provider in ("dml", "ryzenai"):
        fake = type(lm)(lm.path, lm._model, lm.tokenizer, lm.config, provider)
        ok, why = reuse_support(fake)
        assert not ok and provider in why
        assert not PromptCache(fake).reusable(GenerationOptions())


def test_chat_cli_reports_cached_tokens_and_can_turn_reuse_off(tiny_model, capsys, monkeypatch):
    """The CLI in process (conftest.call), its input piped in as sys.stdin."""
    import io

    from conftest import call

    msgs = "Hello there.\nAnd a second message.\n/exit\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(msgs))
    code, _, err = call(capsys, "chat", "-m", str(tiny_model), "-t", "0", "-n", "6", "--timings")
    assert code == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("[cpu]")]
    assert len(lines) == 2 and "cached" not in lines[0] and "cached)" in lines[1]
    monkeypatch.setattr("sys.stdin", io.StringIO(msgs))
    code, _, err = call(capsys, "chat", "-m", str(tiny_model), "-t", "0", "-n", "6", "--timings", "--no-kv-reuse")
    assert code == 0 and "cached" not in err


def _recorded_max_lengths(monkeypatch) -> list[int]:
    """Record every max_length a GeneratorParams is given (the real one runs as well)."""
    import onnxruntime_genai as og

    seen: list[int] = []

    class Recording(og.GeneratorParams):
        def set_search_options(self, **kw):
            if "max_length" in kw:
                seen.append(kw["max_length"])
            return super().set_search_options(**kw)

    monkeypatch.setattr(og, "GeneratorParams", Recording)
    return seen


def test_the_kv_cache_is_sized_to_the_request_not_the_context(lm, monkeypatch):
    """onnxruntime-genai allocates the KV cache for max_length (past_present_share_buffer):
    one generation asks for prompt + max_tokens, not the model's whole context; a reusable
    chat turn for twice that (room for the next turn), at least MIN_CAPACITY, at most the
    context."""
    seen = _recorded_max_lengths(monkeypatch)
    ids = encode(lm, "Hello there")
    list(stream_generate(lm, ids, GenerationOptions(max_tokens=7, temperature=0)))
    assert seen == [len(ids) + 7] and seen[0] < lm.context_length
    seen.clear()
    cache = PromptCache(lm)
    list(stream_generate(lm, ids, GenerationOptions(max_tokens=30, temperature=0), cache=cache))
    assert seen == [min(lm.context_length, max(MIN_CAPACITY, 2 * (len(ids) + 30)))]


def test_a_long_cpu_prompt_is_prefilled_in_steps(lm, monkeypatch):
    """The prompt goes in OGA_NPU_PREFILL_CHUNK-position steps on the CPU (the arena keeps
    the largest step's activations); 0 prefills it whole; other providers are not chunked."""
    import onnxruntime_genai as og

    from oga_npu.model import PREFILL_CHUNK, prefill_chunk

    steps: list[int] = []

    class Recording(og.Generator):
        def append_tokens(self, ids):
            steps.append(len(ids))
            return super().append_tokens(ids)

    monkeypatch.setattr(og, "Generator", Recording)
    ids = encode(lm, "one two three four five six seven eight nine ten " * 3)
    opts = GenerationOptions(max_tokens=3, temperature=0, ignore_eos=True)
    monkeypatch.setenv("OGA_NPU_PREFILL_CHUNK", "8")
    evs = list(stream_generate(lm, ids, opts))
    assert evs[-1].generated_tokens == 3
    assert steps == [8] * (len(ids) // 8) + ([len(ids) % 8] if len(ids) % 8 else [])
    steps.clear()
    monkeypatch.setenv("OGA_NPU_PREFILL_CHUNK", "0")
    list(stream_generate(lm, ids, opts))
    assert steps == [len(ids)]
    monkeypatch.delenv("OGA_NPU_PREFILL_CHUNK")
    assert prefill_chunk("cpu") == PREFILL_CHUNK and prefill_chunk("webgpu") == 0
