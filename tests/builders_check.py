"""Run by scripts/test_builders.sh only (the name keeps it out of the main suite): each quantized
folder of scripts/make_builder_folders.py, built by the onnxruntime-genai model builder on the
path (0.9.2 / 0.11.2 / 0.14.0 under transformers 4.57.6, as AMD's env has them; 0.14.0 under
transformers 5), must build without error, bake the RoPE cache the SOURCE config asks for, and
leave tokenizer files that load. Needs numpy, onnx, transformers and onnxruntime_genai only (no
oga_npu: run with --noconftest).

`-e cpu`: the RoPE cache (make_rope_init, make_rotary_embedding_caches) and save_processing are
the same code for -e dml, the EP AMD's flow builds with; cpu builds and loads on this machine.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

FOLDERS = Path(os.environ["OGA_NPU_BUILDER_FOLDERS"])
LISTING = json.loads((FOLDERS / "builders.json").read_text())
EXPECT_OGA = os.environ.get("OGA_NPU_EXPECT_OGA")


def rope_settings(cfg: dict) -> dict:
    """theta, scaling (or None), rotary dim and length from a config dict in either form."""
    rp = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or (rp if rp.get("rope_type", "default") != "default" else None)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    prf = cfg.get("partial_rotary_factor", rp.get("partial_rotary_factor", 1.0))
    return {
        "theta": float(cfg.get("rope_theta", rp.get("rope_theta", 10000.0))),
        "scaling": scaling,
        "dim": int(head_dim * prf),
        "length": int(cfg["max_position_embeddings"]),
    }


def inv_freq(s: dict, factors=None) -> np.ndarray:
    """transformers' modeling_rope_utils: default and llama3; longrope's per-dimension factors."""
    base = s["theta"] ** (np.arange(0, s["dim"], 2, dtype=np.float64) / s["dim"])
    if factors is not None:
        return 1.0 / (np.asarray(factors, dtype=np.float64) * base)
    inv, sc = 1.0 / base, s["scaling"] or {}
    if sc.get("rope_type", sc.get("type")) != "llama3":
        return inv
    factor, lo, hi = float(sc["factor"]), float(sc["low_freq_factor"]), float(sc["high_freq_factor"])
    old = float(sc["original_max_position_embeddings"])
    wl = 2 * math.pi / inv
    out = np.where(wl > old / lo, inv / factor, inv)
    smooth = (old / wl - lo) / (hi - lo)
    medium = (wl >= old / hi) & (wl <= old / lo)
    return np.where(medium, (1 - smooth) * out / factor + smooth * out, out)


def expected_caches(cfg: dict) -> dict[str, np.ndarray]:
    """The cos/sin caches the source config asks for, named as the builders name them."""
    s = rope_settings(cfg)
    sc = s["scaling"] or {}
    if sc.get("rope_type", sc.get("type")) in ("longrope", "su"):
        orig = int(cfg["original_max_position_embeddings"])
        scale = s["length"] / orig
        mscale = 1.0 if scale <= 1.0 else math.sqrt(1 + math.log(scale) / math.log(orig))
        out = {}
        for tag, factors, length in (("small", sc["short_factor"], orig), ("large", sc["long_factor"], s["length"])):
            f = np.outer(np.arange(length, dtype=np.float64), inv_freq(s, factors))
            out[f"cos_cache_{tag}"], out[f"sin_cache_{tag}"] = np.cos(f) * mscale, np.sin(f) * mscale
        return out
    f = np.outer(np.arange(s["length"], dtype=np.float64), inv_freq(s))
    return {"cos_cache": np.cos(f), "sin_cache": np.sin(f)}


def _walk(graph, out: dict) -> None:
    from onnx import numpy_helper

    for i in graph.initializer:
        if i.name.startswith(("cos_cache", "sin_cache")):
            out[i.name] = numpy_helper.to_array(i).astype(np.float64)
    for n in graph.node:
        for a in n.attribute:
            if n.op_type == "Constant" and a.name == "value" and n.output[0].startswith(("cos_cache", "sin_cache")):
                out[n.output[0]] = numpy_helper.to_array(a.t).astype(np.float64)
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):  # long rope: If branches
                _walk(g, out)


def built_caches(built: Path) -> dict[str, np.ndarray]:
    import onnx

    out: dict = {}
    _walk(onnx.load(str(built / "model.onnx"), load_external_data=True).graph, out)
    return out


def test_the_builder_is_the_expected_version():
    import onnxruntime_genai

    assert EXPECT_OGA is None or onnxruntime_genai.__version__ == EXPECT_OGA, onnxruntime_genai.__file__


@pytest.fixture(scope="module", params=sorted(LISTING))
def built(request, tmp_path_factory):
    name = request.param
    q = Path(LISTING[name]["quantized"])
    out, cache = tmp_path_factory.mktemp(name), tmp_path_factory.mktemp("cache")
    argv = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(q), "-o", str(out)]
    r = subprocess.run([*argv, "-p", "int4", "-e", "cpu", "-c", str(cache)], capture_output=True, text=True)
    return name, out, r


def test_build_ends_without_error(built):
    name, out, r = built
    assert r.returncode == 0, f"{name}: {r.stderr[-2000:]}"
    assert (out / "genai_config.json").is_file() and (out / "tokenizer.json").is_file()


def test_rope_cache_is_the_source_configs(built):
    name, out, _ = built
    assert (out / "model.onnx").is_file(), f"{name}: no model.onnx"
    cfg = json.loads(Path(LISTING[name]["source_config"]).read_text())
    want, have = expected_caches(cfg), built_caches(out)
    assert set(want) <= set(have), (name, sorted(have))
    for k, v in want.items():
        assert have[k].shape == v.shape, (name, k, have[k].shape, v.shape)
        diff = float(np.abs(have[k] - v).max())
        assert diff < 1e-3, f"{name}: {k} differs from the source config's RoPE by {diff:.3g}"


def test_built_tokenizer_loads(built):
    import onnxruntime_genai as og
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    name, out, r = built
    assert r.returncode == 0, f"{name}: the build failed"
    text = "def main(): return 42"
    want = Tokenizer.from_file(str(out / "tokenizer.json")).encode(text, add_special_tokens=False).ids
    assert AutoTokenizer.from_pretrained(out)(text, add_special_tokens=False)["input_ids"] == want
    ids = list(og.Tokenizer(og.Model(str(out))).encode(text))
    assert ids[-len(want) :] == want, (ids, want)  # the runtime may add a BOS


def test_cited_builder_lines_are_in_this_builder():
    """Each fact tests/builder_facts.py cites for this version is on its line in the wheel."""
    import importlib.util

    from builder_facts import FACTS

    root = Path(importlib.util.find_spec("onnxruntime_genai").origin).parent.parent
    version = __import__("onnxruntime_genai").__version__
    facts = [f for f in FACTS if f[0] == version]
    assert facts, f"no cited lines for onnxruntime-genai {version}"
    for _, path, line, text, why in facts:
        lines = (root / path).read_text(encoding="utf-8").splitlines()
        assert text in lines[line - 1], f"{path}:{line} ({why}): {lines[line - 1]!r}"
