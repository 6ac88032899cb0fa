"""Recipes: TOML files in `oga_npu/recipes/` loaded into typed, strict objects.

A recipe says how to quantize (Quark scheme, algorithm, group size, excluded layers),
what to calibrate on, and how to build for each target. `--target` picks the target,
so any recipe works with any target; a target without its own table gets defaults.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import RecipeError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TARGETS = ("cpu", "webgpu", "dml", "hybrid", "npu")
GGUF_NATIVE_RECIPE = "gguf-native"
GGUF_NATIVE_TARGETS = ("cpu", "webgpu")
GGML_TARGETS = ("cpu",)  # the custom-op library runs on onnxruntime's CPU provider
Target = Literal["cpu", "webgpu", "dml", "hybrid", "npu"]
DEFAULT_RECIPE = "default"
AMD_TARGETS = ("hybrid", "npu")  # AMD's model_generate reads the quantized folder
QUARK_GROUP_SIZES = (128, 64, 32)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class QuantizeConfig(_Strict):
    """AMD Quark weight-only quantization (exported in HF format, quant_method=quark)."""

    # quark: AMD Quark quantizes, the builder packs its result. builder: no Quark stage; the
    # OGA builder rounds the fp weights to int4 itself (build.precision) - no torch model load.
    # gguf: a .gguf source keeps its own quantization: the builder makes the graph, then
    # oga_npu.gguf.native puts the file's blocks into it (cpu and webgpu targets).
    engine: Literal["quark", "builder", "gguf"] = "quark"
    # gguf only: whose kernels multiply the file's blocks. onnxruntime: its MatMulNBits on the
    # blocks' exact form (gguf-native); ggml: llama.cpp's own kernels on the raw blocks, through
    # the project's custom-op library (oga_npu.kernels; gguf-ggml, cpu only).
    kernels: Literal["onnxruntime", "ggml"] = "onnxruntime"
    dtype: Literal["uint4", "int4"] = "uint4"
    group_size: Literal[32, 64, 128] = 128
    # awq and gptq need calibration text; none = plain rounding to the nearest level.
    algorithm: Literal["awq", "gptq", "none"] = "awq"
    # Layers left unquantized. Unset: per target (exclude_for): cpu/webgpu/dml keep lm_head in
    # full precision; hybrid/npu quantize it, as AMD does (`--exclude_layers []`).
    exclude_layers: list[str] | None = None
    # The dtype Quark loads the model in (AMD's `--data_type`). auto: float32 for cpu/webgpu/dml;
    # for hybrid/npu what AMD names per checkpoint: bfloat16 for a bf16 one, else float16.
    data_type: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    # Where to run Quark: auto = CUDA when torch sees a GPU, else CPU.
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @property
    def scheme(self) -> str:
        return f"{self.dtype}_wo_{self.group_size}"

    def exclude_for(self, target: str) -> list[str]:
        if self.exclude_layers is not None:
            return list(self.exclude_layers)
        return [] if target in AMD_TARGETS else ["lm_head"]

    def data_type_for(self, target: str, checkpoint_dtype: str | None) -> str:
        """checkpoint_dtype: config.json's dtype/torch_dtype (None when it says nothing)."""
        if self.data_type != "auto":
            return self.data_type
        if target not in AMD_TARGETS:
            return "float32"
        return "bfloat16" if checkpoint_dtype == "bfloat16" else "float16"


class CalibrationConfig(_Strict):
    """Text for AWQ/GPTQ calibration: built-in local text (Python's own docs) or a file."""

    text: str = "builtin"
    samples: int = Field(16, ge=1, le=4096)
    seq_len: int = Field(128, ge=16, le=32768)


class BuildConfig(_Strict):
    """onnxruntime-genai model builder options for one target."""

    precision: Literal["int4", "int8", "fp16", "bf16", "fp32"] = "int4"
    # Passed as --extra_options KEY=VALUE (e.g. accuracy_level = 4).
    extra_options: dict[str, str | int | bool] = Field(default_factory=dict)
    # Merged into genai_config.json model.decoder.session_options after the build.
    # "auto" for intra_op_num_threads means the machine's physical core count at load.
    session_options: dict[str, str | int | bool] = Field(default_factory=dict)
    # A Cast to float32 appended to the graph's logits output (a pass of ours after the
    # builder). For WebGPU: onnxruntime-genai otherwise casts fp16 logits in a second ORT
    # session with its own GPU sync on every token, outside the captured graph.
    float32_logits: bool = False
    # model.engine.onnx beside model.onnx (graph passes of oga_npu.webgpu.graphpass, same weights)
    # for direct decoding on onnxruntime (oga_npu.webgpu.engine): greedy steps chained on the GPU.
    # WebGPU builds only (it needs the graph-capture attention-mask layout).
    direct_decode: bool = False


# What a target gets when the recipe has no [build.<target>] table. Measured: threads =
# physical cores gave 1.7x on a 2-core CPU (OGA's default left a core idle); prune_lm_head
# cut SmolLM2's CPU TTFT by 15-21% and its peak memory at 1024 tokens from 541 to 342 MB; WebGPU graph
# capture (the builder's enable_webgpu_graph, which keeps the attention-mask subgraph on the
# GPU) gave 1.3x decode for a Llama-3.2-1B shape on an H200; prune_lm_head (the prefill
# computes and copies back the last position's logits only, not 1024 x 128256 of them)
# took its TTFT at 1024 prompt tokens from 280 to 34 ms. `oga-npu eval` scores such a
# model one token at a time. direct_decode: greedy decode 277-290 -> 484-502 tok/s there
# (docs/performance.md).
DEFAULT_BUILD = {
    "cpu": BuildConfig(
        extra_options={"accuracy_level": 4, "prune_lm_head": True}, session_options={"intra_op_num_threads": "auto"}
    ),
    "webgpu": BuildConfig(
        extra_options={"enable_webgpu_graph": True, "prune_lm_head": True}, float32_logits=True, direct_decode=True
    ),
}


