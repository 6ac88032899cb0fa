"""Every architecture in oga_npu.architectures: prepared with each recipe the table marks as
working and run, or refused before any stage.

The matrix runs `prepare` in this process (one torch/Quark import for the session): the
pipeline is the real one, only `run_tool` runs its `python -m` tools (Quark quantize, the OGA
builder, validate) in-process instead of in a child process. A few cases go through the
real CLI. The tiny models copy each architecture's reference checkpoint settings (head_dim,
rope, sliding window, soft-capping, tied embeddings) at 2 layers and narrow widths.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli

from oga_npu import architectures as A
from oga_npu.errors import ArchitectureError, ToolFailed

MATRIX = [a for a in A.ARCHITECTURES if a.settings and not a.builder_refusal]
RECIPE_FILES = {}


@pytest.fixture(scope="session")
def test_recipes(tmp_path_factory) -> dict[str, Path]:
    """The shipped recipes, with AWQ calibration cut to 4 x 64 tokens (same algorithm, less text)."""
    from oga_npu.recipe import find_recipe

    d = tmp_path_factory.mktemp("recipes")
    out = {}
    for name in A.RECIPES:
        text = find_recipe(name).read_text()
        if name == "default":
            text = text.replace("samples = 16", "samples = 4").replace("seq_len = 128", "seq_len = 64")
            assert "samples = 4" in text and "seq_len = 64" in text
        (d / f"{name}.toml").write_text(text)
        out[name] = d / f"{name}.toml"
    return out


def _make_tiny(arch: A.Architecture, out: Path, tokenizer_dir: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    cfg = A.tiny_config(arch, len(vocab))
    cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        if f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    return out


SMALL_VOCAB = 1024  # the embedding and lm_head dominate a 2-layer model's prepare time at 49152


@pytest.fixture(scope="session")
def small_tokenizer_dir(tmp_path_factory, smol_tokenizer_dir) -> Path:
    """SmolLM2's tokenizer cut to its first SMALL_VOCAB tokens (and the merges that make them)."""
    out = tmp_path_factory.mktemp("small_tok")
    for f in smol_tokenizer_dir.iterdir():
        if f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    tok = json.loads((smol_tokenizer_dir / "tokenizer.json").read_text())
    vocab = {t: i for t, i in tok["model"]["vocab"].items() if i < SMALL_VOCAB}
    merges = []
    for m in tok["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ", 1)
        if a in vocab and b in vocab and a + b in vocab:
            merges.append(m)
    tok["model"]["vocab"], tok["model"]["merges"] = vocab, merges
    tok["added_tokens"] = [t for t in tok.get("added_tokens", []) if t["id"] < SMALL_VOCAB]
    (out / "tokenizer.json").write_text(json.dumps(tok))
    return out


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, small_tokenizer_dir):
    root = tmp_path_factory.mktemp("archs")
    cache: dict[str, Path] = {}

    def get(arch: A.Architecture) -> Path:
        if arch.name not in cache:
            cache[arch.name] = _make_tiny(arch, root / arch.name, small_tokenizer_dir)
        return cache[arch.name]

    return get


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def _run(model: Path, prompt: str = "The capital of France is", n: int = 5) -> str:
    """`oga-npu run` in this process (typer's CliRunner)."""
    from typer.testing import CliRunner

    from oga_npu.cli import app

    r = CliRunner().invoke(app, ["run", prompt, "-m", str(model), "-n", str(n), "--raw", "--timings"])
    assert r.exit_code == 0, (r.output, r.exception)
    return r.output


# ---------------------------------------------------------------- the table itself


