#!/usr/bin/env python3
"""Benchmarks for KV reuse and `oga-npu serve` (numbers for the notes, not timed tests).

    python scripts/bench_serve.py reuse  -m MODEL [--turns 10]          # chat turn TTFT: reuse vs re-prefill
    python scripts/bench_serve.py decode -m MODEL [--gen 128 --prompt 128]  # server stream vs in-process
    python scripts/bench_serve.py soak   -m MODEL [--requests 1000 --drop 0.2]

reuse:  a 10-turn chat in process (ChatSession, temperature 0) twice: with the KV cache
        and with a full prefill each turn; prints TTFT per turn and the turn-N ratio.
decode: starts `oga-npu serve` on a free port, one streaming client (openai, or --client raw), EOS
        ignored, fixed output length; decode tok/s from the client's token times and the
        server's /v1/stats, next to the in-process decode loop (what `oga-npu bench` runs).
soak:   sequential requests against one server, a share of them dropped after two
        chunks; counts 5xx and the server's resident memory at request 100 and at the end.
Prints one JSON object per run to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

QUESTIONS = [
    "Explain in two sentences what a compiler does.",
    "What is the difference between a list and a tuple in Python?",
    "Why is the sky blue?",
    "Give me three tips for writing clear documentation.",
    "What does HTTP stand for?",
    "How does a hash table handle collisions?",
    "Name two sorting algorithms and their complexity.",
    "What is a closure in programming?",
    "Summarize our conversation so far in one sentence.",
    "What should I learn next, and why?",
    "What is the capital of France?",
    "Write a haiku about the sea.",
]


def bench_reuse(args) -> dict:
    from oga_npu.chat import ChatSession
    from oga_npu.generate import GenerationOptions
    from oga_npu.model import load

    lm = load(args.model)
    opts = GenerationOptions(max_tokens=args.gen, temperature=0)
    runs = {}
    for mode in ("reuse", "full"):
        s = ChatSession(lm, opts, system="You are a helpful assistant.", reuse=(mode == "reuse"))
        turns = []
        for i in range(args.turns):
            for _ in s.send(QUESTIONS[i % len(QUESTIONS)]):
                pass
            turns.append(
                {
                    "turn": i + 1,
                    "prompt_tokens": s.last.prompt_tokens,
                    "cached_tokens": s.last.cached_tokens,
                    "ttft_ms": round(s.last.ttft * 1000, 1),
                }
            )
        runs[mode] = turns
    last_r, last_f = runs["reuse"][-1], runs["full"][-1]
    return {
        "bench": "reuse",
        "model": str(args.model),
        "provider": lm.provider,
        "turns": args.turns,
        "turn_n_ttft_ms": {"reuse": last_r["ttft_ms"], "full": last_f["ttft_ms"]},
        "speedup": round(last_f["ttft_ms"] / last_r["ttft_ms"], 2),
        "per_turn": runs,
    }


class Server:
    def __init__(self, model: Path, *extra: str):
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log = open(f"/tmp/bench-serve-{self.port}.log", "w")  # noqa: SIM115 - the server's log, closed by stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "oga_npu", "serve", "-m", str(model), "--port", str(self.port), *extra],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        import urllib.request

        for _ in range(600):
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise SystemExit(f"server exited {self.proc.returncode}, see {self.log.name}")
            time.sleep(0.2)
        raise SystemExit("server not ready")

    def stats(self) -> dict:
        import urllib.request

        with urllib.request.urlopen(self.base + "/v1/stats", timeout=10) as r:
            return json.loads(r.read())

    def rss_mb(self) -> float:
        import psutil

        return psutil.Process(self.proc.pid).memory_info().rss / 2**20

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)


def _prompt_text(lm, n: int) -> str:
    from oga_npu.textdata import load_text

    text = load_text("builtin")
    ids = lm.tokenizer.encode(text[:20000])[:n]
    return lm.tokenizer.decode(ids)


def _openai_stream(client, srv, name, prompt, gen) -> tuple[list[float], int]:
    """The official client: each SSE chunk becomes a pydantic object (about 0.5 ms of CPU a
    chunk measured here, which on 2 cores is taken from the server's decode threads)."""
    times, n = [], 0
    stream = client.completions.create(
        model=name,
        prompt=prompt,
        max_tokens=gen,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            times.append(time.perf_counter())
        if chunk.usage:
            n = chunk.usage.completion_tokens
    return times, n


def _raw_stream(_client, srv, name, prompt, gen) -> tuple[list[float], int]:
    """A minimal SSE reader (http.client, one json.loads a chunk): what the server costs
    without the client's own parsing."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=120)
    body = json.dumps(
        {
            "model": name,
            "prompt": prompt,
            "max_tokens": gen,
            "temperature": 0,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }
    )
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    times, n = [], 0
    for line in resp:
        if not line.startswith(b"data: {"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("choices") and chunk["choices"][0].get("text"):
            times.append(time.perf_counter())
        if chunk.get("usage"):
            n = chunk["usage"]["completion_tokens"]
    conn.close()
    return times, n


def bench_decode(args) -> dict:
    """In-process and server runs alternate (rep by rep), so load drift on a shared machine
    hits both alike. The in-process run is what `oga-npu bench` times (stream_generate,
    EOS ignored, same prompt and length)."""
    import openai

    from oga_npu.generate import GenerationOptions, stream_generate
    from oga_npu.model import load

    lm = load(args.model)
    prompt = _prompt_text(lm, args.prompt)
    opts = GenerationOptions(max_tokens=args.gen, temperature=0, ignore_eos=True)
    srv = Server(args.model, "--stream-interval", str(args.stream_interval))
    local, client_tps, server_tps = [], [], []
    try:
        client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", max_retries=0)
        name = Path(args.model).resolve().name
        for i in range(args.reps + 1):
            *_, last = stream_generate(lm, prompt, opts, raw=True)
            times, n = (_raw_stream if args.client == "raw" else _openai_stream)(client, srv, name, prompt, args.gen)
            if i:  # rep 0 is the warmup
                local.append(last.decode_tps)
                # chunks carry whole characters: the tokens after the first over the time they took
                client_tps.append((n - 1) / (times[-1] - times[0]))
                server_tps.append(srv.stats()["last_request"]["decode_tokens_per_s"])
    finally:
        srv.stop()
    m = statistics.mean
    return {
        "bench": "decode",
        "model": str(args.model),
        "client": args.client,
        "stream_interval_ms": args.stream_interval,
        "prompt_tokens": args.prompt,
        "gen": args.gen,
        "reps": args.reps,
        "in_process_tps": round(m(local), 1),
        "server_client_tps": round(m(client_tps), 1),
        "server_reported_tps": round(m(server_tps), 1),
        "client_vs_in_process": round(m(client_tps) / m(local), 3),
        "median_ratio_of_pairs": round(statistics.median(c / i for c, i in zip(client_tps, local)), 3),
        "per_rep": {"in_process": [round(x, 1) for x in local], "client": [round(x, 1) for x in client_tps]},
    }


def bench_soak(args) -> dict:
    import openai

    srv = Server(args.model, "--max-queue", "4")
    rng = random.Random(0)
    name = Path(args.model).resolve().name
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", max_retries=0, timeout=120)
    codes: dict[str, int] = {}
    rss = {}
    dropped = 0
    history: list[dict] = []
    t0 = time.time()
    try:
        for i in range(1, args.requests + 1):
            if len(history) > 8 or rng.random() < 0.2:
                history = []  # a new conversation now and then
            msgs = history + [{"role": "user", "content": rng.choice(QUESTIONS)}]
            drop = rng.random() < args.drop
            try:
                stream = client.chat.completions.create(
                    model=name, messages=msgs, max_tokens=args.gen, stream=True, temperature=0.7
                )
                text = []
                for j, chunk in enumerate(stream):
                    if chunk.choices and chunk.choices[0].delta.content:
                        text.append(chunk.choices[0].delta.content)
                    if drop and j == 2:
                        stream.close()
                        dropped += 1
                        break
                codes["200"] = codes.get("200", 0) + 1
                if not drop:
                    history = msgs + [{"role": "assistant", "content": "".join(text)}]
            except openai.APIStatusError as e:
                codes[str(e.status_code)] = codes.get(str(e.status_code), 0) + 1
            if i in (100, args.requests) or i % 100 == 0:
                rss[i] = round(srv.rss_mb(), 1)
                print(f"request {i}: rss {rss[i]} MB, {codes}", file=sys.stderr, flush=True)
        stats = srv.stats()
    finally:
        srv.stop()
    first = rss.get(100)
    last = rss[args.requests]
    return {
        "bench": "soak",
        "model": str(args.model),
        "requests": args.requests,
        "dropped": dropped,
        "status_counts": codes,
        "errors_5xx": sum(v for k, v in codes.items() if k.startswith("5")),
        "rss_mb": rss,
        "rss_growth_100_to_end_pct": round(100 * (last - first) / first, 2) if first else None,
        "seconds": round(time.time() - t0, 1),
        "kv_cache": stats["models"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["reuse", "decode", "soak"])
    ap.add_argument("-m", "--model", type=Path, required=True)
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--gen", type=int, default=None, help="tokens per answer (reuse 48, decode 128, soak 24)")
    ap.add_argument("--prompt", type=int, default=128, help="decode: prompt tokens")
    ap.add_argument(
        "--client",
        choices=["openai", "raw"],
        default="openai",
        help="decode: the openai package, or a minimal SSE reader (the server's own cost)",
    )
    ap.add_argument(
        "--stream-interval",
        type=float,
        default=30,
        help="decode: the server's --stream-interval (ms; 0: a chunk per token)",
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--drop", type=float, default=0.2)
    args = ap.parse_args()
    args.gen = args.gen or {"reuse": 48, "decode": 128, "soak": 24}[args.what]
    fn = {"reuse": bench_reuse, "decode": bench_decode, "soak": bench_soak}[args.what]
    print(json.dumps(fn(args)))


if __name__ == "__main__":
    main()
