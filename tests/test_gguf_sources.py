"""GGUF sources: the tiny-GGUF writer (tests/gguf_models.py) against transformers' reader."""

from __future__ import annotations

import json
from pathlib import Path

import gguf_models
import numpy as np
import pytest


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


# ---------------------------------------------------------------- GGUF sources through prepare

FP32_RECIPE = """description = "test: the builder's fp32 graph, no quantization (compares exactly with transformers)"
[quantize]
engine = "builder"
[build.cpu]
precision = "fp32"
"""


def _prepare(source: Path, out: Path, recipe: str, home: Path) -> Path:
    """The real pipeline, in process (session fixtures cannot use the per-test home), its
    builder and validate tools too (conftest.tools_in_process: no child imports torch and
    transformers again; the child-process path is tiny_model's and smol_native's)."""
    from conftest import tools_in_process

    from oga_npu.prepare import PrepareRequest, prepare

    with pytest.MonkeyPatch.context() as mp, tools_in_process(mp):
        mp.setenv("OGA_NPU_HOME", str(home))
        mp.setenv("HF_HUB_OFFLINE", "1")
        return prepare(PrepareRequest(source=str(source), recipe=recipe, output=out)).output


@pytest.fixture(scope="session")
def base_kquant_gguf(tmp_path_factory) -> Path:
    """A Qwen3 base model (no chat template) as llama.cpp's Q4_K_M mix (hidden 256: K-quant blocks fit)."""
    return gguf_models.write_gguf(
        tmp_path_factory.mktemp("gguf") / "tiny-qwen3-base.Q4_K_M.gguf",
        "qwen3",
        "Q4_K_M",
        chat_template=None,
        hidden_size=256,
        intermediate_size=512,
    )


@pytest.fixture(scope="session")
def base_kquant_model(tmp_path_factory, base_kquant_gguf, session_home) -> Path:
    return _prepare(base_kquant_gguf, tmp_path_factory.mktemp("prepared") / "qwen3-base", "builder-int4", session_home)


@pytest.fixture(scope="session")
def sliding_gguf(tmp_path_factory) -> Path:
    """Gemma 2 (window on every other layer, soft-capping) with a 16-token window."""
    return gguf_models.write_gguf(
        tmp_path_factory.mktemp("gguf") / "tiny-gemma2-w16.Q8_0.gguf", "gemma2", "Q8_0", sliding_window=16
    )


@pytest.fixture(scope="session")
def sliding_model(tmp_path_factory, sliding_gguf, session_home) -> Path:
    recipe = tmp_path_factory.mktemp("recipe") / "fp32.toml"
    recipe.write_text(FP32_RECIPE)
    return _prepare(sliding_gguf, tmp_path_factory.mktemp("prepared") / "gemma2-w16", str(recipe), session_home)


def _cli(capsys, *args: str, stdin: str | None = None, monkeypatch=None) -> tuple[int, str, str]:
    """oga_npu.cli.main in process: (exit code, stdout, stderr)."""
    import io

    from oga_npu import cli

    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    capsys.readouterr()
    try:
        cli.main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code or 0
    out, err = capsys.readouterr()
    return code, out, err


def test_k_quant_base_gguf_of_qwen3_prepares_and_runs_raw(base_kquant_gguf, base_kquant_model, capsys):
    import gguf

    kinds = {t.tensor_type.name for t in gguf.GGUFReader(str(base_kquant_gguf)).tensors}
    assert {"Q4_K", "Q6_K"} <= kinds  # a real K-quant mix went in
    cfg = json.loads((base_kquant_model / "genai_config.json").read_text())
    assert cfg["model"]["type"] == "qwen3"
    code, out, err = _cli(
        capsys,
        "run",
        "The capital of France is",
        "--raw",
        "-n",
        "5",
        "--temperature",
        "0",
        "--timings",
        "-m",
        str(base_kquant_model),
    )
    assert code == 0, err
    assert "[cpu]" in err and "generated 5 tok" in err


def test_base_model_without_template_chat_refuses_with_the_fix(base_kquant_model, capsys, monkeypatch, tmp_path):
    code, out, err = _cli(capsys, "chat", "-m", str(base_kquant_model), stdin="hello\n", monkeypatch=monkeypatch)
    assert code == 1 and out == ""
    assert "has no chat template" in err and "--chat-template FILE" in err and "run --raw" in err
    code, out, err = _cli(capsys, "run", "hello", "-n", "2", "-m", str(base_kquant_model))
    assert code == 1 and "no chat template" in err and "--raw" in err
    template = tmp_path / "plain.jinja"
    template.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:")
    code, out, err = _cli(
        capsys,
        "chat",
        "-m",
        str(base_kquant_model),
        "-n",
        "3",
        "--chat-template",
        str(template),
        stdin="hello\n",
        monkeypatch=monkeypatch,
    )
    assert code == 0, err
    code, out, err = _cli(
        capsys,
        "chat",
        "-m",
        str(base_kquant_model),
        "--chat-template",
        str(tmp_path / "none.jinja"),
        stdin="hello\n",
        monkeypatch=monkeypatch,
    )
    assert code == 1 and "none.jinja" in err and "Traceback" not in err


