"""AMD's model_benchmark: where a release puts it, how it is started, what it prints.

The tool is onnxruntime-genai's `benchmark/c` (main.cpp, options.cpp) built by AMD, who add
a dashed line, `Prompt Number of Tokens: N` and a blank line before each result, and (in
1.6-1.7.1) take a list of lengths with `-f PROMPT_FILE`. Each result, as main.cpp writes it
with std::cout's default float format (%.6g: `169860`, `1.23457e+06`, `inf`):

    Batch size: B, prompt tokens: N, tokens to generate: G
    Prompt processing (time to first token):
    \\tavg (us):       ...      (then avg (tokens/s), p50 (us), stddev (us), n: R * B*N token(s))
    Token generation:         (the G-1 tokens after the first: n: R*(G-1) * B)
    Token sampling:           (the first GenerateNextToken after the prompt: n: R * B)
    E2E generation (entire generation loop):
    \\tavg (ms):       ...      (p50 (ms), stddev (ms), n: R)
    Peak working set size (bytes): ...

An older AMD NPU build ends instead with CPU utilisation, `Model create time (ms)`,
`Peak working set size (megabytes): N` and `Total runtime (ms)`. With --verbose the prompt
and the output text come first, between [PROMPT BEGIN]/[PROMPT END] and
[OUTPUT BEGIN]/[OUTPUT END].

Where it is: Windows `%RYZEN_AI_INSTALLATION_PATH%\\LLM\\example\\model_benchmark.exe` with
the DLLs of `%RYZEN_AI_INSTALLATION_PATH%\\deployment`; Linux `<venv>/LLM/examples/model_benchmark`
with `<venv>/deployment/lib` on LD_LIBRARY_PATH and RYZENAI_EP_PATH set
(ryzen-ai-documentation hybrid_oga.rst and llm_linux.rst, per release branch).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from .bench import BenchConfig, BenchRecord

NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?inf|[-+]?nan(?:\(\w*\))?"
DASH_RE = re.compile(r"^\s*-{10,}\s*$")
AMD_LEN_RE = re.compile(r"^\s*Prompt Number of Tokens:\s*(\d+)")
BATCH_RE = re.compile(r"^\s*Batch size:\s*(\d+),\s*prompt tokens:\s*(\d+),\s*tokens to generate:\s*(\d+)")
STAT_RE = re.compile(rf"^\s*(avg|p50|stddev) \((us|ms|tokens/s)\):\s*({NUM})\s*$", re.I)
N_RE = re.compile(r"^\s*n:\s*(\d+)(?:\s*\*\s*(\d+)\s*token\(s\))?")
PEAK_BYTES_RE = re.compile(r"^\s*Peak working set size \(bytes\):\s*(\d+)")
PEAK_MB_RE = re.compile(rf"^\s*Peak working set size \(megabytes\):\s*({NUM})\s*$")
SECTIONS = (
    ("Prompt processing", "prompt"),
    ("Token generation", "generation"),
    ("Token sampling", "sampling"),
    ("E2E generation", "e2e"),
)
VERBOSE_TEXT = (("[PROMPT BEGIN]", "[PROMPT END]"), ("[OUTPUT BEGIN]", "[OUTPUT END]"))
EP_LIBRARY = "libonnxruntime_providers_ryzenai.so"
LINUX_SYSTEM_LIBS = "/lib/x86_64-linux-gnu"


# ---------------------------------------------------------------- the output


def number(text: str) -> float | None:
    """A value as std::cout wrote it (%.6g); inf and nan (MSVC: `-nan(ind)`) are None."""
    v = float(text.split("(")[0])
    return v if math.isfinite(v) else None


def report_lines(text: str):
    """The lines of the log without --verbose's prompt and output text."""
    end = None
    for line in text.splitlines():
        if end is not None:
            if end in line:
                end = None
            continue
        for begin, stop in VERBOSE_TEXT:
            if begin in line:
                end = None if stop in line.split(begin, 1)[1] else stop
                break
        else:
            yield line


def _section(line: str) -> str | None:
    return next((name for head, name in SECTIONS if line.startswith(head)), None)


def _stat(raw: dict, section: str | None, line: str) -> bool:
    """One `avg (us): ...` / `n: ...` line into raw[section]; False when the line is neither."""
    m = STAT_RE.match(line)
    if m and section:
        unit = {"tokens/s": "tps"}.get(m.group(2).lower(), m.group(2).lower())
        raw.setdefault(section, {})[f"{m.group(1)}_{unit}"] = number(m.group(3))
        return True
    m = N_RE.match(line)
    if m and section:
        raw.setdefault(section, {})["n"] = int(m.group(1))
        if m.group(2):
            raw[section]["tokens_per_measurement"] = int(m.group(2))
        return True
    return False


def _peak(raw: dict, line: str) -> bool:
    m = PEAK_BYTES_RE.match(line)
    if m:
        raw["peak_bytes"] = int(m.group(1))
    m2 = PEAK_MB_RE.match(line)
    if m2:
        raw["peak_megabytes"] = number(m2.group(1))
    return bool(m or m2)


