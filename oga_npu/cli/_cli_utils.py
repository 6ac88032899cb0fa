"""What the commands share: the options declared once, -m resolved, GenerationOptions, tty tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

ModelDir = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        metavar="NAME|DIR",
        help="A model's name in the store (`oga-npu models`) or a model folder. Default: the store's only model.",
        show_default=False,
    ),
]
MaxTokens = Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens to generate.")]
Temperature = Annotated[
    Optional[float],
    typer.Option(
        "--temperature", "-t", help="0 = greedy. Default: the model's (README: Sampling defaults).", show_default=False
    ),
]
TopP = Annotated[
    Optional[float],
    typer.Option("--top-p", help="Nucleus sampling, in (0, 1]. Default: the model's.", show_default=False),
]
TopK = Annotated[Optional[int], typer.Option("--top-k", help="0 = off. Default: the model's.", show_default=False)]
RepetitionPenalty = Annotated[
    Optional[float], typer.Option("--repetition-penalty", help="1.0 = off. Default: the model's.", show_default=False)
]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed for sampling.")]
Provider = Annotated[
    Optional[str], typer.Option("--provider", help="cpu|webgpu|dml|cuda|ryzenai (default: the model's).")
]
Fallback = Annotated[
    Optional[str], typer.Option("--fallback", help="'cpu': run on the CPU if the provider is missing.")
]
RaiEnvOption = Annotated[
    Optional[Path],
    typer.Option(
        "--rai-env",
        help="The Ryzen AI release's env folder (its conda env, e.g. ...\\envs\\ryzen-ai-1.8.0); "
        "default: the active ryzen-ai-X.Y.Z conda env or RYZEN_AI_INSTALLATION_PATH.",
    ),
]
ChatTemplate = Annotated[Optional[Path], typer.Option("--chat-template", help="Jinja chat template file to use.")]
Stop = Annotated[Optional[list[str]], typer.Option("--stop", help="Stop string (repeatable).")]
System = Annotated[Optional[str], typer.Option("--system", help="System prompt.")]
Speculative = Annotated[
    Optional[str],
    typer.Option(
        "--speculative",
        metavar="ngram",
        help="Speculative decoding by n-gram prompt lookup (onnxruntime-genai >= 0.18; needs a model with full "
        "logits). Same output at temperature 0.",
    ),
]
DraftModel = Annotated[
    Optional[Path],
    typer.Option(
        "--draft-model",
        metavar="DIR",
        help="Speculative decoding with this smaller prepared model (same tokenizer, same target) as the drafter.",
    ),
]
DraftTokens = Annotated[int, typer.Option("--draft-tokens", help="Tokens proposed per speculative step (1-16).")]
AsJson = Annotated[bool, typer.Option("--json", help="JSON output.")]


def stderr_tty() -> bool:
    """A terminal that takes live lines (not NO_COLOR, not TERM=dumb)."""
    return sys.stderr.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def stdin_tty() -> bool:
    return sys.stdin.isatty()


def model_folder(spec: Optional[str], command: str) -> Path:
    """-m NAME|DIR as a folder; without -m the store's only model (or the choices, exit 2)."""
    from ..store import ModelStore

    store = ModelStore()
    if spec is None:
        e = store.only_model(command)
        print(f"model: {e.name} (the only one in {store.root})", file=sys.stderr)
        return e.path
    return store.resolve(spec)


def load_speculative(model, provider, fallback, speculative, draft_model, draft_tokens):
    """load() plus speculative.attach when --speculative/--draft-model was given."""
    from .. import speculative as spec_mod
    from ..model import load

    spec = spec_mod.parse(speculative, draft_model, draft_tokens)  # refused before the slow load
    lm = load(model, provider=provider, fallback=fallback)
    spec_mod.attach(lm, spec)
    return lm


def generation_options(max_tokens, temperature, top_p, top_k, seed, stop=None, repetition_penalty=None):
    from ..generate import GenerationOptions

    return GenerationOptions(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        seed=seed,
        stop=tuple(stop or ()),
        repetition_penalty=repetition_penalty,
    )