def _hf_greedy(gguf_path: Path, ids: list[int], n: int) -> list[int]:
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32).eval()
    with torch.no_grad():
        return m.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)[0, len(ids) :].tolist()


def test_sliding_window_model_generates_within_and_across_the_window(sliding_gguf, sliding_model):
    """-n 5 on a 10-token prompt (the KV capacity once fell below the window), and a 40-token
    prompt plus 30 tokens (past window + cache slack, so the windowed cache evicts): the
    same greedy tokens as transformers on the same weights; eval scores like transformers."""
    from oga_npu.evaluate import perplexity_hf, perplexity_oga
    from oga_npu.generate import GenerationOptions, generate
    from oga_npu.model import load

    cfg = json.loads((sliding_model / "genai_config.json").read_text())
    sw = cfg["model"]["decoder"]["sliding_window"]
    assert sw["window_size"] == 16 and sw["layers"] == [0]  # gemma2: sliding, full
    lm = load(sliding_model)
    for n_prompt, n_new in ((10, 5), (40, 30)):
        ids = list(range(200, 200 + n_prompt))
        opts = GenerationOptions(max_tokens=n_new, temperature=0, ignore_eos=True)
        tokens = [ev.token for ev in _stream(lm, ids, opts)]
        assert tokens == _hf_greedy(sliding_gguf, ids, n_new), n_prompt
    text, last = generate(lm, "Hi", GenerationOptions(max_tokens=5, temperature=0))  # with the chat template
    assert last.generated_tokens >= 1
    window = list(range(100, 148))
    ppl, n = perplexity_oga(lm, [window])
    ref, _ = perplexity_hf(_dequantized(sliding_gguf), [window])
    assert n == 47 and ppl == pytest.approx(ref, rel=1e-3)


def _stream(lm, ids, opts):
    from oga_npu.generate import stream_generate

    return [ev for ev in stream_generate(lm, ids, opts) if ev.token is not None]


def _dequantized(gguf_path: Path) -> Path:
    from oga_npu.prepare.source import gguf_cache_dir

    return gguf_cache_dir(gguf_path.resolve())


