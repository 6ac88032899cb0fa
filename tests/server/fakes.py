"""A fake model for the server's unit tests: no OGA, no subprocess.

`FakeLM` has what ServedModel reads; `FakeDecoder` stands in for `stream_generate` and
records how far each generation got (the worker's thread runs it)."""

from __future__ import annotations

import threading
from pathlib import Path

from oga_npu.generate import GenerationEvent


class FakeLM:
    decoder = "fake"  # not "oga": no guided output probe
    provider = "cpu"
    context_length = 64
    hybrid_limit = None

    def __init__(self, path: Path | str = ".", manifest: dict | None = None):
        self.path, self.manifest = Path(path), manifest or {}


class FakeDecoder:
    """Yields `n` one-character tokens; with `gate`, each token waits for it to be set; with
    `permits`, each token takes one (so a test can close a stream mid-way and see where the
    worker stopped)."""

    def __init__(
        self,
        n: int = 5,
        gate: threading.Event | None = None,
        fail_at: int | None = None,
        error: BaseException | None = None,
        permits: threading.Semaphore | None = None,
    ):
        self.n, self.gate, self.fail_at, self.error, self.permits = n, gate, fail_at, error, permits
        self.produced: list[int] = []  # tokens yielded, per call: the count
        self.closed = threading.Event()  # the generator was closed (the worker's `it.close()`)

    def __call__(self, lm, ids, opts, cache=None):
        self.produced.append(0)
        try:
            for i in range(self.n):
                if self.gate is not None and not self.gate.wait(10):
                    raise TimeoutError("the test never opened the gate")
                if self.permits is not None and not self.permits.acquire(timeout=10):
                    raise TimeoutError("the test gave no permit")
                if self.fail_at == i:
                    raise self.error
                self.produced[-1] += 1
                last = i == self.n - 1
                yield GenerationEvent(
                    text=chr(ord("a") + i),
                    token=i,
                    prompt_tokens=len(ids),
                    generated_tokens=i + 1,
                    finish_reason="length" if last else None,
                    ttft=0.01 if i == 0 else None,
                    decode_tps=100.0 if last else None,
                )
        finally:
            self.closed.set()
