"""The model store: prepared model folders, found by name from any directory.

    <store>/                                models_dir(): $OGA_NPU_MODELS, the checkout's
    │                                       models/ (checkout or editable install), or the
    │                                       per-user data folder (a wheel install)
    ├── smollm2-135m-instruct-q4_1-cpu/     a model folder (see workdir.py); its name is
    └── smollm2-135m-instruct-cpu/          the folder's name

`ModelStore` lists the folders with what a front end shows or serves (state and its reason,
parameters, weight bits, context, size, target, recipe, source), resolves `-m NAME` (a path
still works), takes the only model when none is named, picks prepare's default folder so that
two sources never share one, and removes a model folder (never any other folder).
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

from .cache import disk_usage
from .errors import LockedError, ModelChoiceError, ModelFolderError, ModelNotFoundError, OutputExistsError
from .hf_folder import safetensors_params
from .workdir import (
    LOCK,
    MANIFEST,
    REQUEST,
    _pid_alive,
    folder_state,
    models_dir_origin,
    published_files,
    read_json,
    resume_command,
    unpublish,
)

RUNNABLE = ("ready", "external")  # external: a model folder oga-npu did not make (loads as it is)
MAX_SUFFIX = 99  # <name>-2 ... <name>-99 before prepare gives up on a default name
GRAPH_LIMIT = 256 * 1024 * 1024  # read weight bits from a graph file up to this size (weights are external)
GGUF_QUANT = re.compile(r"[.\-_]((?:I?Q\d\w*)|F16|F32|BF16)$", re.I)
FLOAT_TYPES = {1: "fp32", 10: "fp16", 16: "bf16"}


@dataclass
class ModelEntry:
    """One folder of the store (or one named by path)."""

    name: str
    path: Path
    state: str  # ready | external | incomplete | damaged
    reason: str = ""  # why it is not ready ("" when it is)
    params: int | None = None  # the source model's parameter count
    bits: str | None = None  # bits of the matmul weights: "4", "4/8", "fp16"
    context: int | None = None  # the context length the model was built with
    size: int = 0  # bytes of the model's files (what a load reads)
    target: str | None = None
    recipe: str | None = None
    source: str | None = None  # what prepare was given: hub id, folder or .gguf path
    source_kind: str | None = None
    quality: dict | None = None  # the manifest's `quality` (written by `oga-npu eval`)
    release: str | None = None  # the Ryzen AI release a pulled AMD model needs (manifest `pull`)

    @property
    def runnable(self) -> bool:
        return self.state in RUNNABLE

    @property
    def size_mb(self) -> float:
        return self.size / 1e6

    @property
    def detail(self) -> str:
        return self.reason

    def state_line(self) -> str:
        return self.state + (f": {self.reason}" if self.reason and self.state != "incomplete" else "")

    def quality_line(self) -> str:
        q = self.quality
        if not q or "perplexity" not in q:
            return "-"
        refs = ", ".join(f"{k} {v:.2f}" for k, v in (q.get("references") or {}).items())
        return f"{q['perplexity']:.2f}" + (f" ({refs})" if refs else "")

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["path"] = str(self.path)
        d["runnable"] = self.runnable
        return d


def format_params(n: int | None) -> str:
    if not n:
        return "-"
    if n >= 1e9:
        return f"{n / 1e9:.1f}B"
    if n >= 1e6:
        return f"{n / 1e6:.0f}M" if n >= 1e8 else f"{n / 1e6:.1f}M"
    return f"{n / 1e3:.0f}K"


# ---------------------------------------------------------------- what a model is


def source_params(kind: str | None, spec: str | None, hf_dir: Path | None = None) -> int | None:
    """The source model's parameter count: a GGUF's header, a HF folder's safetensors headers."""
    try:
        if kind == "gguf" and spec:
            from .gguf.header import gguf_header

            return gguf_header(Path(spec).expanduser())[1]
        folder = hf_dir if hf_dir is not None else (Path(spec).expanduser() if kind == "folder" and spec else None)
        return safetensors_params(folder) if folder is not None and folder.is_dir() else None
    except (OSError, ValueError, KeyError, struct.error):
        return None


