"""Folders, markers and locks: the on-disk contract of a prepared model.

    <store>/<name>-<target>/           the model folder (--output; the store: models_dir())
    ├── genai_config.json, model.onnx, model.onnx.data, tokenizer files ...
    ├── oga_npu_manifest.json          written last: the folder is ready iff it exists
    │                                  and the files match it (size, mtime, sha256 of each
    │                                  file, hashed as publish links/copies it; content_hash)
    ├── prepare.json                   the request (source, recipe, target): how to resume
    ├── logs/<stage>.log               every tool's full output
    ├── stages/<stage>/                finished stage outputs, each with done.json
    ├── stages/<stage>.partial/        a stage in progress (or killed): never trusted
    └── .lock                          held by a running prepare (pid inside)

Published files are hard links to stages/<last>/ where the file system allows.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import IncompleteModelError, LockedError

MANIFEST = "oga_npu_manifest.json"
REQUEST = "prepare.json"
DONE = "done.json"
LOCK = ".lock"
STAGES_DIR = "stages"
LOGS_DIR = "logs"
MANIFEST_VERSION = 2
# Files up to this size are re-hashed at every load (configs, tokenizer, model.onnx without its
# weights); bigger ones are checked by size and mtime, and re-hashed only when the mtime moved.
QUICK_HASH_LIMIT = 32 * 1024 * 1024
VERIFY_LEVELS = ("size", "quick", "full")


def home() -> Path:
    """oga-npu's own cache (converted GGUF files, ...): $OGA_NPU_HOME or ~/.cache/oga-npu."""
    env = os.environ.get("OGA_NPU_HOME")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "oga-npu"


STORE_ENV = "OGA_NPU_MODELS"


def checkout_root() -> Path | None:
    """The source checkout this package runs from (a clone, or an editable install of one);
    None for a wheel install (the package sits in site-packages, no pyproject.toml beside it)."""
    root = Path(__file__).resolve().parent.parent
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "oga-npu"' in text else None


def user_data_dir(system: str | None = None) -> Path:
    """The per-user data folder (platformdirs' user_data_dir, without the dependency):
    %LOCALAPPDATA%\\oga-npu on Windows, $XDG_DATA_HOME/oga-npu or ~/.local/share/oga-npu elsewhere."""
    if (system or os.name) == "nt":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
    else:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "oga-npu"


def models_dir_origin() -> tuple[Path, str]:
    """(the model store, why it is there): $OGA_NPU_MODELS, else the checkout's models/ for a
    checkout or editable install, else the per-user data folder (a wheel install)."""
    env = os.environ.get(STORE_ENV)
    if env:
        return Path(env).expanduser().absolute(), f"set by {STORE_ENV}"
    root = checkout_root()
    if root is not None:
        return root / "models", f"the checkout's models/; {STORE_ENV} overrides"
    return user_data_dir() / "models", f"the per-user data folder; {STORE_ENV} overrides"


def models_dir() -> Path:
    """The model store: where `prepare` writes by default and where `-m NAME` looks."""
    return models_dir_origin()[0]


