"""Typed errors. Each carries a one-line cause and a fix; `cli.main` prints both.

The library raises these and never prints them; the CLI boundary turns them into
`Error: <message>` plus `Fix: <fix>` on stderr and exit code 1 (OGA_NPU_DEBUG=1 adds
the traceback).
"""

from __future__ import annotations

from pathlib import Path


class OgaNpuError(Exception):
    """Base class: `message` says what went wrong, `fix` what to do next."""

    exit_code = 1

    def __init__(self, message: str, fix: str = ""):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return self.message


class RecipeError(OgaNpuError):
    """A recipe file is missing or has bad keys/values."""


class SourceError(OgaNpuError):
    """The model source (hub id, folder, .gguf) cannot be used."""


class HubError(SourceError):
    """Download from the Hugging Face hub failed (unknown id, gated, offline)."""


class PullError(HubError):
    """`oga-npu pull` cannot fetch or place a model (no such file, ambiguous variant, no space)."""


class IntegrityError(PullError):
    """A downloaded file's sha256 differs from the hub's metadata."""


class ArchitectureError(OgaNpuError):
    """The model's architecture, or its recipe/target combination, cannot be prepared."""


class OutputExistsError(OgaNpuError):
    """The output folder holds something we must not overwrite without --force."""


class LockedError(OgaNpuError):
    """Another prepare runs on the same output folder."""


class ToolNotFound(OgaNpuError):
    """An external tool is not installed / not on PATH."""


def exit_words(code: int) -> str:
    """'failed with exit code 2', or for a process a signal ended: 'was killed by SIGKILL'."""
    if code < 0:
        import signal

        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"failed with exit code {code}"


class ToolFailed(OgaNpuError):
    """An external tool exited non-zero."""

    def __init__(
        self, tool: str, argv: list[str], code: int, tail: list[str], log_path: Path | None, version: str | None = None
    ):
        self.tool = tool
        self.argv = argv
        self.code = code
        self.tail = tail
        self.log_path = log_path
        self.version = version
        last = " | ".join(line.strip() for line in tail[-3:] if line.strip()) or "(no stderr)"
        ver = f" {version}" if version else ""
        msg = f"{tool}{ver} {exit_words(code)}: {last}"
        fix = f"see the full log: {log_path}" if log_path else "re-run with OGA_NPU_DEBUG=1"
        fix += "; once its cause is fixed, the same command resumes at this stage (finished stages are kept)"
        super().__init__(msg, fix)


class ToolTimeout(ToolFailed):
    pass


class KernelBuildError(OgaNpuError):
    """oga-npu's ggml custom-op library (oga_npu/kernels) cannot be built or loaded here."""


class DiskFullError(OgaNpuError):
    """Not enough disk space (checked up front), or the disk filled during a stage."""


class StageInterrupted(OgaNpuError):
    """Ctrl+C during a stage: exit 130, the staging folder stays for the next run."""

    exit_code = 130


class ModelFolderError(OgaNpuError):
    """A model folder is missing files, holds git-lfs pointers, or is unfinished."""


class IncompleteModelError(ModelFolderError):
    pass


class ModelLoadError(OgaNpuError):
    """OGA failed to load or run the model (translated where the cause is known)."""


class ProviderError(OgaNpuError):
    """An execution provider is missing; we never fall back to CPU silently."""


class GenerationError(OgaNpuError):
    """Bad generation options or a prompt that does not fit."""


class ContextLengthError(GenerationError):
    def __init__(self, prompt_tokens: int, max_tokens: int, context: int, what: str = "context length"):
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.context = context
        super().__init__(
            f"prompt ({prompt_tokens} tokens) + max_tokens ({max_tokens}) = {prompt_tokens + max_tokens} "
            f"exceeds the model's {what} ({context})",
            "shorten the prompt or lower --max-tokens",
        )


class ChatTemplateError(GenerationError):
    pass


class VersionError(OgaNpuError):
    """Installed package versions do not match what the step needs."""


class RuntimeMissingError(VersionError):
    """No onnxruntime-genai distribution is installed (the core package pins none)."""


class PreflightError(OgaNpuError):
    """A target's tools or device are missing; raised before anything is written."""


class DeviceError(OgaNpuError):
    """The machine lacks the device a target needs."""


class ModelNotFoundError(ModelFolderError):
    """A model path (run/chat/doctor -m) that does not exist: usually a typo."""


class ModelChoiceError(OgaNpuError):
    """No -m and the store holds no single model to take: the message lists the choices."""

    exit_code = 2


class FileSystemError(OgaNpuError):
    """The file system refused: no space left, a name too long, no permission, not found.
    Built from the OSError by `from_os_error` so the message names the path and the fix."""

    def __init__(self, message: str, fix: str = "", errno_: int | None = None, path: str | None = None):
        super().__init__(message, fix)
        self.errno = errno_
        self.path = path

    @classmethod
    def from_os_error(cls, e: OSError) -> FileSystemError | None:
        """The typed error for an OSError caused by the environment, None for other OSErrors."""
        import errno as E

        path = e.filename if e.filename is not None else e.filename2
        where = f" {_short(path)}" if path is not None else ""
        table = {
            E.ENOSPC: (
                f"no space left on the disk writing{where}",
                "free some space there, or point --output / OGA_NPU_HOME / OGA_NPU_MODELS at a disk with "
                "room (`oga-npu doctor` shows free space)",
            ),
            E.ENAMETOOLONG: (f"file name too long:{where}", "use a shorter path or file name (--output DIR)"),
            E.EACCES: (
                f"permission denied:{where}",
                "use a folder you can write to (--output DIR, OGA_NPU_HOME, OGA_NPU_MODELS) or fix its permissions",
            ),
            E.ENOENT: (f"no such file or folder:{where}", "check the path (a typo?)"),
            E.ENOTDIR: (f"not a folder:{where}", "check the path: a file stands where a folder should be"),
            E.EISDIR: (f"is a folder, not a file:{where}", "pass a file path"),
            E.EROFS: (f"read-only file system:{where}", "use a writable folder (--output DIR, OGA_NPU_HOME)"),
        }
        table[E.EPERM] = table[E.EACCES]
        if hasattr(E, "EDQUOT"):
            table[E.EDQUOT] = (f"disk quota exceeded writing{where}", table[E.ENOSPC][1])
        if e.errno not in table:
            return None
        msg, fix = table[e.errno]
        return cls(msg, fix, e.errno, None if path is None else str(path))


def _short(path, limit: int = 120) -> str:
    s = str(path)
    return s if len(s) <= limit else f"{s[:60]}…{s[-40:]} ({len(s)} characters)"


class GuidanceError(GenerationError):
    """onnxruntime-genai (llguidance) refused a JSON schema or grammar."""
