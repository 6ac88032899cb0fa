"""`oga-npu eval`: perplexity of a prepared model over token windows, beside its fp32 reference
(transformers) and llama.cpp (--ref-gguf); the result is recorded in the folder's manifest."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from ..errors import OgaNpuError
from ._cli_utils import AsJson, ModelDir, model_folder
from ._output import StageProgress

Ref = Annotated[
    Optional[str],
    typer.Option("--ref", help="HF folder of the reference model, 'auto' (the prepare source) or 'none'."),
]
RefGguf = Annotated[
    Optional[Path],
    typer.Option(
        "--ref-gguf",
        help="Also score llama.cpp on this GGUF, same token windows (needs llama-cpp-python: the llamacpp extra).",
    ),
]
Text = Annotated[
    Optional[Path],
    typer.Option(
        "--text", help="Text file (default: the evaluation part of the built-in text, never used for calibration)."
    ),
]
Window = Annotated[int, typer.Option("--window", help="Tokens per window.")]
Windows = Annotated[int, typer.Option("--windows", help="Number of windows.")]


def eval_cmd(
    model: ModelDir = None,
    ref: Ref = "auto",
    ref_gguf: RefGguf = None,
    text: Text = None,
    window: Window = 512,
    windows: Windows = 8,
    as_json: AsJson = False,
) -> None:
    """Perplexity of a prepared model, its fp32 reference in transformers, and llama.cpp (--ref-gguf).
    The result is recorded in the model folder's manifest (`quality`; `oga-npu models` shows it)."""
    from ..evaluate import describe_windows, windows_of
    from ..generate import encode
    from ..model import load
    from ..textdata import describe, load_text

    if ref_gguf is not None and not ref_gguf.is_file():
        raise OgaNpuError(f"--ref-gguf {ref_gguf} is not a file", "pass the .gguf file the model was prepared from")
    if ref_gguf is not None:
        from ..evaluate import require_llamacpp

        require_llamacpp()
    spec = str(text) if text else "builtin"
    model = model_folder(model, "eval")
    lm = load(model, decoder="oga")  # scores through onnxruntime-genai: no second copy in the direct engine
    ids = encode(lm, load_text(spec, part="evaluation"))
    wins = windows_of(ids, window, windows)
    text_desc = describe(spec, "evaluation")
    print(describe_windows(text_desc, wins, len(ids)), file=sys.stderr)
    from ..bench import record_metadata

    meta = record_metadata(lm)  # versions, device, provider and the folder's content hash
    steps = StageProgress()
    ref_dir = _reference_dir(lm, ref)
    total = 2 if ref_dir is not None else 1
    rows = [_score_oga(lm, model, wins, window, steps, total, meta)]
    if ref_dir is not None:
        rows.append(_score_reference(lm, ref_dir, wins, steps, total, meta))
    elif ref == "auto":
        print("note: no reference (the prepare source is not on disk); pass --ref HF_DIR", file=sys.stderr)
    if ref_gguf is not None:
        rows.append(_score_llamacpp(ref_gguf, wins))
    _print_rows(rows, as_json, text_desc, wins)
    _record(model, rows, text_desc, wins)


def _reference_dir(lm, ref: Optional[str]) -> Optional[Path]:
    """--ref as a folder: None for 'none', the prepare source for 'auto' (None if not on disk)."""
    from ..evaluate import reference_dir

    ref_dir = None if ref in (None, "none") else (reference_dir(lm) if ref == "auto" else Path(ref))
    if ref not in (None, "none", "auto") and not (Path(ref) / "config.json").is_file():
        raise OgaNpuError(f"--ref {ref} is not a HF model folder", "pass a folder with config.json, or --ref none")
    return ref_dir


def _score_oga(lm, model: Path, wins, window: int, steps: StageProgress, total: int, meta: dict) -> dict:
    from ..evaluate import perplexity_oga

    t0 = time.monotonic()
    steps("start", "score", 1, total, f"onnxruntime-genai on {lm.provider}, {len(wins)} windows of {window} tokens")
    try:
        ppl, n = perplexity_oga(lm, wins, lambda i, k: steps("update", "score", 1, total, f"window {i}/{k} done"))
    finally:
        steps.close()
    steps("done", "score", 1, total, "")
    return {
        "model": str(model),
        "engine": f"oga ({lm.provider})",
        "perplexity": ppl,
        "tokens": n,
        "seconds": round(time.monotonic() - t0, 1),
        "meta": meta,
    }


def _score_reference(lm, ref_dir: Path, wins, steps: StageProgress, total: int, meta: dict) -> dict:
    from ..evaluate import perplexity_hf

    t0 = time.monotonic()
    steps("start", "reference", 2, total, f"transformers fp32 on the CPU, {len(wins)} windows")
    try:
        rppl, rn = perplexity_hf(
            ref_dir, wins, lambda i, k: steps("update", "reference", 2, total, f"window {i}/{k} done")
        )
    finally:
        steps.close()
    steps("done", "reference", 2, total, "")
    return {
        "model": str(ref_dir),
        "engine": "transformers fp32",
        "perplexity": rppl,
        "tokens": rn,
        "seconds": round(time.monotonic() - t0, 1),
        "meta": {
            **meta,
            "provider": "transformers (cpu)",
            "device": meta.get("device") if lm.provider == "cpu" else None,
            "model_hash": None,
        },
    }


def _score_llamacpp(ref_gguf: Path, wins) -> dict:
    from ..evaluate import perplexity_llamacpp

    t0 = time.monotonic()
    gppl, gn = perplexity_llamacpp(ref_gguf, wins)
    return {
        "model": str(ref_gguf),
        "engine": "llama.cpp",
        "perplexity": gppl,
        "tokens": gn,
        "seconds": round(time.monotonic() - t0, 1),
    }


def _print_rows(rows: list[dict], as_json: bool, text_desc: str, wins) -> None:
    """A line per engine and the differences to the first (stdout), or the rows as JSON."""
    if as_json:
        for r in rows:
            r.update(text=text_desc, window=len(wins[0]), windows=len(wins))
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            print(
                f"{r['engine']:<20} perplexity {r['perplexity']:>9.3f}  ({r['tokens']} tokens, {r['seconds']} s)  "
                f"{r['model']}"
            )
        if rows[0]["perplexity"] == float("inf"):
            print("note: the model produced NaN/inf logits (damaged weights or a broken build)", file=sys.stderr)
        for r in rows[1:]:
            print(f"vs {r['engine']}: {100 * (rows[0]['perplexity'] / r['perplexity'] - 1):+.1f}% perplexity")
    sys.stdout.flush()


def _record(model: Path, rows: list[dict], text_desc: str, wins) -> None:
    from ..evaluate import record_quality

    try:  # after the results: a read-only folder still gets its perplexity printed
        record_quality(model, rows, text_desc, len(wins[0]), len(wins))
    except OSError as e:
        print(
            f"Warning: the result was not recorded in {model}'s manifest ({e.strerror or e}); "
            "`oga-npu models` will not show it",
            file=sys.stderr,
        )