def test_table_covers_every_text_decoder_the_builder_dispatches_on():
    """Every `config.architectures[0] == "..."` in the pinned builder's create_model has a row."""
    import re

    import onnxruntime_genai.models.builder as builder

    src = Path(builder.__file__).read_text()
    body = src[src.index("def create_model(") :]
    names = set(re.findall(r'config\.architectures\[0\] == "(\w+)"', body))
    assert len(names) > 30
    missing = sorted(n for n in names if n not in {h for a in A.ARCHITECTURES for h in a.hf_architectures})
    assert not missing, missing
    for req in (
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "PhiForCausalLM",
        "Phi3ForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "GraniteForCausalLM",
        "SmolLM3ForCausalLM",
        "Ernie4_5ForCausalLM",
        "NemotronForCausalLM",
        "OlmoForCausalLM",
        "InternLM2ForCausalLM",
        "HunYuanDenseV1ForCausalLM",
    ):
        A.lookup({"architectures": [req], "max_position_embeddings": 1, "original_max_position_embeddings": 1})


def test_builder_classes_named_in_the_table_exist():
    import onnxruntime_genai.models.builder as builder

    for a in A.ARCHITECTURES:
        assert hasattr(builder, a.builder), (a.name, a.builder)


def test_quark_templates_named_in_the_table_exist_or_are_registered():
    from quark.torch.quantization.config.algo_configs import AWQ_MAP
    from quark.torch.quantization.config.template import DEFAULT_TEMPLATES

    for a in A.ARCHITECTURES:
        if a.quark_template and a.quark_template_source == "quark":
            assert a.quark_template in DEFAULT_TEMPLATES, a.name
            # AWQ needs a scaling-layer layout: Quark's own or one from the table
            assert a.quark_template in AWQ_MAP or a.quark_awq in A.AWQ_LAYOUTS or not a.settings, a.name
        if a.quark_template_source == "oga_npu":
            assert a.quark_template not in DEFAULT_TEMPLATES, a.name
            assert a.quark_awq in A.AWQ_LAYOUTS, a.name


def test_phi3_rope_variant_is_picked_like_the_builder():
    short = {
        "architectures": ["Phi3ForCausalLM"],
        "max_position_embeddings": 4096,
        "original_max_position_embeddings": 4096,
    }
    long = dict(short, max_position_embeddings=131072)
    assert A.lookup(short).builder == "Phi3MiniModel"
    assert A.lookup(long).builder == "Phi3MiniLongRoPEModel"


def test_runtime_needs_of_reference_settings():
    g2 = A.runtime_needs(A.tiny_config("gemma2", 100))
    assert (g2.sliding_window, g2.attn_logit_softcapping, g2.final_logit_softcapping, g2.tied_embeddings) == (
        4096,
        50.0,
        30.0,
        True,
    )
    g3 = A.runtime_needs(A.tiny_config("gemma3_text", 100))
    assert g3.sliding_window == 512 and g3.sliding_layers == "1 of 2"
    q2 = A.runtime_needs(A.tiny_config("qwen2", 100))
    assert q2.sliding_window is None  # use_sliding_window = false
    assert A.by_name("gemma2").sliding_window and not A.by_name("llama").sliding_window


def test_gemma3_config_fix_applies_to_the_loaded_config_object():
    """transformers 5 loads Gemma 3's rope per layer type; the fix gives the builder one dict."""
    from transformers import AutoConfig

    cfg = A.tiny_config("gemma3_text", 100)
    assert A.config_fixes(cfg) == ["gemma3_rope_per_layer_type"]
    c = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    assert "full_attention" in c.rope_parameters
    assert A.apply_config_fixes(c, ["gemma3_rope_per_layer_type"]) == ["gemma3_rope_per_layer_type"]
    assert c.rope_parameters == {"rope_type": "default", "rope_theta": 1000000.0}
    assert (c.rope_theta, c.rope_local_base_freq) == (1000000.0, 10000.0)
    assert A.apply_config_fixes(c, ["gemma3_rope_per_layer_type"]) == []  # idempotent
    assert A.config_fixes(A.tiny_config("llama", 100)) == []


