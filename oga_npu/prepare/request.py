"""What a prepare request means: the source it names, the recipe, the output folder.

`resolve(PrepareRequest)` works each out once, into a `Request` that the plan and the run
read: the source's kind and name (oga_npu.prepare.source), the recipe, the default output
folder in the model store (oga_npu.store) and what is already there. Nothing is written.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import RecipeError
from ..recipe import DEFAULT_RECIPE, GGML_TARGETS, GGUF_NATIVE_TARGETS, TARGETS, Recipe, default_recipe_for, load_recipe
from ..workdir import models_dir
from . import source as source_mod


@dataclass(frozen=True)
class PrepareRequest:
    source: str
    target: str = "cpu"
    recipe: str | None = None  # None: default_recipe_for(source kind, target)
    output: Path | None = None
    force: bool = False
    from_stage: str | None = None
    dry_run: bool = False
    calib_file: Path | None = None
    trace: bool = False
    rai_version: str | None = None
    dd_plugins: Path | None = None
    skip_device_check: bool = False
    rai_env: Path | None = None  # the Ryzen AI release's env (oga_npu.ryzenai finds one otherwise)
    oga_version: str | None = None  # the onnxruntime-genai the folder is for (None: capabilities.target_oga_version)


@dataclass(frozen=True)
class Request:
    """A PrepareRequest resolved: what each of its fields means here."""

    req: PrepareRequest
    src: source_mod.Source
    recipe_name: str  # as asked, else the source kind's and target's default
    recipe: Recipe  # as loaded (the group-size fallback comes once the model is known)
    output: Path
    calib_text: str  # a file's path, or "builtin"
    dd_plugins: Path

    @property
    def target(self) -> str:
        return self.req.target

    @functools.cached_property
    def default_output(self) -> Path:
        return default_output(self.src, self.req.target, self.recipe_name)

    def held_source(self, state) -> str | None:
        """The source the output folder (a workdir.FolderState) holds when it is another one."""
        return another_source(state, self.req.source)

    def another_source_fix(self) -> str:
        """Never --force: that would destroy the other model."""
        from ..store import ModelStore

        out = self.output
        rm = f"oga-npu rm {out.name}" if ModelStore().inside(out) else f"oga-npu rm --outside-store {out}"
        return (
            f"pass --output with another folder (without --output prepare uses {self.default_output}); "
            f"to replace that model, remove it first: {rm}"
        )

    def same_source(self, recorded: str) -> bool:
        from ..store import norm_source

        return norm_source(recorded) == norm_source(self.req.source)

    def source_key_on_disk(self) -> str | None:
        """The key the source step will give, when it is known without running it (None: a hub id)."""
        return source_mod.local_key(self.src)


def resolve(req: PrepareRequest) -> Request:
    """Check the target, the source, the recipe and the calibration file (in this order)."""
    if req.target not in TARGETS:
        raise RecipeError(f"unknown target '{req.target}'", f"use one of: {', '.join(TARGETS)}")
    src = source_mod.classify(req.source)
    recipe_name = req.recipe or default_recipe_for(src.kind, req.target)
    recipe = load_recipe(recipe_name)
    if recipe.quantize.engine == "gguf":
        check_gguf_native(recipe, src, req.target)
    out = Path(req.output) if req.output else default_output(src, req.target, recipe_name)
    calib_text = str(req.calib_file) if req.calib_file else recipe.calibration.text
    if req.calib_file and not Path(req.calib_file).is_file():
        raise RecipeError(f"calibration file not found: {req.calib_file}", "pass an existing text file to --calib-file")
    dd_plugins = Path(req.dd_plugins or "dd_plugins").absolute()
    return Request(req, src, recipe_name, recipe, out, calib_text, dd_plugins)


def default_output(source: source_mod.Source, target: str, recipe: str = DEFAULT_RECIPE) -> Path:
    """<store>/<name>-<target>, plus -<recipe> when it is not the source's default recipe
    (gguf-native for a .gguf on cpu/webgpu, else default), so a second recipe never
    collides with a folder made by the first. A GGUF's name keeps its quantization
    (<name>-q4_1-cpu), and a folder holding another source's model is passed over
    (<name>-<target>-2, ...): two sources never share a default folder."""
    from ..store import ModelStore, source_base_name

    tail = (
        ""
        if recipe in ("", default_recipe_for(source.kind, target))
        else "-" + re.sub(r"[^\w.-]+", "-", Path(recipe).stem).lower()
    )
    base = source_base_name(source.kind, source.spec, source.name)
    return ModelStore(models_dir()).default_folder(f"{base}-{target}{tail}", source.spec)


def another_source(state, source: str) -> str | None:
    """The source an oga-npu folder holds when it is not `source` (None: free, or the same)."""
    from ..store import held_source, norm_source

    if state.state not in ("ready", "incomplete", "damaged"):
        return None
    held = held_source(state.path)
    return held if held is not None and norm_source(held) != norm_source(source) else None


def check_gguf_native(recipe: Recipe, src: source_mod.Source, target: str) -> None:
    if src.kind != "gguf":
        raise RecipeError(
            f"recipe {recipe.name} keeps a GGUF file's own quantization; {src.spec} is a {src.describe()}",
            "prepare a .gguf file with it, or pick another recipe (--recipe default)",
        )
    if recipe.quantize.kernels == "ggml" and target not in GGML_TARGETS:
        raise RecipeError(
            f"recipe {recipe.name} runs llama.cpp's CPU kernels; --target {target} cannot load them",
            f"use --target {' or '.join(GGML_TARGETS)}, or --recipe gguf-native for {target}",
        )
    if recipe.quantize.kernels == "ggml":
        require_kernel_tools()
    if target not in GGUF_NATIVE_TARGETS:
        raise RecipeError(
            f"recipe {recipe.name} is for --target {' or '.join(GGUF_NATIVE_TARGETS)}; {target} needs "
            "AMD's flow, which takes Quark's uint4 AWQ",
            "use --recipe default (or cpu-fast) for this target",
        )


def require_kernel_tools() -> None:
    """gguf-ggml on a machine with no kernel library built yet and nothing to build it with:
    refused here, before any stage runs (the build stage makes the library, oga_npu.kernels)."""
    import os
    import shutil

    from ..errors import KernelBuildError
    from ..kernels import built

    if built() is not None:
        return
    missing = [t for t in ("cmake", os.environ.get("CXX") or "c++") if shutil.which(t) is None]
    if missing:
        raise KernelBuildError(
            f"the gguf-ggml recipe needs its kernel library; this machine has no {' or '.join(missing)} to build it",
            "install cmake and a C++ compiler (apt install cmake g++) and run `oga-npu kernels build`, "
            "or use --recipe gguf-native",
        )
