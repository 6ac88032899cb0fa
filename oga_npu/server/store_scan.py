"""The store, live (serve without -m): models prepared, pulled, re-prepared or removed after
the server started are seen without a restart.

- `Entry`: one model the server offers; `entry_of(store_entry)` builds it, with why it is not
  loadable (damaged, incomplete: "prepare is running (pid N)" while the lock's process lives,
  "interrupted: re-run `oga-npu prepare ...` to resume" once it is gone).
- `signature(folder)`: what moves when a folder is prepared, re-prepared, restored, removed or
  its prepare dies: the folder's own mtime (a file added or removed in it), its markers
  (manifest, prepare.json, .lock, stages/), whether the lock's process lives, and each weight
  file's size and mtime (watch.weights). A few stat calls, no file read.
- `StoreScan`: the signatures last seen; `due()` lets a full listing of the store root run at
  most once per `interval` (1 s), `folder_for(name)` finds one folder for a request that
  names a model not listed (the name checked: one plain folder name, never a path).

What the manager does with a change is in models.ModelManager.refresh (the listing: /v1/models,
/api/tags, the page) and ModelManager.ensure (each request rechecks its own folder).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..store import lock_holder, shown_source
from ..workdir import LOCK, MANIFEST, REQUEST, STAGES_DIR
from . import watch
from .http import known_path, scrub_paths
from .plan import default_max_tokens

log = logging.getLogger("oga_npu.server")

MIN_INTERVAL_S = 1.0  # a full rescan of the store at most this often
MARKERS = (MANIFEST, REQUEST, LOCK, STAGES_DIR)


@dataclass
class Entry:
    """One model the server offers: loadable (problem None) or listed with the reason it is not."""

    id: str
    folder: Path
    facts: dict = field(default_factory=dict)  # size, target, recipe, context_length, ... (for /v1/models)
    problem: str | None = None
    served: Any = None  # its models.ServedModel (or procworker.ProcessModel) while loaded
    last_used: float = 0.0
    leases: int = 0  # requests that hold it (see `using`)
    loading: asyncio.Future | None = None  # its load, while one runs
    weights: dict = field(default_factory=dict)  # {file: (size, mtime)} at load (watch.py)
    crashes: list = field(default_factory=list)  # when its worker process died (monotonic)

    @property
    def loaded(self) -> bool:
        return self.served is not None

    @property
    def busy(self) -> bool:
        return self.leases > 0 or (self.served is not None and self.served.queue.depth > 0)

    def info(self) -> dict:
        if self.served is not None:
            return {**self.facts, **self.served.info(), "loaded": True, "loadable": True}
        out = {
            "id": self.id,
            "object": "model",
            "created": _mtime(self.folder),
            "owned_by": "oga-npu",
            **self.facts,
            "loaded": False,
            "loading": self.loading is not None,  # a request is loading it now
            "loadable": self.problem is None,
        }
        if self.facts.get("context_length"):
            out["default_max_tokens"] = default_max_tokens(self.facts["context_length"])
        if self.problem is not None:  # a listing, like an error, shows no path of the machine
            out["not_loadable_reason"] = scrub_paths(self.problem)
        return out


def _mtime(folder: Path) -> int:
    try:
        return int(folder.stat().st_mtime)
    except OSError:
        return 0


def folder_problem(folder: Path) -> str | None:
    """Why a folder cannot be served (the quick integrity check), or None."""
    from ..model import check_folder
    from ..workdir import folder_state

    st = folder_state(folder)
    if st.state == "damaged":
        return st.detail
    if st.state not in ("ready", "foreign"):
        return st.detail or st.state
    rep = check_folder(folder, deep=False)
    return None if rep.ok else "; ".join(rep.problems)


def entry_of(se) -> Entry:
    """The server's Entry for a store.ModelEntry (its facts, and why it is not loadable)."""
    facts = {
        "size": se.size,
        "target": se.target,
        "recipe": se.recipe,
        "context_length": se.context,
        "params": se.params,
        "bits": se.bits,
        "source": shown_source(se.source, se.source_kind),
    }
    problem = (se.reason or se.state) if not se.runnable else folder_problem(se.path)
    return Entry(se.name, se.path, facts, problem)


def _stat(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def signature(folder: Path) -> tuple | None:
    """What changes when the folder does (see the module docstring); None: it is gone."""
    own = _stat(folder)
    if own is None or not folder.is_dir():
        return None
    marks = tuple(_stat(folder / m) for m in MARKERS)
    running = marks[2] is not None and lock_holder(folder) is not None
    return (own[1], marks, running, tuple(sorted(watch.weights(folder).items())))


@dataclass
class Changes:
    """What a refresh found: model ids added, removed, changed (facts, state or files)."""

    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.changed)


