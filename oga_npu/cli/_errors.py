"""The error boundary: where errors become a message on stderr and an exit code.

Usage errors: the usage line, the problem and maybe a hint, exit 2. Library errors
(`OgaNpuError`) and the environment's (no space, name too long, no permission, not
found): `Error: ...` and `Fix: ...`, exit 1 (130 for Ctrl+C). "unexpected" is left for
bugs. OGA_NPU_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import os
import sys

import typer

from ..errors import OgaNpuError

BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


def debug_enabled() -> bool:
    return os.environ.get("OGA_NPU_DEBUG", "") not in ("", "0")


def run_app(app: typer.Typer, args: list[str], debug: bool) -> None:
    """app(args) without click's standalone mode; every way out ends in sys.exit(code)."""
    try:
        rc = app(args=args or ["--help"], prog_name="oga-npu", standalone_mode=False)
        if isinstance(rc, int) and rc:
            sys.exit(rc)  # typer.Exit(code) comes back as a return value without standalone mode
    except OgaNpuError as e:
        fail(e, debug)
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        print("Aborted.", file=sys.stderr)
        sys.exit(130)
    except typer.TyperException as e:  # usage errors (bad option, missing value, unknown command)
        usage_error(e, args)
    except BrokenPipeError:  # `oga-npu ... | head`: the reader left; not an error worth a message
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush quiet
        except OSError:
            pass
        sys.exit(141)
    except OSError as e:
        from ..errors import FileSystemError

        err = FileSystemError.from_os_error(e)
        if err is None:
            unexpected(e, debug)
        fail(err, debug)
    except Exception as e:  # noqa: BLE001 - the last resort: a bug
        unexpected(e, debug)


def usage_error(e: typer.TyperException, args: list[str]) -> None:
    """click's usage message (usage line, `Try ... -h`, the error), our hint, the exit code (2)."""
    if type(e).__name__ == "NoArgsIsHelpError":  # a group called bare: its help, not an error
        print(e.format_message())
        sys.exit(0)
    show = getattr(e, "show", None)
    if show is not None:
        show()
    else:  # pragma: no cover - every typer usage error has show()
        print(f"Error: {e.format_message()}", file=sys.stderr)
    hint = usage_hint(e, args)
    if hint:
        print(hint, file=sys.stderr)
    sys.exit(getattr(e, "exit_code", 2))


def usage_hint(e: Exception, args: list[str]) -> str:
    """One more line for the two usage errors people hit most: a value after a flag
    (`--dry-run true`) and an abbreviated option (`--temp`)."""
    msg = e.format_message() if hasattr(e, "format_message") else str(e)
    if "unexpected extra argument" in msg:
        for i, a in enumerate(args[1:], 1):
            if a.lower() in BOOL_WORDS and args[i - 1].startswith("--"):
                return f"Hint: {args[i - 1]} is a flag and takes no value: write {args[i - 1]} alone"
    name = getattr(e, "option_name", None)
    ctx = getattr(e, "ctx", None)
    if name and ctx is not None and name.startswith("--"):
        opts = sorted({o for p in ctx.command.params for o in getattr(p, "opts", []) if o.startswith(name)})
        if opts:
            return f"Hint: did you mean {' or '.join(opts)}?"
    return ""


def fail(e: OgaNpuError, debug: bool) -> None:
    """`Error:` and `Fix:` on stderr, exit with the error's code (the traceback first under debug)."""
    if debug:
        import traceback

        traceback.print_exc()
    print(f"Error: {e.message}", file=sys.stderr)
    if e.fix:
        print(f"Fix: {e.fix}", file=sys.stderr)
    sys.exit(e.exit_code)


def unexpected(e: BaseException, debug: bool) -> None:
    """A bug: its type and message, and how to get the traceback (re-raised under debug)."""
    if debug:
        raise e
    print(f"Error: unexpected {type(e).__name__}: {e}", file=sys.stderr)
    print("Fix: re-run with OGA_NPU_DEBUG=1 and report the traceback", file=sys.stderr)
    sys.exit(1)