def write_json_atomic(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def copy_hashed(src: Path, dst: Path, chunk: int = 4 << 20) -> str:
    """Copy src to dst and return the sha256 of what was written (one read of src)."""
    h = hashlib.sha256()
    with open(src, "rb") as fi, open(dst, "wb") as fo:
        for block in iter(lambda: fi.read(chunk), b""):
            h.update(block)
            fo.write(block)
    shutil.copystat(src, dst)
    return h.hexdigest()


def content_hash(files: dict) -> str:
    """One hash for a folder's content: the sorted names and sha256 of its manifest's files."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(f"{name}:{files[name].get('sha256')}\n".encode())
    return h.hexdigest()[:16]


def file_fingerprint(path: Path) -> str:
    """Cheap content fingerprint: size plus the first and last MiB (for big GGUF files)."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > (2 << 20):
            f.seek(-(1 << 20), os.SEEK_END)
            h.update(f.read(1 << 20))
    return h.hexdigest()[:16]


def folder_fingerprint(path: Path) -> str:
    """Fingerprint of a local HF folder: names and sizes of its files, and small files' content."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts):
        rel = f.relative_to(path).as_posix()
        st = f.stat()
        h.update(f"{rel}:{st.st_size}\n".encode())
        if st.st_size < (1 << 20):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def folder_content_hash(path: Path, manifest: dict | None = None) -> str:
    """content_hash of a model folder: the manifest's when it has one, else every file hashed."""
    manifest = manifest if manifest is not None else read_json(path / MANIFEST)
    if manifest and manifest.get("content_hash"):
        return manifest["content_hash"]
    skip = {MANIFEST, REQUEST, LOCK}
    return content_hash(
        {p.name: {"sha256": sha256_file(p)} for p in sorted(path.iterdir()) if p.is_file() and p.name not in skip}
    )


# ---------------------------------------------------------------- stages


def stage_dir(out: Path, stage: str) -> Path:
    return out / STAGES_DIR / stage


def partial_dir(out: Path, stage: str) -> Path:
    return out / STAGES_DIR / f"{stage}.partial"


def stage_done(out: Path, stage: str) -> dict | None:
    d = stage_dir(out, stage)
    return read_json(d / DONE) if d.is_dir() else None


def begin_stage(out: Path, stage: str) -> Path:
    """A clean staging folder for `stage`; a leftover from a killed run is removed."""
    part = partial_dir(out, stage)
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    return part


def finish_stage(out: Path, stage: str, part: Path, marker: dict) -> Path:
    """Write done.json into the staging folder and rename it into place."""
    write_json_atomic(part / DONE, marker)
    final = stage_dir(out, stage)
    if final.exists():
        shutil.rmtree(final)
    os.replace(part, final)
    return final


def drop_stage(out: Path, stage: str) -> None:
    for d in (stage_dir(out, stage), partial_dir(out, stage)):
        if d.exists():
            shutil.rmtree(d)


# ---------------------------------------------------------------- publish / manifest


def link_or_copy(src: Path, dst: Path) -> str:
    """Hard-link (or copy) src to dst; returns dst's sha256, hashed while copying when it copies."""
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        return copy_hashed(src, dst)
    return sha256_file(dst)


def published_files(out: Path) -> list[Path]:
    skip = {MANIFEST, REQUEST, LOCK, STAGES_DIR, LOGS_DIR}
    return sorted(p for p in out.iterdir() if p.name not in skip and p.is_file())


def unpublish(out: Path) -> None:
    """Make a folder not-ready before it is changed: the manifest goes first."""
    m = out / MANIFEST
    if m.exists():
        m.unlink()


def publish(out: Path, model_stage: Path, manifest: dict) -> dict:
    """Expose model_stage's files at the top of `out`, then write the manifest (last)."""
    unpublish(out)
    for p in published_files(out):
        p.unlink()
    files = {}
    for src in sorted(model_stage.iterdir()):
        if not src.is_file() or src.name == DONE:
            continue
        dst = out / src.name
        digest = link_or_copy(src, dst)
        st = dst.stat()
        files[src.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    manifest = finished_manifest(manifest, files)
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def finished_manifest(manifest: dict, files: dict) -> dict:
    """The manifest a ready folder gets (prepare's publish, pull's finish): its files (size,
    mtime, sha256), their content hash, the format version and when it was finished."""
    return dict(
        manifest,
        files=files,
        content_hash=content_hash(files),
        manifest_version=MANIFEST_VERSION,
        finished_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def update_manifest(out: Path, **keys) -> bool:
    """Set non-file keys (e.g. `quality` after eval) in a ready folder's manifest. The files,
    their sizes and hashes are untouched, so the folder stays what prepare published."""
    st = folder_state(out)
    if st.state != "ready" or st.manifest is None:
        return False
    if "files" in keys:
        raise ValueError("update_manifest does not change the file list")
    write_json_atomic(out / MANIFEST, dict(st.manifest, **keys))
    return True


@dataclass
class FolderState:
    path: Path
    state: str  # ready | incomplete | foreign | missing | empty | damaged
    detail: str = ""
    manifest: dict | None = None
    request: dict | None = None


def _names(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _lfs_pointer(f: Path, size: int) -> bool:
    if size > 1024:
        return False
    try:
        with open(f, "rb") as fh:
            return fh.read(23) == b"version https://git-lfs"
    except OSError:
        return False


def check_files(out: Path, files: dict, verify: str = "quick") -> str:
    """ "" when the folder's files match the manifest's `files`, else what differs (every missing
    or resized file named; a git-lfs pointer named as one).

    size: sizes only. quick (every load): sizes and mtimes, and the sha256 of files up to
    QUICK_HASH_LIMIT and of any file whose mtime moved. full (doctor): every file's sha256.
    Only the "files" key is read: other manifest keys (quality, ...) may change freely."""
    if verify not in VERIFY_LEVELS:
        raise ValueError(f"verify must be one of {VERIFY_LEVELS}")
    stats = {}
    missing, wrong = [], []
    for name, entry in files.items():  # every stat first: a missing or resized file costs no hashing
        f = out / name
        try:
            st = stats[name] = f.stat()
        except OSError:
            missing.append(name)
            continue
        if st.st_size != entry.get("size"):
            if _lfs_pointer(f, st.st_size):
                wrong.append(
                    f"{name} is a git-lfs pointer file, not the real file (run `git lfs pull` in its repository)"
                )
            else:
                wrong.append(f"{name} has {st.st_size} bytes, the manifest says {entry.get('size')}")
    if missing or wrong:
        problems = ([f"{_names(missing)} {'is' if len(missing) == 1 else 'are'} missing"] if missing else []) + wrong
        return "; ".join(problems)
    if verify == "size":
        return ""
    for name, entry in sorted(files.items(), key=lambda kv: kv[1].get("size", 0)):
        want = entry.get("sha256")
        if want is None:  # a manifest from before every file was hashed
            continue
        st = stats[name]
        moved = "mtime_ns" in entry and st.st_mtime_ns != entry["mtime_ns"]
        if verify == "full" or moved or st.st_size <= QUICK_HASH_LIMIT:
            if sha256_file(out / name) != want:
                return f"{name} was changed since prepare (its content differs from the manifest's sha256)"
    return ""


def folder_state(out: Path, check_hashes: bool = False, verify: str | None = None) -> FolderState:
    """What `out` is. verify (see check_files) defaults to "size"; check_hashes=True means "full"."""
    if not out.exists():
        return FolderState(out, "missing")
    if not out.is_dir():
        return FolderState(out, "foreign", "not a folder")
    request = read_json(out / REQUEST)
    manifest = read_json(out / MANIFEST)
    if manifest is not None:
        problem = check_files(out, manifest.get("files", {}), verify or ("full" if check_hashes else "size"))
        if problem:
            return FolderState(out, "damaged", problem, manifest, request)
        return FolderState(out, "ready", "", manifest, request)
    if (out / STAGES_DIR).exists() or request is not None or (out / LOCK).exists():
        return FolderState(out, "incomplete", "prepare did not finish", None, request)
    if not any(out.iterdir()):
        return FolderState(out, "empty")
    return FolderState(out, "foreign", "not prepared by oga-npu")


def resume_command(state: FolderState) -> str:
    req = state.request or {}
    if req.get("source"):
        parts = ["oga-npu", "prepare", _q(req["source"]), "--output", _q(str(state.path))]
        if req.get("recipe"):
            parts += ["--recipe", _q(_recipe_arg(req["recipe"]))]
        if req.get("target"):
            parts += ["--target", req["target"]]
        return " ".join(parts)
    return f"oga-npu prepare SOURCE --output {_q(str(state.path))}"


def _recipe_arg(recorded: str) -> str:
    """A shipped recipe by its name: folders prepared before prepare.json kept the name given
    recorded the TOML's absolute path inside the package (oga_npu/recipes/NAME.toml)."""
    from .recipe import list_recipes

    p = Path(recorded)
    packaged = p.suffix == ".toml" and p.parent.name == "recipes" and p.parent.parent.name == "oga_npu"
    return p.stem if packaged and p.stem in list_recipes() else recorded


def _q(s: str) -> str:
    return f'"{s}"' if (" " in s or not s) else s


def require_ready(out: Path, verify: str = "quick") -> FolderState:
    """Refuse folders whose prepare did not finish or whose files changed since (see check_files)."""
    st = folder_state(out, verify=verify)
    if st.state == "incomplete":
        raise IncompleteModelError(
            f"{out} is incomplete (prepare did not finish)", f"re-run prepare: {resume_command(st)}"
        )
    if st.state == "damaged":
        raise IncompleteModelError(
            f"{out} does not match its manifest: {st.detail}",
            f"re-run prepare to rebuild it: {resume_command(st)} --force "
            "(or restore the file; `oga-npu doctor -m` checks every file)",
        )
    return st


# ---------------------------------------------------------------- lock


def _pid_alive(pid: int) -> bool:
    try:
        import psutil

        return psutil.pid_exists(pid)
    except ImportError:  # pragma: no cover
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


LOCK_GRACE_S = 30  # an empty .lock younger than this belongs to a prepare between create and write


@contextlib.contextmanager
def file_lock(path: Path, on_wait=None):
    """An exclusive OS lock on `path` (created if missing) for this block; when another
    process holds it, call `on_wait()` once and wait. The OS drops it when the holder dies,
    so no stale lock is ever left behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+b")  # noqa: SIM115 - held while the lock is (closed in finally)
    try:
        if os.name == "nt":  # pragma: no cover - Windows
            import msvcrt

            waited = False
            while True:
                try:
                    f.seek(0)
                    msvcrt.locking(f.fileno(), msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    if not waited and on_wait:
                        on_wait()
                    waited = True
                    time.sleep(0.5)
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            import fcntl

            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if on_wait:
                    on_wait()
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    finally:
        f.close()


@contextlib.contextmanager
def prepare_lock(out: Path):
    """Fail fast when another prepare holds `out`; a lock left by a dead process is taken over."""
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
                age = time.time() - lock.stat().st_mtime
            except (OSError, ValueError):
                pid, age = 0, 0.0
            if pid and pid != os.getpid() and _pid_alive(pid):
                raise LockedError(
                    f"another prepare (pid {pid}) is working on {out}",
                    "wait for it to finish, or stop it; a lock from a dead process is taken over",
                ) from None
            if not pid and age < LOCK_GRACE_S:
                # created but its pid not yet written: another prepare is starting right now
                raise LockedError(
                    f"another prepare is starting on {out}",
                    "wait for it to finish, or stop it; a lock from a dead process is taken over",
                ) from None
            lock.unlink(missing_ok=True)
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
