"""`oga-npu bench`: model_benchmark-style prompt-length sweeps through `stream_generate`.

Per prompt length: exact-length prompts (token ids cut from a text, no chat template, as
AMD's model_benchmark does), `warmups` untimed runs, `reps` timed runs that each generate
exactly `gen_tokens` (EOS ignored through min_length), then TTFT avg/p50/stddev, prefill
tok/s (= prompt length / mean TTFT), decode tok/s avg/p50/stddev, tokenization and
end-to-end time, and the peak resident memory seen during the point. A length that does
not fit the model's context is recorded as skipped with the reason; the sweep goes on.
Each finished point is appended to the JSON-lines file at once (an interrupted sweep
keeps its points) and written to the CSV as one whole row.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import re
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import OgaNpuError
from .generate import GenerationOptions, encode_raw, stream_generate
from .model import LoadedModel

DEFAULT_LENGTHS = (128, 256, 512, 1024, 2048)
CSV_FIELDS = (
    "model",
    "provider",
    "prompt_tokens",
    "gen_tokens",
    "reps",
    "ttft_avg_ms",
    "ttft_p50_ms",
    "ttft_std_ms",
    "prefill_tps",
    "decode_tps_avg",
    "decode_tps_p50",
    "decode_tps_std",
    "e2e_avg_s",
    "tokenize_ms",
    "peak_rss_mb",
    "skipped",
    "source",
)
# What every bench and eval record carries about where it ran (None where absent); the CSV
# has these columns after CSV_FIELDS.
RECORD_META = (
    "oga_npu",
    "oga",
    "ort",
    "quark",
    "rai_version",
    "npu_driver",
    "npu_power_mode",
    "device",
    "provider",
    "model_hash",
)
CSV_META_FIELDS = tuple(k for k in RECORD_META if k != "provider")


@dataclass(frozen=True)
class BenchConfig:
    lengths: tuple[int, ...] = DEFAULT_LENGTHS
    gen_tokens: int = 128
    reps: int = 5
    warmups: int = 1
    prompt_file: Path | None = None

    def validate(self) -> None:
        if not self.lengths or any(n < 1 for n in self.lengths):
            raise OgaNpuError(
                f"bad prompt lengths {list(self.lengths)}", "pass -l with positive numbers, e.g. -l 128,512"
            )
        if self.gen_tokens < 2:
            raise OgaNpuError("-g must be at least 2 (decode speed needs two tokens)", "pass -g 2 or more")
        if self.reps < 1 or self.warmups < 0:
            raise OgaNpuError("-r must be >= 1 and -w >= 0", "pass e.g. -r 5 -w 1")


@dataclass
class BenchRecord:
    model: str
    provider: str
    prompt_tokens: int
    gen_tokens: int
    reps: int = 0
    warmups: int = 0
    ttft_avg_ms: float | None = None
    ttft_p50_ms: float | None = None
    ttft_std_ms: float | None = None
    prefill_tps: float | None = None
    decode_tps_avg: float | None = None
    decode_tps_p50: float | None = None
    decode_tps_std: float | None = None
    e2e_avg_s: float | None = None
    e2e_std_s: float | None = None
    e2e_p50_s: float | None = None
    sampling_avg_ms: float | None = None  # model_benchmark's `Token sampling` (the first token's)
    sampling_p50_ms: float | None = None
    sampling_std_ms: float | None = None
    tokenize_ms: float | None = None
    peak_rss_mb: float | None = None
    skipped: str | None = None
    source: str = "oga-npu"  # oga-npu | model_benchmark
    meta: dict = field(default_factory=dict)


def parse_lengths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in re.split(r"[,\s]+", text.strip()) if x)
    except ValueError as e:
        raise OgaNpuError(f"bad prompt lengths '{text}'", "pass -l 128,256,512") from e


def _stats(xs: list[float]) -> tuple[float, float, float]:
    return statistics.fmean(xs), statistics.median(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


class PeakRSS:
    """Samples this process's resident memory in a thread; `.peak` in bytes."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def prompt_ids(lm: LoadedModel, n: int, text: str) -> list[int]:
    """n ids of the text (repeated as needed), BOS first when the tokenizer asks for it."""
    from .prompt_ids import bos_id

    ids = encode_raw(lm, text)
    head = ids[:1] if ids and ids[0] == bos_id(lm) else []
    body = ids[len(head) :]
    if not body:
        raise OgaNpuError("the prompt text produced no tokens", "pass a longer -f PROMPT_FILE")
    while len(head) + len(body) < n:
        body = body + body
    return (head + body)[:n]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def model_hash(lm: LoadedModel) -> str:
    """The hash of the folder's content (every file's sha256), not of the prepare settings."""
    return lm.content_hash


def device_name(provider: str) -> str | None:
    """What `provider` runs on here: the CPU's name, the WebGPU adapter, the NPU."""
    if provider == "cpu":
        return cpu_model()
    if provider == "webgpu":
        from .webgpu import ep as webgpu

        found = webgpu.adapters()
        return found[0].name if found else None
    if provider == "ryzenai":
        from .devices import find_npus

        npus = find_npus()
        return f"{npus[0].name} NPU" if npus else None
    return None


