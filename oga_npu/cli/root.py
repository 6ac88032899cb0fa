"""The `oga-npu` app: the root options (--version, -v), every command registered in the order
`oga-npu -h` lists them, and main() (supervision of run/chat, then the error boundary)."""

from __future__ import annotations

import logging
import os
import sys
from typing import Annotated

import typer

from .._version import __version__
from ._errors import debug_enabled, run_app
from .bench import bench_app
from .eval import eval_cmd
from .generate import chat, run
from .kernels import kernels_app
from .models import models, rm_cmd, trace
from .prepare import prepare
from .pull import pull
from .serve import serve
from .system import architectures, devices_cmd, doctor, env, hello, recipes

app = typer.Typer(
    name="oga-npu",
    help="Prepare Hugging Face models for ONNX Runtime GenAI (CPU, WebGPU, Ryzen AI NPU) and chat with them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click-style help: flags read `--force`, not `--force <bool>`
    context_settings={"help_option_names": ["-h", "--help"]},
)

app.command()(prepare)
app.command()(pull)
app.command()(run)
app.command()(chat)
app.command()(serve)
app.command("eval")(eval_cmd)
app.command("devices")(devices_cmd)
app.command()(doctor)
app.command()(hello)
app.command()(models)
app.command("rm")(rm_cmd)
app.command()(trace)
app.command()(recipes)
app.command()(architectures)
app.command()(env)
app.add_typer(bench_app, name="bench")  # a group: listed after the commands
app.add_typer(kernels_app, name="kernels")


def version_callback(value: bool) -> None:
    if value:
        print(f"oga-npu {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="More log output on stderr.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: the one place errors become a message and an exit code (_errors.py says how).
    run/chat from a terminal's argv go on in a supervised child (guard.py): a native crash ends
    in one line, not a dead terminal."""
    from ..guard import CRASH_LOG_ENV, enable_crash_log, should_supervise, supervise

    if os.environ.get(CRASH_LOG_ENV):  # the supervised child where there is no fork (Windows)
        enable_crash_log(os.environ[CRASH_LOG_ENV])
    if argv is None and should_supervise(sys.argv[1:]):
        code = supervise(sys.argv[1:])  # run/chat go on in a child: a native crash ends in one line
        if code is not None:
            sys.exit(code)
    debug = debug_enabled()
    args = list(sys.argv[1:] if argv is None else argv)
    run_app(app, args, debug)
