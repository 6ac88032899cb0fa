"""Source stage: turn `SOURCE` into a local Hugging Face folder.

Inputs: a hub id (downloaded with huggingface_hub into the normal HF cache; HF_HOME,
HF_TOKEN and HF_HUB_OFFLINE honoured), a local HF folder (used in place), or a .gguf
file (dequantized once with transformers into $OGA_NPU_HOME/gguf/<name>-<fingerprint>/).
Output: the folder's path and a key that changes when the source changes.
Nothing is written into the model's output folder by this stage.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import HubError, SourceError
from ..gguf.header import gguf_header
from ..hf_folder import transformers_quiet
from ..workdir import file_fingerprint, file_lock, folder_fingerprint, home, read_json, write_json_atomic

log = logging.getLogger(__name__)

HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# What the quantize and build stages read; skips other frameworks' weights.
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken", "tokenizer*"]


@dataclass(frozen=True)
class Source:
    spec: str  # what the user typed
    kind: str  # hub | folder | gguf
    name: str  # short name for default output folders

    def describe(self) -> str:
        return {"hub": "Hugging Face hub id", "folder": "local HF folder", "gguf": "GGUF file"}[self.kind]


@dataclass(frozen=True)
class ResolvedSource:
    source: Source
    hf_dir: Path
    key: str
    seconds: float = 0.0
    cached: bool = False


def classify(spec: str) -> Source:
    """Decide what SOURCE is without touching the network."""
    p = Path(spec).expanduser()
    looks_like_path = (
        spec.startswith((".", "/", "~", "\\")) or (len(spec) > 1 and spec[1] == ":") or spec.endswith(".gguf")
    )
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise SourceError(f"GGUF file not found: {spec}", "check the path (oga-npu prepare path/to/model.gguf)")
        try:
            gguf_header(p)  # the header and the file's length: 0.1 s, before anything long
        except (OSError, ValueError) as e:
            raise SourceError(
                str(e),
                "download the .gguf again (an interrupted download or a git-lfs pointer "
                "is not the file; `git lfs pull` fetches the real one)",
            ) from e
        return Source(spec, "gguf", _short_name(p.stem))
    if p.is_dir():
        if not (p / "config.json").is_file():
            ggufs = sorted(p.glob("*.gguf"))
            hint = f"; it holds {ggufs[0].name}: pass that file" if ggufs else ""
            raise SourceError(
                f"{spec} is a folder without config.json, not a Hugging Face model folder{hint}",
                "pass a folder with config.json and safetensors weights, a .gguf file, or a hub id",
            )
        return Source(spec, "folder", _short_name(p.resolve().name))
    if p.exists():
        raise SourceError(f"{spec} is a file but not a .gguf", "pass a .gguf file, a HF model folder or a hub id")
    if looks_like_path or not HUB_ID.match(spec):
        raise SourceError(
            f"source not found: {spec}", "pass an existing folder or .gguf file, or a hub id like org/name"
        )
    return Source(spec, "hub", _short_name(spec.split("/")[-1]))


def _short_name(name: str) -> str:
    name = re.sub(r"\.(Q\d\w*|F16|F32|BF16|IQ\w+)$", "", name, flags=re.I)
    return re.sub(r"[^\w.-]+", "-", name).strip("-").lower() or "model"


def plan(source: Source) -> str:
    if source.kind == "hub":
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        return f"download {source.spec} ({', '.join(HUB_PATTERNS)}) into the HF cache ({cache})" + (
            " [offline: cache only]" if offline else ""
        )
    if source.kind == "gguf":
        cache = gguf_cache_of(source.spec)
        if is_converted(cache):
            return f"use the dequantized copy of {Path(source.spec).name} in {cache}"
        return f"dequantize {source.spec} to fp32 safetensors in {cache} (once, cached)"
    return f"use {source.spec} in place"


def gguf_architecture(path: Path) -> str | None:
    """general.architecture from a GGUF header (the weights are not read)."""
    try:
        return gguf_header(path)[0]
    except (OSError, ValueError):  # a damaged header is reported by the conversion itself
        return None


def peek_config(source: Source) -> dict | None:
    """The source's config.json as a dict when it is cheap to know (no download, no
    conversion): a local folder, a converted or readable GGUF, a hub id already cached."""
    import json

    if source.kind == "folder":
        path = Path(source.spec).expanduser() / "config.json"
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise SourceError(f"{path} is not valid JSON: {e}", "fix or replace the model's config.json") from e
    if source.kind == "gguf":
        p = Path(source.spec).expanduser().resolve()
        cached = gguf_cache_of(source.spec) / "config.json"
        if cached.is_file():
            return json.loads(cached.read_text())
        from ..architectures import gguf_config

        return gguf_config(gguf_architecture(p), p.name)  # refuses what transformers cannot read
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(source.spec, "config.json")
    except Exception:  # noqa: BLE001 - not cached or a malformed id: checked after the download
        return None
    return json.loads(Path(found).read_text()) if isinstance(found, str) else None


def local_key(source: Source) -> str | None:
    """The key `resolve` gives a local source, known without resolving it (None: a hub id,
    whose key names the revision the download finds)."""
    p = Path(source.spec).expanduser().resolve()
    if source.kind == "folder":
        return "folder:" + folder_fingerprint(p)
    if source.kind == "gguf":
        return "gguf:" + gguf_cache_of(source.spec).name
    return None


def resolve(source: Source) -> ResolvedSource:
    start = time.monotonic()
    if source.kind == "folder":
        return ResolvedSource(source, Path(source.spec).expanduser().resolve(), local_key(source))
    if source.kind == "gguf":
        p = Path(source.spec).expanduser().resolve()
        out = gguf_cache_of(source.spec)
        cached = is_converted(out)
        if not cached:
            # Two prepares of one GGUF share this cache: the second waits for the first's
            # dequantize, then uses its result.
            def waiting():
                log.warning(
                    "another prepare is dequantizing %s into the shared cache: waiting for it, then using its result",
                    p.name,
                )

            with file_lock(out.with_name(out.name + ".lock"), on_wait=waiting):
                cached = is_converted(out)
                if not cached:
                    dequantize_gguf(p, out)
        return ResolvedSource(source, out, local_key(source), time.monotonic() - start, cached)
    path = download(source.spec)
    return ResolvedSource(source, path, f"hub:{source.spec}@{path.name}", time.monotonic() - start)


def download(repo_id: str) -> Path:
    try:
        import huggingface_hub as hf
        from huggingface_hub import errors as hfe
    except ImportError as e:  # pragma: no cover
        raise SourceError("huggingface_hub is not installed", "pip install huggingface-hub") from e
    try:
        return Path(hf.snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except hfe.GatedRepoError as e:
        raise HubError(
            f"{repo_id} is gated (401/403): accept its license on the hub and log in",
            "set HF_TOKEN to a token with access (or run `hf auth login`)",
        ) from e
    except hfe.RepositoryNotFoundError as e:
        raise HubError(
            f"{repo_id} was not found on the hub (404), or it is private",
            "check the id; for a private repo set HF_TOKEN",
        ) from e
    except hfe.RevisionNotFoundError as e:
        raise HubError(f"{repo_id}: revision not found", "check the revision") from e
    except (hfe.LocalEntryNotFoundError, hfe.OfflineModeIsEnabled) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false", "False")
        if offline:
            raise HubError(
                f"{repo_id} is not in the local HF cache and HF_HUB_OFFLINE is set",
                "unset HF_HUB_OFFLINE to download it, or pass a local folder or .gguf file",
            ) from e
        raise HubError(
            f"{repo_id} could not be downloaded: the hub is not reachable and it is not in the cache",
            "check the network (or HF_ENDPOINT), or pass a local folder or .gguf file",
        ) from e
    except hfe.HfHubHTTPError as e:
        raise HubError(f"{repo_id}: hub request failed: {str(e).splitlines()[0]}", "try again later") from e


def is_converted(cache: Path) -> bool:
    return (cache / "config.json").is_file() and read_json(cache / "oga_npu_source.json") is not None


def gguf_cache_dir(path: Path) -> Path:
    return home() / "gguf" / f"{_short_name(path.stem)}-{file_fingerprint(path)}"


def gguf_cache_of(spec: str | Path) -> Path:
    """The dequantize cache of the GGUF named `spec`: named by the file name it was given by, not
    by the file a link resolves to. A pulled GGUF is a link in the HF cache to a blob named by its
    hash: named by the blob, its cache missed the one the same file made from its own path (and
    so dequantized it a second time)."""
    return gguf_cache_dir(Path(spec).expanduser())


def dequantize_gguf(gguf: Path, out: Path) -> Path:
    """Load the GGUF with transformers (dequantizing to fp32) and save an HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    part = out.with_name(out.name + ".partial")
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    log.info("dequantizing %s", gguf)
    try:
        with transformers_quiet():
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as e:  # transformers raises many types for unsupported archs
        shutil.rmtree(part, ignore_errors=True)
        raise SourceError(
            f"transformers cannot load {gguf.name}: {str(e).splitlines()[0]}",
            "the GGUF architecture must be one transformers supports (pip install gguf accelerate)",
        ) from e
    # transformers refuses save_pretrained while the GGUF quantizer is attached: the
    # weights are already dequantized, so drop it.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with transformers_quiet():
        model.save_pretrained(part)
        tok.save_pretrained(part)
    write_json_atomic(part / "oga_npu_source.json", {"gguf": str(gguf), "fingerprint": file_fingerprint(gguf)})
    if out.exists():
        shutil.rmtree(out)
    os.replace(part, out)
    return out
