"""The decode loop on a tiny random llama (SmolLM2's real tokenizer)."""

import io
import os
import signal
import sys

import pytest

from oga_npu.errors import ChatTemplateError, ContextLengthError, GenerationError
from oga_npu.generate import (
    DEFAULT_SAMPLING,
    GenerationOptions,
    _Detokenizer,
    _StopFilter,
    encode,
    generate,
    resolve_options,
    stream_generate,
)
from oga_npu.model import load


@pytest.fixture(scope="module")
def lm(tiny_model):
    return load(tiny_model)


TRICKY = "Emoji 😀👍🏽 and 東京タワー, Привет мир, ünïcödé — done."


def test_detokenizer_releases_whole_characters_only(lm):
    ids = encode(lm, TRICKY)
    d = _Detokenizer(lm.tokenizer)
    deltas = [d.add(t) for t in ids] + [d.flush()]
    assert "".join(deltas) == lm.tokenizer.decode(ids)
    assert all("\ufffd" not in x for x in deltas)
    # at least one character really was split across tokens (else this test proves nothing)
    assert any(x == "" for x in deltas[:-1])


def test_detokenizer_work_stays_bounded_on_undecodable_ids():
    """Ids the tokenizer cannot decode (a model vocabulary larger than its tokenizer's)
    used to pile up: every step decoded the whole pile again."""

    class Tok:
        longest = 0

        def decode(self, ids):
            Tok.longest = max(Tok.longest, len(ids))
            return "".join("a" if i < 100 else "\ufffd" for i in ids)

    d = _Detokenizer(Tok())
    out = [d.add(1000 + i) for i in range(500)] + [d.add(5), d.flush()]
    assert Tok.longest <= 2 * _Detokenizer.MAX_PENDING
    assert "".join(out).endswith("a") and "".join(out).count("\ufffd") == 500


@pytest.mark.parametrize("text", ["Hi 😀", "Tokyo 東京"])
def test_a_character_cut_by_max_tokens_is_dropped_not_replaced(lm, monkeypatch, text):
    """max_tokens landing inside a character (SmolLM2's byte-level BPE splits emoji and CJK
    over 2-3 tokens): the stream and the whole answer end before it, never in U+FFFD."""
    g = sys.modules["oga_npu.generate"]  # the package's `generate` attribute is the function
    ids = encode(lm, text)
    whole = lm.tokenizer.decode(ids)
    cut = next(n for n in range(len(ids) - 1, 0, -1) if lm.tokenizer.decode(ids[:n]).endswith("\ufffd"))
    expect = lm.tokenizer.decode(ids[:cut]).rstrip("\ufffd")
    assert whole.startswith(expect) and len(expect) < len(whole)  # the cut really is mid-character

    class Scripted:  # the Generator surface stream_generate drives, emitting `ids` in order
        def __init__(self, *a, **k):
            self.n = 0

        def is_done(self):
            return False

        def generate_next_token(self):
            self.n += 1

        def get_next_tokens(self):
            return [ids[self.n - 1]]

    monkeypatch.setattr(g, "_oga_generator", Scripted)
    opts = GenerationOptions(max_tokens=cut, temperature=0.0)
    events = list(stream_generate(lm, "say it", opts))
    streamed = "".join(e.text for e in events)
    assert events[-1].finish_reason == "length" and events[-1].generated_tokens == cut
    assert streamed == expect and "\ufffd" not in streamed
    assert generate(lm, "say it", opts)[0] == expect
    # no cut: the whole text, the character included
    assert generate(lm, "say it", GenerationOptions(max_tokens=len(ids), temperature=0.0))[0] == whole


def test_stream_equals_one_shot(lm):
    opts = GenerationOptions(max_tokens=40, temperature=0.0)
    events = list(stream_generate(lm, "Tell me about Tokyo 東京 😀", opts))
    streamed = "".join(e.text for e in events)
    assert events[-1].finish_reason in ("length", "stop")
    ids = [e.token for e in events if e.token is not None]
    assert streamed == lm.tokenizer.decode(ids)
    assert "\ufffd" not in streamed
    text, last = generate(lm, "Tell me about Tokyo 東京 😀", opts)
    assert text == streamed and last.generated_tokens == events[-1].generated_tokens
    assert last.provider == "cpu" and last.ttft > 0 and last.prompt_tokens > 5