def test_cli_architectures_lists_the_table(capsys):
    from typer.testing import CliRunner

    from oga_npu.cli import app

    r = CliRunner().invoke(app, ["architectures", "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    by = {row["name"]: row for row in rows}
    assert by["gemma3_text"]["support"]["default"]["cpu"]["status"] == "verified"
    assert by["internlm2"]["support"]["builder-int4"]["cpu"]["status"] == "refused"
    assert by["llama"]["support"]["default"]["hybrid"]["status"] == "expected"
    for row in rows:  # never "verified" off cpu: nothing here runs webgpu/dml/hybrid/npu models
        for r_ in A.RECIPES:
            for t in ("webgpu", "dml", "hybrid", "npu"):
                assert row["support"][r_][t]["status"] != "verified"
    r = CliRunner().invoke(app, ["architectures", "--reasons"])
    assert r.exit_code == 0 and "Gemma3ForCausalLM" in r.output and "trust_remote_code" in r.output


# ---------------------------------------------------------------- refusals


REFUSED_CASES = [
    (a, r, t) for a in A.ARCHITECTURES for r in A.RECIPES for t in A.TARGETS if not a.support(r, t).allowed
]


def test_every_refused_cell_is_refused_by_prepare_before_any_stage(tmp_path, test_recipes, monkeypatch):
    """prepare raises ArchitectureError for every refused cell, before any tool runs or any write."""
    from oga_npu.prepare import PrepareRequest, prepare

    def no_tools(*a, **k):
        raise AssertionError("a tool ran for a refused combination")

    import oga_npu.tools as tools

    monkeypatch.setattr(tools, "run_tool", no_tools)
    assert REFUSED_CASES
    seen_archs = set()
    for arch, recipe, target in REFUSED_CASES:
        src = tmp_path / "src" / arch.name
        if arch.name not in seen_archs:
            src.mkdir(parents=True)
            cfg = {"architectures": [arch.hf_architectures[0]], "model_type": arch.model_type}
            (src / "config.json").write_text(json.dumps(cfg))
            seen_archs.add(arch.name)
        out = tmp_path / "out" / f"{arch.name}-{recipe}-{target}"
        with pytest.raises(ArchitectureError) as e:
            prepare(PrepareRequest(str(src), target=target, recipe=str(test_recipes[recipe]), output=out))
        assert arch.support(recipe, target).how in e.value.message
        assert e.value.fix
        assert not out.exists()


def test_builderless_architecture_is_refused_fast_by_the_cli(tmp_path):
    """olmo2 (no builder support): exit 1 in under 10 s, before quantize, no output folder."""
    src = tmp_path / "olmo2"
    src.mkdir()
    (src / "config.json").write_text(
        json.dumps(
            {"architectures": ["Olmo2ForCausalLM"], "model_type": "olmo2", "hidden_size": 64, "num_attention_heads": 2}
        )
    )
    out = tmp_path / "models" / "olmo2-cpu"
    t0 = time.monotonic()
    r = run_cli("prepare", str(src), "--output", str(out))
    secs = time.monotonic() - t0
    assert r.returncode == 1, r.stderr
    assert "Olmo2ForCausalLM" in r.stderr and "builder" in r.stderr and "Fix:" in r.stderr
    assert "quantize" not in r.stderr.split("Error:")[0]
    assert not out.exists() and not (tmp_path / "models").exists()
    assert secs < 10, secs


def test_refused_recipe_names_what_works_instead(tmp_path):
    src = tmp_path / "lfm2moe"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"architectures": ["Lfm2MoeForCausalLM"], "model_type": "lfm2_moe"}))
    with pytest.raises(ArchitectureError) as e:
        A.check(json.loads((src / "config.json").read_text()), "default", "cpu")
    assert "Quark" in e.value.message and "--recipe builder-int4" in e.value.fix


def test_builder_failure_fix_does_not_promise_a_rerun_works():
    from oga_npu.prepare.build import builder_failed

    e = builder_failed(
        ToolFailed(
            "onnxruntime-genai model builder",
            ["x"],
            1,
            ["NotImplementedError: The foo model is not currently supported."],
            Path("b.log"),
        )
    )
    assert "re-running the same command resumes" not in e.fix and "not in the onnxruntime-genai" in e.fix
    e = builder_failed(
        ToolFailed("onnxruntime-genai model builder", ["x"], 1, ["KeyError: 'rope_type'"], Path("b.log"))
    )
    assert "fails the same way" in e.fix and "b.log" in e.fix


