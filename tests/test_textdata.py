"""The built-in text is cut in two: calibration never sees the text eval scores."""

from __future__ import annotations

from oga_npu import textdata


def test_calibration_and_eval_windows_share_no_token_positions(smol_tokenizer_dir):
    from transformers import AutoTokenizer

    from oga_npu.evaluate import windows_of
    from oga_npu.prepare.quantize import calibration_batches

    full = textdata.builtin_text()
    calib, ev = textdata.builtin_text("calibration"), textdata.builtin_text("evaluation")
    assert calib + textdata.SEPARATOR + ev == full  # two disjoint halves of the same text
    assert 0.35 < len(calib) / len(full) < 0.65
    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    # Positions in the whole text, by character: the cut is a topic boundary.
    cut = len(calib) + len(textdata.SEPARATOR)
    # what the quantize stage calibrates on (AMD's 128 x 512 tokens: more than the half holds,
    # so the calibration windows wrap around inside their half) ...
    batches = calibration_batches(tok, textdata.load_text("builtin", part="calibration"), 128, 512)
    # ... and what eval scores: its windows, decoded, lie in the evaluation half only
    ids = tok(textdata.load_text("builtin", part="evaluation"), add_special_tokens=False)["input_ids"]
    wins = windows_of(ids, 512, 8)
    for w in wins:
        text = tok.decode(w)
        at = full.find(text)
        assert at >= cut, "an eval window lies in the calibration half"
        assert calib.find(text) == -1
    for b in batches[:16]:
        text = tok.decode(b[0].tolist())
        assert full.find(text) != -1 and full.find(text) + len(text) <= len(calib)
    assert len(batches) == 128 and all(b.shape == (1, 512) for b in batches)


def test_eval_describes_the_text_it_scored():
    from pydoc_data import topics

    names = sorted(topics.topics)
    first_eval = names[textdata.eval_split()]
    d = textdata.describe("builtin", "evaluation")
    assert "evaluation part" in d and repr(first_eval) in d and repr(names[-1]) in d
    c = textdata.describe("builtin", "calibration")
    assert repr(names[0]) in c and repr(first_eval) not in c
    assert textdata.describe("notes.txt", "evaluation") == "notes.txt"  # a user's file is used whole


def test_eval_ref_gguf_without_llama_cpp_names_the_extra(tmp_path, monkeypatch):
    import importlib.util

    import pytest
    from conftest import run_cli

    from oga_npu import evaluate
    from oga_npu.errors import OgaNpuError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    with pytest.raises(OgaNpuError, match="llama-cpp-python") as e:
        evaluate.require_llamacpp()
    assert "oga-npu[llamacpp]" in e.value.fix
    model = tmp_path / "m"
    model.mkdir()
    r = run_cli("eval", "-m", str(model), "--ref-gguf", str(tmp_path / "missing.gguf"))
    assert r.returncode == 1 and "not a file" in r.stderr  # checked before any model is loaded