def test_stop_filter_holds_back_split_stop_strings():
    f = _StopFilter(["Paris"])
    out = []
    for piece in ["The capital is P", "a", "ri", "s, of course"]:
        text, hit = f.push(piece)
        out.append(text)
        if hit:
            break
    assert "".join(out) == "The capital is "
    f = _StopFilter(["Paris"])
    assert f.push("go to Pa") == ("go to ", False)
    assert f.flush() == "Pa"  # a partial match is flushed at the end


def test_stop_string_split_across_tokens_is_never_emitted(lm):
    opts = GenerationOptions(max_tokens=30, temperature=0.0)
    events = list(stream_generate(lm, "hello", opts))
    ids = [e.token for e in events if e.token is not None]
    # pick a stop string that spans a token boundary in this very output
    pieces = [lm.tokenizer.decode(ids[:i]) for i in range(1, len(ids) + 1)]
    full = pieces[-1]
    cut = next(i for i in range(3, len(pieces)) if len(pieces[i - 1]) - len(pieces[i - 2]) >= 2)
    boundary = len(pieces[cut - 2])
    stop = full[boundary - 1 : boundary + 1]
    assert stop and stop not in full[: boundary - 1] + full[boundary - 1 : boundary]  # spans the boundary
    first = full.find(stop)
    text, last = generate(lm, "hello", GenerationOptions(max_tokens=30, temperature=0.0, stop=(stop,)))
    assert stop not in text
    assert text == full[:first]
    assert last.finish_reason == "stop_string"


def test_greedy_and_seeded_sampling_repeat(lm):
    g1, _ = generate(lm, "Once upon a time", GenerationOptions(max_tokens=20, temperature=0.0))
    g2, _ = generate(lm, "Once upon a time", GenerationOptions(max_tokens=20, temperature=0.0))
    assert g1 == g2
    s = GenerationOptions(max_tokens=20, temperature=1.5, top_k=50, seed=7)
    a, _ = generate(lm, "Once upon a time", s)
    b, _ = generate(lm, "Once upon a time", s)
    assert a == b
    c, _ = generate(lm, "Once upon a time", GenerationOptions(max_tokens=20, temperature=1.5, top_k=50, seed=8))
    assert c != a


def test_unset_sampling_options_take_the_models_defaults(lm):
    from types import SimpleNamespace

    # The tiny model's source names no sampling (no do_sample): llama.cpp-style defaults.
    assert not lm.config["search"].get("do_sample")
    r = resolve_options(GenerationOptions(), lm)
    assert {k: getattr(r, k) for k in DEFAULT_SAMPLING} == DEFAULT_SAMPLING
    # What the user gives wins, field by field; temperature 0 stays greedy.
    r = resolve_options(GenerationOptions(temperature=0.0, top_k=5), lm)
    assert (r.temperature, r.top_k, r.top_p) == (0.0, 5, DEFAULT_SAMPLING["top_p"])
    # A source whose generation_config asks to sample: the builder's search section is used.
    own = SimpleNamespace(
        config={
            "search": {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "top_k": 20, "repetition_penalty": 1.05}
        }
    )
    r = resolve_options(GenerationOptions(top_p=0.5), own)
    assert (r.temperature, r.top_p, r.top_k, r.repetition_penalty) == (0.6, 0.5, 20, 1.05)
    # The decode loop samples by default: a seed repeats, and seeds differ from greedy.
    greedy, _ = generate(lm, "Once upon a time", GenerationOptions(max_tokens=20, temperature=0.0))
    runs = [generate(lm, "Once upon a time", GenerationOptions(max_tokens=20, seed=s))[0] for s in (1, 1, 2, 3)]
    assert runs[0] == runs[1]
    assert any(t != greedy for t in runs)


def test_too_long_prompt_is_refused_with_both_counts(lm):
    prompt = "word " * 600
    with pytest.raises(ContextLengthError) as e:
        list(stream_generate(lm, prompt, GenerationOptions(max_tokens=50), raw=True))
    n = len(encode(lm, prompt))
    assert str(n) in e.value.message and "50" in e.value.message and str(lm.context_length) in e.value.message


@pytest.mark.parametrize(
    "kw",
    [
        dict(max_tokens=0),
        dict(temperature=-0.1),
        dict(top_p=0.0),
        dict(top_p=1.5),
        dict(top_k=-1),
        dict(seed=-1),
        dict(stop=("",)),
    ],
)
def test_bad_options_are_typed_errors(lm, kw):
    with pytest.raises(GenerationError):
        list(stream_generate(lm, "hi", GenerationOptions(**kw)))