@pytest.mark.parametrize("where", ["oga-npu's env", "a Ryzen AI env"])
def test_builder_failure_names_the_builders_version(tmp_path, monkeypatch, where):
    """Quark's failure names its version; the builder's names the onnxruntime-genai whose
    builder ran: the one beside oga-npu, or the Ryzen AI env's (its distribution too)."""
    import os
    from importlib import metadata

    from rai_env import make_rai_env

    from oga_npu.prepare import build
    from oga_npu.recipe import BuildConfig
    from oga_npu.ryzenai import find_env

    src = tmp_path / "src"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    env = {**os.environ, "FAKE_PYTHON_EXIT": "3", "FAKE_PYTHON_STDERR": "ValueError: boom"}
    if where == "a Ryzen AI env":
        rai = find_env(make_rai_env(tmp_path, "1.8"))
        want = "0.14.0 (onnxruntime-genai-directml-ryzenai)"
    else:
        rai, want = None, metadata.version("onnxruntime-genai")
        failing = [sys.executable, "-c", "import sys; sys.stderr.write('ValueError: boom'); sys.exit(3)"]
        monkeypatch.setattr(build, "python_module_argv", lambda *a, **k: list(failing))
    opts = build.BuildOptions(BuildConfig(), BuildConfig(), (), {}, rai)
    with pytest.raises(ToolFailed) as e:
        build.run(src, tmp_path / "out", "dml", opts, tmp_path / "build.log", env)
    assert e.value.code == 3 and e.value.version == want
    assert e.value.message == f"onnxruntime-genai model builder {want} failed with exit code 3: ValueError: boom"
    assert str(tmp_path / "build.log") in e.value.fix


# ---------------------------------------------------------------- the matrix: prepare + run


def _prepare_and_run(arch, recipe, tmp_path, tiny_models, test_recipes):
    from oga_npu.prepare import PrepareRequest, prepare

    src = tiny_models(arch)
    before = _digest(src)
    out = tmp_path / f"{arch.name}-{recipe}"
    res = prepare(PrepareRequest(str(src), recipe=str(test_recipes[recipe]), output=out))
    assert _digest(src) == before, "prepare changed the user's folder"
    validate = res.manifest["stages"]["validate"]["detail"]
    assert validate["generated_tokens"] > 0 and validate["provider"] == "cpu"
    out_text = _run(out)
    assert "generated 5 tok" in out_text, out_text
    return res


FAST = [(a, r) for a in MATRIX for r in ("cpu-fast", "builder-int4") if a.support(r, "cpu").status == A.VERIFIED]
AWQ = [a for a in MATRIX if a.support("default", "cpu").status == A.VERIFIED]


def test_every_architecture_with_settings_is_verified_on_cpu_with_some_recipe():
    assert {a.name for a, _ in FAST} == {a.name for a in MATRIX}
    for a in A.ARCHITECTURES:
        if any(a.support(r, "cpu").status == A.VERIFIED for r in A.RECIPES):
            assert a.settings, f"{a.name} is marked verified but has no tiny model settings to test"


@pytest.mark.parametrize("arch,recipe", FAST, ids=[f"{a.name}-{r}" for a, r in FAST])
def test_prepare_and_run(arch, recipe, tmp_path, tiny_models, test_recipes, inprocess_tools):
    res = _prepare_and_run(arch, recipe, tmp_path, tiny_models, test_recipes)
    assert res.manifest["stages"]["build"]["detail"]["config_fixes"] == list(arch.config_fixes)


