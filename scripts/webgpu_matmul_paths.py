#!/usr/bin/env python3
"""Which MatMulNBits forms have a fast path: one node's time by bits (4/8) and block (16/32),
against a float16 MatMul, at 1 / 128 / 1024 rows, on WebGPU (or the CPU). gguf-native holds
Q6_K as 8 bits with block 16 (its scales are per 16) and Q4_K_M's prefill on WebGPU is slow
(docs/performance.md, WebGPU section): this tells whether the block size, the bit width or
both leave the fast kernels.

    python scripts/webgpu_matmul_paths.py [--provider webgpu|cpu] [--dim 4096] [--rows 1,128,1024]

Each form is a chain of --chain nodes of DIM x DIM (random codes, scales, uint8 zero points;
float16 io, accuracy_level 4) so the input and output copies are paid once; a node's time is
(t(chain) - t(1)) / (chain - 1), median of --reps runs after warmups.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from webgpu_gguf_ops import session


def chain_model(dim: int, n: int, bits: int | None, block: int, rng):
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    x = "x"
    for i in range(n):
        y = "y" if i == n - 1 else f"h{i}"
        if bits is None:
            w = (rng.standard_normal((dim, dim)) / np.sqrt(dim)).astype(np.float16)
            inits.append(numpy_helper.from_array(w, f"w{i}"))
            nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [y]))
        else:
            nb = dim // block
            codes = rng.integers(0, 256, (dim, nb, block * bits // 8), dtype=np.uint8)
            scales = (rng.random((dim, nb)) * 0.02 / (1 << bits)).astype(np.float16)
            zp = rng.integers(0, 256, (dim, (nb * bits + 7) // 8), dtype=np.uint8)
            inits += [
                numpy_helper.from_array(codes, f"b{i}"),
                numpy_helper.from_array(scales.reshape(-1), f"s{i}"),
                numpy_helper.from_array(zp.reshape(-1), f"z{i}"),
            ]
            nodes.append(
                helper.make_node(
                    "MatMulNBits",
                    [x, f"b{i}", f"s{i}", f"z{i}"],
                    [y],
                    domain="com.microsoft",
                    K=dim,
                    N=dim,
                    bits=bits,
                    block_size=block,
                    accuracy_level=4,
                )
            )
        x = y
    g = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, ["M", dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, ["M", dim])],
        inits,
    )
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])


def timed(sess, x, reps: int) -> float:
    for _ in range(3):
        sess.run(None, {"x": x})
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        sess.run(None, {"x": x})
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--provider", default="webgpu", choices=["webgpu", "cpu"])
    ap.add_argument("--dim", type=int, default=4096)
    ap.add_argument("--rows", default="1,128,1024")
    ap.add_argument("--chain", type=int, default=8)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    rows = [int(r) for r in args.rows.split(",")]
    rng = np.random.default_rng(0)
    forms = [
        ("fp16 MatMul", None, 0),
        ("4 bits, block 32", 4, 32),
        ("4 bits, block 16", 4, 16),
        ("8 bits, block 32", 8, 32),
        ("8 bits, block 16", 8, 16),
    ]
    print(f"{args.provider}: one {args.dim} x {args.dim} node, ms (TFLOP/s), chain of {args.chain}")
    print("| form | " + " | ".join(f"M={m}" for m in rows) + " |")
    print("|---|" + "---|" * len(rows))
    for name, bits, block in forms:
        one = session(chain_model(args.dim, 1, bits, block, rng), args.provider)
        many = session(chain_model(args.dim, args.chain, bits, block, rng), args.provider)
        cells = []
        for m in rows:
            x = (rng.standard_normal((m, args.dim)) * 0.1).astype(np.float16)
            t = max(1e-9, (timed(many, x, args.reps) - timed(one, x, args.reps)) / (args.chain - 1))
            cells.append(f"{t * 1e3:.3f} ({2 * m * args.dim * args.dim / t / 1e12:.2f})")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        del one, many
    return 0


if __name__ == "__main__":
    sys.exit(main())