@pytest.mark.parametrize("prompt", ["", "   \n\t"])
def test_empty_prompt(lm, prompt):
    with pytest.raises(GenerationError, match="empty"):
        list(stream_generate(lm, prompt))


def test_ignore_eos_generates_exactly_max_tokens(lm):
    eos = lm.eos_token_ids[0]
    _, last = generate(lm, [eos, eos], GenerationOptions(max_tokens=25, ignore_eos=True))
    assert last.generated_tokens == 25 and last.finish_reason == "length"


def test_every_eos_id_is_honoured(lm):
    # make the greedy first token an EOS id by listing it among several
    greedy = GenerationOptions(max_tokens=1, temperature=0.0)
    first = next(e.token for e in stream_generate(lm, "hello", greedy) if e.token is not None)
    lm.config["model"]["eos_token_id"] = [12345, first]
    try:
        text, last = generate(lm, "hello", GenerationOptions(max_tokens=10, temperature=0.0))
    finally:
        lm.config["model"]["eos_token_id"] = 2
    assert last.finish_reason == "stop" and last.generated_tokens == 1 and text == ""


def test_no_chat_template_is_an_error_not_raw_text(tmp_path, tiny_model):
    import shutil

    from oga_npu.workdir import MANIFEST

    d = tmp_path / "notemplate"
    shutil.copytree(tiny_model, d)
    (d / "chat_template.jinja").unlink(missing_ok=True)
    (d / MANIFEST).unlink()
    shutil.rmtree(d / "stages")
    (d / "prepare.json").unlink()
    import json

    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc.pop("chat_template", None)
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    m = load(d)
    with pytest.raises(ChatTemplateError):
        list(stream_generate(m, "hi"))
    text, _ = generate(m, "hi", GenerationOptions(max_tokens=3), raw=True)
    assert isinstance(text, str)
    text, _ = generate(
        m, "hi", GenerationOptions(max_tokens=3), chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    assert isinstance(text, str)


def test_chat_sigint_stops_answer_and_keeps_session(lm, monkeypatch):
    from oga_npu.chat import ChatSession, repl

    monkeypatch.setattr("sys.stdin", io.StringIO("first question\nsecond question\n/exit\n"))
    session = ChatSession(lm, GenerationOptions(max_tokens=200, ignore_eos=True))

    class Out(io.StringIO):
        interrupted = False

        def write(self, s):
            if s and not Out.interrupted and len(self.getvalue()) > 10:
                Out.interrupted = True
                os.kill(os.getpid(), signal.SIGINT)
            return super().write(s)

    out = Out()
    repl(session, out=out)
    assert Out.interrupted
    # both turns are in the history; the first answer was cut short, the second ran to max_tokens
    assert [m["role"] for m in session.history] == ["user", "assistant", "user", "assistant"]
    assert session.history[2]["content"] == "second question"
    assert session.last.generated_tokens == 200
    first_len = len(encode(lm, session.history[1]["content"]))
    assert first_len < 200


def test_chat_trims_oldest_turns_to_fit_in_half_context_steps(lm):
    """A full conversation drops its oldest turns until the prompt takes half the room, so
    the next turns append to the cached KV (prefilling only the new message) instead of
    every turn dropping one turn and re-reading the whole history."""
    from oga_npu.chat import ChatSession

    opts = GenerationOptions(max_tokens=60, temperature=0)  # (ignore_eos would turn KV reuse off)
    s = ChatSession(lm, opts, system="be brief")
    room = lm.context_length - opts.max_tokens
    trims, prev = [], None
    for i in range(16):
        before = len(s.notices)
        list(s.send(f"question number {i} " + "blah " * 30))  # fills the context even if answers are short
        ev = s.last
        assert ev.prompt_tokens <= room
        if len(s.notices) > before:
            trims.append(i)
            assert ev.prompt_tokens <= room // 2 and s.history[0]["content"] != "question number 0"
        elif prev is not None:  # the history so far came from the cache: only the new message prefilled
            assert ev.cached_tokens >= prev.prompt_tokens, (i, ev.cached_tokens, prev.prompt_tokens)
        prev = ev
    assert len(trims) >= 2, trims
    assert all(b - a >= 2 for a, b in zip(trims, trims[1:])), trims  # never one trim (re-prefill) per turn
    assert s.history[-2]["content"].startswith("question number 15") and len(s.history) < 32
