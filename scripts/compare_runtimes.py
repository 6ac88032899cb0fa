#!/usr/bin/env python3
"""oga-npu's CPU models against llama.cpp and transformers fp32 on the same GGUF, in one run.

    python scripts/compare_runtimes.py GGUF --oga models/smollm2-cpu [--oga models/smollm2-awq ...]
        [--lengths 128,512,1024] [--gen 64] [--reps 3] [--threads N] [--plot out.png] [--json out.json]

Same prompt token ids (cut from local text with the model's tokenizer), same number of
generated tokens (EOS ignored), same thread count, median of --reps runs after one warmup.
llama.cpp runs when llama-cpp-python is installed (`pip install llama-cpp-python`, builds
from source); transformers loads the GGUF dequantized to fp32. Prints TTFT and decode tok/s
per engine and length, and each engine's ratio to llama.cpp.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def prompt_ids(tokenizer_encode, n: int) -> list[int]:
    from oga_npu.textdata import builtin_text

    ids = list(tokenizer_encode(builtin_text()[:200_000]))
    return ids[:n]


def run_oga(model_dir: Path, ids: list[int], gen: int, reps: int) -> tuple[float, float]:
    from oga_npu.generate import GenerationOptions, stream_generate
    from oga_npu.model import load

    lm = load(model_dir)
    ttft, dec = [], []
    for i in range(reps + 1):
        last = None
        for ev in stream_generate(lm, ids, GenerationOptions(max_tokens=gen, temperature=0.0, ignore_eos=True)):
            last = ev
        if i:
            ttft.append(last.ttft)
            dec.append(last.decode_tps)
    return statistics.median(ttft), statistics.median(dec)


def run_llamacpp(gguf: Path, ids: list[int], gen: int, reps: int, threads: int) -> tuple[float, float] | None:
    try:
        from llama_cpp import Llama
    except ImportError:
        return None
    llm = Llama(
        model_path=str(gguf),
        n_ctx=max(2048, len(ids) + gen + 8),
        n_threads=threads,
        n_threads_batch=threads,
        n_batch=2048,
        verbose=False,
    )
    ttft, dec = [], []
    for i in range(reps + 1):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        tok = int(llm.scores[llm.n_tokens - 1].argmax())
        t1 = time.perf_counter()
        for _ in range(gen - 1):
            llm.eval([tok])
            tok = int(llm.scores[llm.n_tokens - 1].argmax())
        t2 = time.perf_counter()
        if i:
            ttft.append(t1 - t0)
            dec.append((gen - 1) / (t2 - t1))
    return statistics.median(ttft), statistics.median(dec)


def run_transformers(gguf: Path, ids: list[int], gen: int, reps: int, threads: int, cache: dict):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    if "model" not in cache:
        cache["model"] = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        ).eval()
    model = cache["model"]
    ttft, dec = [], []
    with torch.no_grad():
        for i in range(reps + 1):
            t0 = time.perf_counter()
            out = model(torch.tensor([ids]), use_cache=True)
            tok = out.logits[0, -1].argmax().view(1, 1)
            past = out.past_key_values
            t1 = time.perf_counter()
            for _ in range(gen - 1):
                out = model(tok, past_key_values=past, use_cache=True)
                past = out.past_key_values
                tok = out.logits[0, -1].argmax().view(1, 1)
            t2 = time.perf_counter()
            if i:
                ttft.append(t1 - t0)
                dec.append((gen - 1) / (t2 - t1))
    return statistics.median(ttft), statistics.median(dec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", type=Path)
    ap.add_argument("--oga", type=Path, action="append", default=[], help="prepared oga-npu CPU model folder")
    ap.add_argument("--lengths", default="128,512,1024")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0 = physical cores")
    ap.add_argument("--no-transformers", action="store_true")
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import psutil

    threads = args.threads or psutil.cpu_count(logical=False) or os.cpu_count()
    from oga_npu.model import load

    if not args.oga:
        raise SystemExit("pass at least one --oga MODEL_DIR (prepared from the same GGUF)")
    tok_model = load(args.oga[0])
    encode = lambda text: [int(t) for t in tok_model.tokenizer.encode(text)]
    lengths = [int(x) for x in args.lengths.split(",")]
    results: dict[str, dict[int, tuple[float, float]]] = {}
    cache: dict = {}
    for n in lengths:
        ids = prompt_ids(encode, n)
        for d in args.oga:
            results.setdefault(f"oga {d.name}", {})[n] = run_oga(d, ids, args.gen, args.reps)
        r = run_llamacpp(args.gguf, ids, args.gen, args.reps, threads)
        if r:
            results.setdefault("llama.cpp", {})[n] = r
        if not args.no_transformers:
            results.setdefault("transformers fp32", {})[n] = run_transformers(
                args.gguf, ids, args.gen, args.reps, threads, cache
            )
        print(f"done prompt {n}", file=sys.stderr, flush=True)
    print(f"{threads} threads, {args.gen} generated tokens, median of {args.reps}, EOS ignored, same token ids")
    print(
        f"{'engine':<34} "
        + " ".join(f"{'TTFT ' + str(n):>11}" for n in lengths)
        + "  "
        + " ".join(f"{'dec ' + str(n):>9}" for n in lengths)
    )
    for name, r in results.items():
        print(
            f"{name:<34} "
            + " ".join(f"{r[n][0]:>10.3f}s" for n in lengths)
            + "  "
            + " ".join(f"{r[n][1]:>9.1f}" for n in lengths)
        )
    if "llama.cpp" in results:
        base = results["llama.cpp"]
        print("ratios to llama.cpp (TTFT: lower is better; decode: higher is better)")
        for name, r in results.items():
            if name == "llama.cpp":
                continue
            print(
                f"{name:<34} "
                + " ".join(f"{r[n][0] / base[n][0]:>10.2f}x" for n in lengths)
                + "  "
                + " ".join(f"{r[n][1] / base[n][1]:>8.2f}x" for n in lengths)
            )
    else:
        print("llama.cpp: not measured (pip install llama-cpp-python)")
    if args.json:
        args.json.write_text(json.dumps({k: {str(n): v for n, v in r.items()} for k, r in results.items()}, indent=2))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for name, r in results.items():
            a1.plot(lengths, [r[n][0] for n in lengths], marker="o", label=name)
            a2.plot(lengths, [r[n][1] for n in lengths], marker="o", label=name)
        a1.set(xlabel="prompt tokens", ylabel="TTFT (s)", title="Time to first token")
        a2.set(xlabel="prompt tokens", ylabel="tokens/s", title="Decode")
        for a in (a1, a2):
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    main()
