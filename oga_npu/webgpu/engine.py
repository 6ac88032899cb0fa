"""Direct decoding on onnxruntime: greedy steps chained on the GPU, no host round trip.

onnxruntime-genai's Generator spends a WebGPU decode step mostly waiting: each step it
uploads input_ids and the attention mask (each a synchronous submit), runs the captured
graph, then reads the logits back (a map and wait) and searches them on the CPU. On the
lent H200 (Llama-3.2-1B shape, 1024-token prompt) that is 3.4-3.6 ms per token while the
GPU's kernels take about 1.95 ms (busy 54-58% of the time).

This engine runs the builder's model itself, through onnxruntime's IOBinding, on the
graph `oga_npu.webgpu.graphpass` writes beside it (`model.engine.onnx`, same weights):

- the KV cache lives in static device buffers bound to both the past and present names;
- the prefill runs uncaptured; decode steps replay one captured graph;
- greedy decoding: each run writes its token and the next length into the `step` buffer
  the next run reads, and scatters the token into a history buffer; the host queues
  `chain` runs and reads the history once (4 bytes a token), so the GPU stays busy
  (93-96% measured) and a step costs what its kernels cost;
- sampling (temperature > 0) or a repetition penalty: one run per token, the logits read
  back and sampled on the CPU (numpy), still one upload instead of two.

`DirectGenerator` has the surface of onnxruntime-genai's Generator that `generate.py`
uses (append_tokens, generate_next_token, get_next_tokens, is_done), so streaming, stop
strings and timings are shared. Batch size 1. Works on the CPU provider too (the tests
check it against onnxruntime-genai there); loading uses it for WebGPU models only.
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path

import numpy as np

from ..errors import GenerationError, ModelLoadError, ProviderError
from .graphpass import HISTORY, HISTORY_OUTPUT, NEXT_TOKEN, STEP_INPUT, STEP_OUTPUT

ENGINE_FILE = "model.engine.onnx"
DEFAULT_CHAIN = 8  # greedy runs queued per read-back
MIN_CAPACITY = 4096  # KV buffer length allocated at least (grown on demand)
DECODER_ENV = "OGA_NPU_DECODER"  # auto (default) | oga | direct


def decoder_choice() -> str:
    v = os.environ.get(DECODER_ENV, "auto").strip().lower() or "auto"
    if v not in ("auto", "oga", "direct"):
        raise ProviderError(f"{DECODER_ENV}={v} is not a decoder", f"set {DECODER_ENV} to auto, oga or direct")
    return v


def engine_available(path: Path) -> bool:
    return (Path(path) / ENGINE_FILE).is_file()


class DirectEngine:
    """One onnxruntime session on model.engine.onnx and the device buffers it decodes with."""

    def __init__(self, path: Path, config: dict, provider: str, capacity: int, chain: int = DEFAULT_CHAIN):
        import onnxruntime as ort

        self.ort = ort
        self.path = Path(path)
        m = config["model"]
        dec = m["decoder"]
        self.layers = int(dec["num_hidden_layers"])
        self.kv_heads = int(dec["num_key_value_heads"])
        self.head_size = int(dec["head_size"])
        self.vocab = int(m["vocab_size"])
        self.capacity = int(capacity)
        self.chain = max(1, int(chain))
        self.provider = provider
        so = ort.SessionOptions()
        sess_opts = dec.get("session_options", {})
        if isinstance(sess_opts.get("intra_op_num_threads"), int):
            so.intra_op_num_threads = sess_opts["intra_op_num_threads"]
        file = str(self.path / ENGINE_FILE)
        try:
            if provider == "webgpu":
                from . import ep as webgpu

                ok, why = webgpu.available()
                if not ok:
                    raise ProviderError(f"WebGPU is not available: {why}", "install it, or pass --fallback cpu")
                devs = [d for d in ort.get_ep_devices() if d.ep_name == webgpu.EP_NAME]
                opts = {}
                for entry in sess_opts.get("provider_options", []):
                    opts.update({k: str(v) for k, v in (entry.get("webgpu") or entry.get("WebGPU") or {}).items()})
                so.add_provider_for_devices(devs[:1], opts)
                self.memory = devs[0].memory_info(ort.OrtDeviceMemoryType.DEFAULT)
                self.capture = opts.get("enableGraphCapture") == "1"
                self.sess = ort.InferenceSession(file, so)
            elif provider == "cpu":
                self.memory = None
                self.capture = False
                self.sess = ort.InferenceSession(file, so, providers=["CPUExecutionProvider"])
            else:
                raise ProviderError(f"direct decoding does not run on {provider}", f"unset {DECODER_ENV}")
        except (ProviderError, ModelLoadError):
            raise
        except Exception as e:
            raise ModelLoadError(
                f"onnxruntime could not open {file}: {str(e).strip().splitlines()[0][:300]}",
                f"re-run prepare for this folder, or set {DECODER_ENV}=oga",
            ) from e
        ins = {i.name: i.type for i in self.sess.get_inputs()}
        outs = {o.name: o.type for o in self.sess.get_outputs()}
        for name in (STEP_INPUT, HISTORY, "past_key_values.0.key"):
            if name not in ins:
                raise ModelLoadError(f"{file} has no input {name}", "re-run prepare for this folder")
        for name in ("logits", NEXT_TOKEN, STEP_OUTPUT, HISTORY_OUTPUT):
            if name not in outs:
                raise ModelLoadError(f"{file} has no output {name}", "re-run prepare for this folder")
        kv_type = np.float16 if "float16" in ins["past_key_values.0.key"] else np.float32
        logits_type = np.float16 if "float16" in outs["logits"] else np.float32
        self._allocate(kv_type, logits_type)

    # ---------------------------------------------------------------- buffers
    def _dev(self, shape, dtype):
        if self.memory is None:
            return self.ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, dtype))
        # WebGPU buffers start zeroed (the spec requires it): no upload needed
        return self.ort.OrtValue.ortvalue_from_shape_and_type(list(shape), dtype, memory_info=self.memory)

    def upload(self, host: np.ndarray, dev) -> None:
        if self.memory is None:
            dev.update_inplace(host)
        else:
            self.ort.copy_tensors([self.ort.OrtValue.ortvalue_from_numpy(host)], [dev], None)

    def download(self, dev, host: np.ndarray) -> np.ndarray:
        if self.memory is None:
            return dev.numpy()
        self.ort.copy_tensors([dev], [self.ort.OrtValue.ortvalue_from_numpy(host)], None)
        return host

    def _allocate(self, kv_type, logits_type) -> None:
        kv_shape = (1, self.kv_heads, self.capacity, self.head_size)
        self.kv = []
        for i in range(self.layers):
            for kind in ("key", "value"):
                self.kv.append((f"past_key_values.{i}.{kind}", f"present.{i}.{kind}", self._dev(kv_shape, kv_type)))
        self.d_step = self._dev((1, 2), np.float32)
        self.d_history = self._dev((1, self.capacity), np.float32)
        self.h_history = np.zeros((1, self.capacity), np.float32)
        self.d_logits = self._dev((1, 1, self.vocab), logits_type)
        self.h_logits = np.zeros((1, 1, self.vocab), logits_type)
        self.d_next = self._dev((1, 1), np.int32)
        self.h_next = np.zeros((1, 1), np.int32)
        self.h_step = np.zeros((1, 2), np.float32)
        self.decode_binding = self._binding(self.d_step)
        self.decode_options = self.ort.RunOptions()
        self.decode_options.add_run_config_entry("gpu_graph_id", "1")
        self.prefill_options = self.ort.RunOptions()
        self.prefill_options.add_run_config_entry("gpu_graph_id", "-1")  # never captured

    def _binding(self, step_in):
        b = self.sess.io_binding()
        b.bind_ortvalue_input(STEP_INPUT, step_in)
        b.bind_ortvalue_input(HISTORY, self.d_history)
        for past, present, v in self.kv:
            b.bind_ortvalue_input(past, v)
            b.bind_ortvalue_output(present, v)  # past_present_share_buffer: written in place
        b.bind_ortvalue_output("logits", self.d_logits)
        b.bind_ortvalue_output(NEXT_TOKEN, self.d_next)
        b.bind_ortvalue_output(STEP_OUTPUT, self.d_step)  # the next run's input
        b.bind_ortvalue_output(HISTORY_OUTPUT, self.d_history)  # scattered in place
        return b

    # ---------------------------------------------------------------- runs
    def prefill(self, ids: list[int]) -> None:
        n = len(ids)
        step = np.array([list(ids) + [n]], np.float32)  # ids, then the total length
        d = self._dev(step.shape, np.float32)
        self.upload(step, d)
        self._run(self._binding(d), self.prefill_options)

    def decode(self, token: int | None, total: int) -> None:
        """One captured step. token=None: the step buffer already holds (token, total)."""
        if token is not None:
            self.h_step[0, 0], self.h_step[0, 1] = token, total
            self.upload(self.h_step, self.d_step)
        self._run(self.decode_binding, self.decode_options)

    def _run(self, binding, options) -> None:
        try:
            self.sess.run_with_iobinding(binding, options)
        except Exception as e:
            raise GenerationError(
                f"onnxruntime failed during decoding: {str(e).strip().splitlines()[0][:300]}",
                f"re-run with OGA_NPU_DEBUG=1; {DECODER_ENV}=oga uses onnxruntime-genai instead",
            ) from e

    def next_token(self) -> int:
        return int(self.download(self.d_next, self.h_next).reshape(-1)[0])

    def logits(self) -> np.ndarray:
        return self.download(self.d_logits, self.h_logits).reshape(-1).astype(np.float32)

    def history(self, start: int, n: int) -> list[int]:
        h = self.download(self.d_history, self.h_history)
        return [int(x) for x in h[0, start : start + n]]

    def generator(self, max_length: int, sampler: "Sampler | None" = None) -> "DirectGenerator":
        if max_length > self.capacity:
            raise GenerationError(
                f"max length {max_length} exceeds this engine's {self.capacity}",
                "load the model again (the engine grows on demand)",
            )
        return DirectGenerator(self, max_length, sampler)


class Sampler:
    """Temperature / top-k / top-p sampling and a repetition penalty on host logits."""

    def __init__(
        self,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
    ):
        self.temperature = temperature
        self.top_k = top_k
        self.top_p = top_p
        self.repetition_penalty = repetition_penalty
        self.rng = np.random.default_rng(seed)

    def __call__(self, logits: np.ndarray, seen: set[int] | None = None) -> int:
        x = np.array(logits, np.float32)
        if self.repetition_penalty != 1.0 and seen:
            idx = np.fromiter(seen, np.int64)
            v = x[idx]
            x[idx] = np.where(v > 0, v / self.repetition_penalty, v * self.repetition_penalty)
        if self.temperature <= 0:
            return int(np.argmax(x))
        # Candidates: all ids, or the top k. Then, for top_p, the fewest of them (most likely
        # first) whose mass reaches top_p, found by partial sorts of growing size (a full
        # sort of a 128k vocabulary costs milliseconds a token).
        ids = None if not self.top_k or self.top_k >= x.size else np.argpartition(x, -self.top_k)[-self.top_k :]
        z = x if ids is None else x[ids]
        p = np.exp((z - z.max()) / self.temperature)
        if self.top_p < 1.0:
            goal = self.top_p * float(p.sum(dtype=np.float64))
            m = min(256, p.size)
            while True:
                top = np.argpartition(p, -m)[-m:] if m < p.size else np.arange(p.size)
                top = top[np.argsort(-p[top])]
                cum = np.cumsum(p[top], dtype=np.float64)
                if cum[-1] >= goal or m == p.size:
                    keep = top[: min(int(np.searchsorted(cum, goal)) + 1, top.size)]
                    break
                m = m * 16 if m * 16 < p.size // 2 else p.size  # then one full sort (2-3 ms at 128k)
            ids = keep if ids is None else ids[keep]
            p = p[keep]
        i = self._draw(p)
        return int(i if ids is None else ids[i])

    def _draw(self, p: np.ndarray, block: int = 256) -> int:
        """An index with probability proportional to p: a cumulative sum over block sums,
        then within one block (one float64 cumsum over 128k entries costs about 1 ms)."""
        pad = (-p.size) % block
        q = np.concatenate([p, np.zeros(pad, p.dtype)]) if pad else p
        cb = np.cumsum(q.reshape(-1, block).sum(axis=1, dtype=np.float64))
        u = self.rng.random() * cb[-1]
        b = min(int(np.searchsorted(cb, u, side="right")), cb.size - 1)
        u -= cb[b - 1] if b else 0.0
        chunk = q[b * block : (b + 1) * block]
        i = int(np.searchsorted(np.cumsum(chunk, dtype=np.float64), u, side="right"))
        last = int(np.flatnonzero(chunk)[-1])  # rounding: never land on a zero-weight entry
        return b * block + min(i, last)


class DirectGenerator:
    """onnxruntime-genai Generator's surface (batch 1) over a DirectEngine."""

    def __init__(self, engine: DirectEngine, max_length: int, sampler: Sampler | None):
        self.e = engine
        self.max_length = max_length
        self.sampler = sampler  # None: greedy, chained on the device
        self.total = 0  # tokens whose KV is (or is queued to be) in the cache
        self.length = 0  # prompt + generated tokens
        self.queue: deque[int] = deque()
        self.current: int | None = None
        self.seen: set[int] = set()
        self.prefilled = False

    def append_tokens(self, ids) -> None:
        ids = [int(t) for t in ids]
        if self.prefilled:
            raise GenerationError("this generator already has its prompt", "start a new generation")
        if not ids:
            raise GenerationError("the prompt is empty", "give a prompt with some text")
        if len(ids) >= self.max_length:
            raise GenerationError(
                f"the prompt ({len(ids)} tokens) does not fit max length {self.max_length}",
                "shorten the prompt or lower --max-tokens",
            )
        self.e.prefill(ids)
        self.total = self.length = len(ids)
        self.seen.update(ids)
        self.prefilled = True

    def is_done(self) -> bool:
        return self.length >= self.max_length

    def generate_next_token(self) -> None:
        if not self.prefilled:
            raise GenerationError("no prompt was given", "call append_tokens first")
        if self.is_done():
            raise GenerationError("the generator is done", "start a new generation")
        e = self.e
        if self.current is None:  # the prefill's token
            tok = e.next_token() if self.sampler is None else self.sampler(e.logits(), self.seen)
        elif self.sampler is not None:  # one run per token, sampled on the host
            self.total += 1
            e.decode(self.current, self.total)
            tok = self.sampler(e.logits(), self.seen)
        else:  # greedy: queue runs, read the history once
            if not self.queue:
                k = min(e.chain, self.max_length - self.length)
                first = self.total + 1
                for _ in range(k):
                    e.decode(None, 0)
                self.total += k
                self.queue.extend(e.history(first, k))
            tok = self.queue.popleft()
        self.current = tok
        self.seen.add(tok)
        self.length += 1

    def get_next_tokens(self) -> list[int]:
        if self.current is None:
            raise GenerationError("no token was generated yet", "call generate_next_token first")
        return [self.current]
