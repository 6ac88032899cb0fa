"""Building liboga_npu_ggml.so: ggml (from the llama-cpp-python sdist's vendor/llama.cpp)
with cmake, then ggml_ops.cc against it and onnxruntime's C API headers.

Every program runs through `tools.run_tool` (argv from the plan's fields, the environment
explicit, output to `build.log` beside the build). The library is written under a temporary
name and renamed into place, so a build cut short never looks finished.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sys
import tarfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import KernelBuildError, ToolFailed, ToolNotFound
from ..tools import capture, find_tool, run_tool, tool_env
from .spec import CMAKE_ENV, LIBRARY_NAME, LLAMA_CPP_PYTHON, SOURCE, SRC_ENV, root

SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
FIX_SOURCE = (
    f"give a llama-cpp-python sdist or a llama.cpp folder (`oga-npu kernels build --source PATH`, or {SRC_ENV}), "
    "or use --recipe gguf-native"
)
BASE_CMAKE = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DCMAKE_POSITION_INDEPENDENT_CODE=ON",
    "-DGGML_OPENMP=OFF",  # the library runs ggml's own thread pool beside onnxruntime's
    "-DGGML_NATIVE=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_CURL=OFF",
)
GGML_LIBS = ("ggml-cpu", "ggml", "ggml-base")  # link order


@lru_cache(maxsize=4)
def _compiler_id(cxx: str) -> str:
    code, out, err = capture([cxx, "--version"])
    return (out or err).splitlines()[0] if code == 0 and (out or err) else cxx


def ort_include() -> Path:
    """onnxruntime's C/C++ API headers (API 17): from AMD Quark's package, or OGA_NPU_ORT_INCLUDE."""
    env = os.environ.get("OGA_NPU_ORT_INCLUDE")
    if env:
        return Path(env)
    import importlib.util

    spec = importlib.util.find_spec("quark")
    if spec and spec.submodule_search_locations:
        base = Path(list(spec.submodule_search_locations)[0]) / "onnx/operators/custom_ops/include"
        found = sorted(base.glob("onnxruntime-*/onnxruntime/core/session/onnxruntime_cxx_api.h"))
        if found:
            return found[-1].parent
    raise KernelBuildError(
        "onnxruntime's C API headers were not found (they come with AMD Quark)",
        "pip install 'oga-npu[prepare]' (or set OGA_NPU_ORT_INCLUDE to a folder with onnxruntime_cxx_api.h)",
    )


@dataclass
class Plan:
    """What a build uses; its key names the library's folder."""

    source: str  # an sdist path or a llama.cpp folder; "" = the default sdist (downloaded)
    cmake_args: tuple[str, ...]
    cxx: str
    key: str = field(init=False)

    def __post_init__(self):
        h = hashlib.sha256()
        for part in (SOURCE.read_bytes(), self.identity.encode(), " ".join(self.cmake_args).encode()):
            h.update(part)
            h.update(b"\0")
        h.update(_compiler_id(self.cxx).encode())
        self.key = h.hexdigest()[:16]

    @property
    def identity(self) -> str:
        """The source as the key sees it: an sdist by its file name (the default download and a
        copy of the same sdist are one build), a folder by its path."""
        if not self.source:
            return SDIST
        p = Path(self.source)
        return p.name if p.suffix in (".gz", ".xz", ".tgz") else str(p.resolve())

    @classmethod
    def current(cls, source: Path | None = None) -> Plan:
        src = str(source) if source else os.environ.get(SRC_ENV, "")
        extra = tuple(shlex.split(os.environ.get(CMAKE_ENV, "")))
        return cls(src, extra, os.environ.get("CXX") or shutil.which("c++") or "c++")

    @property
    def folder(self) -> Path:
        return root() / self.key

    @property
    def library(self) -> Path:
        return self.folder / LIBRARY_NAME

    @property
    def build_dir(self) -> Path:
        return root() / f"build-{self.key}"


def build(source: Path | None = None, progress=None, force: bool = False) -> Path:
    if not sys.platform.startswith("linux"):
        raise KernelBuildError(
            "the ggml kernel library is built on Linux only", "use --recipe gguf-native (onnxruntime's own kernels)"
        )
    plan = Plan.current(source)
    if plan.library.is_file() and not force:
        return plan.library
    say = progress or (lambda msg: None)
    tools = _tools()
    include = ort_include()
    _check_given(plan, "--source" if source else SRC_ENV)  # before anything is written
    if force:  # a clean build: nothing of an earlier try's folder is reused
        shutil.rmtree(plan.build_dir, ignore_errors=True)
    plan.build_dir.mkdir(parents=True, exist_ok=True)
    log = plan.build_dir / "build.log"
    try:
        src = _llama_source(plan, say, log)
        say("building ggml (llama.cpp's CPU kernels) with cmake ...")
        _cmake(plan, src, tools, log)
        say("linking liboga_npu_ggml.so ...")
        _link(plan, src, include, log)
    except ToolFailed as e:
        raise KernelBuildError(f"building the ggml kernels failed: {e.message}", _kept_fix(plan, log)) from None
    shutil.rmtree(plan.build_dir, ignore_errors=True)  # ~200 MB of sources and objects; the library is all we keep
    say(f"built {plan.library}")
    return plan.library