def raw_results(text: str) -> list[dict]:
    """Each result as printed: {"requested", "batch", "prompt_tokens", "gen_tokens", "prompt":
    {"avg_us", "avg_tps", "p50_us", "stddev_us", "n", "tokens_per_measurement"}, "generation",
    "sampling", "e2e": {"avg_ms", ...}, "peak_bytes" | "peak_megabytes"}. A result starts at
    AMD's `Prompt Number of Tokens: N` or, where none came before it, at upstream's `Batch size:` line."""
    out: list[dict] = []
    cur: dict | None = None
    section = None
    for line in report_lines(text):
        m, b = AMD_LEN_RE.match(line), BATCH_RE.match(line)
        if m or (b and (cur is None or "batch" in cur)):
            cur, section = {}, None
            out.append(cur)
            if m:
                cur["requested"] = int(m.group(1))
        if b:
            cur.update(batch=int(b.group(1)), prompt_tokens=int(b.group(2)), gen_tokens=int(b.group(3)))
        if cur is None or m or b:
            continue
        if DASH_RE.match(line):
            section = None  # AMD's line before the next result, or the old NPU build's trailer
        elif _section(line):
            section = _section(line)
        elif not _stat(cur, section, line) and _peak(cur, line):
            section = None
    return out


def _ms(v: float | None) -> float | None:
    return None if v is None else v / 1e3


def _per_second(us: float | None, tokens: int) -> float | None:
    return tokens * 1e6 / us if us else None


def record(raw: dict, model: str, meta: dict | None = None) -> BenchRecord:
    """A BenchRecord of one result. TTFT is `Prompt processing` (the prompt's forward pass);
    the first token's sampling is kept apart (sampling_*_ms)."""
    meta = dict(meta or {})
    pre, dec, smp, e2e = (raw.get(k, {}) for k in ("prompt", "generation", "sampling", "e2e"))
    batch = raw.get("batch", 1)
    rec = BenchRecord(model, meta.get("provider", "ryzenai"), raw.get("prompt_tokens") or raw.get("requested") or 0, 0)
    rec.gen_tokens, rec.reps, rec.source = raw.get("gen_tokens", 0), pre.get("n", 0), "model_benchmark"
    rec.ttft_avg_ms, rec.ttft_p50_ms, rec.ttft_std_ms = (_ms(pre.get(k)) for k in ("avg_us", "p50_us", "stddev_us"))
    rec.prefill_tps = pre.get("avg_tps")
    rec.decode_tps_avg = dec.get("avg_tps") or _per_second(dec.get("avg_us"), batch)
    rec.decode_tps_p50 = _per_second(dec.get("p50_us"), batch)
    if rec.decode_tps_avg and dec.get("stddev_us") is not None:  # d(1/t) = dt / t^2
        rec.decode_tps_std = rec.decode_tps_avg**2 * dec["stddev_us"] / (batch * 1e6)
    rec.sampling_avg_ms, rec.sampling_p50_ms, rec.sampling_std_ms = (
        _ms(smp.get(k)) for k in ("avg_us", "p50_us", "stddev_us")
    )
    rec.e2e_avg_s, rec.e2e_p50_s, rec.e2e_std_s = (_ms(e2e.get(k)) for k in ("avg_ms", "p50_ms", "stddev_ms"))
    if raw.get("peak_bytes") is not None:
        rec.peak_rss_mb = raw["peak_bytes"] / 1e6
    elif raw.get("peak_megabytes") is not None:
        rec.peak_rss_mb = raw["peak_megabytes"]
    rec.meta = {**meta, "model_benchmark": raw}
    return rec


def parse_model_benchmark(text: str, model: str, meta: dict | None = None) -> list[BenchRecord]:
    """model_benchmark's log (one or more runs) as BenchRecords, one per result."""
    return [record(raw, model, meta) for raw in raw_results(text)]


# ---------------------------------------------------------------- the command line


def model_benchmark_argvs(
    tool: str, model: Path, cfg: BenchConfig, prompt_file: Path, rai_version: str
) -> list[list[str]]:
    """The command lines for the release: one call with `-f PROMPT_FILE -l "128, 256"` (AMD's
    1.6-1.7.1 build takes a list), or one call per length with `-l N` and no prompt file
    (1.8: upstream's parser, one number, --prompt_file and -l mutually exclusive)."""
    from .ryzenai import release

    tail = ["-g", str(cfg.gen_tokens), "-r", str(cfg.reps), "-w", str(cfg.warmups), "--verbose"]
    if release(rai_version).benchmark_one_length:
        return [[tool, "-i", str(model), "-l", str(n), *tail] for n in cfg.lengths]
    return [[tool, "-i", str(model), "-f", str(prompt_file), "-l", ", ".join(str(n) for n in cfg.lengths), *tail]]


# ---------------------------------------------------------------- where it is, its environment


def install_roots(env_prefix: Path | None = None) -> list[Path]:
    """Folders that may hold AMD's LLM/ and deployment/: the release env (the Linux venv),
    RYZEN_AI_INSTALLATION_PATH (C:\\Program Files\\RyzenAI\\<version> on Windows), the active venv."""
    roots = [env_prefix, *(os.environ.get(k) for k in ("RYZEN_AI_INSTALLATION_PATH", "VIRTUAL_ENV"))]
    out: list[Path] = []
    for r in roots:
        if r and Path(r) not in out:
            out.append(Path(r))
    return out


