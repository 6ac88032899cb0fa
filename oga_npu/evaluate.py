"""`oga-npu eval`: perplexity of a prepared model on local text, and of its fp32 reference.

Text: Python's own documentation by default (no download). The text is tokenized once and
cut into non-overlapping windows; each window is one prefill, scored on its next-token
log-likelihood (the first token of a window is not scored). The reference model (an HF
folder: the prepare source by default) is scored on exactly the same token ids with
transformers in fp32, so the difference is what quantization and conversion cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OgaNpuError
from .model import LoadedModel
from .runtime_errors import translate

DEFAULT_WINDOW = 512
DEFAULT_WINDOWS = 8


@dataclass
class PerplexityResult:
    name: str
    perplexity: float
    tokens: int
    windows: int
    seconds: float


def windows_of(ids: list[int], window: int, count: int) -> list[list[int]]:
    out = [ids[i : i + window] for i in range(0, len(ids) - window + 1, window)][:count]
    if not out:
        raise OgaNpuError(
            f"the text has {len(ids)} tokens, fewer than one window of {window}",
            "pass a longer --text file or a smaller --window",
        )
    return out


def _log_softmax_nll(logits: np.ndarray, targets: np.ndarray) -> float:
    logits = logits.astype(np.float64)
    mx = logits.max(axis=-1, keepdims=True)
    lse = np.log(np.exp(logits - mx).sum(axis=-1)) + mx[:, 0]
    return float((lse - logits[np.arange(len(targets)), targets]).sum())


def perplexity_oga(lm: LoadedModel, windows: list[list[int]], on_window=None) -> tuple[float, int]:
    """Perplexity over the windows. A model built with prune_lm_head returns the last
    position's logits only; it is scored one token at a time (each step a decode).
    `on_window(done, total)` hears after each window (progress)."""
    nll, n = 0.0, 0
    # A two-token prefill tells whether the model returns every position's logits.
    stepwise = _window_logits(lm, windows[0][:2]).shape[0] != 2
    for i, ids in enumerate(windows):
        if on_window and i:
            on_window(i, len(windows))
        if len(ids) > lm.context_length:
            raise OgaNpuError(f"window {len(ids)} > context {lm.context_length}", "pass a smaller --window")
        logits = _window_logits_stepwise(lm, ids) if stepwise else _window_logits(lm, ids)
        if not np.isfinite(logits).all():
            return math.inf, n + len(ids) - 1  # NaN/inf logits: a broken model, infinitely perplexed
        nll += _log_softmax_nll(logits[:-1], np.asarray(ids[1:]))
        n += len(ids) - 1
    return math.exp(nll / n), n


def _generator(lm: LoadedModel, max_length: int):
    import onnxruntime_genai as og

    params = og.GeneratorParams(lm.model)
    params.set_search_options(max_length=lm.kv_length(max_length))
    return og.Generator(lm.model, params)


def _window_logits(lm: LoadedModel, ids: list[int]) -> np.ndarray:
    """One prefill; logits for every position the model returns (all, or the last only)."""
    try:
        gen = _generator(lm, len(ids) + 1)
        gen.append_tokens(ids)
        return np.asarray(gen.get_output("logits"))[0]
    except Exception as e:
        raise translate(e, lm.path) from e


def _window_logits_stepwise(lm: LoadedModel, ids: list[int]) -> np.ndarray:
    """Logits for every position by feeding one token per step (pruned lm_head models)."""
    rows = []
    try:
        gen = _generator(lm, len(ids) + 1)
        for tok in ids:
            gen.append_tokens([tok])
            rows.append(np.asarray(gen.get_output("logits"))[0, -1].astype(np.float32))
    except Exception as e:
        raise translate(e, lm.path) from e
    return np.stack(rows)


def perplexity_hf(hf_dir: Path, windows: list[list[int]], on_window=None) -> tuple[float, int]:
    import torch
    from transformers import AutoModelForCausalLM

    from .hf_folder import transformers_quiet

    with transformers_quiet():
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    nll, n = 0.0, 0
    with torch.no_grad():
        for i, ids in enumerate(windows):
            if on_window and i:
                on_window(i, len(windows))
            t = torch.tensor([ids])
            logits = model(t).logits[0, :-1].double()
            nll += float(torch.nn.functional.cross_entropy(logits, t[0, 1:], reduction="sum"))
            n += len(ids) - 1
    return math.exp(nll / n), n


def reference_dir(lm: LoadedModel) -> Path | None:
    """The HF folder the model was prepared from, when it is still on disk."""
    m = lm.manifest or {}
    if m.get("source_kind") == "folder":
        p = Path(m["source"]).expanduser()
        return p if (p / "config.json").is_file() else None
    if m.get("source_kind") == "gguf":
        from .prepare.source import gguf_cache_of

        p = gguf_cache_of(m["source"]) if Path(m["source"]).exists() else None
        return p if p and (p / "config.json").is_file() else None
    return None


LLAMACPP_FIX = (
    "pip install 'oga-npu[llamacpp]' (llama-cpp-python builds llama.cpp from source: a C/C++ compiler "
    "and cmake are needed; see docs/performance.md for this machine's build flags)"
)


def require_llamacpp() -> None:
    """Fail before any scoring when --ref-gguf cannot run."""
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        raise OgaNpuError("--ref-gguf needs llama-cpp-python, which is not installed", LLAMACPP_FIX)


def perplexity_llamacpp(
    gguf: Path, windows: list[list[int]], threads: int | None = None, vocab_size: int | None = None
) -> tuple[float, int]:
    """llama.cpp (llama-cpp-python) on the GGUF itself, scored on the same token ids."""
    gguf = Path(gguf)
    if not gguf.is_file():
        raise OgaNpuError(f"--ref-gguf {gguf} is not a file", "pass the .gguf file the model was prepared from")
    require_llamacpp()
    from llama_cpp import Llama

    from .threads import physical_cores

    n = threads or physical_cores()
    llm = Llama(
        model_path=str(gguf),
        n_ctx=max(len(w) for w in windows),
        n_batch=512,
        n_threads=n,
        n_threads_batch=n,
        logits_all=True,
        verbose=False,
    )
    if vocab_size is not None and llm.n_vocab() != vocab_size:
        raise OgaNpuError(
            f"{gguf.name} has a vocabulary of {llm.n_vocab()}, the model {vocab_size}",
            "pass the GGUF this model was prepared from",
        )
    nll, count = 0.0, 0
    for ids in windows:
        llm.reset()
        llm.eval(ids)
        logits = np.asarray(llm.scores[: len(ids)], dtype=np.float32)
        if not np.isfinite(logits).all():
            return math.inf, count + len(ids) - 1
        nll += _log_softmax_nll(logits[:-1], np.asarray(ids[1:]))
        count += len(ids) - 1
    return math.exp(nll / count), count


def describe_windows(text_desc: str, windows: list[list[int]], total_tokens: int) -> str:
    w = len(windows[0])
    return (
        f"scored: {text_desc}; {len(windows)} windows x {w} tokens = tokens 0..{len(windows) * w - 1} "
        f"of its {total_tokens}"
    )


def record_quality(model_dir: Path, rows: list[dict], text: str, window: int, windows: int) -> dict | None:
    """Store the perplexities in the model folder's manifest (`quality`); None if not ready."""
    import time

    from .workdir import update_manifest

    own = rows[0]
    quality = {
        "perplexity": round(own["perplexity"], 4),
        "engine": own["engine"],
        "tokens": own["tokens"],
        "text": text,
        "window": window,
        "windows": windows,
        "references": {r["engine"]: round(r["perplexity"], 4) for r in rows[1:]},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return quality if update_manifest(model_dir, quality=quality) else None
