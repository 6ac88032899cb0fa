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


def _ctx(target, recipe="default"):
    from types import SimpleNamespace

    from oga_npu.recipe import load_recipe

    return SimpleNamespace(target=target, recipe=load_recipe(recipe), calib_text="builtin", calib_key="k")


def test_stage_settings_per_target(tmp_path):
    import json

    from oga_npu.prepare import quantize as q

    (tmp_path / "config.json").write_text(json.dumps({"dtype": "bfloat16"}))
    cpu = q.settings(_ctx("cpu"), tmp_path)
    assert (cpu["exclude_layers"], cpu["data_type"], cpu["strict_rope"]) == (["lm_head"], "float32", False)
    assert cpu["calibration"] == {"text": "builtin", "samples": 16, "seq_len": 128}
    assert (cpu["algorithm"], cpu["group_size"], cpu["scheme"]) == ("awq", 128, "uint4_wo_128")
    hyb = q.settings(_ctx("hybrid"), tmp_path)
    assert (hyb["exclude_layers"], hyb["data_type"], hyb["strict_rope"]) == ([], "bfloat16", True)
    assert "per checkpoint" in q.settings(_ctx("npu"), tmp_path / "not-yet")["data_type"]
    assert q.settings(_ctx("npu", "cpu-fast"), tmp_path)["calibration"] is None
    spec = q.spec(_ctx("hybrid"), tmp_path, tmp_path / "out")
    assert (spec["exclude_layers"], spec["data_type"], spec["strict_rope"]) == ([], "bfloat16", True)


def test_stage_key_keeps_cpu_folders_and_separates_amd_targets():
    from oga_npu.prepare import quantize as q

    cpu = q.key(_ctx("cpu"))
    assert cpu == {
        "scheme": "uint4_wo_128",
        "algorithm": "awq",
        "exclude": ["lm_head"],
        "samples": 16,
        "seq_len": 128,
        "text": "k",
    }  # the key a folder prepared before per-target settings has
    hyb = q.key(_ctx("hybrid"))
    assert hyb["exclude"] == [] and hyb["data_type"] == "auto-amd"


def test_dry_run_lines_show_the_settings(tmp_path):
    from oga_npu.prepare import quantize as q

    line = q.describe(_ctx("npu"), tmp_path / "src", tmp_path / "out")[0]
    assert "exclude []" in line and "data type per checkpoint" in line and "16 x 128 tokens of builtin" in line
