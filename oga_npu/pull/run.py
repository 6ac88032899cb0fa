"""`pull(request)`: SOURCE -> the files -> a model in the store.

    SOURCE                       catalog name | org/repo | org/repo:QUANT | org/repo/FILE.gguf
      -> plan_source            what it names (the catalog row, the repo, a GGUF quant or file)
      -> hub.listing            the repo's files at one commit, with LFS sha256s
      -> kind                   oga (a genai_config.json: the variant's subfolder), gguf, checkpoint
      -> oga:        every file downloaded, checked, linked into <name>.partial/, renamed (place.py)
         gguf:       the file downloaded and checked, then `prepare FILE` (default recipe)
         checkpoint: `prepare org/repo` (a pinned revision: its snapshot folder)

Progress goes to a callback as PullEvent (Ollama's pull statuses), so the CLI prints lines
and the server streams NDJSON from the same run.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import PullError
from ..workdir import MANIFEST, read_json
from . import catalog as catalog_mod
from . import hub, place

GGUF_QUANT = re.compile(r"(?:^|[.\-_])(I?Q\d\w*?|F16|F32|BF16)(?:-\d{5}-of-\d{5})?\.gguf$", re.I)
SPLIT = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.I)
DEFAULT_QUANT = "Q4_K_M"  # what llama.cpp's -hf picks when no quant is named
SKIP_FILES = (".gitattributes", "README.md", "LICENSE")


@dataclass
class PullRequest:
    source: str
    variant: str | None = None
    revision: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class PullEvent:
    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None
    file: str | None = None  # the repo path (for the CLI's lines; not in Ollama's stream)

    def to_dict(self) -> dict:
        d = {"status": self.status}
        if self.digest is not None:
            d.update(digest=self.digest, total=self.total or 0, completed=self.completed or 0)
        return d


Progress = Callable[[PullEvent], None]


def _noop(_e: PullEvent) -> None:
    pass


@dataclass
class PullResult:
    name: str
    path: Path
    kind: str  # oga | gguf | checkpoint
    repo: str
    revision: str
    variant: str = ""
    checked: dict = field(default_factory=dict)  # path -> "sha256" | "size"
    already: bool = False


@dataclass(frozen=True)
class Planned:
    repo: str
    quant: str | None = None  # org/repo:QUANT
    file: str | None = None  # org/repo/FILE.gguf
    variant: str | None = None
    entry: catalog_mod.CatalogEntry | None = None


def plan_source(req: PullRequest) -> Planned:
    """What SOURCE names, without the network."""
    s = req.source.strip()
    entry = catalog_mod.find(s) if "/" not in s else None
    if entry is not None:
        variant = req.variant or entry.variant or None
        if entry.target == "gguf":
            return Planned(entry.repo, quant=variant, entry=entry)
        return Planned(entry.repo, variant=variant, entry=entry)
    parts = s.split("/")
    if len(parts) < 2 or not all(parts):
        near = [e.name for e in catalog_mod.load() if s.lower() in e.name][:3]
        raise PullError(
            f"'{s}' is not in the catalog and not a hub repo (org/name)",
            (f"did you mean: {', '.join(near)}? " if near else "") + "`oga-npu models --available` lists the catalog",
        )
    repo = "/".join(parts[:2])
    if len(parts) > 2:
        rel = "/".join(parts[2:])
        if not rel.lower().endswith(".gguf"):
            raise PullError(f"{s}: only a .gguf file can be named inside a repo", "pass org/repo or org/repo/FILE.gguf")
        return Planned(repo, file=rel)
    if ":" in repo:
        repo, quant = repo.split(":", 1)
        return Planned(repo, quant=quant)
    return Planned(repo, variant=req.variant)


def pull(req: PullRequest, progress: Progress = _noop, store=None) -> PullResult:
    from ..store import ModelStore

    store = store or ModelStore()
    planned = plan_source(req)
    progress(PullEvent("pulling manifest"))
    lst = hub.listing(planned.repo, req.revision)
    ggufs = sorted(p for p in lst.files if p.lower().endswith(".gguf") and "mmproj" not in p.lower())
    configs = sorted(p for p in lst.files if PurePosixPath(p).name == "genai_config.json")
    if planned.file or planned.quant or (ggufs and not configs):
        return _pull_gguf(req, planned, lst, ggufs, progress, store)
    if configs:
        return _pull_oga(req, planned, lst, configs, progress, store)
    if "config.json" in lst.files:
        return _pull_checkpoint(req, planned, lst, progress, store)
    raise PullError(
        f"{planned.repo} holds no genai_config.json, .gguf file or config.json: nothing oga-npu can run",
        "pull an OGA model repo, a GGUF repo or a transformers checkpoint",
    )


# ---------------------------------------------------------------- the OGA folder


def choose_variant(configs: list[str], wanted: str | None, repo: str) -> str:
    """The subfolder ("" = root) holding the genai_config.json the user means."""
    folders = ["" if str(PurePosixPath(c).parent) == "." else str(PurePosixPath(c).parent) for c in configs]
    if wanted:
        w = wanted.strip("/").lower()
        exact = [f for f in folders if f.lower() == w or PurePosixPath(f).name.lower() == w]
        fits = exact or [f for f in folders if w in f.lower()]
        if len(fits) == 1:
            return fits[0]
        if not fits:
            raise PullError(
                f"{repo} has no variant '{wanted}'; it has: {', '.join(f or '(root)' for f in folders)}",
                f"pass one of them: --variant {folders[0] or '.'}",
            )
        folders = fits
    if len(folders) == 1:
        return folders[0]
    listing = "\n".join(f"  {f}" for f in folders)
    raise PullError(
        f"{repo} holds {len(folders)} model variants; choose one with --variant:\n{listing}",
        f"oga-npu pull {repo} --variant {folders[0]}",
    )


def _store_name(req: PullRequest, planned: Planned, suffix: str) -> str:
    if req.name:
        return req.name
    if planned.entry is not None:
        return planned.entry.name
    base = planned.repo.split("/")[-1].lower()
    return base + (f"-{suffix.lower()}" if suffix and suffix.lower() not in base else "")


def _pull_oga(req, planned: Planned, lst: hub.Listing, configs, progress: Progress, store) -> PullResult:
    variant = choose_variant(configs, planned.variant, planned.repo)
    prefix = f"{variant}/" if variant else ""
    wanted = [
        f
        for p, f in lst.files.items()
        if p.startswith(prefix)
        and (variant or "/" not in p or _under_root_model(p))
        and PurePosixPath(p).name not in SKIP_FILES
    ]
    name = _store_name(req, planned, PurePosixPath(variant).name if variant else "")
    final = store.root / name
    result = PullResult(name, final, "oga", planned.repo, lst.commit, variant)
    if place.existing(final, planned.repo, lst.commit, variant):
        result.already = True
        progress(PullEvent("success"))
        return result
    _check_space(wanted, lst, store)
    part = place.begin(final, req.source)
    hashes = {}
    for f in sorted(wanted, key=lambda f: f.path):
        cached = _fetch(lst, f, progress)
        rel = f.path[len(prefix) :]
        place.link_in(part, rel, cached)
        hashes[rel] = f.sha256
        result.checked[rel] = "sha256" if f.sha256 else "size"
    progress(PullEvent("verifying sha256 digest"))
    config = place.genai_config(part)
    release = place.folder_release(config, planned.repo) or (planned.entry.release if planned.entry else None) or None
    progress(PullEvent("writing manifest"))
    manifest = _oga_manifest(req, planned, lst, variant, config, release, result.checked, part)
    place.finish(part, final, manifest, hashes)
    progress(PullEvent("success"))
    return result


def _under_root_model(p: str) -> bool:
    """A root-level model's own subfolders (AMD NPU folders keep a .cache/ beside the graph)."""
    return p.split("/")[0].startswith(".")


