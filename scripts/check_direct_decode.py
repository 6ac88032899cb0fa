#!/usr/bin/env python3
"""Direct decoding vs onnxruntime-genai's Generator, token for token, on one model folder.

    python scripts/check_direct_decode.py MODEL_DIR [--provider cpu]

Greedy, three prompt/length pairs. For a webgpu model it also checks a copy with graph
capture off (hard links and an edited genai_config.json, next to MODEL_DIR). Exits 1 if
any pair differs. On the lent H200 (SmolLM2's shape, random weights) all six were
identical. `--provider cpu` runs a webgpu folder on the CPU provider (as the tests do).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from oga_npu.generate import GenerationOptions, stream_generate
from oga_npu.model import load


def tokens(lm, ids: list[int], gen: int) -> list[int]:
    opts = GenerationOptions(max_tokens=gen, temperature=0.0, ignore_eos=True)
    return [e.token for e in stream_generate(lm, ids, opts) if e.token is not None]


def capture_off_copy(src: Path) -> Path | None:
    cfg = json.loads((src / "genai_config.json").read_text())
    entries = cfg["model"]["decoder"].get("session_options", {}).get("provider_options", [])
    if not entries or "webgpu" not in entries[0]:
        return None
    dst = src.parent / (src.name + "-nocapture")
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    for f in src.iterdir():  # a foreign folder: no manifest, so the edited config is accepted
        if f.is_file() and f.name not in ("oga_npu_manifest.json", "prepare.json", "genai_config.json"):
            os.link(f, dst / f.name)
    entries[0]["webgpu"]["enableGraphCapture"] = "0"
    (dst / "genai_config.json").write_text(json.dumps(cfg, indent=2))
    return dst


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--provider", default=None)
    args = ap.parse_args()
    folders = {"as built": args.model}
    off = capture_off_copy(args.model)
    if off is not None:
        folders["capture off"] = off
    bad = 0
    for name, folder in folders.items():
        oga = load(folder, provider=args.provider, decoder="oga")
        direct = load(folder, provider=args.provider, decoder="direct")
        for n, gen in ((17, 200), (300, 64), (5, 40)):
            ids = [100 + (i * 7) % 900 for i in range(n)]
            a, b = tokens(oga, ids, gen), tokens(direct, ids, gen)
            diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
            bad += a != b
            print(
                f"{name} ({direct.provider}): prompt {n}, {gen} generated: "
                f"{'identical' if a == b else f'differ from token {diff}'} ({len(a)} / {len(b)})"
            )
        del oga, direct
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
