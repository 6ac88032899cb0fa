"""Shared body of the fake Ryzen AI tools (tests put tests/fake_tools first on PATH).

Each fake appends {"tool", "argv", "cwd", "env"} to $OGA_NPU_FAKE_LOG (JSON lines), fails
on request (FAKE_<TOOL>_EXIT=N, FAKE_<TOOL>_STDERR=text; TOOL upper-cased, '-' -> '_'),
and otherwise writes the outputs the real tool documents. In a fake Ryzen AI env
(tests/rai_env.py) each tool is a wrapper that sets FAKE_EXE (its own path) and
FAKE_TOOL_VERSION (the env's release)."""

import json
import os
import sys
from pathlib import Path

ENV_KEYS = (
    "DD_PLUGINS_ROOT",
    "DD_PLUGINS_TRACING",
    "RYZEN_AI_INSTALLATION_PATH",
    "CONDA_DEFAULT_ENV",
    "CONDA_PREFIX",
    "PATH",
    "LD_LIBRARY_PATH",
    "RYZENAI_EP_PATH",
    "PYTHONPATH",
    "PYTHONHOME",
    "VIRTUAL_ENV",
)


def start(tool: str, version_flag: bool = True) -> list[str]:
    """Log the call, answer `--version`/`-v` (unless the tool does: version_flag=False), fail on request."""
    argv = sys.argv[1:]
    log = os.environ.get("OGA_NPU_FAKE_LOG")
    if log:
        with open(log, "a") as f:
            f.write(
                json.dumps(
                    {
                        "tool": tool,
                        "argv": argv,
                        "cwd": os.getcwd(),
                        "exe": os.environ.get("FAKE_EXE"),
                        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
                    }
                )
                + "\n"
            )
    if version_flag and argv and argv[0] in ("--version", "-v"):
        print(f"{tool} version {os.environ.get('FAKE_TOOL_VERSION', '1.6.0')}")
        sys.exit(0)
    key = tool.upper().replace("-", "_")
    code = int(os.environ.get(f"FAKE_{key}_EXIT", "0") or 0)
    if code:
        for line in os.environ.get(f"FAKE_{key}_STDERR", f"{tool}: failure requested").split("\\n"):
            print(line, file=sys.stderr)
        sys.exit(code)
    return argv


def opt(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def trace(where: Path, tool: str) -> None:
    if os.environ.get("DD_PLUGINS_TRACING") == "1":
        (where / f"{tool}_trace.json").write_text(json.dumps({"tool": tool, "events": [1, 2, 3]}))
