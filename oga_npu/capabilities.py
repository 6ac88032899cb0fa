"""Which onnxruntime-genai is installed, what it can do, and which OGA a model folder needs.

oga-npu runs on the OGA each supported Ryzen AI release pins (AMD's own build,
onnxruntime-genai-directml-ryzenai: 0.9.2, 0.11.2, 0.14.0) and on the public 0.18. Code that
drives OGA reads `capabilities()` (hasattr checks on the imported module, computed once) and
never compares version strings itself. Versions matter in two places only, both here: which
Ryzen AI release an installed runtime belongs to, and the oldest runtime a folder's builder
options need (`BUILDER_OPTION_MIN_OGA`, recorded in the manifest by prepare and checked at load).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import RuntimeMissingError, VersionError

# Distributions that install the `onnxruntime_genai` module; the first one found is the runtime.
OGA_DISTRIBUTIONS = (
    "onnxruntime-genai-directml-ryzenai",
    "onnxruntime-genai-directml",
    "onnxruntime-genai-cuda",
    "onnxruntime-genai",
)
RYZENAI_DISTRIBUTION = "onnxruntime-genai-directml-ryzenai"
# Ryzen AI release -> the onnxruntime-genai version AMD pins (models do not cross releases).
RAI_OGA_PINS = {"1.5": "0.7.0", "1.6": "0.9.2", "1.7": "0.11.2", "1.7.1": "0.11.2", "1.8": "0.14.0"}
# The versions CI runs the runtime tests on (scripts/test_oga_versions.sh); the oldest is the floor.
VERIFIED_OGA = ("0.9.2", "0.11.2", "0.14.0", "0.18.0")
OLDEST_OGA = VERIFIED_OGA[0]
# Builder options and the oldest runtime that runs what they build: 0.9.2 and 0.11.2 expect
# logits for every prompt position ("Got invalid dimensions for output: logits").
BUILDER_OPTION_MIN_OGA = {"prune_lm_head": "0.14.0"}
# Tokenizer classes the tokenizer of every supported OGA knows (onnxruntime-extensions' table in
# 0.9.2, "Fast" stripped). transformers 5 writes "TokenizersBackend", which only 0.14+ knows.
OGA_TOKENIZER_CLASSES = frozenset(
    {
        "PreTrainedTokenizer",
        "GPT2Tokenizer",
        "LlamaTokenizer",
        "CodeLlamaTokenizer",
        "GemmaTokenizer",
        "Phi3Tokenizer",
        "Qwen2Tokenizer",
        "CodeGenTokenizer",
        "BaichuanTokenizer",
        "GPTNeoXTokenizer",
        "CLIPTokenizer",
        "WhisperTokenizer",
        "MarianTokenizer",
        "T5Tokenizer",
        "ChatGLMTokenizer",
        "XLMRobertaTokenizer",
    }
)
CPU_EXTRA_FIX = (
    'pip install "oga-npu[cpu]" (or, in a Ryzen AI conda env, use the onnxruntime-genai AMD installed there)'
)


def _v(s: str):
    from packaging.version import Version

    return Version(s)


def base_version(s: str) -> str:
    """'0.14.0' for '0.14.0', '0.14.0.dev1' or '0.14.0+rai': what AMD's pins are keyed on."""
    try:
        return ".".join(str(p) for p in (list(_v(s).release) + [0, 0])[:3])
    except Exception:  # noqa: BLE001 - an unparseable version is kept as is
        return s


def older(a: str, b: str) -> bool:
    """a < b as versions (unparseable: never older)."""
    try:
        return _v(base_version(a)) < _v(base_version(b))
    except Exception:  # noqa: BLE001
        return False


def releases_for(version: str | None) -> list[str]:
    """The Ryzen AI releases that pin this onnxruntime-genai version (base version compared)."""
    if not version:
        return []
    b = base_version(version)
    return [rai for rai, pin in RAI_OGA_PINS.items() if pin == b]


