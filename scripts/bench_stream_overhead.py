#!/usr/bin/env python3
"""stream_generate against a bare OGA loop (generate_next_token + get_next_tokens), same run.

    python scripts/bench_stream_overhead.py models/smollm2-135m-instruct-cpu [--tokens 256] [--rounds 5]

Both generate the same number of tokens from the same prompt ids with EOS ignored,
interleaved round by round so machine noise hits both alike. Prints decode tok/s (median
of rounds) and the overhead of stream_generate (incremental detokenization, stop-string
filter, events) in percent. The goal is within 2%.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def bare_loop(lm, ids: list[int], n: int) -> float:
    import onnxruntime_genai as og

    p = og.GeneratorParams(lm.model)
    p.set_search_options(max_length=len(ids) + n, min_length=len(ids) + n, do_sample=False, top_k=1)
    g = og.Generator(lm.model, p)
    g.append_tokens(ids)
    g.generate_next_token()
    g.get_next_tokens()
    t0 = time.perf_counter()
    for _ in range(n - 1):
        g.generate_next_token()
        g.get_next_tokens()
    return (n - 1) / (time.perf_counter() - t0)


def ours(lm, ids: list[int], n: int) -> float:
    from oga_npu.generate import GenerationOptions, stream_generate

    last = None
    for ev in stream_generate(lm, ids, GenerationOptions(max_tokens=n, temperature=0.0, ignore_eos=True)):
        last = ev
    assert last.generated_tokens == n
    return last.decode_tps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--prompt", default="Write a long story about a lighthouse keeper and a storm.")
    args = ap.parse_args()
    from oga_npu.generate import encode, render_prompt
    from oga_npu.model import load

    lm = load(args.model)
    ids = encode(lm, render_prompt(lm, [{"role": "user", "content": args.prompt}]))
    bare_loop(lm, ids, 16)  # warm up
    ours(lm, ids, 16)
    b, o = [], []
    for _ in range(args.rounds):
        b.append(bare_loop(lm, ids, args.tokens))
        o.append(ours(lm, ids, args.tokens))
    bm, om = statistics.median(b), statistics.median(o)
    print(
        f"model {args.model} ({lm.provider}), prompt {len(ids)} tokens, {args.tokens} generated, {args.rounds} rounds"
    )
    print(f"bare OGA loop:    {bm:8.1f} tok/s  (rounds: {', '.join(f'{x:.1f}' for x in b)})")
    print(f"stream_generate:  {om:8.1f} tok/s  (rounds: {', '.join(f'{x:.1f}' for x in o)})")
    print(f"overhead: {100 * (bm - om) / bm:+.2f}%  (goal: within 2%)")


if __name__ == "__main__":
    main()
