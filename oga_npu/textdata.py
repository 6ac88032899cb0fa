"""Local text for calibration, benchmark prompts and perplexity (no downloads).

The built-in corpus is Python's own reference documentation, which ships with every
CPython as `pydoc_data.topics`: about 1 MB of English prose and code.
"""

from __future__ import annotations

from pathlib import Path

from .errors import RecipeError


def builtin_text() -> str:
    from pydoc_data import topics

    # Sorted for a stable order across Python versions that keep the same topics.
    return "\n\n".join(topics.topics[k].strip() for k in sorted(topics.topics))


def load_text(spec: str) -> str:
    if spec == "builtin":
        return builtin_text()
    p = Path(spec).expanduser()
    if not p.is_file():
        raise RecipeError(f"calibration text not found: {spec}", "pass an existing text file (--calib-file) or 'builtin'")
    text = p.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise RecipeError(f"calibration text is empty: {spec}", "pass a file with some text in it")
    return text


def token_chunks(ids: list[int], samples: int, seq_len: int) -> list[list[int]]:
    """`samples` consecutive windows of exactly `seq_len` tokens, repeating the text if short."""
    need = samples * seq_len
    if not ids:
        raise RecipeError("calibration text produced no tokens", "use a longer text")
    while len(ids) < need:
        ids = ids + ids
    return [ids[i * seq_len:(i + 1) * seq_len] for i in range(samples)]
