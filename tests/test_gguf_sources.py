"""GGUF sources: the tiny-GGUF writer (tests/gguf_models.py) against transformers' reader."""

from __future__ import annotations

import numpy as np
import pytest

import gguf_models


@pytest.mark.parametrize("qtype", gguf_models.K_QUANTS)
def test_k_quant_encoders_decode_with_gguf(qtype):
    """Our Q4_K/Q6_K blocks decode, with gguf's own dequantizer, to the input within the
    type's step (a wrong bit layout lands far off)."""
    import gguf

    rng = np.random.default_rng(0)
    x = (rng.standard_normal((32, gguf_models.QK_K)) * rng.uniform(0.01, 1, (32, 1))).astype(np.float32)
    x[3] = 0.0  # an all-zero block
    enc = gguf_models.quantize_q4_k if qtype == "Q4_K" else gguf_models.quantize_q6_k
    blocks = enc(x)
    assert blocks.shape == (32, gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]][1])
    y = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType[qtype])
    levels = 15 if qtype == "Q4_K" else 63
    span = x.max(axis=1, keepdims=True) - np.minimum(x.min(axis=1, keepdims=True), 0)
    assert np.all(np.abs(y - x) <= span / levels + 1e-6)
    assert not y[3].any()


# One per transform the writer applies: q/k permutation, 1 + w norms, head_dim 128 and q/k norms, fused
# qkv and gate_up (the others were checked the same way by hand; each adds ~1.5 s).
@pytest.mark.parametrize("arch", ["llama", "gemma2", "qwen3", "phi3"])
def test_tiny_gguf_reads_back_as_the_same_model(tmp_path, monkeypatch, arch):
    """An F32 file written by the helper loads in transformers as the model it was made
    from (same logits): tensor names, llama's q/k permutation and Gemma's 1 + w norms right."""
    import torch
    from transformers import AutoModelForCausalLM

    made = {}
    from_config = AutoModelForCausalLM.from_config

    def spy(cfg, **kw):
        made["model"] = from_config(cfg, **kw)
        return made["model"]

    monkeypatch.setattr(AutoModelForCausalLM, "from_config", spy)
    path = gguf_models.write_gguf(tmp_path / f"{arch}.gguf", arch, "F32", vocab=300)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.tensor([[5, 100, 200, 17, 299]])
    with torch.no_grad():
        want, got = made["model"].eval()(ids).logits, loaded(ids).logits
    assert torch.allclose(want, got, atol=1e-5), (arch, float((want - got).abs().max()))