def record_metadata(
    lm: LoadedModel | None = None, provider: str | None = None, content_hash: str | None = None
) -> dict:
    """Versions, Ryzen AI release, NPU driver and power mode, device, provider and content hash
    for a bench or eval record (None where this machine has none)."""
    provider = lm.provider if lm is not None else provider or "cpu"
    from .devices import detect_rai_version, find_npus, xrt_examine
    from .versions import installed_versions

    v = installed_versions()
    rai, rai_from = detect_rai_version()
    xrt = xrt_examine() or {}
    npus = find_npus()
    driver = xrt.get("driver_version") or (npus[0].driver_version if npus else None)
    return {
        "oga_npu": v.get("oga-npu"),
        "oga": v.get("onnxruntime-genai"),
        "ort": v.get("onnxruntime"),
        "quark": v.get("amd-quark"),
        "rai_version": None if rai_from.startswith("default") else rai,
        "npu_driver": driver,
        "npu_power_mode": xrt.get("power_mode"),
        "device": device_name(provider),
        "provider": provider,
        "model_hash": model_hash(lm) if lm is not None else content_hash,
    }


def run_metadata(lm: LoadedModel, cfg: BenchConfig) -> dict:
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **record_metadata(lm),
        "decoder": lm.decoder,
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "os": platform.platform(),
        "recipe": (lm.manifest or {}).get("recipe"),
        "target": (lm.manifest or {}).get("target"),
        "ignore_eos": True,
        "warmups": cfg.warmups,
        "reps": cfg.reps,
        "threads": lm.config.get("model", {}).get("decoder", {}).get("session_options", {}).get("intra_op_num_threads"),
    }


def bench_point(lm: LoadedModel, ids: list[int], cfg: BenchConfig, meta: dict) -> BenchRecord:
    n = len(ids)
    rec = BenchRecord(str(lm.path), lm.provider, n, cfg.gen_tokens, cfg.reps, cfg.warmups, meta=meta)
    limit = lm.context_length if lm.hybrid_limit is None else min(lm.context_length, lm.hybrid_limit)
    if n + cfg.gen_tokens > limit:
        rec.skipped = f"prompt {n} + {cfg.gen_tokens} generated > context {limit}"
        return rec
    opts = GenerationOptions(
        max_tokens=cfg.gen_tokens, temperature=0.0, ignore_eos=True
    )  # greedy, no penalty: timing, not text
    ttfts, decs, e2es = [], [], []
    with PeakRSS() as mem:
        for i in range(cfg.warmups + cfg.reps):
            t0 = time.perf_counter()
            last = None
            for ev in stream_generate(lm, ids, opts):
                last = ev
            e2e = time.perf_counter() - t0
            if i < cfg.warmups:
                continue
            # model_benchmark and Lemonade count a run only if it produced the full length
            if last is None or last.generated_tokens != cfg.gen_tokens:
                continue
            ttfts.append(last.ttft)
            decs.append(last.decode_tps)
            e2es.append(e2e)
    if not ttfts:
        rec.skipped = "no repetition produced the full output length"
        return rec
    t_avg, t_p50, t_std = _stats(ttfts)
    d_avg, d_p50, d_std = _stats(decs)
    e_avg, _, e_std = _stats(e2es)
    rec.reps = len(ttfts)
    rec.ttft_avg_ms, rec.ttft_p50_ms, rec.ttft_std_ms = t_avg * 1e3, t_p50 * 1e3, t_std * 1e3
    rec.prefill_tps = n / t_avg
    rec.decode_tps_avg, rec.decode_tps_p50, rec.decode_tps_std = d_avg, d_p50, d_std
    rec.e2e_avg_s, rec.e2e_std_s = e_avg, e_std
    rec.peak_rss_mb = mem.peak / 1e6
    # tokenization is timed apart from generation (prompts here are token ids already)
    text = lm.tokenizer.decode(ids)
    t0 = time.perf_counter()
    encode_raw(lm, text)
    rec.tokenize_ms = (time.perf_counter() - t0) * 1e3
    return rec


