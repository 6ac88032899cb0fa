#!/usr/bin/env python3
"""Resident memory of one model folder against issue 31's budget (folder + KV + 300 MB).

    python scripts/memory_probe.py FOLDER [--prompt 1024] [--gen 32] [--threads N]

One process, three phases: after the imports (`base`), `oga_npu.model.load(FOLDER)` (peak
while loading, `steady` 1 s after), and one greedy generation of a `--prompt`-token prompt
plus `--gen` tokens (`prompt`: peak while generating). RSS is sampled every 5 ms in a
thread (and the kernel's VmHWM is read at the end: the true peak of the whole process).
After each phase /proc/self/smaps_rollup splits the RSS into anonymous memory (heap: the
prepacked weights, the KV cache, activations) and file pages (memory-mapped
model.onnx.data that was touched and is still mapped).

The budget: the folder's model files (model.onnx + its data; what `du` of the prepared
folder's model shows, stages/ and logs/ not counted) + the KV cache onnxruntime-genai
allocates for max_length = prompt + gen (every layer, key and value, past dtype) + 300 MB.
Prints one JSON object on stdout; progress on stderr. Run it once per folder, in a fresh
process (it is one): the numbers are of this process only.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MB = 1e6
ELEM_BYTES = {1: 4, 10: 2, 16: 2, 11: 8}  # onnx TensorProto: FLOAT, FLOAT16, BFLOAT16, DOUBLE


def status(key: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def rollup() -> dict:
    """RSS split: anonymous (heap) and file-backed pages, bytes."""
    out = {}
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            p = line.split()
            if p[0] in ("Rss:", "Anonymous:"):
                out[p[0][:-1].lower()] = int(p[1]) * 1024
    out["file"] = out.get("rss", 0) - out.get("anonymous", 0)
    return out


class Sampler:
    """Peak VmRSS in a 5 ms thread while the block runs."""

    def __enter__(self):
        self.peak, self._stop = status("VmRSS"), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, status("VmRSS"))

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, status("VmRSS"))


def folder_bytes(path: Path) -> int:
    from oga_npu.model import external_data_files

    cfg = json.loads((path / "genai_config.json").read_text())
    onnx_path = path / cfg["model"]["decoder"]["filename"]
    names = {onnx_path.name, *external_data_files(onnx_path)}
    return sum((path / n).stat().st_size for n in names if (path / n).is_file())


def kv_bytes(lm, max_length: int) -> int:
    """KV cache onnxruntime-genai allocates: layers x (key + value) x kv heads x head size x
    max_length x the past input's element size (past_present_share_buffer: one buffer)."""
    import onnx

    dec = lm.config["model"]["decoder"]
    m = onnx.load(str(lm.files_path / dec["filename"]), load_external_data=False)
    past = dec["inputs"]["past_key_names"] % 0
    elem = next((i.type.tensor_type.elem_type for i in m.graph.input if i.name == past), 1)
    per_pos = dec["num_hidden_layers"] * 2 * dec["num_key_value_heads"] * dec["head_size"]
    return per_pos * max_length * ELEM_BYTES.get(elem, 4)


def phase(name: str, sampler: Sampler | None = None) -> dict:
    r = rollup()
    row = {"rss_mb": r["rss"] / MB, "anon_mb": r["anonymous"] / MB, "file_mb": r["file"] / MB}
    if sampler is not None:
        row["peak_mb"] = sampler.peak / MB
    print(f"{name:>7}: " + "  ".join(f"{k} {v:.0f}" for k, v in row.items()), file=sys.stderr)
    return row


def prompt_ids(lm, n: int) -> list[int]:
    from oga_npu.generate import encode_raw

    text = "The quick brown fox jumps over the lazy dog while the band plays on. "
    ids = encode_raw(lm, text * (n // 8 + 8))
    return ids[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--prompt", type=int, default=1024, help="prompt tokens (0: load only)")
    ap.add_argument("--gen", type=int, default=32, help="generated tokens")
    ap.add_argument(
        "--keep-mapped",
        action="store_true",
        help="skip load()'s release of the mapped model pages (to measure what it saves)",
    )
    ap.add_argument("--slack-mb", type=float, default=300.0, help="the budget's allowance over folder + KV")
    args = ap.parse_args()
    import onnxruntime_genai  # noqa: F401  (its import is part of the base, not of the load)

    from oga_npu import model
    from oga_npu.generate import GenerationOptions, stream_generate

    if args.keep_mapped:
        model.release_mapped_pages = lambda folder: 0

    out: dict = {"folder": str(args.folder), "prompt": args.prompt, "gen": args.gen, "keep_mapped": args.keep_mapped}
    out["base"] = phase("base")
    t0 = time.perf_counter()
    with Sampler() as s:
        lm = model.load(args.folder)
    out["load_s"] = time.perf_counter() - t0
    out["load"] = phase("load", s)
    time.sleep(1.0)
    out["steady"] = phase("steady")
    out["folder_mb"] = folder_bytes(args.folder) / MB
    out["opened_mb"] = folder_bytes(lm.files_path) / MB
    out["kv_mb"] = 0.0
    if args.prompt > 0:
        ids = prompt_ids(lm, args.prompt)
        opts = GenerationOptions(max_tokens=args.gen, temperature=0.0, ignore_eos=True)
        with Sampler() as s:
            events = list(stream_generate(lm, ids, opts))
        out["prompt_tokens"] = len(ids)
        out["generated"] = events[-1].generated_tokens if events else 0
        out["prompt_phase"] = phase("prompt", s)
        out["kv_mb"] = kv_bytes(lm, lm.kv_length(len(ids) + args.gen)) / MB
    out["peak_mb"] = status("VmHWM") / MB
    out["budget_mb"] = out["folder_mb"] + out["kv_mb"] + args.slack_mb
    out["within_budget"] = out["peak_mb"] <= out["budget_mb"]
    print(
        f"peak {out['peak_mb']:.0f} MB; budget {out['budget_mb']:.0f} MB = folder {out['folder_mb']:.0f}"
        f" + KV {out['kv_mb']:.0f} + {args.slack_mb:.0f} ({'within' if out['within_budget'] else 'over'})",
        file=sys.stderr,
    )
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    os.environ.setdefault("OGA_NPU_LOG", "warning")
    main()
