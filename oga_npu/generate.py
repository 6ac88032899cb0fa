"""The one decode loop. `stream_generate` drives a Generator token by token and yields
`GenerationEvent`s; run, chat and bench all use it and nothing else touches the
Generator. The Generator is onnxruntime-genai's, or for a model loaded with direct
decoding (WebGPU, see engine.py) a `DirectGenerator` with the same surface.

Streaming is exact: text is released only as whole characters (no U+FFFD when an emoji
or CJK character spans tokens), so the concatenated deltas equal a one-shot decode; a
character cut by max_tokens is dropped, not ended in U+FFFD; stop
strings are never emitted, also when split across tokens, and text held back as a
possible stop-string prefix is flushed when generation ends.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from . import guard
from .errors import ChatTemplateError, ContextLengthError, GenerationError, GuidanceError, OgaNpuError
from .model import LoadedModel, append_prompt
from .runtime_errors import translate

Messages = Sequence[dict]


# Sampling for models whose source names none (a GGUF, a generation_config.json without
# do_sample): llama.cpp's defaults (temp 0.8, top-k 40, top-p 0.95) with Ollama's
# repeat penalty 1.1, which a small model needs to avoid looping.
DEFAULT_SAMPLING = {"temperature": 0.8, "top_k": 40, "top_p": 0.95, "repetition_penalty": 1.1}
SAMPLING_FIELDS = tuple(DEFAULT_SAMPLING)


@dataclass(frozen=True)
class GenerationOptions:
    """None in a sampling field means "the model's default" (see `model_defaults`);
    temperature 0 is greedy (no repetition penalty unless one is given)."""

    max_tokens: int = 256
    temperature: float | None = None  # 0 = greedy
    top_p: float | None = None
    top_k: int | None = None  # 0 = off
    seed: int | None = None
    repetition_penalty: float | None = None  # 1.0 = off
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # benchmarks: always generate max_tokens
    guidance: tuple[str, str] | None = (
        None  # (type, data) for onnxruntime-genai's set_guidance: json_schema, regex, lark
    )
    speculative: tuple[tuple[str, object], ...] = ()  # set_speculative_options' arguments (speculative.py)

    def validate(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise GenerationError(f"max_tokens must be >= 1 (got {self.max_tokens})", "pass --max-tokens 1 or more")
        if self.temperature is not None and not (self.temperature >= 0 and math.isfinite(self.temperature)):
            raise GenerationError(f"temperature must be >= 0 (got {self.temperature})", "pass --temperature 0 or more")
        if self.top_p is not None and not (0 < self.top_p <= 1):
            raise GenerationError(
                f"top_p must be in (0, 1] (got {self.top_p})", "pass --top-p between 0 (exclusive) and 1"
            )
        if self.top_k is not None and self.top_k < 0:
            raise GenerationError(f"top_k must be >= 0 (got {self.top_k})", "pass --top-k 0 (off) or more")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise GenerationError(
                f"repetition_penalty must be > 0 (got {self.repetition_penalty})",
                "pass a positive --repetition-penalty (1.0 = off)",
            )
        if self.seed is not None and not (0 <= self.seed < 2**31):
            raise GenerationError(f"seed must be in [0, 2^31) (got {self.seed})", "pass a smaller --seed")
        if any(not s for s in self.stop):
            raise GenerationError("stop strings must not be empty", "drop the empty --stop")


def model_defaults(config: dict) -> dict:
    """The sampling settings a model folder asks for: the `search` section the OGA builder
    wrote from the source's generation_config.json when it asks to sample (do_sample),
    else DEFAULT_SAMPLING. The builder writes search values even without a
    generation_config, so do_sample is what tells the model's own settings apart."""
    search = config.get("search", {}) if isinstance(config, dict) else {}
    if not search.get("do_sample"):
        return dict(DEFAULT_SAMPLING)
    out = {}
    for k, default in DEFAULT_SAMPLING.items():
        v = search.get(k)
        out[k] = type(default)(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default
    if out["top_k"] < 0:
        out["top_k"] = 0
    if not 0 < out["top_p"] <= 1:
        out["top_p"] = 1.0
    return out


def resolve_options(options: GenerationOptions | None, lm: LoadedModel | None) -> GenerationOptions:
    """Fill the fields left None with the model's defaults (run, chat and serve share this)."""
    from dataclasses import replace

    opts = options or GenerationOptions()
    missing = [k for k in SAMPLING_FIELDS if getattr(opts, k) is None]
    if not missing:
        return opts
    base = model_defaults(lm.config if lm is not None else {})
    if opts.temperature == 0:  # greedy is plain argmax unless a penalty is asked for
        base["repetition_penalty"] = 1.0
    return replace(opts, **{k: base[k] for k in missing})


@dataclass
class GenerationEvent:
    """One step of output. `text` is the new text (may be empty while text is held back)."""

    text: str
    token: int | None
    prompt_tokens: int
    generated_tokens: int
    finish_reason: str | None = None  # stop (EOS) | stop_string | length | None while running
    ttft: float | None = None  # seconds from start to the first new token
    prefill_tps: float | None = None  # prompt tokens / TTFT
    decode_tps: float | None = None  # tokens/s after the first
    provider: str = "cpu"
    timings: dict = field(default_factory=dict)
    decoder: str = "oga"  # oga (onnxruntime-genai's Generator) | direct (engine.py)
    cached_tokens: int = 0  # prompt tokens whose KV came from the cache (kvcache.py), not prefilled

    @property
    def runtime(self) -> str:
        """'webgpu' or 'webgpu, direct decode': what ran it, for the timing lines."""
        return self.provider if self.decoder == "oga" else f"{self.provider}, {self.decoder} decode"


def render_prompt(lm: LoadedModel, messages: Messages, chat_template: str | None = None) -> str:
    """Apply the model's chat template (or an explicit one) to messages."""
    template = chat_template or lm.chat_template()
    if not template:
        raise ChatTemplateError(
            f"{lm.path} has no chat template (a base model?)",
            "pass --chat-template FILE, or --raw to send the text as is",
        )
    for m in messages:
        if (
            not isinstance(m, dict)
            or m.get("role") not in ("system", "user", "assistant", "tool")
            or not isinstance(m.get("content"), str)
        ):
            raise GenerationError(f"bad message {m!r}", "messages need a role (system/user/assistant) and text content")
    try:
        return lm.tokenizer.apply_chat_template(
            json.dumps(list(messages)), template_str=template, add_generation_prompt=True
        )
    except TypeError:  # pragma: no cover - older OGA without template_str
        return lm.tokenizer.apply_chat_template(json.dumps(list(messages)), add_generation_prompt=True)
    except Exception as e:
        raise ChatTemplateError(
            f"the chat template failed: {str(e).splitlines()[0]}", "pass a working --chat-template FILE, or --raw"
        ) from e


def encode(lm: LoadedModel, text: str) -> list[int]:
    return [int(t) for t in lm.tokenizer.encode(text)]


def encode_chat(lm: LoadedModel, messages: Messages, chat_template: str | None = None) -> list[int]:
    """The conversation's ids through its chat template: special tokens only where the
    template puts them; message contents are tokenized as text (prompt_ids.py)."""
    from .prompt_ids import chat_ids

    return chat_ids(lm, list(messages), lambda ms: render_prompt(lm, ms, chat_template))


def encode_raw(lm: LoadedModel, text: str) -> list[int]:
    """A raw prompt's ids, BOS first when the tokenizer asks for it (prompt_ids.py)."""
    from .prompt_ids import raw_ids

    return raw_ids(lm, text)


def check_fits(lm: LoadedModel, prompt_tokens: int, max_tokens: int) -> None:
    if prompt_tokens + max_tokens > lm.context_length:
        raise ContextLengthError(prompt_tokens, max_tokens, lm.context_length)
    limit = lm.hybrid_limit
    if limit is not None and prompt_tokens + max_tokens > limit:
        raise ContextLengthError(prompt_tokens, max_tokens, limit, "NPU hybrid limit (no chunking)")


class _Detokenizer:
    """Incremental decode that releases only complete characters."""

    def __init__(self, tokenizer):
        self.tok = tokenizer
        self.ids: list[int] = []
        self.prefix = 0  # ids[prefix:read] decode to text already released
        self.read = 0

    # A character takes at most 4 byte tokens; ids that still decode to nothing or to a
    # broken character after this many are released as they are, so each step decodes a
    # bounded slice (ids a tokenizer cannot decode once made this quadratic).
    MAX_PENDING = 8

    def add(self, token: int) -> str:
        self.ids.append(token)
        prefix_text = self.tok.decode(self.ids[self.prefix : self.read]) if self.read > self.prefix else ""
        new_text = self.tok.decode(self.ids[self.prefix :])
        complete = len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd")
        if complete or len(self.ids) - self.read >= self.MAX_PENDING:
            delta = new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""
            self.prefix, self.read = self.read, len(self.ids)
            return delta
        return ""

    def flush(self) -> str:
        """The text still held back. Held ids end in an incomplete character (max_tokens or
        EOS cut it): that tail is dropped, not sent as U+FFFD, as llama.cpp does."""
        prefix_text = self.tok.decode(self.ids[self.prefix : self.read]) if self.read > self.prefix else ""
        new_text = self.tok.decode(self.ids[self.prefix :])
        self.prefix = self.read = len(self.ids)
        return new_text[len(prefix_text) :].rstrip("\ufffd") if len(new_text) > len(prefix_text) else ""


class _StopFilter:
    """Holds back text that may be the start of a stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = list(stops)
        self.buf = ""

    def push(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, stop string hit)."""
        if not self.stops:
            return text, False
        self.buf += text
        hits = [(self.buf.find(s), s) for s in self.stops if s in self.buf]
        if hits:
            idx = min(i for i, _ in hits)
            out, self.buf = self.buf[:idx], ""
            return out, True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buf)), 0, -1):
                if self.buf.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.buf[: len(self.buf) - hold]
        self.buf = self.buf[len(self.buf) - hold :]
        return out, False

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