def context_length(folder: Path) -> int | None:
    cfg = read_json(folder / "genai_config.json") or {}
    n = cfg.get("model", {}).get("context_length") if isinstance(cfg, dict) else None
    return n if isinstance(n, int) and n > 0 else None


def weight_bits(folder: Path) -> str | None:
    """Bits of the matmul weights in the folder's graph: "4", "4/8" (mixed, e.g. a K-quant GGUF),
    or the float type when nothing is quantized. Only the graph is read, not the weights."""
    cfg = read_json(folder / "genai_config.json") or {}
    name = (cfg.get("model", {}).get("decoder", {}).get("filename") if isinstance(cfg, dict) else None) or "model.onnx"
    f = folder / name
    try:
        if not f.is_file() or f.stat().st_size > GRAPH_LIMIT:
            return None
        import onnx

        graph = onnx.load(str(f), load_external_data=False).graph
    except Exception:  # noqa: BLE001 - an unreadable graph is shown as "-"; loading it reports why
        return None
    quant = sorted(
        {next((a.i for a in n.attribute if a.name == "bits"), 4) for n in graph.node if n.op_type == "MatMulNBits"}
        | _ggml_bits(graph)
    )
    if quant:
        return "/".join(str(b) for b in quant)
    types = {i.name: i.data_type for i in graph.initializer}
    floats = sorted(
        {
            FLOAT_TYPES.get(types[n.input[1]], "?")
            for n in graph.node
            if n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in types
        }
    )
    return "/".join(floats) or None


def _ggml_bits(graph) -> set[int]:
    """The nominal bits of a gguf-ggml graph's GgmlMatMul weights (their GGUF types)."""
    from .gguf.ggml_folder import type_bits

    ids = {t for n in graph.node if n.op_type == "GgmlMatMul" for a in n.attribute if a.name == "types" for t in a.ints}
    return {b for b in map(type_bits, ids) if b is not None}


def model_info(model_dir: Path, source_kind: str | None, source: str | None, hf_dir: Path | None = None) -> dict:
    """What prepare records in the manifest (`model_info`) for `oga-npu models` and the server."""
    return {
        "params": source_params(source_kind, source, hf_dir),
        "bits": weight_bits(model_dir),
        "context": context_length(model_dir),
    }


def norm_source(s: str) -> str:
    """A source as prepare compares it: a path that exists, resolved; a hub id as typed."""
    p = Path(s).expanduser()
    return str(p.resolve()) if p.exists() else s


def shown_source(source: str | None, kind: str | None) -> str | None:
    """A source as a remote client is shown it (the server's /v1/models): a hub id as is, a
    local folder or .gguf by its name, never the machine's path (`oga-npu models` shows that)."""
    if not source or kind == "hub":
        return source
    p = source.replace("\\", "/")
    local = kind in ("folder", "gguf") or p.startswith(("/", ".", "~")) or (len(p) > 1 and p[1] == ":")
    return (p.rstrip("/").rsplit("/", 1)[-1] or source) if local else source


def held_source(folder: Path) -> str | None:
    """The source an oga-npu folder was (or is being) prepared from: prepare.json, else the manifest."""
    for f in ("prepare.json", MANIFEST):
        data = read_json(folder / f)
        if isinstance(data, dict) and data.get("source"):
            return str(data["source"])
    return None


def source_base_name(kind: str, spec: str, short: str) -> str:
    """The start of prepare's default folder name. A GGUF keeps its quantization in the name
    (`smollm2-135m-instruct-q4_1`; `-gguf` when the file name has none), so it never shares a
    folder with the hub id or HF folder of the same model."""
    if kind != "gguf":
        return short
    m = GGUF_QUANT.search(Path(spec).stem)
    q = m.group(1).lower() if m else "gguf"
    return short if short.endswith(q) else f"{short}-{q}"


def _looks_like_path(s: str) -> bool:
    seps = [os.sep] + ([os.altsep] if os.altsep else []) + ["/"]
    return any(c in s for c in seps) or s.startswith((".", "~")) or (len(s) > 1 and s[1] == ":")