def llm_dir(root: Path) -> Path:
    """`LLM\\example` on Windows, `LLM/examples` on Linux (AMD's two layouts)."""
    from .ryzenai import host_os

    return root / "LLM" / ("example" if host_os() == "Windows" else "examples")


def _executable(folder: Path, name: str) -> Path | None:
    from .ryzenai import host_os

    for n in (f"{name}.exe", name) if host_os() == "Windows" else (name,):
        p = folder / n
        if p.is_file() and (host_os() == "Windows" or os.access(p, os.X_OK)):
            return p
    return None


def find_model_benchmark(env=None) -> tuple[str, Path | None] | None:
    """(the tool, the install root whose deployment/ it needs, or None), else None: AMD's LLM
    folder first, then the env's Scripts/bin, then PATH and the conda env."""
    from .devices import find_rai_tool

    for root in install_roots(env.prefix if env is not None else None):
        exe = _executable(llm_dir(root), "model_benchmark")
        if exe is not None:
            return str(exe), root
    tool = env.tool("model_benchmark") if env is not None else find_rai_tool("model_benchmark")
    return (tool, None) if tool else None


def child_env(base: dict[str, str], root: Path | None, plugins: Path | None) -> dict[str, str]:
    """model_benchmark's environment: Windows, `<root>\\deployment` first on PATH (AMD copies
    its DLLs beside the exe); Linux, `/lib/x86_64-linux-gnu:<root>/deployment/lib` first on
    LD_LIBRARY_PATH and RYZENAI_EP_PATH when not set (llm_linux.rst 1.8); DD_PLUGINS_ROOT for
    a model with compiled operators."""
    from .ryzenai import host_os
    from .tools import path_prepend, tool_env

    env = dict(base)
    deployment = root / "deployment" if root is not None else None
    if deployment is not None and deployment.is_dir():
        if host_os() == "Windows":
            env = path_prepend(env, "PATH", [deployment])
        else:
            env = path_prepend(env, "LD_LIBRARY_PATH", [Path(LINUX_SYSTEM_LIBS), deployment / "lib"])
            if not env.get("RYZENAI_EP_PATH"):
                env["RYZENAI_EP_PATH"] = str(deployment / "lib" / EP_LIBRARY)
    return tool_env({"DD_PLUGINS_ROOT": str(plugins)} if plugins is not None else {}, base=env)


def _said(e, log: Path):
    """The failure with the tool's own `Error: ...` / `Exception: ...` line (upstream prints
    its usage after an option error: the stderr tail alone is the usage text)."""
    from .errors import ToolFailed

    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    said = [ln for ln in text.splitlines() if ln.startswith(("Error: ", "Exception: "))]
    return ToolFailed(e.tool, e.argv, e.code, said[-1:], e.log_path, e.version) if said else e


def run_model_benchmark(
    model: Path,
    cfg: BenchConfig,
    text: str,
    log_dir: Path,
    rai_version: str | None = None,
    meta: dict | None = None,
    rai_env: Path | None = None,
) -> list[BenchRecord]:
    """AMD's model_benchmark on a prepared folder, in the form of the release, its log parsed."""
    from .devices import INSTALL_HINT, detect_rai_version
    from .errors import ToolFailed, ToolNotFound
    from .ryzenai import find_env, plugins_root, release
    from .tools import run_tool, tool_env
    from .workdir import require_ready

    state = require_ready(model)  # a folder changed since prepare is refused here as in load()
    env = find_env(rai_env, rai_version)
    found = find_model_benchmark(env)
    if found is None:
        where = f"the Ryzen AI env {env.prefix}" if env is not None else "PATH, RYZEN_AI_INSTALLATION_PATH, conda env"
        raise ToolNotFound(f"model_benchmark not found ({where}, LLM/example(s)/)", INSTALL_HINT)
    tool, root = found
    rai = env.release.version if env is not None else release(detect_rai_version(rai_version)[0]).version
    model, log_dir = Path(model).resolve(), Path(log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    prompt_file = log_dir / "amd_genai_prompt.txt"
    prompt_file.write_text(text, encoding="utf-8")
    log = log_dir / "model_benchmark.log"
    log.unlink(missing_ok=True)
    plugins = plugins_root(state.manifest)
    base = env.child_env(tool_env()) if env is not None else tool_env()
    child = child_env(base, root, plugins)
    cwd = plugins.parent if plugins is not None else None  # the folder that holds dd_plugins/
    for argv in model_benchmark_argvs(tool, model, cfg, prompt_file, rai):
        try:
            run_tool(argv, name="model_benchmark", env=child, cwd=cwd, log_path=log)
        except ToolFailed as e:
            raise _said(e, log) from None
    return parse_model_benchmark(
        log.read_text(encoding="utf-8", errors="replace"), str(model), {**(meta or {}), "rai_version": rai}
    )