def _tools() -> dict[str, str]:
    try:
        return {
            "cmake": find_tool("cmake", "install cmake (apt install cmake, or pip install cmake)"),
            "cxx": find_tool(os.environ.get("CXX") or "c++", "install a C++ compiler (apt install g++)"),
        }
    except ToolNotFound as e:
        raise KernelBuildError(
            f"the ggml kernels need a compiler and cmake: {e.message}", f"{e.fix}, or use --recipe gguf-native"
        ) from None


def _kept_fix(plan: Plan, log: Path) -> str:
    """A failed build keeps its folder (sources unpacked, objects compiled) for the next try."""
    size = sum(f.stat().st_size for f in plan.build_dir.rglob("*") if f.is_file() and not f.is_symlink())
    return (
        f"see {log}; its folder ({size / 1e6:.0f} MB) is kept for the next try to reuse, "
        f"`oga-npu kernels build --force` (or deleting {plan.build_dir}) starts clean"
    )


def _check_given(plan: Plan, origin: str) -> None:
    """A source given (--source, or the environment variable) that is not there."""
    given = Path(plan.source) if plan.source else None
    if given is None:
        return
    fix = (
        f"pass --source a llama-cpp-python sdist (.tar.gz) or a llama.cpp folder, or leave it out "
        f"(default: {SRC_ENV}, else llama-cpp-python {LLAMA_CPP_PYTHON} from PyPI)"
        if origin == "--source"
        else f"set {SRC_ENV} to a llama-cpp-python sdist or a llama.cpp folder (or unset it: the sdist "
        "comes from PyPI), or use --recipe gguf-native"
    )
    named = f"--source {given}" if origin == "--source" else f"{SRC_ENV}={given}"
    if given.is_dir() and not (given / "ggml" / "CMakeLists.txt").is_file():
        raise KernelBuildError(f"{named} is not a llama.cpp folder (no ggml/CMakeLists.txt)", fix)
    if not given.exists():
        raise KernelBuildError(f"{named}: no such file or folder", fix)


def _llama_source(plan: Plan, say, log: Path) -> Path:
    """vendor/llama.cpp of the sdist (downloaded when no source is given), or the folder given."""
    given = Path(plan.source) if plan.source else None
    if given and given.is_dir():
        return given
    sdist = given or (root() / "src" / SDIST)
    if not sdist.is_file():
        say(f"downloading llama-cpp-python {LLAMA_CPP_PYTHON} (source of llama.cpp's ggml) from PyPI ...")
        sdist.parent.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        argv += [f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(sdist.parent)]
        try:
            run_tool(argv, name="pip download", env=tool_env(), log_path=log)
        except ToolFailed as e:
            raise KernelBuildError(f"downloading the llama.cpp source failed: {e.message}", FIX_SOURCE) from None
    out = plan.build_dir / "src"
    mark = out / ".extracted"
    if not mark.is_file():
        say(f"unpacking {sdist.name} ...")
        shutil.rmtree(out, ignore_errors=True)
        _extract_vendor(sdist, out)
        mark.write_text(sdist.name)
    found = next(out.glob("*/vendor/llama.cpp"), None)
    if found is None:
        raise KernelBuildError(f"{sdist.name} holds no vendor/llama.cpp", FIX_SOURCE)
    return found


def _extract_vendor(sdist: Path, out: Path) -> None:
    try:
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if "/vendor/llama.cpp/" in m.name + "/"]
            tf.extractall(out, members=members, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise KernelBuildError(f"{sdist}: cannot unpack ({e})", FIX_SOURCE) from None


def _cmake(plan: Plan, src: Path, tools: dict[str, str], log: Path) -> None:
    build = plan.build_dir / "ggml"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    env = tool_env({"CXX": tools["cxx"]})
    configure = [tools["cmake"], "-S", str(src), "-B", str(build), *gen, *BASE_CMAKE, *plan.cmake_args]
    run_tool(configure, name="cmake", env=env, log_path=log)
    jobs = str(os.cpu_count() or 2)
    run_tool(
        [tools["cmake"], "--build", str(build), "--target", *GGML_LIBS, "-j", jobs], name="cmake", env=env, log_path=log
    )


def _static_lib(build: Path, name: str) -> Path:
    found = next(iter(sorted(build.rglob(f"lib{name}.a"))), None)
    if found is None:
        raise KernelBuildError(f"cmake built no lib{name}.a", f"see {build.parent / 'build.log'}")
    return found


def _link(plan: Plan, src: Path, include: Path, log: Path) -> None:
    build = plan.build_dir / "ggml"
    cpu, ggml, base = (_static_lib(build, n) for n in GGML_LIBS)
    plan.folder.mkdir(parents=True, exist_ok=True)
    tmp = plan.folder / f".{LIBRARY_NAME}.{os.getpid()}.tmp"
    argv = [plan.cxx, "-O2", "-std=c++17", "-fPIC", "-shared", "-fvisibility=hidden"]
    argv += ["-I", str(include), "-I", str(src / "ggml" / "include"), str(SOURCE), "-o", str(tmp)]
    argv += ["-Wl,--whole-archive", str(cpu), "-Wl,--no-whole-archive", str(ggml), str(base)]
    # -z nodelete: onnxruntime dlcloses a custom-op library with the session options that loaded
    # it, while ggml's pool threads (started by the library) still run its code: never unmap it
    argv += ["-Wl,--exclude-libs,ALL", "-Wl,-z,nodelete", "-lpthread", "-ldl", "-lm"]
    try:
        run_tool(argv, name="c++", env=tool_env(), log_path=log)
        os.replace(tmp, plan.library)
    finally:
        tmp.unlink(missing_ok=True)