def test_window_wider_than_context_builds_without_windowed_cache(tmp_path, sliding_model):
    """A window the context never reaches gets no windowed cache (onnxruntime refuses one that
    max_length cannot fill); a folder built with one anyway is refused at load with the fix."""
    import shutil

    from oga_npu.errors import ModelFolderError
    from oga_npu.model import load
    from oga_npu.prepare.build import window_options

    (tmp_path / "config.json").write_text(json.dumps({"sliding_window": 4096, "max_position_embeddings": 512}))
    assert window_options(tmp_path) == {"windowed_kv_cache": False}
    (tmp_path / "config.json").write_text(
        json.dumps({"text_config": {"sliding_window": 512, "max_position_embeddings": 32768}})
    )
    assert window_options(tmp_path) == {}
    from oga_npu.workdir import MANIFEST

    old = tmp_path / "old"
    shutil.copytree(sliding_model, old, ignore=shutil.ignore_patterns("stages", MANIFEST, "prepare.json"))
    cfg = json.loads((old / "genai_config.json").read_text())
    cfg["model"]["context_length"] = 8
    (old / "genai_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFolderError, match="more than its context"):
        load(old)


@pytest.fixture(scope="session")
def gemma3_gguf_model(tmp_path_factory, session_home) -> Path:
    """Gemma 3 text in its real layer pattern (6 layers: 5 with the 512 window, 1 global)."""
    g = gguf_models.write_gguf(tmp_path_factory.mktemp("gguf") / "tiny-gemma3.Q8_0.gguf", "gemma3", "Q8_0", layers=6)
    return _prepare(g, tmp_path_factory.mktemp("prepared") / "gemma3", "builder-int4", session_home)


def test_gemma3_gguf_prepares_and_answers(gemma3_gguf_model):
    from oga_npu.architectures import by_name
    from oga_npu.generate import GenerationOptions, generate
    from oga_npu.model import load

    assert by_name("gemma3_text").gguf_verified and by_name("qwen3").gguf_verified
    cfg = json.loads((gemma3_gguf_model / "genai_config.json").read_text())
    assert cfg["model"]["decoder"]["sliding_window"]["layers"] == [0, 1, 2, 3, 4]
    lm = load(gemma3_gguf_model)
    opts = GenerationOptions(max_tokens=5, temperature=0, ignore_eos=True)
    text, last = generate(lm, "What is the capital of France?", opts)
    assert last.generated_tokens == 5 and last.provider == "cpu"


def test_gguf_architecture_transformers_cannot_read_is_refused_before_any_work(tmp_path, capsys):
    import gguf

    src = tmp_path / "gemma-2b.Q4_0.gguf"
    w = gguf.GGUFWriter(str(src), "gemma")  # a header is all the check reads
    w.add_block_count(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "out"
    code, stdout, err = _cli(capsys, "prepare", str(src), "--recipe", "builder-int4", "--output", str(out))
    assert code == 1, err
    assert "cannot read GGUF files of architecture 'gemma'" in err and "qwen3" in err
    assert "google/gemma-2b-it" in err and "Traceback" not in err
    assert not out.exists()


def test_uniform_sliding_window_is_given_to_every_layer_for_the_builder():
    """Mistral v0.1-style configs (one window, no layer_types) get every layer marked sliding in
    the builder's config object, so the graph applies the window its cache is sized for (checked
    by hand against transformers across a 16-token window: Mistral and Phi-3, tokens equal)."""
    from transformers import Gemma2Config, MistralConfig, Qwen2Config

    from oga_npu.architectures import apply_config_fixes, config_fixes

    cfg = MistralConfig(num_hidden_layers=3, sliding_window=16)
    assert "uniform_sliding_window" in config_fixes({"architectures": ["MistralForCausalLM"]})
    assert apply_config_fixes(cfg, ["uniform_sliding_window"]) == ["uniform_sliding_window"]
    assert cfg.layer_types == ["sliding_attention"] * 3
    for untouched in (
        MistralConfig(sliding_window=None),
        Qwen2Config(use_sliding_window=False, sliding_window=16),
        Gemma2Config(num_hidden_layers=2, sliding_window=16),
    ):
        before = getattr(untouched, "layer_types", None)
        assert apply_config_fixes(untouched, ["uniform_sliding_window"]) == []
        assert getattr(untouched, "layer_types", None) == before


def test_damaged_gguf_is_refused_before_any_work_with_the_fix(tmp_path, capsys):
    """A cut-off download, a git-lfs pointer and a file that is not GGUF: each gets its own
    one-line cause (the byte counts for a cut-off file) and the fix; nothing is written."""
    src = gguf_models.write_gguf(tmp_path / "llama.Q8_0.gguf", "llama", "Q8_0")
    data = src.read_bytes()
    cases = {
        "cut.gguf": (
            data[: len(data) - 100],
            f"cut.gguf is truncated: {len(data) - 100:,} bytes, its tensors need {len(data):,}",
        ),
        "header.gguf": (data[:200], "header.gguf: truncated GGUF header"),
        "pointer.gguf": (
            b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 9\n",
            "pointer.gguf is a git-lfs pointer, not the file",
        ),
        "text.gguf": (b"hello, world\n" * 10, "text.gguf is not a GGUF file"),
    }
    out = tmp_path / "out"
    for name, (content, cause) in cases.items():
        bad = tmp_path / name
        bad.write_bytes(content)
        code, stdout, err = _cli(capsys, "prepare", str(bad), "--output", str(out))
        assert code == 1, (name, err)
        assert f"Error: {cause}" in err and "download the .gguf again" in err and "Traceback" not in err, (name, err)
        assert not out.exists() and stdout == ""
    # the whole file passes the same check
    from oga_npu.gguf.header import gguf_header

    assert gguf_header(src)[0] == "llama"


def test_dry_run_of_a_gguf_speaks_of_group_size_only_for_recipes_that_regroup(tmp_path, capsys, monkeypatch):
    """gguf-native keeps the file's blocks: its plan has no group-size note; a Quark recipe's does."""
    monkeypatch.setenv("OGA_NPU_HOME", str(tmp_path / "home"))  # not dequantized yet: widths unknown
    src = gguf_models.write_gguf(tmp_path / "llama.Q4_1.gguf", "llama", "Q4_1")
    notes = {}
    for recipe in ("gguf-native", "cpu-fast"):
        code, stdout, err = _cli(
            capsys, "prepare", str(src), "--recipe", recipe, "--output", str(tmp_path / "o"), "--dry-run"
        )
        assert code == 0, err
        notes[recipe] = "group size is checked" in stdout + err
    assert notes == {"gguf-native": False, "cpu-fast": True}
    assert not (tmp_path / "o").exists()
