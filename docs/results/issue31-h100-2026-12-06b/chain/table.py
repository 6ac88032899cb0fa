#!/usr/bin/env python3
"""Markdown tables (docs/performance.md "Real sizes" shape) from bench_vs_llamacpp.py's results-*.json.

    python table.py RESULTS_DIR [RESULTS_DIR ...]
"""

import json
import sys
from pathlib import Path

SHAPE = {"llama-3.2-1b": "1B", "llama-3.2-3b": "3B", "llama-3.1-8b": "8B"}


def cell(r, n, llama):
    n_ = str(n)
    if llama:
        pp, tg = r["pp"].get(n_), r["tg"].get(n_)
        return (f"{n / pp * 1000:.0f}" if pp else "-") + " / " + (f"{tg:.1f}" if tg else "-")
    v = r.get(n_)
    return f"{v[0]:.0f} / {v[1]:.1f}" if v else "- / -"


def ttft(r, n, llama):
    n_ = str(n)
    if llama:
        return n / r["pp"][n_] * 1000 if n_ in r["pp"] else None
    return r[n_][0] if n_ in r else None


def dec(r, n, llama):
    return (r["tg"].get(str(n)) if llama else (r.get(str(n)) or [None, None])[1])


def main(dirs):
    files = sorted(f for d in dirs for f in Path(d).glob("results-*.json") if f.stem != "results-small")
    data = [json.loads(f.read_text()) for f in files]
    lengths = data[0]["lengths"] if data else [128, 512, 1024]
    hdr = " | ".join(str(n) for n in lengths)
    print(f"| shape | file | engine | {hdr} | peak RSS | folder |")
    print("|---|---|---|" + "---|" * len(lengths) + "---|---|")
    gpu = []
    for d in data:
        s = SHAPE.get(d["shape"], d["shape"])
        res = d["results"]
        quants = list(dict.fromkeys(k.split("|")[1] for k in res))
        for q in quants:
            for k, r in res.items():
                eng, q_ = k.split("|")
                if q_ != q:
                    continue
                if "vulkan" in eng or eng.startswith("webgpu"):
                    gpu.append((s, q, eng, r))
                    continue
                llama = eng.startswith("llama.cpp")
                peak = r.get("peak_rss_mb") if llama else max(
                    [r.get("process_peak_mb") or 0] + [v[2] or 0 for kk, v in r.items() if kk.isdigit()]
                )
                name = "llama.cpp (no AMX)" if eng == "llama.cpp noamx" else eng
                gm = d.get("gguf_mb", {}).get(q)
                folder = f"(file {gm:.0f} MB)" if llama and gm else ("" if llama else "")
                if not llama:
                    fm = d.get("folders_mb", {}).get(f"{q}|{eng}")
                    folder = f"{fm:.0f} MB" if fm else "not read"
                cells = " | ".join(cell(r, n, llama) for n in lengths)
                print(f"| {s} | {q} | {name} | {cells} | {peak or 0:.0f} MB | {folder} |")
    print("\nRatios to llama.cpp without AMX (TTFT lower is better, decode higher is better):\n")
    print("| shape | file | recipe | TTFT " + " / ".join(map(str, lengths)) + " | decode " + " / ".join(map(str, lengths)) + " |")
    print("|---|---|---|---|---|")
    for d in data:
        s = SHAPE.get(d["shape"], d["shape"])
        res = d["results"]
        for k, r in res.items():
            eng, q = k.split("|")
            ref = res.get(f"llama.cpp noamx|{q}")
            if eng.startswith("llama.cpp") or "vulkan" in eng or eng.startswith("webgpu") or not ref:
                continue
            t = [(ttft(r, n, False) or 0) / (ttft(ref, n, True) or 1) for n in lengths]
            dd = [(dec(r, n, False) or 0) / (dec(ref, n, True) or 1) for n in lengths]
            print(f"| {s} | {q} | {eng} | " + " / ".join(f"{x:.2f}x" for x in t) + " | " + " / ".join(f"{x:.2f}x" for x in dd) + " |")
    print("\nMemory (scripts/memory_probe.py FOLDER --prompt 1024, one fresh process per folder, MB):\n")
    print("| shape | file | recipe | folder | KV | load | load peak | steady (anon / file) | peak (VmHWM) | budget | over by |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for d in data:
        s = SHAPE.get(d["shape"], d["shape"])
        for k, p in d.get("probes", {}).items():
            q, rec = k.split("|")
            st = p.get("steady", {})
            over = p["peak_mb"] - p["budget_mb"]
            print(
                f"| {s} | {q} | {rec} | {p['folder_mb']:.0f} | {p['kv_mb']:.0f} | {p['load_s']:.1f} s | "
                f"{p['load']['peak_mb']:.0f} | {st.get('rss_mb', 0):.0f} ({st.get('anon_mb', 0):.0f} / {st.get('file_mb', 0):.0f}) | "
                f"{p['peak_mb']:.0f} | {p['budget_mb']:.0f} | {over:.0f} |" if over > 0 else
                f"| {s} | {q} | {rec} | {p['folder_mb']:.0f} | {p['kv_mb']:.0f} | {p['load_s']:.1f} s | "
                f"{p['load']['peak_mb']:.0f} | {st.get('rss_mb', 0):.0f} ({st.get('anon_mb', 0):.0f} / {st.get('file_mb', 0):.0f}) | "
                f"{p['peak_mb']:.0f} | {p['budget_mb']:.0f} | within ({-over:.0f} under) |"
            )
    if gpu:
        print("\nThe iGPU peer (llama.cpp Vulkan -ngl 99 against --target webgpu, same files, same GPU):\n")
        print(f"| shape | file | engine | {hdr} | peak RSS |")
        print("|---|---|---|" + "---|" * len(lengths) + "---|")
        for s, q, eng, r in gpu:
            llama = eng.startswith("llama.cpp")
            peak = r.get("peak_rss_mb") if llama else r.get("process_peak_mb")
            print(f"| {s} | {q} | {eng} | " + " | ".join(cell(r, n, llama) for n in lengths) + f" | {peak or 0:.0f} MB |")
        print("\nWebGPU against llama.cpp Vulkan:\n")
        for s, q, eng, r in gpu:
            if eng.startswith("llama.cpp"):
                continue
            ref = next((x for s2, q2, e2, x in gpu if s2 == s and q2 == q and e2.startswith("llama.cpp")), None)
            if ref:
                t = [(ttft(r, n, False) or 0) / (ttft(ref, n, True) or 1) for n in lengths]
                dd = [(dec(r, n, False) or 0) / (dec(ref, n, True) or 1) for n in lengths]
                print(f"- {s} {q} {eng}: TTFT " + " / ".join(f"{x:.2f}x" for x in t) + ", decode " + " / ".join(f"{x:.2f}x" for x in dd))


if __name__ == "__main__":
    main(sys.argv[1:] or ["."])
