"""model_generate as AMD documents it per release, the fake that stands in for it
(tests/fake_tools/model_generate), and the argv, checks and config edits of oga-npu's hybrid
stage (oga_npu/prepare/hybrid.py). Each fact is stated with its source beside the assertion.

Sources (amd/ryzen-ai-documentation, one branch per release; commits of the mirror read):
  OMP-x = docs/oga_model_prepare.rst on branch x (1.6 0b781294, 1.7 25d4062e, 1.7.1 42a517bc,
  1.8 0860e4dd); HOGA-x = docs/hybrid_oga.rst on branch x.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from oga_npu.errors import RecipeError
from oga_npu.prepare import hybrid
from oga_npu.prepare.context import StageContext
from oga_npu.recipe import HybridConfig, Recipe
from oga_npu.ryzenai import RELEASES, release

FAKE = Path(__file__).resolve().parents[1] / "fake_tools" / "model_generate"


def ctx(target: str, rai: str, **h) -> StageContext:
    recipe = Recipe(name="t", hybrid=HybridConfig(**h))
    return StageContext(target, recipe, Path("/o"), "", "", {}, rai_version=rai)


def mg(tmp_path: Path, rai: str, *args: str) -> subprocess.CompletedProcess:
    env = {"FAKE_TOOL_VERSION": f"{rai}.0", "PATH": "/usr/bin:/bin"}
    return subprocess.run([sys.executable, str(FAKE), *args], capture_output=True, text=True, env=env, cwd=tmp_path)


def io(i="/in", o="/out"):
    return ["--input", i, "--output", o]


# ---------------------------------------------------------------- argv per release


def test_hybrid_forms():
    # OMP-1.6, OMP-1.7: `model_generate --hybrid <output_dir> <quantized_model_path>`
    for rai in ("1.6", "1.7"):
        assert hybrid.argv(ctx("hybrid", rai), Path("/in"), Path("/out"))[1:] == ["--hybrid", "/out", "/in"]
    # OMP-1.7.1, OMP-1.8: `model_generate --hybrid --input <quantized_model_path> --output <output_dir>`
    for rai in ("1.7.1", "1.8"):
        assert hybrid.argv(ctx("hybrid", rai), Path("/in"), Path("/out"))[1:] == ["--hybrid", *io()]


def test_npu_forms():
    # OMP-1.6, OMP-1.7: `model_generate --npu <output_dir> <quantized_model_path>  --optimize decode`
    for rai in ("1.6", "1.7"):
        a = hybrid.argv(ctx("npu", rai), Path("/in"), Path("/out"))[1:]
        assert a == ["--npu", "/out", "/in", "--optimize", "decode"]
    # OMP-1.7.1 and OMP-1.8 show a variant every time; "**Basic** (safe default for new or untested models)"
    for rai in ("1.7.1", "1.8"):
        assert hybrid.argv(ctx("npu", rai), Path("/in"), Path("/out"))[1:] == ["--npu", "--basic", *io()]
        for v in ("full_fusion", "token_fusion", "basic", "eager"):  # OMP-1.7.1: all four documented
            assert hybrid.argv(ctx("npu", rai, npu_variant=v), Path("/in"), Path("/out"))[1:3] == ["--npu", f"--{v}"]


def test_variants_and_mem_optimize_from_1_7_1():
    # OMP-1.7.1 documents --full_fusion/--token_fusion/--basic/--eager, --oga_only, --mem_optimize; OMP-1.7 none
    assert release("1.7.1").npu_variants == ("full_fusion", "token_fusion", "basic", "eager")
    assert release("1.7").npu_variants == () and not release("1.7").mem_optimize
    with pytest.raises(RecipeError, match="came with 1.7.1"):
        hybrid.check_release(ctx("npu", "1.7", npu_variant="eager"))
    with pytest.raises(RecipeError, match="came with 1.7.1"):
        hybrid.check_release(ctx("hybrid", "1.6", mem_optimize=True))
    # OMP-1.7.1: "model_generate --hybrid --mem_optimize --input ... --output ..."
    a = hybrid.argv(ctx("hybrid", "1.7.1", mem_optimize=True), Path("/in"), Path("/out"))[1:]
    assert a == ["--hybrid", "--mem_optimize", *io()]


def test_release_table_moved_and_reexported():
    from oga_npu import ryzenai_releases

    assert RELEASES is ryzenai_releases.RELEASES and release is ryzenai_releases.release


# ---------------------------------------------------------------- context length


def test_token_fusion_long_context():
    # OMP-1.8: `model_generate --npu --token_fusion --input ... --output ... --extra_options max_seq_len=16384`
    a = hybrid.argv(ctx("npu", "1.8", npu_variant="token_fusion", max_seq_length=16384), Path("/in"), Path("/out"))
    assert a[-2:] == ["--extra_options", "max_seq_len=16384"]
    hybrid.check_release(ctx("npu", "1.8", npu_variant="token_fusion", max_seq_length=16384))
    # no extra option at 4096 (AMD's plain token-fusion command)
    a = hybrid.argv(ctx("npu", "1.8", npu_variant="token_fusion"), Path("/in"), Path("/out"))
    assert "--extra_options" not in a
    # OMP-1.7.1: "Token Fusion currently supports generating models with a 4K context length only"
    with pytest.raises(RecipeError, match="4K context only"):
        hybrid.check_release(ctx("npu", "1.7.1", npu_variant="token_fusion", max_seq_length=8192))


@pytest.mark.parametrize("variant", ["full_fusion", "basic", "eager", "default"])
def test_other_npu_models_stop_at_4096(variant):
    # HOGA-1.8: Full Fusion "Up to 4096 tokens"; long context (beyond 4096) is for "Hybrid models
    # and Token Fusion NPU models"
    with pytest.raises(RecipeError, match="up to 4096 tokens"):
        hybrid.check_release(ctx("npu", "1.8", npu_variant=variant, max_seq_length=8192))
    hybrid.check_release(ctx("npu", "1.8", npu_variant=variant, max_seq_length=4096))


def test_hybrid_long_context_per_release():
    # HOGA-1.6: "In Ryzen AI 1.6, models support up to 4096 tokens in total (input + output)";
    # onnxruntime-genai 0.9.2 (its pin) has no search.chunk_size (src/config.cpp, absent at v0.9.2)
    with pytest.raises(RecipeError, match="up to 4096 tokens"):
        hybrid.check_release(ctx("hybrid", "1.6", max_seq_length=8192))
    # HOGA-1.7 "Long Context Support" for hybrid models, and 1.7.1, 1.8
    for rai in ("1.7", "1.7.1", "1.8"):
        hybrid.check_release(ctx("hybrid", rai, max_seq_length=16384))


def write_cfg(d: Path, so: dict, filename="model_jit.onnx") -> None:
    cfg = {"model": {"context_length": 16384, "decoder": {"filename": filename, "session_options": so}}, "search": {}}
    (d / "genai_config.json").write_text(json.dumps(cfg))


def test_long_context_edit_as_amd_writes_it(tmp_path):
    # HOGA-1.7..1.8: add "hybrid_opt_chunk_context": "1" under provider_options.RyzenAI (the sample keeps
    # "hybrid_opt_max_seq_length": "4096") and "chunk_size": 2048 under search
    ry = {"external_data_file": "model_jit.pb.bin", "hybrid_opt_free_after_prefill": "1"}
    write_cfg(tmp_path, {"provider_options": [{"RyzenAI": {**ry, "hybrid_opt_max_seq_length": "4096"}}]})
    hybrid.apply_long_context(tmp_path, "hybrid", 16384, "ryzenai-provider")
    cfg = json.loads((tmp_path / "genai_config.json").read_text())
    got = cfg["model"]["decoder"]["session_options"]["provider_options"][0]["RyzenAI"]
    assert got["hybrid_opt_chunk_context"] == "1" and got["hybrid_opt_max_seq_length"] == "4096"
    assert cfg["search"]["chunk_size"] == 2048
    # HOGA-1.8: Token Fusion NPU models: "No additional configuration is required"
    write_cfg(tmp_path, {"provider_options": [{"RyzenAI": {"hybrid_opt_max_seq_length": "4096"}}]})
    assert hybrid.apply_long_context(tmp_path, "npu", 16384, "ryzenai-provider") == {}
    # the 1.6 custom_ops_library form has no long context
    with pytest.raises(RecipeError, match="4096 tokens in total"):
        hybrid.apply_long_context(tmp_path, "hybrid", 8192, "custom-ops-library")


# ---------------------------------------------------------------- output check


def test_output_is_what_genai_config_names(tmp_path):
    # the decoder graph is model.decoder.filename: model_jit.onnx (HF amd/*-onnx-ryzenai-hybrid),
    # fusion.onnx in OMP-1.6's prefill sample ("filename": "fusion.onnx", "external_data_file": "token.pb.bin")
    so = {"custom_ops_library": "onnx_custom_ops.dll", "external_data_file": "token.pb.bin"}
    write_cfg(tmp_path, so, filename="fusion.onnx")
    problems, form = hybrid.check_output(tmp_path)
    assert form == "custom-ops-library"
    assert problems == [
        "fusion.onnx (model.decoder.filename in genai_config.json) is missing",
        "token.pb.bin (external_data_file in genai_config.json) is missing",
    ]
    (tmp_path / "fusion.onnx").write_bytes(b"x")
    (tmp_path / "token.pb.bin").write_bytes(b"x")
    assert hybrid.check_output(tmp_path) == ([], "custom-ops-library")
    # HOGA-1.7+: "external_data_file": "model_jit.pb.bin" under provider_options.RyzenAI
    write_cfg(tmp_path, {"provider_options": [{"RyzenAI": {"external_data_file": "model_jit.pb.bin"}}]})
    problems, form = hybrid.check_output(tmp_path)
    assert form == "ryzenai-provider" and len(problems) == 2


# ---------------------------------------------------------------- the fake keeps the same rules


def test_fake_refuses_what_the_release_does_not_know(tmp_path):
    # OMP-1.7.1: --optimize is gone; OMP-1.6: no --input/--output, no variants
    r = mg(tmp_path, "1.7.1", "--npu", "--basic", *io(), "--optimize", "decode")
    assert r.returncode == 2 and "unrecognized arguments: --optimize" in r.stderr
    r = mg(tmp_path, "1.6", "--npu", "--basic", "out", "in")
    assert r.returncode == 2 and "unrecognized arguments: --basic" in r.stderr
    # OMP-1.7.1 has no --extra_options (token fusion is 4K only); OMP-1.8 has it
    r = mg(tmp_path, "1.7.1", "--npu", "--token_fusion", *io(), "--extra_options", "max_seq_len=16384")
    assert r.returncode == 2 and "--extra_options" in r.stderr


def hf_input(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    (src / "tokenizer.json").write_text("{}")
    return src


@pytest.mark.parametrize("rai", ["1.7", "1.7.1", "1.8"])
def test_fake_hybrid_output_1_7_plus(tmp_path, rai):
    src = hf_input(tmp_path)
    args = ["--hybrid", *io(str(src), str(tmp_path / "o"))] if rai != "1.7" else ["--hybrid", "o", str(src)]
    assert mg(tmp_path, rai, *args).returncode == 0
    cfg = json.loads((tmp_path / "o" / "genai_config.json").read_text())["model"]["decoder"]
    # HOGA-1.7..1.8 sample: filename model_jit; RyzenAI provider with these keys, no custom_ops_library
    ry = cfg["session_options"]["provider_options"][0]["RyzenAI"]
    assert ry == {
        "external_data_file": "model_jit.pb.bin",
        "hybrid_opt_free_after_prefill": "1",
        "hybrid_opt_max_seq_length": "4096",
    }
    assert "custom_ops_library" not in cfg["session_options"] and cfg["filename"] == "model_jit.onnx"
    assert hybrid.check_output(tmp_path / "o") == ([], "ryzenai-provider")


def test_fake_1_6_forms(tmp_path):
    src = hf_input(tmp_path)
    assert mg(tmp_path, "1.6", "--hybrid", "h", str(src)).returncode == 0
    so = json.loads((tmp_path / "h" / "genai_config.json").read_text())["model"]["decoder"]["session_options"]
    # HOGA-1.6: "custom_ops_library": "onnx_custom_ops.dll"; OMP-1.6 config_entries keys
    assert so["custom_ops_library"] == "onnx_custom_ops.dll" and so["provider_options"] == []
    assert set(so["config_entries"]) == {
        "dd_cache",
        "hybrid_opt_token_backend",
        "hybrid_opt_max_seq_length",
        "max_length_for_kv_cache",
    }
    # OMP-1.6 prefill-fused sample: fusion.onnx, token.pb.bin, custom_allocator ryzen_mm
    assert mg(tmp_path, "1.6", "--hybrid", "p", str(src), "--optimize", "prefill").returncode == 0
    dec = json.loads((tmp_path / "p" / "genai_config.json").read_text())["model"]["decoder"]
    assert dec["filename"] == "fusion.onnx" and dec["session_options"]["external_data_file"] == "token.pb.bin"
    assert dec["session_options"]["custom_allocator"] == "ryzen_mm"
    assert hybrid.check_output(tmp_path / "p") == ([], "custom-ops-library")


def test_fake_npu_output_is_not_model_jit(tmp_path):
    src = hf_input(tmp_path)
    assert mg(tmp_path, "1.8", "--npu", "--token_fusion", *io(str(src), str(tmp_path / "n"))).returncode == 0
    dec = json.loads((tmp_path / "n" / "genai_config.json").read_text())["model"]["decoder"]
    assert dec["filename"] == "fusion.onnx"  # assumed name (not public); accepted by what genai_config names
    assert hybrid.check_output(tmp_path / "n") == ([], "ryzenai-provider")