@dataclass(frozen=True)
class Runtime:
    """The installed OGA distribution (None when none is) and every OGA distribution found."""

    distribution: str | None
    version: str | None
    found: tuple[tuple[str, str], ...] = ()

    @property
    def releases(self) -> list[str]:
        return releases_for(self.version)

    @property
    def is_ryzenai(self) -> bool:
        return self.distribution == RYZENAI_DISTRIBUTION

    def describe(self) -> str:
        """'onnxruntime-genai-directml-ryzenai 0.14.0 (Ryzen AI 1.8's runtime)'."""
        if not self.distribution:
            return "no onnxruntime-genai"
        rel = "/".join(self.releases)
        if not rel:
            note = ""
        elif self.is_ryzenai:
            note = f" (Ryzen AI {rel}'s runtime)"
        else:
            note = f" (the version Ryzen AI {rel} pins)"
        return f"{self.distribution} {self.version}{note}"


@functools.lru_cache(maxsize=1)
def installed_runtime() -> Runtime:
    from importlib import metadata

    found = []
    for name in OGA_DISTRIBUTIONS:
        try:
            found.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            continue
    if not found:
        return Runtime(None, None)
    return Runtime(found[0][0], found[0][1], tuple(found))


def require_runtime() -> Runtime:
    """The installed runtime, or the one-line error naming the extra to install."""
    rt = installed_runtime()
    if rt.distribution is None:
        raise RuntimeMissingError(
            "no onnxruntime-genai is installed (oga-npu's core package pins no runtime)", CPU_EXTRA_FIX
        )
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError as e:
        raise RuntimeMissingError(
            f"{rt.distribution} {rt.version} is installed but does not import: "
            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}",
            f"reinstall it ({CPU_EXTRA_FIX})",
        ) from e
    return rt


@dataclass(frozen=True)
class Capabilities:
    """What the imported onnxruntime-genai offers, by the API present."""

    version: str
    rewind: bool  # Generator.rewind_to: a cached sequence can be continued (KV reuse)
    guidance: bool  # GeneratorParams.set_guidance (the build may still lack llguidance: probed per model)
    eos_token_ids: bool  # Tokenizer.eos_token_ids (older: genai_config's eos_token_id only)
    ep_library: bool  # register_execution_provider_library (plugin EPs such as WebGPU)
    speculative: bool = False  # GeneratorParams.set_speculative_options (n-gram / draft model; 0.18)
    # JSON schema minProperties in guided output: 0.9.2's llguidance answers "Error creating
    # grammar: Unimplemented keys: ["minProperties"]" (seen; 0.11.2 and 0.14.0 take it). No API tells.
    min_properties: bool = True

    def reuse_note(self) -> str:
        return (
            ""
            if self.rewind
            else (f"onnxruntime-genai {self.version} has no Generator.rewind_to: full prefill every turn")
        )

    def guidance_note(self) -> str:
        return "" if self.guidance else f"onnxruntime-genai {self.version} has no guided output (set_guidance)"


@functools.lru_cache(maxsize=1)
def capabilities() -> Capabilities:
    require_runtime()
    import onnxruntime_genai as og

    gen, params, tok = (getattr(og, n, None) for n in ("Generator", "GeneratorParams", "Tokenizer"))
    version = getattr(og, "__version__", None) or installed_runtime().version or "unknown"
    return Capabilities(
        version=str(version),
        rewind=hasattr(gen, "rewind_to") and hasattr(gen, "append_tokens"),
        guidance=hasattr(params, "set_guidance"),
        eos_token_ids=hasattr(tok, "eos_token_ids"),
        ep_library=hasattr(og, "register_execution_provider_library"),
        speculative=hasattr(params, "set_speculative_options"),
        min_properties=_at_least(str(version), (0, 11)),
    )


def _at_least(version: str, floor: tuple[int, ...]) -> bool:
    try:
        return tuple(int(p) for p in base_version(version).split(".")[:2]) >= floor
    except ValueError:  # "unknown" or a local build's name: assume a current runtime
        return True


# -- folders: the runtime a folder is built for and the oldest it needs ------------------------