def stream_generate(
    lm: LoadedModel,
    prompt: str | Messages | list[int],
    options: GenerationOptions | None = None,
    *,
    raw: bool = False,
    chat_template: str | None = None,
    cache=None,
) -> Iterator[GenerationEvent]:
    """Generate from a prompt string (chat template applied unless raw), a message list,
    or token ids; yields events, the last one with finish_reason set. `cache` (a
    kvcache.PromptCache) reuses the KV of the model's last conversation where it can."""
    import onnxruntime_genai as og

    opts = resolve_options(options, lm)
    opts.validate()
    t_start = time.perf_counter()
    ids = _encode_prompt(lm, prompt, raw, chat_template)
    run = _Run(lm, opts, len(ids), t_start)
    check_fits(lm, len(ids), opts.max_tokens)

    guard.phase("generating with", lm.path, lm.provider)
    gen = None
    if cache is not None:
        try:
            gen, run.cached = cache.acquire(ids, opts, lambda i, n: _oga_generator(og, lm, i, opts, n))
        except OgaNpuError:
            raise
        except Exception as e:
            raise translate(e, lm.path) from e
    if gen is None:
        gen = _direct_generator(lm, ids, opts) if lm.engine is not None else _oga_generator(og, lm, ids, opts)
    try:
        yield from run.decode(gen)
        run.ok = True
    except OgaNpuError:
        raise
    except Exception as e:
        raise translate(e, lm.path) from e
    finally:
        if cache is not None:
            cache.release(gen, run.ok)
        del gen
        guard.phase("after generating with", lm.path, lm.provider)
    if run.finish == "stop_string":  # its event was the last one
        return
    rest, hit = run.stops.push(run.detok.flush())
    tail = rest + ("" if hit else run.stops.flush())
    yield run.event(tail, None, "stop_string" if hit else run.finish)


