"""`oga-npu`: the command line, thin commands over the library, one error boundary.

A command goes argv -> main -> error boundary -> command module -> one library call -> output:

- `root.py`: the typer app, the root options (--version, -v), the commands registered, main();
- `_errors.py`: the error boundary: usage errors (exit 2, with a hint for the common slips),
  library errors as `Error: ...` and `Fix: ...` (exit 1; 130 for Ctrl+C), the rest "unexpected";
- the commands, one module per group, each a thin layer over one library call:
  `prepare.py` (prepare.prepare), `generate.py` (run, chat), `serve.py` (server.serve),
  `bench.py` (bench, bench compare, bench plot), `eval.py` (perplexity),
  `models.py` (models, rm, trace), `system.py` (devices, doctor, hello, env, recipes, architectures);
- `_cli_utils.py`: the options shared by several commands (declared once), -m resolved to a
  folder, GenerationOptions from the flags, tty tests;
- `_output.py`: what goes to stderr while a command works (stage progress, bench progress,
  timings); results (paths, tables, JSON) go to stdout.

Library modules are imported inside the commands: `oga-npu -h` stays fast, and a test that
patches a library function is seen by the command. OGA_NPU_DEBUG=1 shows the traceback.
"""

from .root import app, main

__all__ = ["app", "main"]