@pytest.mark.slow
@pytest.mark.parametrize("arch", AWQ, ids=[a.name for a in AWQ])
def test_default_awq(arch, tmp_path, tiny_models, test_recipes, inprocess_tools):
    res = _prepare_and_run(arch, "default", tmp_path, tiny_models, test_recipes)
    q = res.manifest["stages"]["quantize"]["detail"]
    assert q["algorithm"] == "awq" and q["calibration_tokens"] > 0


FIXED = [a for a in MATRIX if a.config_fixes]


@pytest.mark.parametrize("arch", FIXED, ids=[a.name for a in FIXED])
def test_fixed_builds_match_transformers(arch, tmp_path, tiny_models):
    """Where the builder runs with fixes (Gemma 3's rope translation, SmolLM3's no-RoPE layers),
    its fp32 model gives transformers' logits: the fix builds the same model, not just one that loads."""
    import numpy as np
    import onnxruntime_genai as og
    import torch
    from transformers import AutoModelForCausalLM

    from oga_npu.prepare.build import main as build_main

    src = tiny_models(arch)
    out = tmp_path / "fp32"
    fixes = [x for f in arch.config_fixes for x in ("--fix", f)]
    with contextlib.redirect_stdout(io.StringIO()):
        assert (
            build_main(
                [*fixes, "--", "-i", str(src), "-o", str(out), "-p", "fp32", "-e", "cpu", "-c", str(tmp_path / "cache")]
            )
            == 0
        )
    ids = list(range(100, 140))
    with torch.no_grad():
        ref = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)(torch.tensor([ids])).logits[0, -1]
    model = og.Model(str(out))
    params = og.GeneratorParams(model)
    window = json.loads((src / "config.json").read_text()).get("sliding_window") or 0
    params.set_search_options(max_length=max(1024, window + 64))  # OGA's windowed cache needs >= the window
    gen = og.Generator(model, params)
    gen.append_tokens(ids)
    got = np.asarray(gen.get_logits()).reshape(-1)
    assert np.abs(got - ref.numpy()).max() < 1e-3 * max(1.0, float(ref.abs().max())), (got[:5], ref[:5])


def test_gguf_of_a_builderless_architecture_is_refused_from_its_header(tmp_path):
    """The GGUF header's general.architecture is checked before the (slow) dequantization."""
    import gguf

    from oga_npu.prepare import PrepareRequest, prepare

    path = tmp_path / "olmo2-tiny.gguf"
    w = gguf.GGUFWriter(str(path), "olmo2")
    w.add_block_count(2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    out = tmp_path / "models" / "olmo2"
    with pytest.raises(ArchitectureError) as e:
        prepare(PrepareRequest(str(path), recipe="cpu-fast", output=out))
    assert "olmo2" in e.value.message.lower()
    import os

    assert not out.exists()
    assert not list(Path(os.environ["OGA_NPU_HOME"]).glob("gguf/olmo2-tiny*")), "the GGUF was dequantized"


@pytest.mark.slow
def test_cli_prepares_and_runs_gemma3_through_the_builder_fix(tmp_path, tiny_models, capsys):
    """The real child-process path: `python -m oga_npu.prepare.build --fix ...` runs the builder
    (the real run_tool: no inprocess_tools here). The CLI itself runs in this process (conftest.call)."""
    from conftest import call

    arch = A.by_name("gemma3_text")
    src = tiny_models(arch)
    before = _digest(src)
    out = tmp_path / "g3"
    code, _, err = call(capsys, "prepare", str(src), "--recipe", "builder-int4", "--output", str(out))
    assert code == 0, err
    assert _digest(src) == before
    log = (out / "logs" / "build.log").read_text()
    assert "oga_npu.prepare.build --fix gemma3_rope_per_layer_type" in log
    assert "config fixes for the builder: gemma3_rope_per_layer_type" in log
    prompt = "one two three four five six seven eight nine ten"
    code, _, err = call(capsys, "run", prompt, "-m", str(out), "-n", "5", "--raw", "--timings")
    assert code == 0, err
    assert "generated 5 tok" in err, err
