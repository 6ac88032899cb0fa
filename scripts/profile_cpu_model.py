#!/usr/bin/env python3
"""Where a prepared CPU model's time and memory go: onnxruntime's profiler per
operator type for one prefill and the decode steps after it, and peak memory at load and
while generating, for session-option variants given as JSON (each runs on a linked copy of
the folder whose genai_config.json has those session options added).

    python scripts/profile_cpu_model.py MODEL_DIR [--length 512] [--gen 32]
        [--variant '{}' --variant '{"session.intra_op.allow_spinning": "0"}' ...] [--profile]

Prints one line per variant (load time, peak RSS at load and in the run, TTFT, decode
tok/s, median of --reps after one warmup) and with --profile a table of per-op-type time for
the prefill and for the decode steps (onnxruntime's own timings of each node).
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path


def linked_copy(src: Path, entries: dict) -> Path:
    d = Path(tempfile.mkdtemp(prefix="prof-"))
    for f in src.iterdir():
        if f.is_file() and f.name != "genai_config.json":
            os.symlink(f.resolve(), d / f.name)
    cfg = json.loads((src / "genai_config.json").read_text())
    cfg["model"]["decoder"].setdefault("session_options", {}).update(entries)
    (d / "genai_config.json").write_text(json.dumps(cfg))
    return d


class Peak:
    def __init__(self):
        import psutil

        self.p = psutil.Process()
        self.base = self.p.memory_info().rss
        self.peak = self.base
        self.stop = False
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while not self.stop:
            self.peak = max(self.peak, self.p.memory_info().rss)
            time.sleep(0.005)

    def mb(self) -> float:
        return (self.peak - self.base) / 1e6


def run_variant(model: Path, entries: dict, length: int, gen: int, reps: int) -> dict:
    import numpy as np
    import onnxruntime_genai as og

    d = linked_copy(model, entries)
    try:
        mem = Peak()
        t0 = time.perf_counter()
        m = og.Model(str(d))
        load_s, load_mb = time.perf_counter() - t0, mem.mb()
        ids = [1000 + (i * 7) % 20000 for i in range(length)]
        ttfts, decs = [], []
        for r in range(reps + 1):
            p = og.GeneratorParams(m)
            p.set_search_options(do_sample=False, top_k=1, max_length=length + gen, min_length=length + gen)
            g = og.Generator(m, p)
            t0 = time.perf_counter()
            g.append_tokens(np.array([ids], dtype=np.int32))
            g.generate_next_token()
            t1 = time.perf_counter()
            n = 0
            while not g.is_done():
                g.generate_next_token()
                n += 1
            t2 = time.perf_counter()
            if r:
                ttfts.append((t1 - t0) * 1e3)
                decs.append(n / (t2 - t1))
            del g
        mem.stop = True
        del m
        return {
            "variant": entries,
            "load_s": load_s,
            "load_peak_mb": load_mb,
            "run_peak_mb": mem.mb(),
            "ttft_ms": statistics.median(ttfts),
            "decode_tps": statistics.median(decs),
        }
    finally:
        shutil.rmtree(d, ignore_errors=True)


def profile(model: Path, length: int, gen: int, out: Path) -> str:
    """One prefill of `length` tokens and `gen` decode steps with onnxruntime's profiler on."""
    import numpy as np
    import onnxruntime_genai as og

    prefix = str(out / "ortprof")
    if os.environ.get("_PROFILE_CHILD") != "1":  # onnxruntime writes the profile when the process ends
        import subprocess

        subprocess.run(
            [
                sys.executable,
                __file__,
                str(model),
                "--length",
                str(length),
                "--gen",
                str(gen),
                "--out",
                str(out),
                "--profile",
            ],
            env=dict(os.environ, _PROFILE_CHILD="1"),
            check=True,
        )
        return parse_profile(prefix)
    d = linked_copy(model, {"enable_profiling": prefix})
    try:
        m = og.Model(str(d))
        ids = [1000 + (i * 7) % 20000 for i in range(length)]
        p = og.GeneratorParams(m)
        p.set_search_options(do_sample=False, top_k=1, max_length=length + gen, min_length=length + gen)
        g = og.Generator(m, p)
        g.append_tokens(np.array([ids], dtype=np.int32))
        while not g.is_done():
            g.generate_next_token()
        del g, m
    finally:
        shutil.rmtree(d, ignore_errors=True)
    return ""


def parse_profile(prefix: str) -> str:
    files = sorted(glob.glob(prefix + "*.json"), key=os.path.getmtime)
    if not files:
        return "no profile written"
    ev = json.loads(Path(files[-1]).read_text())
    runs = [e for e in ev if e.get("cat") == "Session" and e.get("name") == "model_run"]
    runs.sort(key=lambda e: e["ts"])
    if not runs:
        return "no model_run events"
    # the first run is the prefill; the rest are decode steps
    windows = {"prefill": [runs[0]], "decode": runs[1:]}
    lines = []
    for name, rs in windows.items():
        spans = [(r["ts"], r["ts"] + r["dur"]) for r in rs]
        total = sum(r["dur"] for r in rs)
        by = collections.Counter()
        for e in ev:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
                continue
            ts = e["ts"]
            if any(a <= ts <= b for a, b in spans):
                op = e.get("args", {}).get("op_name", "?")
                nm = e["name"]
                if "/gguf" in nm or "offset" in nm.lower() or "bsum" in nm.lower():
                    op += " (gguf offsets)"
                by[op] += e["dur"]
        kern = sum(by.values())
        lines.append(
            f"{name}: {len(rs)} run(s), {total / 1e3 / max(1, len(rs)):.2f} ms per run, "
            f"kernels {kern / max(1, total) * 100:.0f}% of it"
        )
        for op, us in by.most_common(10):
            lines.append(f"  {op:<40s} {us / 1e3 / max(1, len(rs)):8.2f} ms/run  {us / max(1, kern) * 100:5.1f}%")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()))
    args = ap.parse_args()
    if os.environ.get("_PROFILE_CHILD") == "1":
        profile(args.model, args.length, args.gen, args.out)
        return
    variants = [json.loads(v) for v in (args.variant or ["{}"])]
    print(f"{args.model.name}: prompt {args.length}, {args.gen} generated, median of {args.reps}")
    for v in variants:
        r = run_variant(args.model, v, args.length, args.gen, args.reps)
        print(
            f"  {json.dumps(v):58s} load {r['load_s']:5.1f}s peak {r['load_peak_mb']:6.0f} MB, run peak "
            f"{r['run_peak_mb']:6.0f} MB, TTFT {r['ttft_ms']:7.1f} ms, decode {r['decode_tps']:6.1f} tok/s",
            flush=True,
        )
    if args.profile:
        args.out.mkdir(parents=True, exist_ok=True)
        print(profile(args.model, args.length, args.gen, args.out), flush=True)


if __name__ == "__main__":
    sys.exit(main())