def target_oga_version(target: str, rai_version: str | None = None, explicit: str | None = None) -> str:
    """The onnxruntime-genai a prepared folder is built to run on: --oga-version, else for
    hybrid/npu the Ryzen AI release's pin, else the installed runtime (the oldest verified
    one when none is installed, so the folder runs everywhere)."""
    if explicit:
        check_known_version(explicit)
        return base_version(explicit)
    if target in ("hybrid", "npu") and rai_version in RAI_OGA_PINS:
        return RAI_OGA_PINS[rai_version]
    rt = installed_runtime()
    return base_version(rt.version) if rt.version else OLDEST_OGA


def check_known_version(v: str) -> None:
    try:
        _v(v)
    except Exception as e:
        raise VersionError(f"--oga-version {v!r} is not a version", "pass one such as 0.11.2") from e
    if older(v, OLDEST_OGA):
        raise VersionError(
            f"onnxruntime-genai {v} is older than oga-npu supports (oldest: {OLDEST_OGA})",
            f"pass --oga-version {OLDEST_OGA} or newer",
        )


def builder_options_for(options: dict, oga_version: str) -> tuple[dict, list[str]]:
    """The builder options the target runtime understands, and a note per option dropped."""
    kept, notes = {}, []
    for k, v in options.items():
        need = BUILDER_OPTION_MIN_OGA.get(k)
        if need and v not in (False, "false", 0) and older(oga_version, need):
            notes.append(
                f"builder option {k} left out: onnxruntime-genai {oga_version} (the target) cannot run "
                f"it (needs {need})"
            )
            continue
        kept[k] = v
    return kept, notes


def min_oga_for(options: dict) -> str:
    """The oldest onnxruntime-genai that runs a folder built with these builder options."""
    need = OLDEST_OGA
    for k, v in options.items():
        m = BUILDER_OPTION_MIN_OGA.get(k)
        if m and v not in (False, "false", 0) and older(need, m):
            need = m
    return need


def folder_min_oga(manifest: dict | None) -> str | None:
    """The oldest onnxruntime-genai a prepared folder needs (None: not recorded)."""
    req = (manifest or {}).get("requires") or {}
    if req.get("onnxruntime-genai"):
        return req["onnxruntime-genai"]
    # Folders prepared before "requires": the builder options the build stage ran with.
    argv = (((manifest or {}).get("stages") or {}).get("build") or {}).get("detail", {}).get("argv") or []
    opts = dict(a.split("=", 1) for a in argv if isinstance(a, str) and "=" in a and not a.startswith("-"))
    return min_oga_for(opts) if opts and manifest else None


def runtime_mismatch(state) -> tuple[str, str] | None:
    """(problem, fix) when a folder (a workdir.FolderState) needs a newer onnxruntime-genai
    than the installed one, else None."""
    from .workdir import resume_command

    need = folder_min_oga(state.manifest)
    rt = installed_runtime()
    if not need or not rt.version or not older(rt.version, need):
        return None
    return (
        f"{state.path} needs onnxruntime-genai {need} or newer; {rt.describe()} is installed",
        f"prepare it for this runtime: {resume_command(state)} --oga-version {base_version(rt.version)} --force "
        f"(or install onnxruntime-genai>={need})",
    )


def check_folder_runtime(state) -> None:
    """Refuse, in one line, a folder that needs a newer onnxruntime-genai than the installed one."""
    bad = runtime_mismatch(state)
    if bad:
        raise VersionError(*bad)


def tokenizer_class_for(tokenizer_json: dict, source_class: str | None = None) -> str:
    """The tokenizer_class every supported OGA reads for this tokenizer: the source's own
    class when OGA knows it, else one chosen from tokenizer.json's model and pre-tokenizer."""
    for name in (source_class,):
        if name and name.removesuffix("Fast") in OGA_TOKENIZER_CLASSES:
            return name.removesuffix("Fast")
    model = (tokenizer_json.get("model") or {}).get("type")
    if model == "Unigram":
        return "T5Tokenizer"
    # Byte-level BPE (GPT-2, SmolLM2, Qwen, Llama 3) vs SentencePiece-style BPE (Llama 2, Mistral).
    if "ByteLevel" in json.dumps(tokenizer_json.get("pre_tokenizer")) or "ByteLevel" in json.dumps(
        tokenizer_json.get("decoder")
    ):
        return "GPT2Tokenizer"
    return "LlamaTokenizer"