class HybridConfig(_Strict):
    """Ryzen AI hybrid/NPU steps (prepare/hybrid.py, prepare/plugins.py)."""

    compile_ops: Literal["auto", "always", "never"] = "auto"
    plugin_name: str = "oga_npu_ops"
    max_seq_length: int = Field(4096, ge=128)
    # model_generate --npu --<variant> (Ryzen AI 1.7.1+); "default": --basic there (AMD's "safe
    # default for new or untested models"), the plain `--npu ... --optimize decode` of 1.6/1.7
    npu_variant: Literal["default", "full_fusion", "token_fusion", "basic", "eager"] = "default"
    mem_optimize: bool = False  # model_generate --mem_optimize (1.7.1+: "16 GB laptop configurations")

    @field_validator("plugin_name")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        if not v.replace("_", "").replace("-", "").isalnum():
            raise ValueError("plugin_name may hold letters, digits, '_' and '-' only")
        return v


class ValidateConfig(_Strict):
    prompt: str = "What is the capital of France? Answer in one sentence."
    max_tokens: int = Field(16, ge=1, le=512)


class Recipe(_Strict):
    name: str
    description: str = ""
    quantize: QuantizeConfig = QuantizeConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    build: dict[Target, BuildConfig] = Field(default_factory=dict)
    hybrid: HybridConfig = HybridConfig()
    validate_: ValidateConfig = Field(default_factory=ValidateConfig, alias="validate")
    path: str | None = Field(default=None, exclude=True)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def build_for(self, target: str) -> BuildConfig:
        return self.build.get(target) or DEFAULT_BUILD.get(target, BuildConfig())  # type: ignore[call-overload]

    def with_group_size(self, group_size: int) -> "Recipe":
        q = self.quantize.model_copy(update={"group_size": group_size})
        return self.model_copy(update={"quantize": q})

    def digest(self, *parts: str) -> str:
        data = self.model_dump(mode="json", by_alias=True)
        data.pop("description", None)
        return _digest(data, *parts)


def _digest(obj, *parts: str) -> str:
    h = hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode())
    for p in parts:
        h.update(p.encode())
    return h.hexdigest()[:16]


def recipe_dirs() -> list[Path]:
    """Where named recipes are looked up: $OGA_NPU_RECIPES, ./recipes, then the recipes that
    come with the package (oga_npu/recipes/, package data in a wheel and in a checkout alike)."""
    dirs = []
    if os.environ.get("OGA_NPU_RECIPES"):
        dirs.append(Path(os.environ["OGA_NPU_RECIPES"]))
    dirs.append(Path.cwd() / "recipes")
    dirs.append(Path(__file__).resolve().parent / "recipes")
    seen, out = set(), []
    for d in dirs:
        r = d.resolve()
        if r not in seen:
            seen.add(r)
            out.append(d)
    return out


def list_recipes() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for d in recipe_dirs():
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                found.setdefault(f.stem, f)
    return found


def default_recipe_for(source_kind: str, target: str) -> str:
    """A .gguf source keeps its own quantization where the runtime can run it (cpu, webgpu);
    everything else (and hybrid/npu, whose AMD flow needs Quark's uint4 AWQ) gets `default`."""
    if source_kind == "gguf" and target in GGUF_NATIVE_TARGETS and GGUF_NATIVE_RECIPE in list_recipes():
        return GGUF_NATIVE_RECIPE
    return DEFAULT_RECIPE


def find_recipe(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix == ".toml" or os.sep in name_or_path or "/" in name_or_path:
        if not p.is_file():
            raise RecipeError(
                f"recipe file not found: {p}", "pass a .toml path that exists, or a name from `oga-npu recipes`"
            )
        return p
    known = list_recipes()
    if name_or_path in known:
        return known[name_or_path]
    names = ", ".join(sorted(known)) or "(none found)"
    close = difflib.get_close_matches(name_or_path, list(known), n=1)
    raise RecipeError(
        f"unknown recipe '{name_or_path}' (known: {names})",
        f"use --recipe {close[0]} (the closest known name), or a path to a .toml file"
        if close
        else "pass one of the known names or a path to a .toml file",
    )


def load_recipe(name_or_path: str = DEFAULT_RECIPE) -> Recipe:
    path = find_recipe(name_or_path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise RecipeError(f"{path}: not valid TOML: {e}", "fix the TOML syntax") from e
    data.setdefault("name", path.stem)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            msg = f"{path}: unknown key '{loc}'"
        else:
            msg = f"{path}: bad value for '{loc}': {err['msg']}"
        raise RecipeError(msg, "see oga_npu/recipes/default.toml for the keys a recipe takes") from e
    return recipe.model_copy(update={"path": str(path)})


def fitting_group_size(requested: int, widths: list[int]) -> int | None:
    """Largest Quark group size <= requested that divides every layer input width."""
    for g in QUARK_GROUP_SIZES:
        if g <= requested and all(w % g == 0 for w in widths):
            return g
    return None
