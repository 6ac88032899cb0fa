#!/usr/bin/env python3
"""Where a generation step's time goes: per-phase timings and an ONNX Runtime profile.

    python scripts/webgpu_profile.py MODEL_DIR [--lengths 128,1024] [--gen 64]
        [--set KEY=VALUE ...] [--profile] [--json OUT.json]

For each prompt length it times Generator creation, the prefill (`append_tokens`), the
first token read, and every decode step (median, p10/p90, the first steps apart, since
graph capture records on the first decode step). `--set` overrides provider options and
`--session` session options in a copy of genai_config.json (e.g. `--set enableGraphCapture=0`,
`--session intra_op_num_threads=1`); the model's weights are
linked, not copied. `--profile` turns on ONNX Runtime's profiler for one run and
prints time per operator type and provider for the prefill and for the decode steps,
including the GPU kernel times the WebGPU EP records when the adapter has timestamp
queries. Used on the lent GPU machine (docs/performance.md).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def variant_dir(
    src: Path, overrides: dict[str, str], profile_prefix: str | None, session: dict[str, str] | None = None
) -> Path:
    """A folder of links to src's files with an edited genai_config.json."""
    d = Path(tempfile.mkdtemp(prefix="oga-npu-variant-"))
    for f in src.iterdir():
        if f.name not in ("genai_config.json", "oga_npu_manifest.json", "prepare.json", "stages", "logs"):
            (d / f.name).symlink_to(f.resolve())
    cfg = json.loads((src / "genai_config.json").read_text())
    so = cfg["model"]["decoder"].setdefault("session_options", {})
    if overrides:
        entries = so.setdefault("provider_options", [])
        if not entries:
            raise SystemExit("the model names no provider to set options on")
        opts = next(iter(entries[0].values()))
        opts.update(overrides)
    for k, v in (session or {}).items():
        so[k] = int(v) if v.lstrip("-").isdigit() else v
    if profile_prefix:
        so["enable_profiling"] = profile_prefix
    (d / "genai_config.json").write_text(json.dumps(cfg, indent=2))
    return d


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def one_run(og, lm, n_prompt: int, n_gen: int) -> dict:
    ids = [100 + (i % 1000) for i in range(n_prompt)]
    t0 = time.perf_counter()
    params = og.GeneratorParams(lm.model)
    params.set_search_options(max_length=n_prompt + n_gen, min_length=n_prompt + n_gen, top_k=1, do_sample=False)
    gen = og.Generator(lm.model, params)
    t1 = time.perf_counter()
    gen.append_tokens(ids)
    t2 = time.perf_counter()
    gen.generate_next_token()
    gen.get_next_tokens()
    t3 = time.perf_counter()
    steps = []
    while not gen.is_done():
        a = time.perf_counter()
        gen.generate_next_token()
        gen.get_next_tokens()
        steps.append(time.perf_counter() - a)
    return {
        "prompt": n_prompt,
        "create_ms": (t1 - t0) * 1e3,
        "prefill_ms": (t2 - t1) * 1e3,
        "first_token_ms": (t3 - t2) * 1e3,
        "ttft_ms": (t3 - t0) * 1e3,
        "step_first3_ms": [round(s * 1e3, 3) for s in steps[:3]],
        "step_median_ms": statistics.median(steps) * 1e3 if steps else None,
        "step_p10_ms": pct(steps, 0.1) * 1e3 if steps else None,
        "step_p90_ms": pct(steps, 0.9) * 1e3 if steps else None,
        "decode_tps": (len(steps) / sum(steps)) if steps else None,
    }


