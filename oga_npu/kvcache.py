"""KV reuse across turns: a model keeps the Generator (and so the KV cache) of its last
conversation, and a request whose tokens start with that conversation's tokens prefills
only what is new.

onnxruntime-genai (0.9.2 and later) continues a sequence with `Generator.rewind_to(n)` followed by
`append_tokens(rest)`: positions < n keep their KV, the rest is prefilled. The usual chat
turn (the earlier messages, the answer, a new user message) matches the cached tokens up
to the end of the answer; a different conversation matches little or nothing and gets a
full prefill in a fresh Generator.

Rules (one cached conversation per model, the last one):
- reuse needs the same sampling settings as the cached Generator (search options are
  fixed when a Generator is made), no seed with sampling (a seed must give the same
  answer every time, so it starts from a fresh Generator), no guidance (its grammar
  state belongs to one answer) and room for prompt + max_tokens in the Generator;
- at least one prompt token is always prefilled (the model needs logits to start from);
- providers: onnxruntime-genai continues sequences on cpu, cuda and webgpu (its chat
  examples rely on it); dml and ryzenai (NPU hybrid) models and the direct WebGPU engine
  (engine.py: static prefill from position 0) get a full prefill every time, and so do
  sliding-window models (their windowed layers keep only the last W positions).
  `reuse_support` says which, and /v1/models and /v1/stats report it; so does an
  onnxruntime-genai without `Generator.rewind_to` (capabilities.py: decided by the API,
  not the version; every verified version, 0.9.2 to 0.18, has it).

At temperature 0 an answer after reuse equals a fresh prefill's (tests/test_kvcache.py),
up to the runtime's own chunked-vs-whole prefill rounding.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from .model import LoadedModel, append_prompt

CONTINUING_PROVIDERS = ("cpu", "cuda", "webgpu")
MIN_CAPACITY = 2048  # positions a cached Generator is made with at least (grown on demand)


def reuse_support(lm: LoadedModel) -> tuple[bool, str]:
    """Whether this loaded model can continue a cached sequence, and why not."""
    from .capabilities import capabilities

    if lm.decoder != "oga":
        return False, "direct WebGPU decoding prefills from position 0: full prefill every turn"
    caps = capabilities()
    if not caps.rewind:
        return False, caps.reuse_note()
    if getattr(lm, "sliding_window", None):
        return False, "a sliding-window KV cache drops old positions, so it cannot rewind: full prefill every turn"
    if lm.provider not in CONTINUING_PROVIDERS:
        return False, (
            f"onnxruntime-genai does not document sequence continuation on {lm.provider}: full prefill every turn"
        )
    if lm.provider != "cpu":
        return True, (
            f"onnxruntime-genai rewind_to + append_tokens (documented for {lm.provider}; "
            "oga-npu's tests check it on cpu only)"
        )
    return True, "onnxruntime-genai rewind_to + append_tokens"


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _settings(opts) -> object:
    """What must match for a Generator to be reused: everything but the per-request length and stops."""
    return dataclasses.replace(opts, max_tokens=1, stop=())


@dataclasses.dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    cached_tokens: int = 0  # total prompt tokens not prefilled thanks to reuse


class PromptCache:
    """The last conversation's Generator for one model. Not shared between threads at
    once: the server runs one request per model at a time, chat is one user."""

    def __init__(self, lm: LoadedModel):
        self.lm = lm
        self.enabled, self.why = reuse_support(lm)
        self._gen = None
        self._settings = None
        self._capacity = 0
        self._lock = threading.Lock()
        self.stats = CacheStats()

    def reusable(self, opts) -> bool:
        return (
            self.enabled
            and not getattr(opts, "guidance", None)
            and not opts.ignore_eos
            and not (opts.seed is not None and (opts.temperature or 0) > 0)
        )

    def acquire(self, ids: list[int], opts, make: Callable[[list[int], int], object]) -> tuple[object | None, int]:
        """A Generator with `ids` appended, and how many of them were reused from the cache.
        (None, 0) when this request does not use the cache (the caller makes its own).
        `make(ids, max_length)` builds and prefills a fresh onnxruntime-genai Generator."""
        if not self.reusable(opts):
            return None, 0
        with self._lock:
            gen, self._gen = self._gen, None  # taken: a failure mid-way leaves no half-state behind
        needed = len(ids) + opts.max_tokens
        if gen is not None and self._settings == _settings(opts) and needed <= self._capacity:
            seq = [int(t) for t in gen.get_sequence(0)]
            keep = min(common_prefix(seq, ids), len(ids) - 1)
            if keep > 0:
                gen.rewind_to(keep)
                append_prompt(gen, ids[keep:], self.lm.provider)
                self.stats.hits += 1
                self.stats.cached_tokens += keep
                self._gen = None
                return _Held(gen), keep
        del gen
        capacity = min(self.lm.context_length, max(MIN_CAPACITY, 2 * needed))
        gen = make(ids, capacity)
        self._settings, self._capacity = _settings(opts), capacity
        self.stats.misses += 1
        return _Held(gen), 0

    def release(self, held, ok: bool) -> None:
        """Keep the Generator for the next turn (ok), or drop it after a failure."""
        if not isinstance(held, _Held):
            return
        with self._lock:
            self._gen = held.gen if ok else None
        held.gen = None

    def clear(self) -> None:
        with self._lock:
            self._gen = None


class _Held:
    """A cached Generator lent to one generation (delegates the Generator surface)."""

    __slots__ = ("gen",)

    def __init__(self, gen):
        self.gen = gen

    def __getattr__(self, name):
        return getattr(self.gen, name)
