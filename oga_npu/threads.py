"""How many threads: the one place 'auto' thread counts are decided (the build's session
options, eval's llama.cpp reference, the stage estimates)."""

from __future__ import annotations

import os


def physical_cores() -> int:
    """The machine's physical cores, at most the CPUs this process may run on (taskset, a
    container's cpuset): 16 threads on 2 allowed CPUs would take turns on them."""
    try:
        import psutil

        n = psutil.cpu_count(logical=False)
    except ImportError:  # pragma: no cover
        n = None
    n = int(n or os.cpu_count() or 1)
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Windows/macOS
        return n
    return max(1, min(n, allowed))
