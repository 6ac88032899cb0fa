#!/usr/bin/env python3
"""Resident memory over a long chat: N turns through ChatSession (history trimming on).

    python scripts/chat_memory.py models/smollm2-135m-instruct-cpu [--turns 100] [--max-tokens 48]

Prints RSS at turns 1, 10, 50 and N and the change from turn 10 to N (goal: within 10%),
and how many times history was trimmed to fit the context.
"""

from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

QUESTIONS = [
    "What is the capital of France?",
    "Name a color of the sky.",
    "Tell me a fact about cats.",
    "What is two plus two?",
    "Give me a word that rhymes with light.",
    "Describe rain in one sentence.",
]


def main() -> None:
    import psutil

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--turns", type=int, default=100)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--context", type=int, default=1024, help="trim history to this many tokens (0 = model's)")
    args = ap.parse_args()
    from oga_npu.chat import ChatSession
    from oga_npu.generate import GenerationOptions
    from oga_npu.model import load

    lm = load(args.model)
    if args.context:
        lm.config["model"]["context_length"] = min(lm.context_length, args.context)
    s = ChatSession(lm, GenerationOptions(max_tokens=args.max_tokens), system="You are brief.")
    proc = psutil.Process()
    rss, trims = {}, 0
    for turn in range(1, args.turns + 1):
        for _ in s.send(QUESTIONS[turn % len(QUESTIONS)]):
            pass
        trims += len(s.notices)
        s.notices.clear()
        gc.collect()
        if turn in (1, 10, 50, args.turns):
            rss[turn] = proc.memory_info().rss / 1e6
            print(f"turn {turn:4d}: RSS {rss[turn]:8.1f} MB, history {len(s.history) // 2} turns", flush=True)
    a, b = rss[10], rss[args.turns]
    print(
        f"RSS turn 10 -> {args.turns}: {a:.1f} -> {b:.1f} MB ({100 * (b - a) / a:+.1f}%, goal within 10%); "
        f"history trimmed {trims} times"
    )


if __name__ == "__main__":
    main()