class RecordSink:
    """Appends each finished record to JSON lines and CSV as a whole line, then flushes."""

    def __init__(self, json_path: Path | None, csv_path: Path | None):
        self.json_path, self.csv_path = json_path, csv_path
        header = ",".join(CSV_FIELDS + CSV_META_FIELDS)
        if csv_path and (not csv_path.exists() or csv_path.stat().st_size == 0):
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            with open(csv_path, "w", newline="") as f:
                f.write(header + "\n")
        elif csv_path:
            with open(csv_path, encoding="utf-8") as f:
                first = f.readline().strip()
            if first != header:
                raise OgaNpuError(f"{csv_path} has other columns (an older oga-npu wrote it)", "pass --csv a new file")
        if json_path:
            json_path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, rec: BenchRecord) -> None:
        if self.json_path:
            with open(self.json_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(asdict(rec)) + "\n")
                f.flush()
        if self.csv_path:
            buf = io.StringIO()
            d = asdict(rec)
            csv.writer(buf).writerow(
                [_fmt(d.get(k)) for k in CSV_FIELDS] + [_fmt(rec.meta.get(k)) for k in CSV_META_FIELDS]
            )
            with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
                f.write(buf.getvalue())  # one write: no half row on Ctrl+C
                f.flush()


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def sweep(
    lm: LoadedModel,
    cfg: BenchConfig,
    text: str,
    sink: RecordSink | None = None,
    on_point: Callable[[int, int, BenchRecord | None], None] | None = None,
    label: str | None = None,
) -> list[BenchRecord]:
    cfg.validate()
    meta = run_metadata(lm, cfg)
    if label:
        meta["label"] = label  # `bench plot` names the run by it
    out = []
    for i, n in enumerate(cfg.lengths):
        if on_point:
            on_point(i, n, None)
        rec = bench_point(lm, prompt_ids(lm, n, text), cfg, meta)
        out.append(rec)
        if sink:
            sink.add(rec)
        if on_point:
            on_point(i, n, rec)
    return out


def load_records(path: Path) -> list[BenchRecord]:
    recs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                recs.append(BenchRecord(**json.loads(line)))
            except (ValueError, TypeError) as e:
                raise OgaNpuError(
                    f"{path}: not an oga-npu bench JSON-lines file ({e})",
                    "pass files written by `oga-npu bench --json`",
                ) from e
    return recs


def table(recs: list[BenchRecord]) -> str:
    head = (
        f"{'prompt':>7} {'gen':>5} {'TTFT ms':>10} {'±':>7} {'prefill t/s':>12} {'decode t/s':>11} {'±':>6} "
        f"{'e2e s':>7} {'peak MB':>8}"
    )
    rows = [head]
    for r in recs:
        if r.skipped:
            rows.append(f"{r.prompt_tokens:>7} {r.gen_tokens:>5}  skipped: {r.skipped}")
            continue
        rows.append(
            f"{r.prompt_tokens:>7} {r.gen_tokens:>5} {r.ttft_avg_ms:>10.1f} {r.ttft_std_ms:>7.1f} "
            f"{r.prefill_tps:>12.1f} {r.decode_tps_avg:>11.1f} {r.decode_tps_std:>6.1f} "
            f"{(r.e2e_avg_s or 0):>7.2f} {(r.peak_rss_mb or 0):>8.0f}"
        )
    return "\n".join(rows)


def compare(a: list[BenchRecord], b: list[BenchRecord]) -> str:
    """Ratios B/A per prompt length: TTFT (lower is better) and decode tok/s (higher is better)."""
    bmap = {r.prompt_tokens: r for r in b if not r.skipped}
    rows = [f"{'prompt':>7} {'TTFT A ms':>10} {'TTFT B ms':>10} {'B/A':>6} {'dec A':>8} {'dec B':>8} {'B/A':>6}"]
    for ra in a:
        rb = bmap.get(ra.prompt_tokens)
        if ra.skipped or rb is None:
            continue
        rows.append(
            f"{ra.prompt_tokens:>7} {ra.ttft_avg_ms:>10.1f} {rb.ttft_avg_ms:>10.1f} "
            f"{rb.ttft_avg_ms / ra.ttft_avg_ms:>6.2f} {ra.decode_tps_avg:>8.1f} {rb.decode_tps_avg:>8.1f} "
            f"{rb.decode_tps_avg / ra.decode_tps_avg:>6.2f}"
        )
    return "\n".join(rows)


def run_label(recs: list[BenchRecord], fallback: str) -> str:
    """A run's name in plots: its --label, else the model folder's name."""
    for r in recs:
        if r.meta.get("label"):
            return str(r.meta["label"])
    return Path(recs[0].model).name if recs and recs[0].model else fallback


def plot(runs: dict[str, list[BenchRecord]], out: Path) -> Path:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise OgaNpuError("matplotlib is not installed", "pip install matplotlib") from e
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, recs in runs.items():
        ok = [r for r in recs if not r.skipped]
        xs = [r.prompt_tokens for r in ok]
        ax1.errorbar(
            xs, [r.ttft_avg_ms for r in ok], yerr=[r.ttft_std_ms for r in ok], marker="o", label=label, capsize=3
        )
        ax2.errorbar(
            xs, [r.decode_tps_avg for r in ok], yerr=[r.decode_tps_std for r in ok], marker="o", label=label, capsize=3
        )
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    lengths = sorted({r.prompt_tokens for recs in runs.values() for r in recs if not r.skipped})
    for ax, title, yl in ((ax1, "Time to first token", "TTFT (ms)"), (ax2, "Decode speed", "tokens/s")):
        ax.set_xscale("log", base=2)
        if lengths:  # ticks at the measured lengths, written 128, 256 (not 2^7)
            ax.xaxis.set_major_locator(FixedLocator(lengths))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_locator(NullLocator())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("prompt tokens")
        ax.set_ylabel(yl)
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