def _check_space(files: list[hub.HubFile], lst: hub.Listing, store) -> None:
    if lst.offline:
        return
    from huggingface_hub import constants

    needed = sum(f.size or 0 for f in files)
    place.check_disk(needed, Path(constants.HF_HUB_CACHE), store.root)


def _fetch(lst: hub.Listing, f: hub.HubFile, progress: Progress) -> Path:
    """One file downloaded (or found in the cache) and checked, with Ollama's pulling events."""
    digest = f"sha256:{f.sha256}" if f.sha256 else f.path
    status = f"pulling {f.sha256[:12]}" if f.sha256 else f"pulling {f.path}"
    last = [-1]

    def bytes_done(_path: str, done: int, total: int) -> None:
        if done != last[0]:
            last[0] = done
            progress(PullEvent(status, digest, total or f.size or 0, done, f.path))

    path = hub.download(lst, f, bytes_done if progress is not _noop else None)
    size = f.size or path.stat().st_size
    progress(PullEvent(status, digest, size, size, f.path))
    return path


def _oga_manifest(req, planned, lst, variant, config, release, checked, part: Path) -> dict:
    from ..store import context_length, weight_bits

    entry = planned.entry
    return {
        "source": req.source,
        "source_kind": "pull",
        "hub_id": planned.repo,
        "revision": lst.commit,
        "target": place.folder_target(config),
        "pull": {
            "repo": planned.repo,
            "revision": lst.commit,
            "variant": variant,
            "catalog": entry.name if entry else None,
            "release": release,
            "checked": checked,  # path -> "sha256" (LFS: the hub's sha256) | "size" (small git files)
            "offline": lst.offline,
        },
        "requires": {"onnxruntime-genai": place.requirement(config, release, entry.oga_version if entry else None)},
        "model_info": {"params": None, "bits": weight_bits(part), "context": context_length(part)},
    }


