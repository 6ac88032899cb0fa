"""`oga-npu run` (one prompt, streamed to stdout) and `oga-npu chat` (the REPL of chat.py)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from ._cli_utils import (
    ChatTemplate,
    DraftModel,
    DraftTokens,
    Fallback,
    MaxTokens,
    ModelDir,
    Provider,
    RepetitionPenalty,
    Seed,
    Speculative,
    Stop,
    System,
    Temperature,
    TopK,
    TopP,
    generation_options,
    load_speculative,
    model_folder,
)
from ._output import print_timings

Prompt = Annotated[str, typer.Argument(metavar="PROMPT", help="The prompt ('-' reads stdin).")]
Raw = Annotated[bool, typer.Option("--raw", help="Send the prompt as is, without the chat template.")]
RunTimings = Annotated[bool, typer.Option("--timings", help="Print TTFT and tokens/s to stderr.")]
ChatTimings = Annotated[bool, typer.Option("--timings", help="Print TTFT and tokens/s after each answer.")]
KvReuse = Annotated[
    bool,
    typer.Option("--kv-reuse/--no-kv-reuse", help="Keep the KV cache between turns (prefill only the new message)."),
]


def run(
    prompt: Prompt,
    model: ModelDir = None,
    max_tokens: MaxTokens = 256,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    repetition_penalty: RepetitionPenalty = None,
    seed: Seed = None,
    stop: Stop = None,
    raw: Raw = False,
    system: System = None,
    chat_template: ChatTemplate = None,
    provider: Provider = None,
    fallback: Fallback = None,
    timings: RunTimings = False,
    speculative: Speculative = None,
    draft_model: DraftModel = None,
    draft_tokens: DraftTokens = 4,
) -> None:
    """One-shot generation, streamed to stdout."""
    from ..generate import stream_generate

    if prompt == "-":
        prompt = sys.stdin.read()
    opts = generation_options(max_tokens, temperature, top_p, top_k, seed, stop, repetition_penalty)
    opts.validate()
    template = chat_template.read_text(encoding="utf-8") if chat_template else None  # before the slow load
    lm = load_speculative(model_folder(model, "run"), provider, fallback, speculative, draft_model, draft_tokens)
    if system and not raw:
        prompt_in = [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
    else:
        prompt_in = prompt
    last = None
    for ev in stream_generate(lm, prompt_in, opts, raw=raw, chat_template=template):
        sys.stdout.write(ev.text)
        sys.stdout.flush()
        last = ev
    sys.stdout.write("\n")
    if timings and last:
        print_timings(last)


def chat(
    model: ModelDir = None,
    max_tokens: MaxTokens = 512,
    temperature: Temperature = None,
    top_p: TopP = None,
    top_k: TopK = None,
    repetition_penalty: RepetitionPenalty = None,
    seed: Seed = None,
    system: System = None,
    chat_template: ChatTemplate = None,
    provider: Provider = None,
    fallback: Fallback = None,
    timings: ChatTimings = False,
    kv_reuse: KvReuse = True,
    speculative: Speculative = None,
    draft_model: DraftModel = None,
    draft_tokens: DraftTokens = 4,
) -> None:
    """Interactive chat (/help for commands). With stdin not a terminal: one message per line."""
    from ..chat import ChatSession, repl

    opts = generation_options(max_tokens, temperature, top_p, top_k, seed, repetition_penalty=repetition_penalty)
    opts.validate()
    template = chat_template.read_text(encoding="utf-8") if chat_template else None  # before the slow load
    lm = load_speculative(model_folder(model, "chat"), provider, fallback, speculative, draft_model, draft_tokens)
    session = ChatSession(lm, opts, system=system, chat_template=template, reuse=kv_reuse)
    repl(session, timings=timings)
