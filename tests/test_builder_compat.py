"""oga_npu.prepare.builder_compat: the quantized folder's keys for AMD's older model builders
(the real builders read them in scripts/test_oga_versions.sh, tests/builders_check.py)."""

from __future__ import annotations

import json

import pytest

from oga_npu.prepare.builder_compat import BuilderCompatError, fix_folder, legacy_rope_keys, refusal, rope_kind

LLAMA3 = {
    "model_type": "llama",
    "max_position_embeddings": 2048,
    "rope_parameters": {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    },
}
LONGROPE = {
    "model_type": "phi3",
    "max_position_embeddings": 1024,
    "original_max_position_embeddings": 256,
    "partial_rotary_factor": 0.5,
    "rope_parameters": {
        "rope_type": "longrope",
        "rope_theta": 10000.0,
        "short_factor": [1.0, 1.1],
        "long_factor": [2.0, 3.0],
        "original_max_position_embeddings": 256,
        "partial_rotary_factor": 0.5,
    },
}
GEMMA3 = {
    "model_type": "gemma3_text",
    "rope_parameters": {
        "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
    },
}


def test_default_rope_gets_a_top_level_theta_only():
    cfg = {"model_type": "qwen2", "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    assert legacy_rope_keys(cfg) == {"rope_theta": 1e6}


def test_llama3_gets_legacy_scaling_and_the_top_level_original_length():
    add = legacy_rope_keys(LLAMA3)
    assert add["rope_theta"] == 500000.0
    assert add["rope_scaling"] == {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    assert add["original_max_position_embeddings"] == 256  # 0.9.2/0.11.2 read it at the top level only


def test_longrope_in_the_three_key_form_transformers_457_accepts():
    add = legacy_rope_keys(LONGROPE)
    assert add["rope_scaling"] == {"type": "longrope", "short_factor": [1.0, 1.1], "long_factor": [2.0, 3.0]}
    assert "original_max_position_embeddings" not in add and "partial_rotary_factor" not in add  # already there


def test_keys_already_there_are_kept():
    cfg = {**LLAMA3, "rope_theta": 1.0, "rope_scaling": {"rope_type": "llama3", "factor": 2.0}}
    assert legacy_rope_keys(cfg) == {"original_max_position_embeddings": 256}
    assert legacy_rope_keys({"rope_theta": 5.0}) == {}  # transformers-4 form: nothing to add


def test_gemma3_per_layer_rope_is_refused_strict_and_left_alone_otherwise():
    assert rope_kind(GEMMA3) == "per-layer"
    assert rope_kind({"model_type": "gemma3_text", "rope_theta": 1e6, "rope_local_base_freq": 1e4}) == "per-layer"
    with pytest.raises(BuilderCompatError) as e:
        legacy_rope_keys(GEMMA3, strict=True)
    assert "per layer type" in e.value.message and "--target cpu" in e.value.fix
    assert legacy_rope_keys(GEMMA3) == {}


@pytest.mark.parametrize("kind", ["linear", "dynamic", "yarn"])
def test_scalings_the_old_builders_do_not_read_are_refused_strict(kind):
    cfg = {"rope_parameters": {"rope_type": kind, "rope_theta": 1e4, "factor": 4.0}}
    with pytest.raises(BuilderCompatError):
        legacy_rope_keys(cfg, strict=True)
    assert legacy_rope_keys(cfg) == {"rope_theta": 1e4}  # cpu/webgpu: 0.18 reads rope_parameters
    hub = {"rope_theta": 1e4, "rope_scaling": {"type": kind, "factor": 4.0}}  # the source's transformers-4 form
    assert refusal(hub) is not None
    assert refusal({"rope_theta": 1e4, "rope_scaling": {"rope_type": "llama3"}}) is None


def test_fix_folder_writes_the_keys_and_renames_the_tokenizer_class(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(LLAMA3))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "TokenizersBackend", "x": "é"}))
    changed = fix_folder(tmp_path)
    assert changed["config.json"] == ["original_max_position_embeddings", "rope_scaling", "rope_theta"]
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["rope_parameters"] == LLAMA3["rope_parameters"]  # transformers 5 and 0.18 still read it
    tc = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert tc == {"tokenizer_class": "PreTrainedTokenizerFast", "x": "é"}
    assert fix_folder(tmp_path) == {}  # a second pass changes nothing


def test_fix_folder_leaves_a_known_tokenizer_class(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"text_config": LONGROPE}))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "Qwen2Tokenizer"}))
    assert list(fix_folder(tmp_path)) == ["config.json"]
    assert json.loads((tmp_path / "config.json").read_text())["text_config"]["rope_theta"] == 10000.0