class StoreScan:
    """The store's folders and the signature each had when last read."""

    def __init__(self, store, interval: float = MIN_INTERVAL_S):
        self.store, self.interval = store, interval
        self.seen: dict[str, tuple | None] = {}
        self.last = float("-inf")
        self.scans = 0  # full listings so far

    def due(self, force: bool = False) -> bool:
        """True (and the clock restarted) when a full rescan may run now."""
        now = time.monotonic()
        if not force and now - self.last < self.interval:
            return False
        self.last = now
        return True

    def folders(self) -> dict[str, Path]:
        """{name: folder} of the store root's folders (dot-names skipped)."""
        self.scans += 1
        try:
            return {d.name: d for d in self.store.root.iterdir() if not d.name.startswith(".") and d.is_dir()}
        except OSError:
            return {}

    def folder_for(self, name: str) -> Path | None:
        """The store folder called `name` (a plain folder name: no separator, no dot-name), or None."""
        if not isinstance(name, str) or not name or name.startswith(".") or len(name) > 255:
            return None
        if any(c in name for c in "/\\:\x00") or Path(name).name != name:
            return None
        d = self.store.root / name
        try:
            return d if d.is_dir() else None
        except (OSError, ValueError):
            return None

    def changed(self, name: str, folder: Path) -> bool:
        return signature(folder) != self.seen.get(name)

    def read(self, name: str, folder: Path) -> Entry | None:
        """The folder's Entry now (None: not a model folder, or gone); its signature noted first,
        so a change made while it is read shows at the next look."""
        self.seen[name] = signature(folder)
        if self.seen[name] is None:
            return None
        se = self.store.entry(folder)
        return entry_of(se) if se is not None else None

    def note(self, name: str, folder: Path) -> None:
        """The folder as it is now counts as seen (a mark set now stays until it changes)."""
        self.seen[name] = signature(folder)

    def forget(self, name: str) -> None:
        self.seen.pop(name, None)


class LiveStore:
    """ModelManager's part that follows the store (its `_entries`, `_scan`, `_retiring`,
    `_release`): `refresh()` for the listings, `_recheck(entry)` before each request."""

    _entries: dict[str, Entry]
    _scan: StoreScan | None
    _retiring: set

    def _release(self, sm) -> None:  # models.release_memory
        raise NotImplementedError

    def refresh(self, force: bool = False) -> Changes:
        """The store read again (a folder listing and stats; at most once a second unless
        `force`): models prepared, pulled, re-prepared or removed since are added, updated or
        dropped (a loaded one's worker stopped once idle). Returns what changed. No-op for
        explicit folders (serve -m)."""
        out = Changes()
        if self._scan is None or not self._scan.due(force):
            return out
        on_disk = self._scan.folders()
        for name in [n for n in self._entries if n not in on_disk]:
            self._drop(self._entries[name])
            out.removed.append(name)
        for name, folder in on_disk.items():
            if name not in self._entries or self._scan.changed(name, folder):
                what = self._reread(name, folder)
                if what is not None:
                    getattr(out, "changed" if what == "refused" else what).append(name)
        return out

    def _recheck(self, e: Entry) -> None:
        """Before a request: its folder read again if it changed (404 gone, 409 changed under it)."""
        if self._scan.changed(e.id, e.folder) and self._reread(e.id, e.folder) == "refused":
            raise watch.changed_error(e.id, e.problem)

    def _reread(self, name: str, folder: Path) -> str | None:
        """Apply one folder's state now: "added", "removed", "changed", "refused" (a loaded
        model's weights changed and the folder no longer matches its manifest) or None."""
        new, old = self._scan.read(name, folder), self._entries.get(name)
        if new is None:
            if old is not None:
                self._drop(old)
            return "removed" if old is not None else None
        if old is None:
            self._entries[name] = new
            known_path(folder, name)
            log.info("model %s: found in the store", name)
            return "added"
        old.facts, old.folder = new.facts, new.folder
        why = watch.changed(old.weights, folder) if old.served is not None else None
        if why is not None and (new.problem is not None or not (folder / MANIFEST).is_file()):
            old.problem = watch.weights_problem(name, why)  # damaged (or not ours): refused until it changes
            log.error("model %s: %s", name, old.problem)
            self._retire(old)
            return "refused"
        if why is not None:  # re-prepared: the next request loads the new files
            log.info("model %s: its files were replaced; unloaded, the next request loads them", name)
            self._retire(old)
        if old.served is None:
            old.problem, old.crashes = new.problem, []
        return "changed"

    def _drop(self, e: Entry) -> None:
        self._entries.pop(e.id, None)
        self._scan.forget(e.id)
        log.info("model %s: its folder is gone from the store", e.id)
        self._retire(e)

    def _retire(self, e: Entry) -> None:
        """Unload `e` now for new requests; its worker stopped once the requests on it are done."""
        sm, e.served = e.served, None
        if sm is None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._release(sm)
            return

        async def release():
            while e.leases > 0 or sm.queue.depth > 0:
                await asyncio.sleep(0.1)
            await loop.run_in_executor(None, self._release, sm)
            log.info("model %s unloaded", e.id)

        task = loop.create_task(release())
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