def _encode_prompt(
    lm: LoadedModel, prompt: str | Messages | list[int], raw: bool, chat_template: str | None
) -> list[int]:
    """The token ids of a prompt string (chat template applied unless raw), a message list or ids."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise GenerationError("the prompt is empty", "give a prompt with some text")
        ids = encode_raw(lm, prompt) if raw else encode_chat(lm, [{"role": "user", "content": prompt}], chat_template)
    elif prompt and isinstance(prompt[0], dict):
        if not any(str(m.get("content", "")).strip() for m in prompt if m.get("role") == "user"):
            raise GenerationError("the conversation has no user text", "give a prompt with some text")
        ids = encode_chat(lm, prompt, chat_template)  # type: ignore[arg-type]
    else:
        ids = [int(t) for t in prompt]  # type: ignore[union-attr]
    if not ids:
        raise GenerationError("the prompt is empty", "give a prompt with some text")
    return ids


class _Run:
    """One generation's decoding: its text (detokenized, stop strings held back), counts and
    timings, and whether stopping now leaves the generator's sequence consistent (`ok`, for
    the prompt cache)."""

    def __init__(self, lm: LoadedModel, opts: GenerationOptions, n_prompt: int, t_start: float) -> None:
        self.lm, self.opts, self.n_prompt = lm, opts, n_prompt
        self.t_start, self.t_tokenized = t_start, time.perf_counter()
        self.t_first: float | None = None
        self.n_gen = 0
        self.cached = 0
        self.ok = False
        self.finish: str | None = None
        self.detok = _Detokenizer(lm.tokenizer)
        self.stops = _StopFilter(opts.stop)

    def decode(self, gen) -> Iterator[GenerationEvent]:
        """An event per token until eos, max_tokens, the generator's end or a stop string
        (`finish` says which)."""
        eos = set(self.lm.eos_token_ids)
        while True:
            if gen.is_done():
                self.finish = "length" if self.n_gen >= self.opts.max_tokens else "stop"
                return
            gen.generate_next_token()
            token = int(gen.get_next_tokens()[0])
            self.n_gen += 1
            if self.t_first is None:
                self.t_first = time.perf_counter()
            if token in eos and not self.opts.ignore_eos:
                self.finish = "stop"
                return
            delta, hit = self.stops.push(self.detok.add(token))
            self.ok = True  # stopping between tokens (a closed stream) leaves a consistent sequence
            if hit:
                self.finish = "stop_string"
                yield self.event(delta, token, "stop_string")
                return
            yield self.event(delta, token, None)
            self.ok = False
            if self.n_gen >= self.opts.max_tokens:
                self.finish = "length"
                return

    def event(self, text: str, token: int | None, reason: str | None) -> GenerationEvent:
        now, t_first, n_gen = time.perf_counter(), self.t_first, self.n_gen
        ttft = (t_first - self.t_start) if t_first else None
        dec = (n_gen - 1) / (now - t_first) if t_first and n_gen > 1 and now > t_first else None
        return GenerationEvent(
            text,
            token,
            self.n_prompt,
            n_gen,
            reason,
            ttft,
            (self.n_prompt / ttft) if ttft else None,
            dec,
            self.lm.provider,
            {"tokenize_s": self.t_tokenized - self.t_start},
            self.lm.decoder,
            self.cached,
        )


def _oga_generator(og, lm: LoadedModel, ids: list[int], opts: GenerationOptions, max_length: int | None = None):
    """A Generator with `ids` prefilled; max_length defaults to prompt + max_tokens (the
    KV cache makes longer ones to continue the conversation in)."""
    n_prompt = len(ids)
    params = og.GeneratorParams(lm.model)
    search = {
        "max_length": lm.kv_length(max_length or n_prompt + opts.max_tokens),
        "do_sample": opts.temperature > 0,
        "repetition_penalty": opts.repetition_penalty,
    }
    if opts.temperature > 0:
        search.update(temperature=opts.temperature, top_p=opts.top_p, top_k=opts.top_k or 0)
    else:
        search.update(top_k=1)
    if opts.seed is not None:
        search["random_seed"] = opts.seed
    if opts.ignore_eos:
        search["min_length"] = n_prompt + opts.max_tokens
    try:
        params.set_search_options(**search)
        if opts.guidance:
            params.set_guidance(*opts.guidance)
        spec = opts.speculative or getattr(lm, "speculative_options", ())  # speculative.attach sets the latter
        if spec:
            params.set_speculative_options(**dict(spec))
        gen = og.Generator(lm.model, params)
        append_prompt(gen, ids, lm.provider, whole=bool(spec or opts.guidance))  # kept as they were tested
    except Exception as e:
        if opts.guidance and "grammar" in str(e).lower():  # llguidance: "Error creating grammar: ..."
            raise GuidanceError(
                f"the {opts.guidance[0].replace('_', ' ')} is not accepted: {str(e).strip().splitlines()[0][:300]}",
                "fix the schema (JSON Schema draft 2020-12 subset that llguidance supports)",
            ) from e
        raise translate(e, lm.path) from e
    return gen


def _direct_generator(lm: LoadedModel, ids: list[int], opts: GenerationOptions):
    """Greedy without a penalty chains on the device; anything else samples on the host.
    ignore_eos needs nothing here: stream_generate does not stop at EOS then (unlike
    onnxruntime-genai's min_length, EOS is not masked out, so the token may appear)."""
    from .webgpu.engine import Sampler

    if opts.guidance:
        raise GenerationError(
            "guided output (JSON schema, grammar) does not run on the direct WebGPU decoder",
            "load the model with OGA_NPU_DECODER=oga",
        )
    sampler = None
    if opts.temperature > 0 or opts.repetition_penalty != 1.0:
        sampler = Sampler(opts.temperature, opts.top_k, opts.top_p, opts.repetition_penalty, opts.seed)
    total = len(ids) + opts.max_tokens
    gen = lm.direct_engine(total).generator(total, sampler)
    gen.append_tokens(ids)
    return gen


def generate(
    lm: LoadedModel, prompt: str | Messages | list[int], options: GenerationOptions | None = None, **kw
) -> tuple[str, GenerationEvent]:
    """Non-streaming: the whole text and the last event (with timings)."""
    parts = []
    last = None
    for ev in stream_generate(lm, prompt, options, **kw):
        parts.append(ev.text)
        last = ev
    return "".join(parts), last  # type: ignore[return-value]
