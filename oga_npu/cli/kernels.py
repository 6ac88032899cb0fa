"""`oga-npu kernels`: the ggml custom-op library of the gguf-ggml recipe (oga_npu/kernels):
`kernels` says whether it is built and what it runs with; `kernels build` builds it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

kernels_app = typer.Typer(
    help="The ggml kernel library of the gguf-ggml recipe: `kernels` (status), `kernels build`.",
    invoke_without_command=True,
    no_args_is_help=False,
)

Source = Annotated[
    Optional[Path],
    typer.Option(
        "--source",
        metavar="SDIST|DIR",
        help="llama-cpp-python sdist or llama.cpp folder (default: OGA_NPU_GGML_SRC, else downloaded from PyPI).",
    ),
]
Force = Annotated[bool, typer.Option("--force", help="Build again from a clean folder, even if built.")]


@kernels_app.callback()
def kernels_status(ctx: typer.Context) -> None:
    """Whether the library is built for this machine, where, and what ggml finds in the CPU."""
    if ctx.invoked_subcommand:
        return
    from .. import kernels

    lib = kernels.built()
    if lib is None:
        print("not built (oga-npu kernels build; prepare --recipe gguf-ggml builds it too)")
        return
    print(f"{lib}\n{kernels.info(lib)}")


@kernels_app.command("build")
def kernels_build(source: Source = None, force: Force = False) -> None:
    """Build the library (cmake + the C++ compiler; minutes)."""
    from .. import kernels

    lib = kernels.ensure(source=source, progress=lambda m: print(m, file=sys.stderr), force=force)
    print(lib)
