"""What the manager checks before each request to a loaded model (models.ModelManager.ensure):

- its worker process is alive (procworker.ProcessModel.dead); a crashed one is dropped and
  loaded afresh, at most `MAX_RESTARTS` times a minute, then refused for the rest of it;
- its weights are the ones it loaded: the size and mtime of each weight file, noted at load.
  A file rewritten or truncated under a loaded model (memory-mapped: the next read of a page
  past the new end is SIGBUS) unloads the model and refuses it with the reason and the fix.
"""

from __future__ import annotations

import time
from pathlib import Path

from .errors import ApiError

MAX_RESTARTS = 3  # worker restarts per model per minute
WINDOW_S = 60.0
WEIGHT_SUFFIXES = (".onnx", ".data", ".onnx_data", ".bin", ".xclbin")


def weights(folder: Path) -> dict[str, tuple[int, int]]:
    """{file name: (size, mtime_ns)} of the folder's weight files (top level and one below)."""
    out = {}
    folder = Path(folder)
    try:
        files = [*folder.iterdir(), *(f for d in folder.iterdir() if d.is_dir() for f in d.iterdir())]
    except OSError:
        return {}
    for f in files:
        if f.name.endswith(WEIGHT_SUFFIXES):
            try:
                st = f.stat()
            except OSError:
                continue
            out[str(f.relative_to(folder))] = (st.st_size, st.st_mtime_ns)
    return out


def changed(before: dict, folder: Path) -> str | None:
    """How the weights differ from `before` (None: the same)."""
    now = weights(folder)
    for name, (size, mtime) in before.items():
        if name not in now:
            return f"its weight file {name} was removed after it was loaded"
        if now[name][0] != size:
            return f"its weight file {name} changed size after it was loaded ({size} -> {now[name][0]} bytes)"
        if now[name][1] != mtime:
            return f"its weight file {name} was rewritten after it was loaded"
    return None


def weights_problem(model_id: str, why: str) -> str:
    return f"{why}; it was unloaded (next: `oga-npu doctor -m {model_id}`, or prepare it again)"


def changed_error(model_id: str, problem: str) -> ApiError:
    return ApiError(409, f"the model '{model_id}' cannot be used: {problem}", code="model_changed", param="model")


def recent(crashes: list[float]) -> list[float]:
    now = time.monotonic()
    return [t for t in crashes if now - t < WINDOW_S]


def restart_refusal(model_id: str, crashes: list[float], limit: int = MAX_RESTARTS) -> ApiError | None:
    """503 when the model crashed `limit` times in the last minute, else None."""
    if len(crashes) < limit:
        return None
    wait = max(1, int(WINDOW_S - (time.monotonic() - crashes[0])) + 1)
    return ApiError(
        503,
        f"the model '{model_id}' crashed {len(crashes)} times in the last minute; it is not restarted "
        f"for {wait} s (next: `oga-npu doctor -m {model_id}`, or try --provider cpu)",
        type_="server_error",
        code="model_crashed",
        headers={"Retry-After": str(wait)},
    )
