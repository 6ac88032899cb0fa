"""The faster AWQ clip search gives Quark's result."""

import torch


def test_fast_clip_matches_quark(tiny_hf):
    from quark.torch import LLMTemplate, ModelQuantizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from oga_npu.prepare.quantize import calibration_batches, fast_awq_clip
    from oga_npu.textdata import builtin_text

    tok = AutoTokenizer.from_pretrained(tiny_hf)
    calib = calibration_batches(tok, builtin_text(), 2, 64)
    results = []
    for fast in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_hf, dtype=torch.float32).eval()
        cfg = LLMTemplate.get("llama").get_config(scheme="uint4_wo_32", algorithm="awq", exclude_layers=["lm_head"])
        q = ModelQuantizer(cfg)
        with fast_awq_clip(fast):
            model = q.quantize_model(model, calib)
        with torch.no_grad():
            results.append(model(calib[0]).logits)
    # Same clipping choices -> same quantized model -> same logits (up to float summation order).
    assert torch.allclose(results[0], results[1], atol=1e-4, rtol=1e-4)


def test_fast_clip_restores_quark():
    from quark.torch.algorithm.awq.awq import AwqProcessor

    from oga_npu.prepare.quantize import fast_awq_clip, fast_compute_best_clip

    original = AwqProcessor._compute_best_clip
    with fast_awq_clip(True):
        assert AwqProcessor._compute_best_clip is fast_compute_best_clip
    assert AwqProcessor._compute_best_clip is original


def test_layer_widths_of_smollm2_config():
    from oga_npu.prepare.quantize import layer_input_widths

    cfg = {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9, "head_dim": 64}
    assert sorted(set(layer_input_widths(cfg))) == [576, 1536]
