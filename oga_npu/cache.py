"""oga-npu's cache ($OGA_NPU_HOME, default ~/.cache/oga-npu): what it holds, how big it is, and
which of its entries a model folder uses (so `oga-npu rm` removes them with the model).

    $OGA_NPU_HOME/
    ├── gguf/<name>-<fingerprint>/       a GGUF dequantized to an fp32 HF folder (prepare/source.py);
    │                                    shared by every model prepared from that file
    ├── cache/expanded/<hash>-v<N>/      a gguf-native model's expanded form (gguf/expand.py),
    │                                    keyed by the folder's content hash
    └── logs/                            crash logs

A model's entries: its GGUF's dequantized copy (the manifest's `source_key`, `gguf:<name>`) and
its expanded forms (its `content_hash`). An entry another folder of the store also uses (the
same GGUF, the same content) is kept.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .workdir import home

PARTS = (("gguf", "GGUF copies"), ("cache/expanded", "expanded forms"))


def disk_usage(folder: Path) -> int:
    """Bytes the folder takes on disk (hard links counted once: published files link to stages/)."""
    seen, total = set(), 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def sizes() -> dict[str, int]:
    """Bytes per part of the cache ("GGUF copies", "expanded forms"); a part not there counts 0."""
    return {label: disk_usage(home() / part) for part, label in PARTS}


def summary() -> str:
    """One line for `oga-npu models`: where the cache is and what it takes."""
    s = sizes()
    parts = ", ".join(f"{label} {n / 1e6:.1f} MB" for label, n in s.items())
    return f"cache: {home()} ({sum(s.values()) / 1e6:.1f} MB: {parts}; OGA_NPU_HOME overrides)"


def gguf_copy(manifest: dict) -> Path | None:
    """The dequantized copy of the GGUF a folder was prepared from (its folder under gguf/), or None."""
    key = str(manifest.get("source_key") or "")
    name = key[len("gguf:") :] if key.startswith("gguf:") else ""
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        return None
    return home() / "gguf" / name


def _users(others: list[dict], field: str, value) -> bool:
    return bool(value) and any(o.get(field) == value for o in others)


def entries(manifest: dict, others: list[dict]) -> list[Path]:
    """The cache entries only this folder uses (`others`: the manifests, or prepare.json, of the
    store's other folders). A GGUF copy's lock and half-written folder go with it."""
    out: list[Path] = []
    copy = gguf_copy(manifest)
    shared = _users(others, "source_key", manifest.get("source_key")) or _users(
        others, "source", manifest.get("source")
    )
    if copy is not None and not shared:
        out += [p for p in (copy, copy.with_name(copy.name + ".partial"), copy.with_name(copy.name + ".lock"))]
    content = manifest.get("content_hash")
    if content and not _users(others, "content_hash", content):
        from .gguf.expand import entries_of

        out += entries_of(content)
    return [p for p in out if os.path.lexists(p)]


def remove(paths: list[Path]) -> int:
    """Delete cache entries; returns the bytes freed (files linked elsewhere are not counted)."""
    freed = 0
    for p in paths:
        if p.is_dir() and not p.is_symlink():
            freed += sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and f.stat().st_nlink == 1)
            shutil.rmtree(p, ignore_errors=True)
        else:
            freed += p.stat().st_size if p.is_file() else 0
            p.unlink(missing_ok=True)
    return freed
