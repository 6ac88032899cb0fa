"""Local text for calibration, benchmark prompts and perplexity (no downloads).

The built-in corpus is Python's own reference documentation, which ships with every
CPython as `pydoc_data.topics` (79 topics, about 465k characters of English prose and
code), sorted by topic name and joined. It is cut in two at a topic boundary, so that a
model is never scored on the text it was calibrated on:

- `builtin` for calibration (AWQ/GPTQ, recipes' `[calibration] text`): the topics before
  the cut, about the first half of the characters ("assert" .. up to EVAL_FIRST_TOPIC);
- `builtin` for evaluation (`oga-npu eval`): the topics from EVAL_FIRST_TOPIC on;
- benchmark prompts (`bench`) may use the whole text (`part="all"`): only speed is measured.
"""

from __future__ import annotations

from pathlib import Path

from .errors import RecipeError

PARTS = ("all", "calibration", "evaluation")
SEPARATOR = "\n\n"


def _topics() -> list[str]:
    from pydoc_data import topics

    # Sorted for a stable order across Python versions that keep the same topics.
    return [topics.topics[k].strip() for k in sorted(topics.topics)]


def eval_split() -> int:
    """How many topics the calibration part holds: the cut nearest half the characters."""
    lengths = [len(t) + len(SEPARATOR) for t in _topics()]
    half, acc = sum(lengths) / 2, 0
    for i, n in enumerate(lengths):
        if acc + n / 2 >= half:
            return max(1, i)
        acc += n
    return len(lengths) - 1


def builtin_text(part: str = "all") -> str:
    """The built-in text; part = calibration | evaluation | all (see the module docstring)."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}")
    topics = _topics()
    k = eval_split()
    chosen = {"all": topics, "calibration": topics[:k], "evaluation": topics[k:]}[part]
    return SEPARATOR.join(chosen)


def describe(spec: str, part: str) -> str:
    """What `load_text(spec, part)` reads, in words (for eval's output)."""
    if spec != "builtin":
        return spec
    from pydoc_data import topics

    names = sorted(topics.topics)
    k = eval_split()
    chosen = {"all": names, "calibration": names[:k], "evaluation": names[k:]}[part]
    return f"built-in text, {part} part (pydoc_data topics {chosen[0]!r}..{chosen[-1]!r})"


def load_text(spec: str, part: str = "all") -> str:
    """`builtin` (the given part of the built-in text) or a text file (read whole)."""
    if spec == "builtin":
        return builtin_text(part)
    p = Path(spec).expanduser()
    if not p.is_file():
        raise RecipeError(
            f"calibration text not found: {spec}", "pass an existing text file (--calib-file) or 'builtin'"
        )
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
    return [ids[i * seq_len : (i + 1) * seq_len] for i in range(samples)]
