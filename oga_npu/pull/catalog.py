"""The catalog (catalog.toml beside this module): ready-made models by name, and whether each
fits this machine (memory, NPU, the installed onnxruntime-genai / Ryzen AI release)."""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import tomllib

CATALOG_FILE = Path(__file__).with_name("catalog.toml")
TARGETS = ("cpu", "dml", "webgpu", "hybrid", "npu", "gguf")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
REPO_RE = re.compile(r"^[\w.-]+/[\w.-]+$")
FIELDS = ("name", "repo", "variant", "target", "release", "oga_version", "size_bytes", "context", "license")
MEMORY_FACTOR = 1.3  # a model needs about its file size in memory, plus the KV cache and the runtime


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    repo: str
    variant: str  # subfolder (OGA folder repos) or quantization (GGUF repos); "" = the root
    target: str
    release: str  # Ryzen AI release ("" = public onnxruntime-genai)
    oga_version: str
    size_bytes: int
    context: int
    license: str

    @property
    def source(self) -> str:
        """What `oga-npu pull` fetches: org/repo, org/repo:QUANT for a GGUF repo."""
        return f"{self.repo}:{self.variant}" if self.target == "gguf" and self.variant else self.repo

    def to_dict(self) -> dict:
        return asdict(self)


def check_entry(raw: dict) -> list[str]:
    """What is wrong with one raw [[model]] table ([] when nothing is)."""
    problems = [f"missing {k}" for k in FIELDS if k not in raw]
    problems += [f"unknown key {k}" for k in raw if k not in FIELDS]
    if problems:
        return problems
    if not NAME_RE.match(str(raw["name"])):
        problems.append(f"name {raw['name']!r} is not lower-case letters, digits, '.', '-', '_'")
    if not REPO_RE.match(str(raw["repo"])):
        problems.append(f"repo {raw['repo']!r} is not org/name")
    if raw["target"] not in TARGETS:
        problems.append(f"target {raw['target']!r} is not one of {TARGETS}")
    if raw["target"] in ("hybrid", "npu") and not re.match(r"^1\.\d+(\.\d+)?$", str(raw["release"])):
        problems.append("a hybrid/npu model names its Ryzen AI release")
    if raw["target"] == "gguf" and not re.match(r"^(I?Q\d\w*|F16|F32|BF16)$", str(raw["variant"]), re.I):
        problems.append(f"a GGUF entry's variant is its quantization, not {raw['variant']!r}")
    if not re.match(r"^\d+\.\d+\.\d+$", str(raw["oga_version"])):
        problems.append(f"oga_version {raw['oga_version']!r} is not X.Y.Z")
    for k in ("size_bytes", "context"):
        if not isinstance(raw[k], int) or raw[k] <= 0:
            problems.append(f"{k} must be a positive integer")
    return problems


@functools.lru_cache(maxsize=1)
def load() -> tuple[CatalogEntry, ...]:
    """Every entry of catalog.toml (a malformed entry is a packaging bug: ValueError naming it)."""
    data = tomllib.loads(CATALOG_FILE.read_text(encoding="utf-8"))
    out = []
    for raw in data.get("model", []):
        problems = check_entry(raw)
        if problems:
            raise ValueError(f"{CATALOG_FILE}: {raw.get('name', '?')}: {'; '.join(problems)}")
        out.append(CatalogEntry(**{k: raw[k] for k in FIELDS}))
    names = [e.name for e in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{CATALOG_FILE}: names listed twice: {', '.join(dup)}")
    return tuple(out)


def find(name: str) -> CatalogEntry | None:
    low = name.lower().removesuffix(":latest")
    return next((e for e in load() if e.name == low), None)


# ---------------------------------------------------------------- does it fit here


@dataclass(frozen=True)
class Machine:
    """What the fit check reads: memory, an NPU, the OS, the installed runtime."""

    memory: int | None
    npu: bool
    host: str
    oga: str | None  # the installed onnxruntime-genai version
    ryzenai: bool  # AMD's onnxruntime-genai-directml-ryzenai
    releases: tuple[str, ...]  # the Ryzen AI releases pinning the installed version


def this_machine() -> Machine:
    from ..capabilities import installed_runtime
    from ..devices import find_npus
    from ..ryzenai import host_os

    try:
        import psutil

        memory = int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001 - unknown memory: not a reason to refuse
        memory = None
    rt = installed_runtime()
    try:
        npu = bool(find_npus())
    except OSError:
        npu = False
    return Machine(memory, npu, host_os(), rt.version, rt.is_ryzenai, tuple(rt.releases))


def _v(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", s)[:3])


def fits(e: CatalogEntry, m: Machine) -> tuple[bool, str]:
    """(whether it runs here, why not / what it runs on)."""
    if m.memory and e.size_bytes * MEMORY_FACTOR > m.memory:
        return (
            False,
            f"needs about {e.size_bytes * MEMORY_FACTOR / 1e9:.1f} GB of memory; "
            f"this machine has {m.memory / 1e9:.1f} GB",
        )
    if e.target in ("hybrid", "npu"):
        if not m.npu:
            return False, "needs an AMD Ryzen AI NPU (none found)"
        if e.target == "hybrid" and m.host != "Windows":
            return False, "hybrid models run on Windows only (AMD: 'Linux does not support Hybrid flow')"
        if e.release not in m.releases and not (e.release == "1.7" and "1.7.1" in m.releases):
            have = (
                f"Ryzen AI {'/'.join(m.releases)}'s runtime" if m.releases else f"onnxruntime-genai {m.oga or 'none'}"
            )
            return False, f"made for Ryzen AI {e.release}; installed: {have} (models do not cross releases)"
        return True, f"Ryzen AI {e.release} on the NPU"
    if e.target == "dml" and m.host != "Windows":
        return False, "DirectML runs on Windows only"
    if e.target != "gguf" and m.oga and _v(m.oga) < _v(e.oga_version):
        return False, f"needs onnxruntime-genai {e.oga_version}+; installed: {m.oga}"
    if not m.oga:
        return False, "onnxruntime-genai is not installed (pip install 'oga-npu[cpu]')"
    return True, "prepared here on download" if e.target == "gguf" else f"{e.target} with onnxruntime-genai {m.oga}"


def suggestion(entries: list[CatalogEntry], m: Machine) -> str | None:
    """The line `models --available` ends with: which release's NPU models to pull here."""
    if not m.releases:
        return None
    rel = m.releases[-1]
    want = [e.name for e in entries if e.target in ("hybrid", "npu") and e.release in m.releases]
    if not want:
        return f"the installed runtime is Ryzen AI {rel}'s: no catalog model is made for it"
    return f"for the installed Ryzen AI {rel}: oga-npu pull {want[0]}" + (
        f" (or {', '.join(want[1:3])})" if len(want) > 1 else ""
    )


def listing(installed: set[str] | None = None, machine: Machine | None = None) -> list[dict]:
    """The catalog as GET /api/v1/catalog and `models --available --json` give it."""
    m = machine or this_machine()
    installed = installed or set()
    out = []
    for e in load():
        ok, why = fits(e, m)
        out.append({**e.to_dict(), "fits": ok, "why": why, "installed": e.name in installed})
    return out