# ---------------------------------------------------------------- GGUF and checkpoints: prepared here


def choose_gguf(ggufs: list[str], planned: Planned) -> str:
    if planned.file:
        if planned.file not in ggufs:
            raise PullError(
                f"{planned.repo} has no file {planned.file}",
                "its .gguf files: " + (", ".join(ggufs[:8]) or "none"),
            )
        return planned.file
    quant = (planned.quant or DEFAULT_QUANT).lower()
    fits = [g for g in ggufs if (m := GGUF_QUANT.search(PurePosixPath(g).name)) and m.group(1).lower() == quant]
    if not fits and not planned.quant and len(ggufs) == 1:
        return ggufs[0]
    if not fits:
        quants = sorted({m.group(1) for g in ggufs if (m := GGUF_QUANT.search(PurePosixPath(g).name))})
        raise PullError(
            f"{planned.repo} has no {quant.upper()} file; its quantizations: {', '.join(quants) or 'none'}",
            f"oga-npu pull {planned.repo}:{quants[0] if quants else 'Q4_K_M'}",
        )
    if any(SPLIT.search(g) for g in fits):
        raise PullError(
            f"{planned.repo}: the {quant.upper()} file is split in parts ({fits[0]}, ...), which prepare does not read",
            "pick a smaller quantization that is one file, or merge the parts with llama.cpp's gguf-split --merge",
        )
    if len(fits) > 1:
        raise PullError(
            f"{planned.repo} has several {quant.upper()} files: {', '.join(fits)}",
            f"name one: oga-npu pull {planned.repo}/{fits[0]}",
        )
    return fits[0]


def _pull_gguf(req, planned: Planned, lst: hub.Listing, ggufs, progress: Progress, store) -> PullResult:
    rel = choose_gguf(ggufs, planned)
    f = lst.files[rel]
    _check_space([f], lst, store)
    cached = _fetch(lst, f, progress)
    progress(PullEvent("verifying sha256 digest"))
    output = store.root / req.name if req.name else (store.root / planned.entry.name if planned.entry else None)
    out = _prepare(str(cached), output, progress)
    progress(PullEvent("writing manifest"))
    checked = {rel: "sha256" if f.sha256 else "size"}
    _record(out, planned, lst, rel, checked)
    progress(PullEvent("success"))
    return PullResult(out.name, out, "gguf", planned.repo, lst.commit, rel, checked)


def _pull_checkpoint(req, planned: Planned, lst: hub.Listing, progress: Progress, store) -> PullResult:
    source = planned.repo
    output = store.root / req.name if req.name else None
    if req.revision:  # prepare downloads main: hand it the pinned snapshot instead
        import huggingface_hub as hf

        from ..prepare.source import HUB_PATTERNS

        progress(PullEvent(f"pulling {planned.repo}@{lst.commit[:12]}"))
        try:
            source = hf.snapshot_download(planned.repo, revision=lst.commit, allow_patterns=HUB_PATTERNS)
        except Exception as e:
            raise hub.translate(e, planned.repo) from e
        output = output or store.root / f"{planned.repo.split('/')[-1].lower()}-cpu"
    out = _prepare(source, output, progress)
    progress(PullEvent("writing manifest"))
    _record(out, planned, lst, "", {})
    progress(PullEvent("success"))
    return PullResult(out.name, out, "checkpoint", planned.repo, lst.commit)


def _prepare(source: str, output: Path | None, progress: Progress) -> Path:
    """`oga-npu prepare SOURCE` with the default recipe; its stage lines become events."""
    from ..prepare import PrepareRequest, prepare

    def stage(event: str, name: str, i: int, total: int, msg: str = "") -> None:
        if event in ("start", "done", "skip"):
            progress(PullEvent(f"preparing: [{i}/{total}] {name} {event}" + (f": {msg}" if msg else "")))

    return prepare(PrepareRequest(source=source, output=output), stage).output


def installed_names(store) -> set[str]:
    """The catalog names with a ready model in the store (pulled by that name, or a folder named so)."""
    names = set()
    for e in store.entries(facts=False):
        if not e.runnable:
            continue
        names.add(e.name)
        pulled = ((read_json(e.path / MANIFEST) or {}).get("pull")) or {}
        if pulled.get("catalog"):
            names.add(pulled["catalog"])
    return names


def _record(out: Path, planned: Planned, lst: hub.Listing, variant: str, checked: dict) -> None:
    from ..workdir import update_manifest

    entry = planned.entry
    update_manifest(
        out,
        hub_id=planned.repo,
        pull={
            "repo": planned.repo,
            "revision": lst.commit,
            "variant": variant,
            "catalog": entry.name if entry else None,
            "release": None,
            "checked": checked,
            "offline": lst.offline,
        },
    )
