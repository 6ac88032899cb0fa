#!/usr/bin/env python3
"""Decode straight on onnxruntime, without onnxruntime-genai: how fast can a step be?

    python scripts/webgpu_ortloop.py MODEL_DIR [--provider webgpu|cpu] [--prompt 1024]
        [--gen 128] [--no-capture] [--fused [--argmax]] [--stream]

Opens the model's ONNX file with onnxruntime (WebGPU plugin EP or CPU), keeps the KV cache
in static device buffers bound to both the past and present names (the builder's
past_present_share_buffer layout), runs the prefill uncaptured and the decode steps with
graph capture, and times each phase of a step: the input uploads, the run, the read-back.
`--fused` runs the graph of oga_npu.webgpu.graphpass (model.engine.onnx beside model.onnx,
weights shared): one int32 `step` input instead of input_ids + attention_mask, and a
greedy `next_token` output; `--argmax` then reads back that token (4 bytes) instead of the
logits. It also times replays back to back without any read-back (what the GPU and the
replay encoding allow) and a read-back with the GPU idle (the fixed cost of a download).

Prints the greedy tokens so they can be compared with onnxruntime-genai's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class Loop:
    def __init__(
        self,
        model_dir: Path,
        provider: str,
        capture: bool,
        max_len: int,
        argmax: bool,
        extra: dict[str, str],
        fused: bool = False,
        stream: bool = False,
        chain: int = 0,
    ):
        import onnxruntime as ort

        self.ort = ort
        cfg = json.loads((model_dir / "genai_config.json").read_text())["model"]
        dec = cfg["decoder"]
        self.layers = dec["num_hidden_layers"]
        self.kvh = dec["num_key_value_heads"]
        self.hd = dec["head_size"]
        self.vocab = cfg["vocab_size"]
        self.max_len = max_len
        self.argmax = argmax
        self.fused = fused or chain > 0
        self.chain = chain
        fused = self.fused
        if fused:
            from oga_npu.webgpu.graphpass import engine_graph

            path = engine_graph(model_dir / "model.onnx", self.vocab, chain=chain > 0)
        else:
            path = model_dir / "model.onnx"
        so = ort.SessionOptions()
        if provider == "webgpu":
            from oga_npu.webgpu import ep as webgpu

            ok, why = webgpu.available()
            if not ok:
                raise SystemExit(why)
            devs = [d for d in ort.get_ep_devices() if d.ep_name == webgpu.EP_NAME]
            opts = {"enableGraphCapture": "1" if capture else "0", "validationMode": "disabled", **extra}
            so.add_provider_for_devices(devs[:1], opts)
            self.mem = devs[0].memory_info(ort.OrtDeviceMemoryType.DEFAULT)
            self.stream = devs[0].create_sync_stream() if stream else None
            self.sess = ort.InferenceSession(str(path), so)
        else:
            self.mem = None
            self.stream = None
            self.sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.capture = capture and provider == "webgpu"
        self.provider = provider
        ins = {i.name: i for i in self.sess.get_inputs()}
        self.kv_type = np.float16 if "float16" in ins["past_key_values.0.key"].type else np.float32
        outs = {o.name: o for o in self.sess.get_outputs()}
        self.logits_type = np.float16 if "float16" in outs["logits"].type else np.float32
        self.mask_type = np.int32 if fused or "int32" in ins["attention_mask"].type else np.int64

    def dev(self, shape, dtype):
        if self.mem is None:
            return self.ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype))
        return self.ort.OrtValue.ortvalue_from_shape_and_type(shape, dtype, memory_info=self.mem)

    def upload(self, host_value, dev_value):
        if self.mem is None:
            dev_value.update_inplace(host_value.numpy())
        else:
            self.ort.copy_tensors([host_value], [dev_value], self.stream)

    def download(self, dev_value, host_value):
        if self.mem is None:
            return dev_value.numpy()
        self.ort.copy_tensors([dev_value], [host_value], None)
        return host_value.numpy()

    def setup(self):
        ort = self.ort
        self.kv = []
        for i in range(self.layers):
            for kind in ("key", "value"):
                z = np.zeros((1, self.kvh, self.max_len, self.hd), self.kv_type)
                v = self.dev(z.shape, self.kv_type)
                self.upload(ort.OrtValue.ortvalue_from_numpy(z), v)
                self.kv.append((f"past_key_values.{i}.{kind}", f"present.{i}.{kind}", v))
        # decode-step buffers: fixed addresses for the captured graph
        self.h_step = np.zeros((1, 2), np.float32)
        self.h_step_v = ort.OrtValue.ortvalue_from_numpy(self.h_step)
        self.d_step = self.dev((1, 2), np.float32)
        self.h_ids = np.zeros((1, 1), np.int64)
        self.h_ids_v = ort.OrtValue.ortvalue_from_numpy(self.h_ids)
        self.d_ids = self.dev((1, 1), np.int64)
        self.h_mask = np.zeros((1, self.max_len), self.mask_type)
        self.h_mask_v = ort.OrtValue.ortvalue_from_numpy(self.h_mask)
        self.d_mask = self.dev((1, self.max_len), self.mask_type)
        self.d_logits = self.dev((1, 1, self.vocab), self.logits_type)
        self.h_logits = np.zeros((1, 1, self.vocab), self.logits_type)
        self.h_logits_v = ort.OrtValue.ortvalue_from_numpy(self.h_logits)
        if self.fused:  # the graph has next_token (int32); it is read only with --argmax
            self.d_next = self.dev((1, 1), np.int32)
            self.h_next = np.zeros((1, 1), np.int32)
            self.h_next_v = ort.OrtValue.ortvalue_from_numpy(self.h_next)
        if self.chain:
            self.d_hist = self.dev((1, self.max_len), np.float32)
            self.h_hist = np.zeros((1, self.max_len), np.float32)
            self.h_hist_v = ort.OrtValue.ortvalue_from_numpy(self.h_hist)
        if self.fused:
            self.decode_binding = self.binding({"step": self.d_step})
        else:
            self.decode_binding = self.binding({"input_ids": self.d_ids, "attention_mask": self.d_mask})
        self.decode_opts = ort.RunOptions()
        self.decode_opts.add_run_config_entry("gpu_graph_id", "1")
        self.prefill_opts = ort.RunOptions()
        self.prefill_opts.add_run_config_entry("gpu_graph_id", "-1")

    def binding(self, inputs: dict):
        """IOBinding of `inputs` plus what every run shares: the KV buffers (past and present
        alike), the logits, and for the fused graph next_token (and the chain's buffers)."""
        b = self.sess.io_binding()
        for name, v in inputs.items():
            b.bind_ortvalue_input(name, v)
        if self.chain:
            b.bind_ortvalue_input("history", self.d_hist)
            b.bind_ortvalue_output("history_next", self.d_hist)
            b.bind_ortvalue_output("step_next", self.d_step)
        for past, present, v in self.kv:
            b.bind_ortvalue_input(past, v)
            b.bind_ortvalue_output(present, v)
        b.bind_ortvalue_output("logits", self.d_logits)
        if self.fused:
            b.bind_ortvalue_output("next_token", self.d_next)
        return b

    def prefill(self, ids: list[int]) -> int:
        ort = self.ort
        n = len(ids)
        if self.fused:
            d_step = self.dev((1, n + 1), np.float32)
            self.upload(ort.OrtValue.ortvalue_from_numpy(np.array([ids + [n]], np.float32)), d_step)
            b = self.binding({"step": d_step})
        else:
            self.h_mask[:] = 0
            self.h_mask[0, :n] = 1
            self.upload(self.h_mask_v, self.d_mask)
            d_ids = self.dev((1, n), np.int64)
            self.upload(ort.OrtValue.ortvalue_from_numpy(np.array([ids], np.int64)), d_ids)
            b = self.binding({"input_ids": d_ids, "attention_mask": self.d_mask})
        self.sess.run_with_iobinding(b, self.prefill_opts)
        self.total = n
        return self.read_token()

    def read_token(self) -> int:
        if self.argmax:
            return int(self.download(self.d_next, self.h_next_v)[0, 0])
        return int(np.argmax(self.download(self.d_logits, self.h_logits_v)[0, -1]))

    def step(self, tok: int, t: dict | None = None) -> int:
        a = time.perf_counter()
        if self.fused:
            self.total += 1
            self.h_step[0, 0] = tok
            self.h_step[0, 1] = self.total
            self.upload(self.h_step_v, self.d_step)
            b = time.perf_counter()
        else:
            self.h_ids[0, 0] = tok
            self.upload(self.h_ids_v, self.d_ids)
            b = time.perf_counter()
            self.h_mask[0, self.total] = 1
            self.total += 1
            self.upload(self.h_mask_v, self.d_mask)
        c = time.perf_counter()
        self.sess.run_with_iobinding(self.decode_binding, self.decode_opts)
        d = time.perf_counter()
        nxt = self.read_token()
        e = time.perf_counter()
        if t is not None:
            for k, x in (("ids", b - a), ("mask", c - b), ("run", d - c), ("read", e - d)):
                t.setdefault(k, []).append(x * 1e3)
        return nxt

    def chain_steps(self, k: int, t: dict | None = None) -> list[int]:
        """k greedy steps back to back on the device, then one read of the token history."""
        a = time.perf_counter()
        for _ in range(k):
            self.sess.run_with_iobinding(self.decode_binding, self.decode_opts)
        b = time.perf_counter()
        hist = self.download(self.d_hist, self.h_hist_v)
        c = time.perf_counter()
        first = self.total + 1
        self.total += k
        if t is not None:
            t.setdefault("runs", []).append((b - a) * 1e3 / k)
            t.setdefault("read", []).append((c - b) * 1e3)
        return [int(x) for x in hist[0, first : first + k]]

    def idle_read_ms(self, n: int = 50) -> float:
        """A read-back when the GPU has nothing left to do: the fixed cost of a download."""
        self.read_token()
        a = time.perf_counter()
        for _ in range(n):
            self.read_token()
        return (time.perf_counter() - a) / n * 1e3

    def replay_only(self, n: int) -> float:
        """n decode runs back to back (same position), one read-back at the end: ms per run."""
        a = time.perf_counter()
        for _ in range(n):
            self.sess.run_with_iobinding(self.decode_binding, self.decode_opts)
        self.read_token()
        return (time.perf_counter() - a) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--provider", default="webgpu", choices=["webgpu", "cpu"])
    ap.add_argument("--prompt", type=int, default=1024)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-len", type=int, default=0, help="KV buffer length (default prompt+gen)")
    ap.add_argument("--no-capture", dest="capture", action="store_false")
    ap.add_argument("--argmax", action="store_true", help="read the greedy token, not the logits")
    ap.add_argument("--fused", action="store_true", help="graph passes: one step input, next_token output")
    ap.add_argument("--stream", action="store_true", help="uploads on an OrtSyncStream")
    ap.add_argument(
        "--chain",
        type=int,
        default=0,
        metavar="K",
        help="greedy steps chained on the device, the tokens read every K steps",
    )
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--ids", default="", help="comma-separated prompt ids (default: a fixed pattern)")
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    if args.argmax and not args.fused:
        ap.error("--argmax needs --fused")
    if args.chain:
        args.fused = args.argmax = True
    max_len = args.max_len or args.prompt + args.gen + 1
    loop = Loop(
        args.model,
        args.provider,
        args.capture,
        max_len,
        args.argmax,
        dict(kv.split("=", 1) for kv in args.set),
        args.fused,
        args.stream,
        args.chain,
    )
    ids = [int(x) for x in args.ids.split(",")] if args.ids else [100 + (i % 1000) for i in range(args.prompt)]
    loop.setup()
    res = []
    for rep in range(args.reps + 1):
        t0 = time.perf_counter()
        tok = loop.prefill(ids)
        ttft = (time.perf_counter() - t0) * 1e3
        toks = [tok]
        t: dict = {}
        steps = []
        if args.chain:
            left = args.gen - 1
            while left > 0:
                k = min(args.chain, left)
                a = time.perf_counter()
                got = loop.chain_steps(k, t)
                steps += [(time.perf_counter() - a) / k] * k
                toks += got
                left -= k
        else:
            for _ in range(args.gen - 1):
                a = time.perf_counter()
                tok = loop.step(tok, t)
                steps.append(time.perf_counter() - a)
                toks.append(tok)
        if rep == 0:
            continue  # warm-up: shaders, capture
        r = {
            "ttft_ms": ttft,
            "decode_tps": len(steps) / sum(steps),
            "step_median_ms": statistics.median(steps) * 1e3,
            **{f"{k}_ms": statistics.median(v) for k, v in t.items()},
        }
        res.append(r)
    best = max(res, key=lambda r: r["decode_tps"])
    med = {k: statistics.median(r[k] for r in res) for k in res[0]}
    # chained runs advance the position themselves: no replays past the buffers' end
    replay = loop.replay_only(200) if (args.capture or args.provider == "cpu") and not args.chain else None
    idle = loop.idle_read_ms()
    print(
        json.dumps(
            {
                "label": args.label,
                "provider": args.provider,
                "capture": loop.capture,
                "argmax": args.argmax,
                "fused": args.fused,
                "chain": args.chain,
                "stream": args.stream,
                "prompt": len(ids),
                "gen": args.gen,
                "median": med,
                "best_tps": best["decode_tps"],
                "replay_only_ms": replay,
                "idle_read_ms": idle,
                "tokens": toks[:16],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