def lock_holder(folder: Path) -> int | None:
    """The pid of the live prepare holding `folder`'s lock, or None (no lock, or its process is gone)."""
    try:
        pid = int((folder / LOCK).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid and pid != os.getpid() and _pid_alive(pid) else None


# ---------------------------------------------------------------- the store


class ModelStore:
    """The model folders under one root (default: models_dir())."""

    def __init__(self, root: Path | str | None = None):
        if root is None:
            self.root, self.origin = models_dir_origin()
        else:
            self.root, self.origin = Path(root).expanduser().absolute(), "given"

    def __repr__(self) -> str:
        return f"ModelStore({str(self.root)!r})"

    # ------------------------------------------------------------ listing

    def entry(self, folder: Path, facts: bool = True) -> ModelEntry | None:
        """The entry for one folder; None when it is not a model folder at all."""
        st = folder_state(folder)
        if st.state in ("missing", "empty"):
            return None
        if st.state == "foreign":
            if not (folder / "genai_config.json").is_file():
                return None
            state, reason = "external", ""
        elif st.state == "incomplete":
            pid = lock_holder(folder)
            state, reason = (
                "incomplete",
                (f"prepare is running (pid {pid})" if pid else f"interrupted: re-run `{resume_command(st)}` to resume"),
            )
            if (st.request or {}).get("pull"):  # a pull's folder (oga_npu.pull.place): re-running it resumes
                state, reason = "incomplete", f"pull did not finish: oga-npu pull {st.request.get('source')} resumes it"
        else:
            state, reason = st.state, st.detail
        manifest = st.manifest or {}
        info = manifest or st.request or {}
        recipe = info.get("recipe")
        if recipe and ("/" in recipe or "\\" in recipe):
            recipe = Path(recipe).stem
        e = ModelEntry(
            folder.name,
            folder,
            state,
            reason,
            target=info.get("target"),
            recipe=recipe,
            source=info.get("source"),
            source_kind=manifest.get("source_kind"),
            quality=manifest.get("quality"),
            release=(manifest.get("pull") or {}).get("release"),
        )
        try:
            e.size = sum(p.stat().st_size for p in published_files(folder))
        except OSError:
            e.size = 0
        if facts and e.runnable:
            recorded = manifest.get("model_info")
            if recorded:
                e.params, e.bits, e.context = recorded.get("params"), recorded.get("bits"), recorded.get("context")
            else:  # made before prepare recorded it, or not made by oga-npu: read what is there
                e.bits, e.context = weight_bits(folder), context_length(folder)
                if e.source and e.source_kind in ("gguf", "folder") and Path(e.source).expanduser().exists():
                    e.params = source_params(e.source_kind, e.source)
            e.context = e.context or context_length(folder)
        return e

    def entries(self, facts: bool = True) -> list[ModelEntry]:
        """Every model folder in the store, by name. facts=False skips parameters/bits/context."""
        if not self.root.is_dir():
            return []
        out = []
        for d in sorted(self.root.iterdir(), key=lambda p: p.name):
            if d.name.startswith(".") or not d.is_dir():
                continue
            e = self.entry(d, facts)
            if e is not None:
                out.append(e)
        return out

    def names(self) -> list[str]:
        return [e.name for e in self.entries(facts=False)]

    # ------------------------------------------------------------ names

    def find(self, name: str) -> ModelEntry | None:
        """The entry called `name`: the folder name (any case), a source that exactly one
        runnable entry was prepared from (a hub id), or a prefix of exactly one runnable name."""
        entries = self.entries(facts=False)
        for match in (lambda e: e.name == name, lambda e: e.name.lower() == name.lower()):
            found = [e for e in entries if match(e)]
            if len(found) == 1:
                return found[0]
        runnable = [e for e in entries if e.runnable]
        by_source = [e for e in runnable if e.source and e.source == name]
        if len(by_source) == 1:
            return by_source[0]
        prefix = [e for e in runnable if e.name.lower().startswith(name.lower())]
        return prefix[0] if len(prefix) == 1 else None

    def close_names(self, name: str, n: int = 3) -> list[str]:
        """Names like `name`: containing it, or like it as a whole or in their first len(name)
        characters (`smollm3` finds `smollm2-135m-instruct-cpu`)."""
        low = name.lower()

        def score(x: str) -> float:
            x = x.lower()
            if low in x:
                return 2.0
            return max(
                difflib.SequenceMatcher(None, low, x).ratio(), difflib.SequenceMatcher(None, low, x[: len(low)]).ratio()
            )

        scored = sorted(((score(x), x) for x in self.names()), key=lambda t: (-t[0], t[1]))
        return [x for sc, x in scored if sc >= 0.6][:n]

    def resolve(self, spec: str | Path) -> Path:
        """A model folder from `-m`: a path (it has a separator, or is a model folder here), or a
        name in the store. An unknown name raises ModelNotFoundError naming the close ones."""
        s = str(spec)
        p = Path(s).expanduser()
        if p.exists() and (_looks_like_path(s) or (p.is_dir() and self.entry(p, facts=False) is not None)):
            return p
        e = self.find(s)  # a name, or the hub id a model was prepared from
        if e is not None:
            return e.path
        self._refuse_ambiguous(s)  # a prefix of several names, or the hub id several were prepared from
        if _looks_like_path(s) or p.exists():
            return p  # loading it says what is wrong with it (a missing path: "did you mean")
        close = self.close_names(s)
        near = f"; close: {', '.join(close)}" if close else ""
        raise ModelNotFoundError(
            f"no model named '{s}' in {self.root}{near}",
            "`oga-npu models` lists the models; `oga-npu prepare SOURCE` makes one "
            "(a folder elsewhere: -m path/to/folder)",
        )

    def _refuse_ambiguous(self, name: str) -> None:
        """A name that fits several models (a prefix of several, or the hub id several were
        prepared from): ModelChoiceError (exit 2) listing them."""
        runnable = [e for e in self.entries(facts=False) if e.runnable]
        for what, fits in (
            ("prepared from it", [e for e in runnable if e.source and e.source == name]),
            ("whose names start with it", [e for e in runnable if e.name.lower().startswith(name.lower())]),
        ):
            if len(fits) > 1:
                listing = "\n".join(f"  {e.name}" for e in fits)
                raise ModelChoiceError(
                    f"'{name}' is ambiguous in {self.root}: {len(fits)} models {what}:\n{listing}",
                    f"name one: -m {fits[0].name}",
                )

    def only_model(self, command: str = "run") -> ModelEntry:
        """The model to use when none is named: the store's only runnable one. Otherwise
        ModelChoiceError (exit 2) listing the choices, or ModelNotFoundError for an empty store."""
        entries = self.entries(facts=False)
        runnable = [e for e in entries if e.runnable]
        if len(runnable) == 1:
            return runnable[0]
        if not entries:
            raise ModelNotFoundError(
                f"no models in {self.root}",
                f"make one: oga-npu prepare SOURCE (then oga-npu {command}), or pass -m DIR",
            )
        w = max(len(e.name) for e in entries)
        listing = "\n".join(f"  {e.name:<{w}}  {e.state_line()}" for e in entries)
        if not runnable:
            raise ModelChoiceError(
                f"no ready model in {self.root}:\n{listing}",
                "finish one: re-run its `oga-npu prepare` (it resumes), or pass -m DIR",
            )
        raise ModelChoiceError(
            f"{len(runnable)} models in {self.root}; choose one with -m NAME:\n{listing}",
            f"oga-npu {command} -m {runnable[0].name}" + (" PROMPT" if command == "run" else ""),
        )

    # ------------------------------------------------------------ prepare's default folder

    def default_folder(self, base: str, source: str) -> Path:
        """<root>/<base>, or <base>-2, -3 ... when a folder holds another source's model (or is not
        an oga-npu folder): the first one that is free or holds this source, so a re-run of the
        same prepare finds its folder again and two sources never share one."""
        want = norm_source(source)
        for i in range(1, MAX_SUFFIX + 1):
            cand = self.root / (base if i == 1 else f"{base}-{i}")
            st = folder_state(cand)
            if st.state in ("missing", "empty"):
                return cand
            held = held_source(cand) if st.state != "foreign" else None
            if held is not None and norm_source(held) == want:
                return cand
        raise OutputExistsError(
            f"{self.root} holds {MAX_SUFFIX} folders named {base}[-N] from other sources",
            "pass --output with a folder of your choice",
        )

    # ------------------------------------------------------------ removing

    def inside(self, path: Path) -> bool:
        """Whether `path` is a folder directly in the store (a link in the store counts as inside)."""
        try:
            return path.absolute().parent.resolve() == self.root.resolve()
        except OSError:
            return False

    def removal(self, spec: str | Path, outside: bool = False) -> ModelEntry:
        """The entry `oga-npu rm` would remove, after every refusal: a path outside the store
        (unless `outside`), a folder that is not an oga-npu model folder, one a prepare holds."""
        s = str(spec)
        if _looks_like_path(s):
            path = Path(s).expanduser()
        elif os.path.lexists(self.root / s):  # a folder of the store by its name, model or not
            path = self.root / s
        else:
            path = self.resolve(s)
        if not os.path.lexists(path):
            raise ModelNotFoundError(f"{path} does not exist", "`oga-npu models` lists the models")
        if path.absolute().resolve() == self.root.resolve():
            raise ModelFolderError(f"{path} is the model store itself", "name one model: oga-npu rm NAME")
        if not self.inside(path) and not outside:
            raise ModelFolderError(
                f"{path} is outside the model store ({self.root})",
                "pass --outside-store to remove a model folder elsewhere",
            )
        if path.is_symlink():
            return ModelEntry(path.name, path, "link", f"a link to {os.readlink(path)}")
        st = folder_state(path)
        if st.state not in ("ready", "incomplete", "damaged"):
            what = {"foreign": st.detail or "not prepared by oga-npu", "empty": "an empty folder"}.get(
                st.state, st.state
            )
            raise ModelFolderError(
                f"{path} is not an oga-npu model folder ({what}); nothing was removed",
                "oga-npu rm removes only folders made by `oga-npu prepare`",
            )
        pid = lock_holder(path)
        if pid:
            raise LockedError(f"a prepare (pid {pid}) is working on {path}", "wait for it to finish, or stop it")
        e = self.entry(path, facts=False)
        assert e is not None
        return e

    def remove(self, entry: ModelEntry) -> tuple[int, int]:
        """Remove an entry from `removal`, and the cache entries only it uses (its GGUF's
        dequantized copy, its expanded form; see cache.py). Returns the bytes freed in the
        folder and in the cache. The manifest goes first, then the folder is renamed to a hidden
        trash name before it is deleted: a removal cut short leaves a folder that reads as
        incomplete (or none), never as ready."""
        from . import cache

        path = entry.path
        if path.is_symlink():
            path.unlink()
            return 0, 0
        freed = disk_usage(path)
        manifest = read_json(path / MANIFEST) or {}
        manifest = {**manifest, "source": norm_source(str(manifest.get("source") or "")) or None}
        cached = cache.entries(manifest, self._other_records(path))
        unpublish(path)
        trash = path.with_name(f".{path.name}.removing-{os.getpid()}")  # hidden: no listing shows it
        try:
            os.replace(path, trash)  # gone from the store at once; the slow delete follows
        except OSError:
            trash = path
        shutil.rmtree(trash)
        return freed, cache.remove(cached)

    def _other_records(self, path: Path) -> list[dict]:
        """The manifests and prepare.json of the store's folders other than `path` (sources normalized)."""
        out = []
        for d in sorted(self.root.iterdir()) if self.root.is_dir() else []:
            if not d.is_dir() or (self.inside(path) and d.name == path.name):
                continue
            for f in (MANIFEST, REQUEST):
                data = read_json(d / f)
                if isinstance(data, dict):
                    out.append({**data, "source": norm_source(str(data.get("source") or "")) or None})
        return out
