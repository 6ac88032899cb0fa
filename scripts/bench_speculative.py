#!/usr/bin/env python3
"""Speculative decoding against plain decode on a copy-and-edit task, greedy, one model.

    python scripts/bench_speculative.py MODEL_DIR [--draft-model DIR] [--gen 200] [--reps 3]

MODEL_DIR needs full logits (a recipe with prune_lm_head = false). The task asks the model
to return a code listing with one change, so most of the answer is in the prompt: what
n-gram prompt lookup is for. Prints decode tok/s (median), speed-up, acceptance, and
whether the token ids equal plain decode's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CODE = '''def moving_average(values, window):
    """Return the moving averages of values over window items."""
    if window <= 0:
        raise ValueError("window must be positive")
    averages = []
    total = 0.0
    for index, value in enumerate(values):
        total += value
        if index >= window:
            total -= values[index - window]
        if index >= window - 1:
            averages.append(total / window)
    return averages


def normalize(values):
    """Scale values so that they sum to one."""
    total = sum(values)
    if total == 0:
        raise ValueError("values sum to zero")
    return [value / total for value in values]
'''
TASK = (
    "Rewrite this Python code with the function moving_average renamed to rolling_mean. "
    "Change nothing else and answer with the whole code only.\n\n" + CODE
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--draft-model", type=Path)
    ap.add_argument("--gen", type=int, default=200)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--draft-tokens", default="4,8", help="K values to try")
    args = ap.parse_args()
    import onnxruntime_genai as og

    from oga_npu import speculative
    from oga_npu.generate import GenerationOptions, stream_generate
    from oga_npu.model import load

    lm = load(args.model)
    variants = [("plain", None)]
    for k in (int(x) for x in args.draft_tokens.split(",")):
        variants.append((f"ngram k={k}", speculative.parse("ngram", None, k)))
        if args.draft_model:
            variants.append((f"draft k={k}", speculative.parse(None, args.draft_model, k)))
    rows, ref = [], None
    for name, spec in variants:
        lm.speculative_options = ()
        if spec is not None and spec.method == "draft":
            lm._model = None
            speculative.attach(lm, spec)
        elif spec is not None:
            lm._model = lm._model or og.Model(str(args.model))
            speculative.attach(lm, spec)
        else:
            lm._model = og.Model(str(args.model))
        opts = GenerationOptions(max_tokens=args.gen, temperature=0.0)
        speeds, walls, toks = [], [], None
        for i in range(args.reps + 1):
            t0 = time.perf_counter()
            evs = list(stream_generate(lm, TASK, opts))
            wall = time.perf_counter() - t0
            if i:
                speeds.append(evs[-1].decode_tps)
                walls.append(wall)
            toks = [e.token for e in evs if e.token is not None]
        if ref is None:
            ref = toks
            text = "".join(e.text for e in evs)
        same = toks == ref
        first = next((j for j in range(min(len(toks), len(ref))) if toks[j] != ref[j]), None)
        rows.append((name, statistics.median(speeds), statistics.median(walls), len(toks), same, first))
        print(f"done {name}", file=sys.stderr, flush=True)
    print(
        f"{args.model.name}: copy-and-edit task, {len(lm.tokenizer.encode(TASK))} prompt tokens, greedy, "
        f"median of {args.reps}"
    )
    base = rows[0][1]
    print("| decode | tok/s | x plain | answer s | tokens | same ids as plain |")
    print("|---|---|---|---|---|---|")
    for name, tps, wall, n, same, first in rows:
        print(
            f"| {name} | {tps:.1f} | {tps / base:.2f}x | {wall:.2f} | {n} | "
            f"{'yes' if same else f'no, from token {first}'} |"
        )
    print("\nplain answer starts: " + repr(text[:160]))


if __name__ == "__main__":
    main()
