"""What AMD's model builders (onnxruntime-genai 0.9.2 / 0.11.2 / 0.14.0, run under AMD's
transformers 4.57.6) and AMD's quantize settings really are, each fact with its source beside the
assertion, and oga-npu's quantize stage held to them.

Builder sources: the public PyPI wheels (`pip download --no-deps onnxruntime-genai==X`), paths
inside the wheel, listed in tests/builder_facts.py; tests/builders_check.py (run by
scripts/test_builders.sh with each wheel on the path) reads each cited line in the wheel itself,
and checks end to end the behaviour those lines give.
AMD docs: github.com/amd/ryzen-ai-documentation, docs/oga_model_prepare.rst, per release branch.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from oga_npu.prepare.builder_compat import EXPRESSIBLE, TOKENIZER_CLASS, legacy_rope_keys, refusal
from oga_npu.recipe import load_recipe

REPO = Path(__file__).resolve().parents[2]


def test_keys_the_old_builders_read_are_written():
    # 0.9.2 builder.py:176 / 0.11.2:178 / 0.14.0 base.py:233-243: top-level rope_theta, else 10000
    # (transformers 4.57.6's LlamaConfig default when config.json has only rope_parameters)
    cfg = {"rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}}
    assert legacy_rope_keys(cfg)["rope_theta"] == 500000.0
    # 0.9.2 builder.py:326 (llama3 by the key low_freq_factor) and :41 (top-level original_max only)
    llama3 = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0}
    add = legacy_rope_keys(
        {"rope_parameters": {**llama3, "high_freq_factor": 4.0, "original_max_position_embeddings": 8}}
    )
    assert "low_freq_factor" in add["rope_scaling"] and add["original_max_position_embeddings"] == 8
    # transformers 4.57.6 models/phi3/configuration_phi3.py:205: longrope rope_scaling must have exactly 3 keys
    lr = {"rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0], "long_factor": [2.0]}
    assert len(legacy_rope_keys({"rope_parameters": lr})["rope_scaling"]) == 3


def test_what_the_old_builders_cannot_read_is_refused():
    # 0.9.2 builder.py:307-350 / 0.11.2:309-352: longrope, llama3, yarn branches only: linear and
    # dynamic are ignored (0.14.0 base.py:479-488 adds linear; no version reads dynamic)
    assert set(EXPRESSIBLE) == {"default", "llama3", "longrope", "su"}
    for kind in ("linear", "dynamic"):
        assert refusal({"rope_theta": 1e4, "rope_scaling": {"type": kind, "factor": 2.0}}) is not None


def test_tokenizer_class_exists_in_transformers_457():
    # transformers 4.57.6 has PreTrainedTokenizerFast (it loads tokenizer.json as it is); it has no
    # TokenizersBackend, which transformers 5 writes ("Tokenizer class TokenizersBackend does not exist")
    assert TOKENIZER_CLASS == "PreTrainedTokenizerFast"


@pytest.mark.parametrize("branch", ["1.6", "1.7", "1.8"])
def test_amd_quark_settings_for_hybrid_and_npu(branch):
    # amd/ryzen-ai-documentation docs/oga_model_prepare.rst, branches 1.6 (l.83), 1.7 (l.83), 1.8 (l.80):
    # `--exclude_layers []`; 1.7/1.8: "Not using --exclude_layers ... may exclude ... output layers".
    # Same page, 1.6 l.86 / 1.7 l.86 / 1.8 l.83: "Use --data_type bfloat16 for bf16 pretrained model.
    # For fp32/fp16 pretrained model use --datatype float16". 1.7 SmolLM2 hybrid card: "Excluded Layers: None".
    q = load_recipe("default").quantize
    for target in ("hybrid", "npu"):
        assert q.exclude_for(target) == []
        assert q.data_type_for(target, "bfloat16") == "bfloat16"
        assert q.data_type_for(target, "float32") == q.data_type_for(target, "float16") == "float16"
    # AMD: uint4, group 128, AWQ (1.6: w_uint4_per_group_asym --group_size 128; 1.7.1/1.8: uint4_wo_128)
    assert (q.dtype, q.group_size, q.algorithm, q.scheme) == ("uint4", 128, "awq", "uint4_wo_128")