def summarize_profile(path: str, top: int) -> dict:
    events = json.loads(Path(path).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    runs.sort(key=lambda e: e["ts"])
    out = {}
    if not runs:
        return {"note": "no model_run events"}
    phases = {"prefill": runs[:1], "decode": runs[1:]}
    for phase, rs in phases.items():
        if not rs:
            continue
        spans = [(r["ts"], r["ts"] + r["dur"]) for r in rs]
        run_us = sum(r["dur"] for r in rs)
        by = defaultdict(lambda: [0.0, 0])
        for e in events:
            if e.get("cat") == "Session":
                continue
            ts = e.get("ts", 0)
            if not any(a <= ts <= b for a, b in spans):
                continue
            args = e.get("args", {})
            if e.get("cat") == "Node":
                if not e.get("name", "").endswith("_kernel_time"):
                    continue
                key = f"node {args.get('op_name', '?')} @{args.get('provider', '?').replace('ExecutionProvider', '')}"
            else:
                name = e.get("name", "?")
                key = f"{e.get('cat')} {name.split('&')[-1] if '&' in name else name}"
            by[key][0] += e.get("dur", 0)
            by[key][1] += 1
        rows = sorted(by.items(), key=lambda kv: -kv[1][0])[:top]
        out[phase] = {
            "runs": len(rs),
            "run_ms_per_run": run_us / len(rs) / 1e3,
            "top": [{"what": k, "ms_per_run": v[0] / len(rs) / 1e3, "count_per_run": v[1] / len(rs)} for k, v in rows],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--lengths", default="128,1024")
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument(
        "--session",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="genai_config session option, e.g. intra_op_num_threads=1",
    )
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--profile-gen", type=int, default=8)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--label", default="")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import onnxruntime_genai as og

    from oga_npu.model import load

    overrides = dict(kv.split("=", 1) for kv in args.set)
    lengths = [int(x) for x in args.lengths.split(",")]
    result = {"model": str(args.model), "label": args.label, "overrides": overrides, "runs": []}
    session = dict(kv.split("=", 1) for kv in args.session)
    d = variant_dir(args.model, overrides, None, session)
    t = time.perf_counter()
    lm = load(d)
    result["load_s"] = time.perf_counter() - t
    result["provider"] = provider = lm.provider
    for n in lengths:
        one_run(og, lm, n, 4)  # warm-up: shaders for this length
        rs = [one_run(og, lm, n, args.gen) for _ in range(args.reps)]
        best = min(rs, key=lambda r: r["ttft_ms"])
        med = {
            k: statistics.median(r[k] for r in rs)
            for k in ("ttft_ms", "prefill_ms", "create_ms", "decode_tps", "step_median_ms")
        }
        result["runs"].append({"prompt": n, "median": med, "best": best})
        print(
            f"{args.label} prompt {n}: TTFT {med['ttft_ms']:.1f} ms (create {med['create_ms']:.1f}, prefill "
            f"{med['prefill_ms']:.1f}), decode {med['decode_tps']:.1f} tok/s, step median "
            f"{med['step_median_ms']:.3f} ms, first steps {best['step_first3_ms']}",
            flush=True,
        )
    del lm
    if args.profile:
        prefix = str(Path(tempfile.mkdtemp(prefix="oga-npu-prof-")) / "ort")
        # Profiling sees nothing inside a captured graph: profile with capture off.
        extra = {"enableGraphCapture": "0"} if provider == "webgpu" else {}
        d2 = variant_dir(args.model, {**overrides, **extra}, prefix, session)
        lm = load(d2)
        n = max(lengths)
        one_run(og, lm, n, 4)
        one_run(og, lm, n, args.profile_gen)
        del lm
        import gc

        gc.collect()
        files = sorted(glob.glob(prefix + "*.json"))
        if not files:
            result["profile"] = {"note": f"no profile written under {prefix}*"}
        else:
            # The file holds both runs; keep the second (warm) one: drop the warm-up's runs.
            events = json.loads(Path(files[-1]).read_text())
            runs = sorted(
                (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"), key=lambda e: e["ts"]
            )
            cut = runs[4]["ts"] if len(runs) > 4 else 0  # warm-up = 1 prefill + 3 decode runs
            kept = [e for e in events if e.get("ts", 0) >= cut]
            tmp = files[-1] + ".warm.json"
            Path(tmp).write_text(json.dumps(kept))
            result["profile"] = summarize_profile(tmp, args.top)
            cats = defaultdict(int)
            for e in kept:
                cats[e.get("cat")] += 1
            result["profile"]["event_categories"] = dict(cats)
        print(json.dumps(result.get("profile"), indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
