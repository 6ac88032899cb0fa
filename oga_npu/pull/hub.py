"""The Hugging Face hub, through huggingface_hub only (HF_TOKEN, HF_HOME, HF_ENDPOINT,
HF_HUB_OFFLINE are its own): a repo's file list at one commit with each LFS file's sha256,
and one file downloaded into the HF cache (hf_hub_download resumes its `.incomplete` file),
then checked against that sha256.

Offline (HF_HUB_OFFLINE=1) the listing is the cached snapshot's, and an LFS file's sha256
is its cache blob's name (the hub's ETag for an LFS file is its sha256).
"""

from __future__ import annotations

import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HubError, IntegrityError, PullError
from ..workdir import sha256_file

SHA256 = re.compile(r"^[0-9a-f]{64}$")
SHA1 = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubFile:
    path: str  # relative to the repo root, '/'-separated
    size: int | None
    sha256: str | None  # LFS files; None for small git files (checked by size only)


@dataclass
class Listing:
    repo: str
    commit: str
    files: dict[str, HubFile] = field(default_factory=dict)
    offline: bool = False


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub read it (its own calls obey the same flag)."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def _hf():
    try:
        import huggingface_hub as hf
        from huggingface_hub import errors as hfe
    except ImportError as e:  # pragma: no cover
        raise PullError("huggingface_hub is not installed", "pip install huggingface-hub") from e
    return hf, hfe


def translate(e: Exception, repo: str, what: str = "") -> HubError:
    """huggingface_hub's errors as one line and a fix."""
    _, hfe = _hf()
    thing = f"{repo}{'/' + what if what else ''}"
    if isinstance(e, hfe.GatedRepoError):
        return HubError(
            f"{repo} is gated (401/403): accept its license on its hub page and log in",
            "set HF_TOKEN to a token with access (or run `hf auth login`), then pull again",
        )
    if isinstance(e, hfe.RepositoryNotFoundError):
        return HubError(
            f"{repo} was not found on the hub ({_status(e)}), or it is private",
            "check the name (`oga-npu models --available` lists the catalog); for a private repo set HF_TOKEN",
        )
    if isinstance(e, hfe.RevisionNotFoundError):
        return HubError(f"{repo}: revision not found", "check --revision (a branch, tag or commit of the repo)")
    if isinstance(e, (hfe.LocalEntryNotFoundError, hfe.OfflineModeIsEnabled)):
        if offline():
            return HubError(
                f"{thing} is not in the local HF cache and HF_HUB_OFFLINE is set",
                "unset HF_HUB_OFFLINE to download it",
            )
        return HubError(
            f"{thing} could not be downloaded: the hub is not reachable and it is not in the cache",
            "check the network (or HF_ENDPOINT) and pull again: the download resumes",
        )
    if isinstance(e, hfe.EntryNotFoundError):  # after LocalEntryNotFoundError, its subclass
        return HubError(
            f"{thing} is not in the repo (404)",
            f"check the file name; the repo's files: https://huggingface.co/{repo}/tree/main",
        )
    if isinstance(e, hfe.HfHubHTTPError) and _status(e) in ("401", "403"):
        return HubError(
            f"{thing}: the hub refused access ({_status(e)}): the repo is private or gated, or HF_TOKEN is wrong",
            "set HF_TOKEN to a token with access to it (or run `hf auth login`), then pull again",
        )
    if isinstance(e, hfe.HfHubHTTPError):
        return HubError(
            f"{thing}: hub request failed: {str(e).splitlines()[0]}", "try again later: the download resumes"
        )
    return HubError(f"{thing}: {type(e).__name__}: {e}", "check the network (or HF_ENDPOINT) and pull again")


def _status(e: Exception) -> str:
    code = getattr(getattr(e, "response", None), "status_code", None)
    return str(code) if code else "404"


def listing(repo: str, revision: str | None) -> Listing:
    """The repo's files at `revision` (default: main), pinned to its commit."""
    hf, hfe = _hf()
    if offline():
        return _cached_listing(repo, revision)
    try:
        info = hf.HfApi().model_info(repo, revision=revision, files_metadata=True)
    except Exception as e:
        if isinstance(e, (hfe.LocalEntryNotFoundError,)) or _is_connection_error(e):
            try:  # the hub is unreachable: a cached snapshot still serves (as huggingface_hub does)
                return _cached_listing(repo, revision)
            except HubError:
                pass
        raise translate(e, repo) from e
    files = {s.rfilename: HubFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None) for s in (info.siblings or [])}
    commit = info.sha or (revision or "main")
    _note_ref(repo, revision or "main", commit)
    return Listing(repo, commit, files)