def fix_tokenizer_config(folder: Path, source_dir: Path | None = None) -> str | None:
    """Rewrite tokenizer_config.json's tokenizer_class to one every supported OGA knows.
    Returns 'Old -> New' when it changed something, else None."""
    tc_path, tj_path = folder / "tokenizer_config.json", folder / "tokenizer.json"
    if not tc_path.is_file() or not tj_path.is_file():
        return None
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    old = tc.get("tokenizer_class")
    if isinstance(old, str) and old.removesuffix("Fast") in OGA_TOKENIZER_CLASSES:
        return None
    source_class = None
    if source_dir is not None and (source_dir / "tokenizer_config.json").is_file():
        try:
            source_class = json.loads((source_dir / "tokenizer_config.json").read_text(encoding="utf-8")).get(
                "tokenizer_class"
            )
        except ValueError:
            source_class = None
    new = tokenizer_class_for(json.loads(tj_path.read_text(encoding="utf-8")), source_class)
    tc["tokenizer_class"] = new
    tc_path.write_text(json.dumps(tc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return f"{old} -> {new}"


# -- doctor / devices: the installed runtime judged against what it itself needs -------------


def _dist_requirements(dist: str) -> list:
    """The runtime requirements (no extras, markers that apply here) of an installed distribution."""
    from importlib import metadata

    from packaging.requirements import Requirement

    out = []
    for line in metadata.requires(dist) or []:
        try:
            r = Requirement(line)
        except Exception:  # noqa: BLE001 - a malformed line is not ours to judge
            continue
        if r.marker is not None and not r.marker.evaluate({"extra": ""}):
            continue
        out.append(r)
    return out


def judge_runtime() -> tuple[list[str], list[tuple[str, str]]]:
    """(ok lines, (problem, fix) pairs) for the installed onnxruntime-genai: one is installed,
    it is not older than the oldest verified one, and what it requires itself is installed
    at a version it accepts (AMD's build names AMD's onnxruntime; the public one onnxruntime)."""
    from importlib import metadata

    rt = installed_runtime()
    if rt.distribution is None:
        return [], [("no onnxruntime-genai is installed (run, chat, serve and bench need one)", CPU_EXTRA_FIX)]
    checks, problems = [], []
    verified = ", ".join(VERIFIED_OGA)
    if older(rt.version or "0", OLDEST_OGA):
        problems.append(
            (
                f"{rt.describe()} is older than oga-npu supports (verified: {verified})",
                'use Ryzen AI 1.6 or newer, or pip install "oga-npu[cpu]"',
            )
        )
    else:
        tag = "verified" if base_version(rt.version or "") in VERIFIED_OGA else f"not one of the verified {verified}"
        checks.append(f"runtime {rt.describe()} ({tag})")
    if len(rt.found) > 1:
        others = ", ".join(f"{n} {v}" for n, v in rt.found[1:])
        problems.append(
            (
                f"several onnxruntime-genai distributions share the module: {rt.distribution} {rt.version} "
                f"and {others} (the last installed wins)",
                f"pip uninstall {' '.join(n for n, _ in rt.found[1:])}, then reinstall {rt.distribution}",
            )
        )
    for req in _dist_requirements(rt.distribution):
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(
                (
                    f"{rt.distribution} {rt.version} needs {req}, found none",
                    f'pip install "{req}"'
                    if not rt.is_ryzenai
                    else "reinstall Ryzen AI Software's conda env (its packages come from AMD's index)",
                )
            )
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            problems.append((f"{rt.distribution} {rt.version} needs {req}, found {have}", f'pip install "{req}"'))
        else:
            checks.append(f"{req.name} {have} (what {rt.distribution} {rt.version} asks: {req.specifier or 'any'})")
    return checks, problems
