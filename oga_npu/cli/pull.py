"""`oga-npu pull SOURCE`: a ready-made model into the store (pull.pull), progress on stderr,
the model's name on stdout."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

Source = Annotated[
    str,
    typer.Argument(
        metavar="SOURCE",
        help="A catalog name (`oga-npu models --available`), org/repo (an OGA model repo or a checkpoint), "
        "org/repo:QUANT or org/repo/FILE.gguf (a GGUF, prepared here).",
    ),
]
Variant = Annotated[
    Optional[str],
    typer.Option(
        "--variant", help="The subfolder of an OGA repo (or a word of it: cpu, dml, ...); a GGUF repo's quant."
    ),
]
Revision = Annotated[Optional[str], typer.Option("--revision", help="Branch, tag or commit to pull (default: main).")]
Name = Annotated[Optional[str], typer.Option("--name", help="The model's name in the store.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress; print only the model's name.")]


class Lines:
    """Progress as lines on stderr: one per status, one per file when it is done (a terminal
    also gets huggingface_hub's byte bars)."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.last = None

    def __call__(self, e) -> None:
        if self.quiet:
            return
        if e.digest is None:
            print(e.status, file=sys.stderr)
        elif e.total and e.completed == e.total and self.last != e.digest:
            self.last = e.digest
            what = e.status if e.file and e.file in e.status else f"{e.status} {e.file}"
            print(f"{what} ({e.total / 1e6:.1f} MB) done", file=sys.stderr)


def pull(
    source: Source, variant: Variant = None, revision: Revision = None, name: Name = None, quiet: Quiet = False
) -> None:
    """Download a ready-made model (AMD's Ryzen AI models, OGA folders, GGUF files) into the store."""
    from ..pull import PullRequest
    from ..pull import pull as do_pull

    result = do_pull(PullRequest(source, variant=variant, revision=revision, name=name), Lines(quiet))
    if not quiet:
        what = "already in the store" if result.already else f"pulled {result.repo}@{result.revision[:12]}"
        print(f"{what}: {result.path}", file=sys.stderr)
        if sys.stdout.isatty():
            print(f"next: oga-npu chat -m {result.name}", file=sys.stderr)
    print(result.name)