def _note_ref(repo: str, revision: str, commit: str) -> None:
    """refs/<revision> in the HF cache, as huggingface_hub writes it when it resolves a branch:
    files are downloaded by commit (one pull never mixes two), so an offline pull of `main`
    later finds this snapshot."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    if revision == commit or not SHA1.match(commit):
        return
    ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model") / "refs" / revision
    try:
        ref.parent.mkdir(parents=True, exist_ok=True)
        if not ref.is_file() or ref.read_text().strip() != commit:
            ref.write_text(commit)
    except OSError:
        pass  # a read-only cache: an offline pull then needs --revision COMMIT


def _is_connection_error(e: Exception) -> bool:
    names = {c.__name__ for c in type(e).__mro__}
    return bool(names & {"ConnectError", "ConnectionError", "TimeoutException", "ConnectTimeout"})


def _cached_listing(repo: str, revision: str | None) -> Listing:
    hf, _ = _hf()
    try:
        snap = Path(hf.snapshot_download(repo, revision=revision, local_files_only=True))
    except Exception as e:
        raise translate(e, repo) from e
    files = {}
    for p in sorted(snap.rglob("*")):
        if p.is_file():
            rel = p.relative_to(snap).as_posix()
            blob = p.resolve().name
            files[rel] = HubFile(rel, p.stat().st_size, blob if SHA256.match(blob) else None)
    return Listing(repo, snap.name, files, offline=True)


# ---------------------------------------------------------------- one file


Progress = Callable[[str, int, int], None]  # (path, completed bytes, total bytes)


def _bar_class(path: str, total: int, progress: Progress | None, terminal: bool):
    """A tqdm_class for hf_hub_download: every update goes to `progress`; on a terminal the
    bytes show as huggingface_hub's own bar."""
    hf, _ = _hf()

    class Bar:
        def __init__(self, *args, **kwargs):
            self.n = int(kwargs.get("initial") or 0)
            self.total = kwargs.get("total") or total
            self._inner = hf.utils.tqdm(**kwargs) if terminal else None
            if progress:
                progress(path, self.n, self.total or 0)

        def update(self, n: int = 1):
            self.n += n
            if self._inner is not None:
                self._inner.update(n)
            if progress:
                progress(path, self.n, self.total or 0)

        def close(self):
            if self._inner is not None:
                self._inner.close()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()
            return False

        def set_description(self, *a, **k):
            pass

        def refresh(self, *a, **k):
            pass

    return Bar


def download(listing: Listing, f: HubFile, progress: Progress | None = None) -> Path:
    """One file of the listing into the HF cache (resumed when a part is there), its sha256
    checked; returns the cached path. A file that fails the check is removed from the cache."""
    hf, _ = _hf()
    # huggingface_hub's byte bars on a terminal, for the CLI's own thread (not a server's worker)
    terminal = sys.stderr.isatty() and threading.current_thread() is threading.main_thread()
    try:
        path = Path(
            hf.hf_hub_download(
                listing.repo,
                f.path,
                revision=listing.commit,
                tqdm_class=_bar_class(f.path, f.size or 0, progress, terminal),
            )
        )
    except Exception as e:
        raise translate(e, listing.repo, f.path) from e
    verify(listing, f, path)
    return path


def verify(listing: Listing, f: HubFile, path: Path) -> None:
    size = path.stat().st_size
    if f.size is not None and size != f.size:
        _drop(path)
        raise IntegrityError(
            f"{listing.repo}/{f.path}: {size} bytes, the hub says {f.size}; the cached copy was removed",
            "pull again (it downloads the file again)",
        )
    if f.sha256 and sha256_file(path) != f.sha256:
        _drop(path)
        raise IntegrityError(
            f"{listing.repo}/{f.path}: sha256 differs from the hub's ({f.sha256[:12]}...); the cached copy was removed",
            "pull again; if it fails the same way, the file on the hub or a proxy between is broken",
        )


def _drop(path: Path) -> None:
    """Remove a cached file (its snapshot link and its blob) so the next pull downloads it."""
    blob = path.resolve()
    for p in (path, blob):
        try:
            p.unlink()
        except OSError:
            pass
