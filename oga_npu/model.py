"""Opening an OGA model folder: checks before OGA sees it, providers, error translation.

`check_folder` lists missing files, git-lfs pointer files and unfinished prepares so a
user never reads "Protobuf parsing failed". `load` opens the folder with
onnxruntime-genai on the provider the folder (or `provider=`) asks for and says which
provider runs it; a provider that is not available is an error, never a CPU fallback,
unless `fallback="cpu"` makes that explicit.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import guard, ryzenai_folders
from .errors import ModelFolderError, ModelLoadError, ModelNotFoundError, ProviderError
from .providers import (  # noqa: F401 - model.PROVIDERS, model.provider_available, ... as before
    OGA_PROVIDER_NAME,
    PROVIDERS,
    choose_provider,
    configured_providers,
    provider_available,
)
from .runtime_errors import translate
from .workdir import folder_content_hash, require_ready

log = logging.getLogger(__name__)

LFS_MAGIC = b"version https://git-lfs"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")
HYBRID_MAX_SEQ = 4096


@dataclass
class FolderReport:
    path: Path
    config: dict | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def is_lfs_pointer(path: Path) -> bool:
    try:
        if path.stat().st_size > 1024:
            return False
        with path.open("rb") as f:
            return f.read(len(LFS_MAGIC)) == LFS_MAGIC
    except OSError:
        return False


def external_data_files(onnx_path: Path) -> set[str]:
    """Names of external data files an ONNX model refers to (read without loading weights)."""
    try:
        import onnx

        m = onnx.load(str(onnx_path), load_external_data=False)
    except Exception:  # noqa: BLE001 - a broken file is reported by the caller
        return set()
    names = set()
    for init in m.graph.initializer:
        for kv in init.external_data:
            if kv.key == "location":
                names.add(kv.value)
    return names


def check_folder(path: Path, deep: bool = True) -> FolderReport:
    """Everything we can say about a model folder without loading it."""
    rep = FolderReport(path)
    if not path.exists():
        rep.problems.append(f"{path} does not exist")
        return rep
    if not path.is_dir():
        rep.problems.append(f"{path} is not a folder")
        return rep
    cfg_path = path / "genai_config.json"
    if not cfg_path.is_file():
        rep.problems.append("genai_config.json is missing")
    elif is_lfs_pointer(cfg_path):
        rep.problems.append("genai_config.json is a git-lfs pointer file, not the real file (run `git lfs pull`)")
    else:
        try:
            rep.config = json.loads(cfg_path.read_text(encoding="utf-8"))
        except ValueError as e:
            rep.problems.append(f"genai_config.json is not valid JSON: {e}")
    if rep.config:
        from .gguf.ggml_folder import library_problem

        lib = library_problem(path, rep.config, deep)
        if lib:
            rep.problems.append(lib)
    decoder_file = None
    if rep.config:
        decoder_file = rep.config.get("model", {}).get("decoder", {}).get("filename")
        if not decoder_file:
            rep.problems.append("genai_config.json names no model.decoder.filename")
    onnx_files = [path / decoder_file] if decoder_file else sorted(path.glob("*.onnx"))
    if decoder_file and not (path / decoder_file).is_file():
        rep.problems.append(f"{decoder_file} is missing")
    if not onnx_files:
        rep.problems.append("no .onnx model file")
    for f in onnx_files:
        if f.is_file() and is_lfs_pointer(f):
            rep.problems.append(f"{f.name} is a git-lfs pointer file, not the model (run `git lfs pull`)")
        elif f.is_file() and deep:
            for data in sorted(external_data_files(f)):
                d = path / data
                if not d.is_file():
                    rep.problems.append(f"{data} is missing (external weights of {f.name})")
                elif is_lfs_pointer(d):
                    rep.problems.append(f"{data} is a git-lfs pointer file, not the weights (run `git lfs pull`)")
        elif not f.is_file() and not decoder_file:
            pass
    if not any((path / t).is_file() for t in TOKENIZER_FILES):
        rep.problems.append("tokenizer.json is missing")
    else:
        for t in TOKENIZER_FILES:
            if (path / t).is_file() and is_lfs_pointer(path / t):
                rep.problems.append(f"{t} is a git-lfs pointer file (run `git lfs pull`)")
    return rep


@dataclass
class LoadedModel:
    path: Path
    _model: object | None  # onnxruntime-genai Model; opened on first use when decoding is direct
    tokenizer: object
    config: dict
    provider: str
    manifest: dict | None = None
    engine: object | None = None  # engine.DirectEngine when decoding bypasses OGA's Generator
    _open_oga: object | None = field(default=None, repr=False)
    files: Path | None = None  # the folder the runtime opens: `path`, or its expanded form

    @property
    def files_path(self) -> Path:
        return self.files or self.path

    @property
    def decoder(self) -> str:
        return "direct" if self.engine is not None else "oga"

    @property
    def model(self):
        """The onnxruntime-genai Model (eval and the OGA decoder use it)."""
        if self._model is None:
            self._model = self._open_oga()  # type: ignore[misc]
        return self._model

    def direct_engine(self, needed: int):
        """The direct engine with KV buffers of at least `needed` positions (grown on demand)."""
        from .webgpu.engine import MIN_CAPACITY, DirectEngine

        e = self.engine
        if e is not None and e.capacity >= needed:
            return e
        cap = min(self.context_length, max(MIN_CAPACITY, 1 << (max(needed, 1) - 1).bit_length()))
        cap = self.kv_length(cap)  # a windowed attention layer needs at least its window
        chain = e.chain if e is not None else None
        self.engine = None
        del e  # free the old buffers and session before the new ones
        kw = {"chain": chain} if chain else {}
        self.engine = DirectEngine(self.files_path, self.config, self.provider, cap, **kw)
        return self.engine

    @property
    def context_length(self) -> int:
        m = self.config.get("model", {})
        return int(m.get("context_length") or self.config.get("search", {}).get("max_length") or 2048)

    @property
    def sliding_window(self) -> int | None:
        """Window of the layers the builder gave a bounded (windowed) KV cache, or None."""
        sw = self.config.get("model", {}).get("decoder", {}).get("sliding_window") or {}
        w = int(sw.get("window_size") or 0)
        return w if w > 0 and sw.get("layers") else None

    def kv_length(self, needed: int) -> int:
        """The max_length to ask onnxruntime-genai for when `needed` positions are used.

        onnxruntime-genai 0.18 sizes a windowed layer's cache as min(max_length, window + 16)
        on CPU, while onnxruntime's GroupQueryAttention (sliding_window_cache=1) refuses a
        cache smaller than the window ("KV cache capacity (53) must be at least
        local_window_size (4096)"). So a sliding-window model asks for at least the window
        (capped at the context): the full-attention layers then hold max(needed, window)
        positions, the windowed ones window..window + 16, whatever the prompt length.
        """
        w = self.sliding_window
        return max(needed, min(w, self.context_length)) if w else needed

    @property
    def hybrid_limit(self) -> int | None:
        """The RyzenAI hybrid sequence limit without chunking (None when not hybrid)."""
        if self.provider != "ryzenai":
            return None
        for entry in self.config["model"]["decoder"].get("session_options", {}).get("provider_options", []):
            opts = entry.get("RyzenAI") or entry.get("ryzenai") or {}
            if str(opts.get("hybrid_opt_chunk_context", "0")) == "1":
                return None
            if "hybrid_opt_max_seq_length" in opts:
                return int(opts["hybrid_opt_max_seq_length"])
        return HYBRID_MAX_SEQ

    @property
    def eos_token_ids(self) -> list[int]:
        eos = self.config.get("model", {}).get("eos_token_id", [])
        ids = eos if isinstance(eos, list) else [eos]
        from .capabilities import capabilities

        if capabilities().eos_token_ids:  # 0.9.2's tokenizer has none: genai_config's ids only
            ids = list(dict.fromkeys([*ids, *[int(x) for x in getattr(self.tokenizer, "eos_token_ids", ())]]))
        return [int(i) for i in ids]

    def chat_template(self) -> str | None:
        return read_chat_template(self.path)

    @property
    def content_hash(self) -> str:
        """The hash of the folder's content (the manifest's, or computed for a foreign folder)."""
        if not hasattr(self, "_content_hash"):
            self._content_hash = folder_content_hash(self.path, self.manifest)
        return self._content_hash


def read_chat_template(path: Path) -> str | None:
    jinja = path / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tc = path / "tokenizer_config.json"
    if tc.is_file():
        try:
            t = json.loads(tc.read_text(encoding="utf-8")).get("chat_template")
        except ValueError:
            return None
        if isinstance(t, list):  # named templates: take "default"
            t = next((x.get("template") for x in t if x.get("name") == "default"), None)
        return t or None
    return None


def require_exists(path: Path) -> None:
    """A model path that is not there is most often a typo: say so and name the models
    that are (not "re-run prepare")."""
    if path.exists():
        return
    raise ModelNotFoundError(f"{path} does not exist", missing_model_fix(path))


def missing_model_fix(path: Path) -> str:
    import difflib

    from .store import ModelStore
    from .workdir import models_dir

    try:
        names = [r.path for r in ModelStore().entries()]
    except OSError:
        names = []
    close = difflib.get_close_matches(path.name, [p.name for p in names], n=1, cutoff=0.6)
    guess = next((p for p in names if close and p.name == close[0]), None)
    lead = f"did you mean {guess}? " if guess else ""
    return f"{lead}`oga-npu models` lists the prepared models (in {models_dir()}); `oga-npu prepare SOURCE` makes one"


@dataclass
class CheckedFolder:
    """What `check` found: a model folder that can be opened, and how. Made without writing
    anything (the GGUF expanded form it needs is made by `make_files` when missing)."""

    path: Path
    config: dict
    manifest: dict | None
    runtime: object  # capabilities.Runtime: the onnxruntime-genai that opens it
    provider: str  # the provider that runs it (after an explicit --fallback cpu)
    decoder: str  # the decoder asked for: "direct", "oga" or "auto"
    direct: bool  # whether decoding bypasses OGA's Generator (model.engine.onnx)
    files: Path  # the folder the runtime opens: `path`, or its finished expanded form
    expand_key: str | None = None  # the cache key of a gguf-native folder's expanded form, when missing

    @property
    def configured_provider(self) -> str:
        return configured_providers(self.config)[0]


def check(
    path: str | Path, provider: str | None = None, fallback: str | None = None, decoder: str | None = None
) -> CheckedFolder:
    """Everything `load` refuses before opening a folder, and the provider, decoder and files
    it would open it with. Raises the errors `load` raises; never writes anything."""
    from .capabilities import check_folder_runtime, require_runtime
    from .gguf import expand

    path = Path(path)
    require_exists(path)
    _require_library(path)  # before the manifest check: its own fix, not "re-run prepare --force"
    state = require_ready(path)  # sizes, mtimes and small files' hashes against the manifest
    runtime = require_runtime()
    check_folder_runtime(state)  # built for a newer OGA than this one: say so, not "invalid dimensions"
    config = _checked_config(path)
    wanted = choose_provider(config, provider, fallback, state.manifest, path)
    choice, direct = _decoder_choice(path, wanted, decoder)
    key = expand.wanted(state.manifest)  # a gguf-native folder opens its expanded form, in the cache
    entry = expand.finished_entry(key) if key else None
    return CheckedFolder(
        path,
        config,
        state.manifest,
        runtime,
        wanted,
        choice,
        direct,
        files=entry or path,
        expand_key=key if key and entry is None else None,
    )


def _require_library(path: Path) -> None:
    """A gguf-ggml folder's kernel library present and loadable (oga_npu.gguf.ggml_folder)."""
    from .gguf.ggml_folder import FIX, library_problem

    try:
        config = json.loads((path / "genai_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # _checked_config says what is wrong with it
    problem = library_problem(path, config)
    if problem:
        raise ModelFolderError(f"{path} cannot be loaded: {problem}", FIX)


def _checked_config(path: Path) -> dict:
    """genai_config.json of a folder with every file it needs, and a KV cache onnxruntime runs."""
    rep = check_folder(path)
    if not rep.ok:
        raise ModelFolderError(
            f"{path} cannot be loaded: " + "; ".join(rep.problems),
            "re-run prepare for this folder, or copy the missing files into it",
        )
    config = rep.config or {}
    sw = config.get("model", {}).get("decoder", {}).get("sliding_window") or {}
    window = (sw.get("window_size") or 0) if sw.get("layers") else 0
    context = config.get("model", {}).get("context_length") or 0
    if 0 < context < window:
        raise ModelFolderError(
            f"{path} was built with a sliding-window KV cache of {window} positions, more than "
            f"its context ({context}): onnxruntime cannot run it",
            "re-run prepare for it with --force (this version builds such models without one)",
        )
    return config


def _decoder_choice(path: Path, provider: str, decoder: str | None) -> tuple[str, bool]:
    """(the decoder asked for, whether the direct engine decodes)."""
    from .webgpu import engine as eng

    choice = decoder or eng.decoder_choice()
    available = eng.engine_available(path)
    direct = available and (choice == "direct" or (choice == "auto" and provider == "webgpu"))
    if choice == "direct" and not available:
        raise ProviderError(
            f"{path} has no {eng.ENGINE_FILE} for direct decoding",
            f"re-run prepare --target webgpu for it, or unset {eng.DECODER_ENV}",
        )
    return choice, direct and provider in ("webgpu", "cpu")


def make_files(state: CheckedFolder) -> CheckedFolder:
    """`state` with the folder the runtime opens made: a gguf-native folder's expanded form,
    written once into the cache when `check` found it missing (the compact folder, with a
    warning, when it cannot be)."""
    if state.expand_key is None:
        return state
    from .gguf import expand

    return replace(state, files=expand.make(state.path, state.expand_key), expand_key=None)


def open(state: CheckedFolder) -> LoadedModel:  # model.open, as io.open (the builtin is not used here)
    """Open a checked folder with onnxruntime-genai on `state.provider` (and the direct
    engine when `state.direct`)."""
    import onnxruntime_genai as og

    path, wanted = state.path, state.provider
    ryzenai_folders.prepare_process(state.config, state.manifest, state.files)  # DD_PLUGINS_ROOT, DLL path
    try:
        ogc = og.Config(str(state.files))
        if wanted != state.configured_provider:
            ogc.clear_providers()
            if wanted != "cpu":
                ogc.append_provider(OGA_PROVIDER_NAME[wanted])
    except Exception as e:  # OGA raises RuntimeError with native messages
        raise translate(e, path) from e

    def open_oga():
        try:
            if wanted == "webgpu":
                from .webgpu import ep as webgpu

                webgpu.register()
            return og.Model(ogc)
        except Exception as e:
            raise translate(e, path) from e

    model = None if state.direct else open_oga()
    try:
        tokenizer = og.Tokenizer(model if model is not None else ogc)
    except Exception as e:  # OGA raises RuntimeError with native messages
        raise translate(e, path) from e
    lm = LoadedModel(
        path,
        model,
        tokenizer,
        state.config,
        wanted,
        state.manifest,
        _open_oga=open_oga,
        files=state.files if state.files != path else None,
    )
    if state.direct:
        try:
            lm.direct_engine(0)
        except (ModelLoadError, ProviderError) as e:
            if state.decoder == "direct":
                raise
            log.warning("direct decoding is off for %s (%s); onnxruntime-genai decodes instead", path, e)
    return lm


def load(
    path: str | Path,
    provider: str | None = None,
    fallback: str | None = None,
    decoder: str | None = None,
    files: Path | None = None,
) -> LoadedModel:
    """Check and open a model folder. provider=None keeps what genai_config.json says;
    decoder=None follows OGA_NPU_DECODER (auto: direct for webgpu models that have
    model.engine.onnx), "oga" never opens the direct engine (eval scores with OGA).
    `files` is the folder the runtime opens in `path`'s place (prepare's validate passes
    the expanded form it made)."""
    path = Path(path)
    require_exists(path)
    guard.phase("checking", path)
    state = check(path, provider, fallback, decoder)
    guard.phase("loading", path, state.provider)
    state = replace(state, files=files, expand_key=None) if files else make_files(state)
    lm = open(state)
    guard.phase("after loading", path, state.provider)
    release_heap()
    release_mapped_pages(lm.files_path)
    return lm


def release_heap() -> None:
    """Give the heap's freed pages back to the OS. glibc keeps what onnxruntime freed after
    loading (its folding of a compact gguf-native model: a 1B Q4_K_M's steady RSS 4.2 -> 1.7 GB)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc only (not musl)
    except (OSError, AttributeError):
        return
    trim(0)


PREFILL_CHUNK = 512  # prompt positions per CPU prefill step (llama.cpp's default micro-batch)


def prefill_chunk(provider: str) -> int:
    """Positions one CPU prefill step takes (OGA_NPU_PREFILL_CHUNK; 0: the whole prompt)."""
    if provider != "cpu":
        return 0
    raw = os.environ.get("OGA_NPU_PREFILL_CHUNK", "").strip()
    return int(raw) if raw.isdigit() else PREFILL_CHUNK


def append_prompt(gen, ids: list[int], provider: str, whole: bool = False) -> None:
    """Prefill `ids` into an onnxruntime-genai Generator. On the CPU a long prompt goes in
    steps of prefill_chunk() positions: onnxruntime's arena keeps the largest step's
    activations (attention scores heads x step x length, the MLP's step x intermediate),
    so a 1024-token prompt in two steps peaks lower (SmolLM2: 467 -> 395 MB at 256) with the
    same tokens out. `whole`: one step whatever the length."""
    step = 0 if whole else prefill_chunk(provider)
    if step <= 0 or len(ids) <= step:
        gen.append_tokens(ids)
        return
    for i in range(0, len(ids), step):
        gen.append_tokens(ids[i : i + step])


MADV_DONTNEED = 4  # Linux <sys/mman.h>


def _clean_mappings(folder: Path) -> list[tuple[int, int]]:
    """(start, length) of this process's mappings of files in `folder` that hold no page of
    their own: no anonymous (copy-on-write) page, so each page equals the file's."""
    out, cur, clean = [], None, True
    root = str(folder.resolve()) + os.sep
    with builtins.open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if head and "-" in head[0] and not head[0].endswith(":"):
                if cur and clean:
                    out.append(cur)
                cur, clean = None, True
                if len(head) == 6 and head[5].strip().startswith(root):
                    a, b = (int(x, 16) for x in head[0].split("-"))
                    cur = (a, b - a)
            elif cur and head[0] == "Anonymous:" and int(head[1]) != 0:
                clean = False
    if cur and clean:
        out.append(cur)
    return out


def release_mapped_pages(folder: Path) -> int:
    """Drop the resident pages of the model files onnxruntime memory-maps (its external
    data), leaving the mappings: onnxruntime reads every initializer once while loading
    (MatMulNBits' prepacking copies the weights, scales and zero points into its own
    buffers), and the touched pages stay in RSS though the kernels never read most of them
    again. A page read later comes back from the page cache. Only mappings with no page
    of their own (nothing written) are dropped. Returns the bytes advised (Linux only)."""
    if not sys.platform.startswith("linux"):
        return 0
    import ctypes

    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
        spans = _clean_mappings(folder)
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return sum(n for a, n in spans if madvise(a, n, MADV_DONTNEED) == 0)
