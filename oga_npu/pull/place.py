"""A pulled OGA folder into the store, atomically, and what it is (target, release, runs here).

<store>/<name>.partial/     while pulling: prepare.json ({"source", "pull": true}) marks it
│                           incomplete in `oga-npu models`; files are hard links to the HF
│                           cache's blobs (copies across file systems)
└── -> <store>/<name>/      renamed when every file is there and checked, manifest written last
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ..errors import OutputExistsError, PullError
from ..workdir import (
    MANIFEST,
    REQUEST,
    finished_manifest,
    folder_state,
    read_json,
    sha256_file,
    write_json_atomic,
)

PARTIAL = ".partial"
RAI_RELEASE = re.compile(r"ryzen[-_ ]?ai[-_ ]?(\d+\.\d+(?:\.\d+)?)", re.I)


def partial_dir(final: Path) -> Path:
    return final.with_name(final.name + PARTIAL)


def folder_target(config: dict) -> str:
    """hybrid | npu (AMD's forms), else the first provider genai_config.json names, else cpu."""
    from ..providers import configured_providers
    from ..ryzenai_folders import folder_form, folder_kind

    if folder_form(config) is not None:
        return folder_kind(config)
    provs = [p for p in configured_providers(config) if p != "cpu"]
    return provs[0] if provs else "cpu"


def folder_release(config: dict, repo: str) -> str | None:
    """The Ryzen AI release an AMD folder needs: the repo's name ('-ryzenai-1.7-'), else its form
    (custom_ops: 1.6; the RyzenAI provider: 1.7+, said as '1.7')."""
    from ..ryzenai_folders import folder_form

    form = folder_form(config)
    if form is None:
        return None
    m = RAI_RELEASE.search(repo)
    if m:
        return m.group(1)
    return "1.6" if form == "custom_ops" else "1.7"


def requirement(config: dict, release: str | None, catalog_oga: str | None) -> str | None:
    """The oldest onnxruntime-genai that loads it: the release's pin, else the catalog's."""
    from ..capabilities import RAI_OGA_PINS

    if release:
        key = release if release in RAI_OGA_PINS else ".".join(release.split(".")[:2])
        if key in RAI_OGA_PINS:
            return RAI_OGA_PINS[key]
    return catalog_oga


def runs_here(folder: Path) -> tuple[bool, str]:
    """(whether this machine can load the folder, why not): what model.check refuses."""
    from ..errors import OgaNpuError
    from ..model import check

    try:
        check(folder)
    except OgaNpuError as e:
        return False, e.message
    return True, ""


def existing(final: Path, repo: str, commit: str, variant: str) -> bool:
    """True when `final` already holds this pull; OutputExistsError when it holds something else."""
    st = folder_state(final)
    if st.state in ("missing", "empty"):
        return False
    pulled = (st.manifest or {}).get("pull") or {}
    if st.state == "ready" and (pulled.get("repo"), pulled.get("revision"), pulled.get("variant")) == (
        repo,
        commit,
        variant,
    ):
        return True
    raise OutputExistsError(
        f"{final} holds another model ({st.state}{': ' + pulled.get('repo', '') if pulled else ''})",
        f"pass --name to pull it under another name, or remove it first: oga-npu rm {final.name}",
    )


def check_disk(needed: int, *folders: Path) -> None:
    """Refuse before downloading when a disk holding the cache or the store has too little room."""
    seen = set()
    for d in folders:
        d = next((p for p in [d, *d.parents] if p.exists()), d)
        try:
            dev = d.stat().st_dev
            free = shutil.disk_usage(d).free
        except OSError:
            continue
        if dev in seen:
            continue
        seen.add(dev)
        if needed * 1.05 > free:
            raise PullError(
                f"the download needs {needed / 1e9:.2f} GB; {d} has {free / 1e9:.2f} GB free",
                "free some space, or set HF_HOME / OGA_NPU_MODELS to a bigger disk, and pull again",
            )


def begin(final: Path, source: str) -> Path:
    part = partial_dir(final)
    part.mkdir(parents=True, exist_ok=True)
    write_json_atomic(part / REQUEST, {"source": source, "pull": True})
    return part


def link_in(part: Path, rel: str, cached: Path) -> None:
    dst = part / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(cached.resolve(), dst)
    except OSError:
        shutil.copy2(cached.resolve(), dst)


def finish(part: Path, final: Path, manifest: dict, hashes: dict[str, str]) -> dict:
    """The manifest (every file: size, mtime, sha256) written, then the folder renamed into place."""
    files = {}
    for rel in sorted(hashes):
        st = (part / rel).stat()
        files[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": hashes[rel] or sha256_file(part / rel)}
    manifest = finished_manifest(manifest, files)
    (part / REQUEST).unlink(missing_ok=True)
    write_json_atomic(part / MANIFEST, manifest)
    if final.exists():
        shutil.rmtree(final)  # an empty folder, or a partial one of this pull (existing() said so)
    os.replace(part, final)
    return manifest


def genai_config(folder: Path) -> dict:
    cfg = read_json(folder / "genai_config.json")
    if not isinstance(cfg, dict):
        raise PullError(f"{folder}: genai_config.json is not valid JSON", "pull again, or report the repo's file")
    return cfg
