"""What differs per decoder architecture, in one table (read by `prepare` and its stages).

One `Architecture` per HF `architectures[0]` that the pinned onnxruntime-genai 0.18 model
builder's `create_model` dispatches on: the builder's class for it, the AMD Quark 0.13
template (Quark's own, or one registered here with the architecture's AWQ scaling layers),
config fixes applied to the copy the builder reads, runtime needs, the real checkpoint
whose settings the tiny test model copies, and per recipe x target whether the
combination is verified here, expected to work, or refused (with the reason).

    lookup(config)            -> Architecture (ArchitectureError when the builder lacks it)
    check(config, recipe, target) -> Support (raises ArchitectureError when refused)
    runtime_needs(config)     -> RuntimeNeeds of one model (sliding window, soft-capping, ...)
    config_fixes(config)      -> fixes the builder's process applies to its config (never to files)
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from .errors import ArchitectureError

RECIPES = ("default", "cpu-fast", "builder-int4")  # the shipped recipes, by what they do
RECIPE_KIND = {"default": "awq", "cpu-fast": "rtn", "builder-int4": "builder"}
TARGETS = ("cpu", "webgpu", "dml", "hybrid", "npu")

VERIFIED, EXPECTED, UNTESTED, REFUSED = "verified", "expected", "untested", "refused"
VERIFIED_HOW = "tests/test_architectures.py: a tiny random model of the real settings is prepared and runs on CPU"
# gguf-native (the file's own blocks) is a builder-kind recipe with its own tests.
GGUF_NATIVE_VERIFIED = {
    "llama": "tests/test_gguf_native.py: the bundled SmolLM2 Q4_1 GGUF is prepared and scored on CPU",
    "mistral": "tests/test_gguf_native.py: a tiny Q4_K_M Mistral GGUF matches transformers fp32 on CPU",
}
NOT_HERE = "expected (not verifiable here: needs Windows and a Ryzen AI NPU)"


@dataclass(frozen=True)
class Support:
    """One cell of the table: recipe x target."""

    status: str  # verified | expected | untested | refused
    how: str = ""  # how it was verified, or why it is expected / untested / refused

    @property
    def allowed(self) -> bool:
        return self.status != REFUSED

    def label(self) -> str:
        return self.status if not self.how else f"{self.status}: {self.how}"


@dataclass(frozen=True)
class RuntimeNeeds:
    """What one model needs from the runtime (from its config)."""

    sliding_window: int | None = None  # tokens, on some or all layers
    sliding_layers: str = ""  # "all" | "alternating" | "5 of 6" ...
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    tied_embeddings: bool = False


@dataclass(frozen=True)
class Architecture:
    name: str  # short key, e.g. "gemma3_text"
    hf_architectures: tuple[str, ...]  # config.json architectures[0] values
    model_type: str  # transformers model_type
    builder: str | None  # onnxruntime-genai builder class (None: the builder lacks it)
    quark_template: str | None = None  # Quark LLMTemplate model_type used (None: Quark recipes refused)
    quark_template_source: str = "quark"  # quark (built in) | oga_npu (registered by oga_npu.quark_templates)
    quark_awq: str | None = None  # AWQ scaling-layer layout (AWQ_LAYOUTS key) registered for Quark
    quark_refusal: str = ""  # why Quark recipes are refused (when quark_template is None)
    builder_refusal: str = ""  # why every recipe is refused (remote code, not a text decoder, ...)
    config_fixes: tuple[str, ...] = ()  # CONFIG_FIXES/BUILDER_FIXES names, applied in the builder process
    runtime: tuple[str, ...] = ()  # runtime features of the family (sliding window, soft-capping, ...)
    reference: str = ""  # real checkpoint whose settings the tiny test model copies
    settings: dict = field(default_factory=dict)  # those settings (sizes scaled down by tiny_config)
    tiny: dict = field(default_factory=dict)  # tiny sizes (heads, head_dim kept real)
    verified: tuple[str, ...] = ()  # recipes a test in this repo prepares and runs on CPU
    amd_hybrid: bool = False  # a family on AMD's Ryzen AI hybrid/NPU supported list
    gguf: str = ""  # GGUF general.architecture transformers 5 reads as this row ("" none)
    gguf_verified: bool = False  # tests/test_gguf_sources.py prepares a tiny GGUF of it and runs it
    note: str = ""
    overrides: dict = field(default_factory=dict)  # (recipe, target) -> Support, beats the rules below

    @property
    def sliding_window(self) -> bool:
        return "sliding window" in self.runtime

    @property
    def logit_softcapping(self) -> bool:
        return "logit soft-capping" in self.runtime

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.settings.get("tie_word_embeddings"))

    def support(self, recipe: str, target: str) -> Support:
        """The cell for a shipped recipe name (or a recipe kind: awq, rtn, gptq, builder)."""
        kind = RECIPE_KIND.get(recipe, recipe)
        if (recipe, target) in self.overrides:
            return self.overrides[(recipe, target)]
        if self.builder is None or self.builder_refusal:
            return Support(
                REFUSED,
                self.builder_refusal or f"the onnxruntime-genai 0.18 model builder has no {self.hf_architectures[0]}",
            )
        if kind != "builder" and self.quark_template is None:
            return Support(REFUSED, self.quark_refusal or f"AMD Quark 0.13 has no template for '{self.model_type}'")
        if target in ("hybrid", "npu"):
            if kind == "builder":
                return Support(
                    REFUSED,
                    "AMD's Ryzen AI hybrid/NPU flow starts from a Quark-quantized model "
                    "(model_generate takes its AWQ uint4 export); builder-int4 skips Quark",
                )
            if self.amd_hybrid:
                return Support(EXPECTED, NOT_HERE)
            return Support(UNTESTED, "AMD lists no model of this family for Ryzen AI; not verifiable here")
        if target == "cpu":
            if recipe in self.verified or kind in self.verified:
                return Support(VERIFIED, VERIFIED_HOW)
            return Support(UNTESTED, "the builder knows it; no test here prepares it")
        if self.support(recipe, "cpu").status != VERIFIED:
            return Support(UNTESTED, "not verified on cpu either")
        if target == "dml":
            return Support(EXPECTED, "the cpu-verified builder path with -e dml; loading needs Windows (DirectML)")
        return Support(EXPECTED, "the cpu-verified builder path with -e webgpu; loading needs a WebGPU adapter")


def quark_spec(config: dict) -> tuple[str, str | None, list | None]:
    """(Quark template model_type, 'oga_npu' when this project registers it else 'quark',
    AWQ scaling layers this project supplies or None for Quark's own)."""
    arch = lookup(config)
    if arch.quark_template is None:
        raise ArchitectureError(
            f"{arch.hf_architectures[0]}: {arch.quark_refusal or 'AMD Quark 0.13 has no template for it'}",
            "use --recipe builder-int4",
        )
    return arch.quark_template, arch.quark_template_source, AWQ_LAYOUTS.get(arch.quark_awq or "")


def _cells(arch: Architecture) -> dict:
    return {r: {t: arch.support(r, t) for t in TARGETS} for r in RECIPES}


# ---------------------------------------------------------------- Quark AWQ layouts registered here

# AWQ's scaling groups (Quark's AWQConfig.scaling_layers): each scales the inputs of `layers`
# and folds the inverse into `prev_op`; exact only where prev_op is a norm Quark knows (plain or
# Gemma's 1+w RMSNorm) or a linear followed by nothing nonlinear.
_LLAMA_AWQ = [
    {
        "prev_op": "input_layernorm",
        "layers": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
        "inp": "self_attn.q_proj",
        "module2inspect": "self_attn",
    },
    {"prev_op": "self_attn.v_proj", "layers": ["self_attn.o_proj"], "inp": "self_attn.o_proj"},
    {
        "prev_op": "post_attention_layernorm",
        "layers": ["mlp.gate_proj", "mlp.up_proj"],
        "inp": "mlp.gate_proj",
        "module2inspect": "mlp",
    },
    {"prev_op": "mlp.up_proj", "layers": ["mlp.down_proj"], "inp": "mlp.down_proj"},
]
AWQ_LAYOUTS = {
    # q/k/v after the input norm, o after v, gate/up after the post-attention norm, down after up.
    "llama": _LLAMA_AWQ,
    # Nemotron: its LayerNorm1P (1+w, with bias) is not a norm Quark folds into, and relu2 sits
    # between up_proj and down_proj, so only v_proj -> o_proj is an exact rescaling.
    "v_to_o": [_LLAMA_AWQ[1]],
}
QUARK_KV_LAYERS = ["*k_proj", "*v_proj"]


# ---------------------------------------------------------------- config fixes (the builder's copy only)
# Applied in the builder's process to the config object transformers loads for it
# (oga_npu.prepare.build's `--fix`): a config.json rewrite would not survive, since
# transformers 5 re-normalizes it on load. The user's folder is never written.


def _fix_gemma3_rope(cfg) -> bool:
    """transformers 5 keeps Gemma 3's rope per layer type ({"full_attention": {...},
    "sliding_attention": {...}}); the 0.18 builder reads one dict (rope_type, rope_theta) and
    the local layers' base from rope_local_base_freq (transformers 4's layout)."""
    rp = getattr(cfg, "rope_parameters", None)
    if not (isinstance(rp, dict) and "full_attention" in rp):
        return False
    full = dict(rp["full_attention"])
    local = rp.get("sliding_attention") or {}
    object.__setattr__(cfg, "rope_parameters", full)
    object.__setattr__(cfg, "rope_theta", full.get("rope_theta", 1_000_000.0))
    object.__setattr__(cfg, "rope_local_base_freq", local.get("rope_theta", 10_000.0))
    return True


def _fix_smollm3_nope():
    """The 0.18 builder turns SmolLM3's no-RoPE layers (no_rope_layers[i] == 0) into layers
    with a separate rotary op whose position_ids input it has removed (KeyError). Those
    layers need no rotary op at all: switch rope off for them. Returns the undo."""
    import importlib

    import onnxruntime_genai.models.builder  # noqa: F401 - puts its top-level `builders` package on sys.path

    SmolLM3Model = importlib.import_module("builders.smollm").SmolLM3Model  # the class the builder uses

    original = SmolLM3Model.make_attention

    def make_attention(self, layer_id, attention, root_input, **kwargs):
        rope = self.attention_attrs["rope"]
        if not self.no_rope_layers[layer_id]:
            self.attention_attrs["rope"] = False
        try:
            return original(self, layer_id, attention, root_input, **kwargs)
        finally:
            self.attention_attrs["rope"] = rope

    SmolLM3Model.make_attention = make_attention
    return lambda: setattr(SmolLM3Model, "make_attention", original)


def _fix_uniform_sliding_window(cfg) -> bool:
    """One sliding_window for every layer and no layer_types (Mistral v0.1/v0.2, Phi-3 mini's
    2047): the 0.18 builder marks no layer local, so its graph attends to everything while
    genai_config.json still asks for a windowed KV cache, which fails once a sequence passes
    window + 16 ("total_sequence_length must equal past_sequence_length + ..."). Naming every
    layer sliding makes the graph apply the window, as transformers does, and bounds the cache."""
    window = getattr(cfg, "sliding_window", None)
    if not window or getattr(cfg, "use_sliding_window", True) is False or getattr(cfg, "layer_types", None):
        return False
    object.__setattr__(cfg, "layer_types", ["sliding_attention"] * int(cfg.num_hidden_layers))
    return True


# Fixes to the config object transformers loads for the builder: fn(config) -> changed.
CONFIG_FIXES = {
    "gemma3_rope_per_layer_type": _fix_gemma3_rope,
    "uniform_sliding_window": _fix_uniform_sliding_window,
}
# Fixes to the builder's own code for one architecture: fn() -> undo.
BUILDER_FIXES = {
    "smollm3_nope_layers": _fix_smollm3_nope,
}


def config_fixes(config: dict) -> list[str]:
    """Names of the CONFIG_FIXES the builder needs for this model (empty for most)."""
    try:
        return list(lookup(config).config_fixes)
    except ArchitectureError:
        return []


def apply_config_fixes(cfg, names: list[str]) -> list[str]:
    """Apply the named config fixes to a transformers config object; returns those that changed it."""
    return [n for n in names if n in CONFIG_FIXES and CONFIG_FIXES[n](cfg)]


# ---------------------------------------------------------------- the table

_GQA = dict(num_attention_heads=2, num_key_value_heads=1)
_MHA = dict(num_attention_heads=2, num_key_value_heads=2)

ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        "llama",
        ("LlamaForCausalLM",),
        "llama",
        "LlamaModel",
        "llama",
        gguf="llama",
        reference="meta-llama/Llama-3.2-1B-Instruct",
        amd_hybrid=True,
        settings=dict(
            head_dim=64,
            rope_theta=500000.0,
            tie_word_embeddings=True,
            max_position_embeddings=131072,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192,
            },
            rms_norm_eps=1e-5,
        ),
        tiny=dict(hidden_size=128, intermediate_size=256, **_GQA),
        runtime=("rope llama3 scaling",),
        verified=("default", "cpu-fast", "builder-int4"),
    ),
    Architecture(
        "mistral",
        ("MistralForCausalLM",),
        "mistral",
        "MistralModel",
        "mistral",
        config_fixes=("uniform_sliding_window",),
        gguf="mistral",
        reference="mistralai/Mistral-7B-Instruct-v0.3",
        amd_hybrid=True,
        settings=dict(
            head_dim=128,
            rope_theta=1000000.0,
            sliding_window=None,
            tie_word_embeddings=False,
            max_position_embeddings=32768,
            rms_norm_eps=1e-5,
        ),
        tiny=dict(hidden_size=128, intermediate_size=256, **_GQA),
        runtime=("sliding window (v0.1/v0.2: every layer)",),
        verified=("default", "cpu-fast", "builder-int4"),
    ),
    Architecture(
        "qwen2",
        ("Qwen2ForCausalLM",),
        "qwen2",
        "QwenModel",
        "qwen2",
        gguf="qwen2",
        reference="Qwen/Qwen2.5-0.5B-Instruct",
        amd_hybrid=True,
        settings=dict(
            rope_theta=1000000.0,
            tie_word_embeddings=True,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            use_sliding_window=False,
            sliding_window=None,
        ),
        tiny=dict(hidden_size=128, intermediate_size=256, **_GQA),
        runtime=("q/k/v bias",),
        verified=("default", "cpu-fast", "builder-int4"),
    ),
    Architecture(
        "qwen3",
        ("Qwen3ForCausalLM",),
        "qwen3",
        "Qwen3Model",
        "qwen3",
        quark_awq="llama",
        gguf="qwen3",
        gguf_verified=True,
        reference="Qwen/Qwen3-0.6B",
        amd_hybrid=True,
        settings=dict(
            head_dim=128,
            rope_theta=1000000.0,
            tie_word_embeddings=True,
            max_position_embeddings=40960,
            rms_norm_eps=1e-6,
        ),
        tiny=dict(hidden_size=128, intermediate_size=256, **_GQA),
        runtime=("q/k norm",),
        verified=("default", "cpu-fast", "builder-int4"),
        note="Quark 0.13 has the qwen3 template but no AWQ layout; oga_npu passes the llama/qwen2 one",
    ),
    Architecture(
        "phi3",
        ("Phi3ForCausalLM",),
        "phi3",
        "Phi3MiniModel",
        "phi3",
        config_fixes=("uniform_sliding_window",),
        gguf="phi3",
        reference="microsoft/Phi-3-mini-4k-instruct",
        amd_hybrid=True,
        settings=dict(
            rope_theta=10000.0,
            tie_word_embeddings=False,
            max_position_embeddings=4096,
            original_max_position_embeddings=4096,
            sliding_window=2047,
            rms_norm_eps=1e-5,
        ),
        tiny=dict(hidden_size=192, intermediate_size=256, **_MHA),
        runtime=("fused qkv and gate_up",),
        verified=("default", "cpu-fast", "builder-int4"),
        note="short rope: max_position_embeddings == original_max_position_embeddings",
    ),
    Architecture(
        "phi3_longrope",
        ("Phi3ForCausalLM",),
        "phi3",
        "Phi3MiniLongRoPEModel",
        "phi3",
        config_fixes=("uniform_sliding_window",),
        reference="microsoft/Phi-4-mini-instruct",
        amd_hybrid=True,
        settings=dict(
            rope_theta=10000.0,
            tie_word_embeddings=True,
            max_position_embeddings=131072,
            original_max_position_embeddings=4096,
            partial_rotary_factor=0.75,
            rms_norm_eps=1e-5,
            rope_scaling={
                "type": "longrope",
                "long_factor": [1.0 + i / 16 for i in range(48)],
                "short_factor": [1.0] * 48,
            },
        ),
        tiny=dict(hidden_size=256, intermediate_size=256, **_GQA),  # phi3 takes head_dim = hidden / heads
        runtime=("long rope", "partial rotary"),
        verified=("default", "cpu-fast", "builder-int4"),
        note="long rope: max_position_embeddings != original_max_position_embeddings",
    ),
    Architecture(
        "phi",
        ("PhiForCausalLM",),
        "phi",
        "PhiModel",
        None,
        quark_refusal="the 0.18 builder's Quark loader does not read Phi-2's tensor names (self_attn.dense, "
        "mlp.fc1/fc2, final_layernorm): Quark quantizes it, then the build fails",
        reference="microsoft/phi-2",
        settings=dict(
            rope_theta=10000.0,
            partial_rotary_factor=0.4,
            hidden_act="gelu_new",
            tie_word_embeddings=False,
            max_position_embeddings=2048,
            layer_norm_eps=1e-5,
        ),
        tiny=dict(hidden_size=160, intermediate_size=256, **_MHA),
        runtime=("partial rotary", "parallel block"),
        verified=("builder-int4",),
    ),
    Architecture(
        "gemma",
        ("GemmaForCausalLM",),
        "gemma",
        "GemmaModel",
        "gemma",
        quark_template_source="oga_npu",
        quark_awq="llama",
        reference="google/gemma-2b-it",
        settings=dict(
            head_dim=256,
            rope_theta=10000.0,
            hidden_act="gelu_pytorch_tanh",
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
            max_position_embeddings=8192,
            rms_norm_eps=1e-6,
        ),
        tiny=dict(hidden_size=128, intermediate_size=256, **_GQA),
        runtime=("embedding scale",),
        verified=("default", "cpu-fast", "builder-int4"),
    ),
    Architecture(
        "gemma2",
        ("Gemma2ForCausalLM",),
        "gemma2",
        "Gemma2Model",
        "gemma2",
        gguf="gemma2",
        gguf_verified=True,
        reference="google/gemma-2-2b-it",
        settings=dict(
            head_dim=256,
            rope_theta=10000.0,
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=256,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
            sliding_window=4096,
            tie_word_embeddings=True,
            max_position_embeddings=8192,
            rms_norm_eps=1e-6,
        ),
        tiny=dict(hidden_size=128, intermediate_size=256, **_GQA),
        runtime=("sliding window", "logit soft-capping"),
        verified=("default", "cpu-fast", "builder-int4"),
    ),
    Architecture(
        "gemma3_text",
        ("Gemma3ForCausalLM",),
        "gemma3_text",
        "Gemma3Model",
        "gemma3_text",
        gguf="gemma3",
        gguf_verified=True,
        reference="google/gemma-3-1b-it",
        amd_hybrid=True,
        config_fixes=("gemma3_rope_per_layer_type",),
        settings=dict(
            head_dim=256,
            hidden_activation="gelu_pytorch_tanh",
            query_pre_attn_scalar=256,
            sliding_window=512,
            tie_word_embeddings=True,
            max_position_embeddings=32768,
            rms_norm_eps=1e-6,
            layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        ),
        tiny=dict(hidden_size=128, intermediate_size=256, **_GQA),
        runtime=("sliding window", "q/k norm", "local/global rope"),
        verified=("default", "cpu-fast", "builder-int4"),
    ),
    Architecture(
        "granite",
        ("GraniteForCausalLM",),
        "granite",
        "GraniteModel",
        "granite",
        quark_template_source="oga_npu",
        quark_awq="llama",
        reference="ibm-granite/granite-3.1-2b-instruct",
        settings=dict(
            rope_theta=5000000.0,
            tie_word_embeddings=True,
            max_position_embeddings=131072,
            embedding_multiplier=12.0,
            attention_multiplier=0.015625,
            residual_multiplier=0.22,
            logits_scaling=8.0,
            rms_norm_eps=1e-5,
        ),
        tiny=dict(hidden_size=128, intermediate_size=256, **_GQA),
        runtime=("embedding/residual/logit multipliers",),
        verified=("default", "cpu-fast", "builder-int4"),
    ),
    Architecture(
        "smollm3",
        ("SmolLM3ForCausalLM",),
        "smollm3",
        "SmolLM3Model",
        "smollm3",
        quark_template_source="oga_npu",
        quark_awq="llama",
        reference="HuggingFaceTB/SmolLM3-3B",
        settings=dict(
            rope_theta=5000000.0,
            tie_word_embeddings=True,
            max_position_embeddings=65536,
            no_rope_layers=[1, 0],
            rms_norm_eps=1e-6,
        ),
        tiny=dict(hidden_size=256, intermediate_size=256, **_GQA),
        runtime=("no rope on every 4th layer",),
        config_fixes=("smollm3_nope_layers",),
        verified=("default", "cpu-fast", "builder-int4"),
    ),
    Architecture(
        "ernie4_5",
        ("Ernie4_5ForCausalLM",),
        "ernie4_5",
        "ErnieModel",
        "ernie4_5",
        quark_template_source="oga_npu",
        quark_awq="llama",
        reference="baidu/ERNIE-4.5-0.3B-PT",
        settings=dict(
            head_dim=128,
            rope_theta=500000.0,
            tie_word_embeddings=True,
            max_position_embeddings=131072,
            use_bias=False,
            rms_norm_eps=1e-5,
        ),
        tiny=dict(hidden_size=128, intermediate_size=256, **_GQA),
        runtime=("interleaved rope",),
        verified=("default", "cpu-fast", "builder-int4"),
    ),
    Architecture(
        "nemotron",
        ("NemotronForCausalLM",),
        "nemotron",
        "NemotronModel",
        "nemotron",
        quark_template_source="oga_npu",
        gguf="nemotron",
        quark_awq="v_to_o",
        reference="nvidia/Nemotron-Mini-4B-Instruct",
        settings=dict(
            head_dim=128,
            rope_theta=10000.0,
            partial_rotary_factor=0.5,
            hidden_act="relu2",
            tie_word_embeddings=False,
            max_position_embeddings=4096,
            norm_eps=1e-5,
        ),
        tiny=dict(hidden_size=128, intermediate_size=256, **_GQA),
        runtime=("layernorm1p", "partial rotary"),
        verified=("default", "cpu-fast", "builder-int4"),
    ),
    Architecture(
        "olmo",
        ("OlmoForCausalLM",),
        "olmo",
        "OLMoModel",
        "olmo",
        reference="allenai/OLMo-1B-hf",
        settings=dict(rope_theta=10000.0, tie_word_embeddings=True, max_position_embeddings=2048, clip_qkv=None),
        tiny=dict(hidden_size=256, intermediate_size=256, **_MHA),
        runtime=("non-parametric layer norm",),
        verified=("default", "cpu-fast", "builder-int4"),
    ),
    Architecture(
        "hunyuan_v1_dense",
        ("HunYuanDenseV1ForCausalLM",),
        "hunyuan_v1_dense",
        "HunyuanDenseV1Model",
        "hunyuan_v1_dense",
        reference="tencent/Hunyuan-1.8B-Instruct",
        settings=dict(
            head_dim=128,
            tie_word_embeddings=True,
            max_position_embeddings=262144,
            use_qk_norm=True,
            rms_norm_eps=1e-5,
            rope_parameters={
                "rope_type": "dynamic",
                "rope_theta": 10000.0,
                "alpha": 1000.0,
                "factor": 1.0,
                "beta_fast": 32,
                "beta_slow": 1,
                "mscale": 1.0,
                "mscale_all_dim": 1.0,
            },
        ),
        tiny=dict(hidden_size=128, intermediate_size=256, **_GQA),
        runtime=("q/k norm", "dynamic NTK-alpha rope"),
        verified=("default", "cpu-fast", "builder-int4"),
    ),
    # -------- the builder knows these; this repo does not test them (yet)
    Architecture(
        "lfm2",
        ("Lfm2ForCausalLM",),
        "lfm2",
        "LFM2Model",
        "lfm2",
        reference="LiquidAI/LFM2-350M",
        runtime=("short convolutions",),
    ),
    Architecture(
        "granitemoehybrid",
        ("GraniteMoeHybridForCausalLM",),
        "granitemoehybrid",
        "GraniteMoEHybridModel",
        "granitemoehybrid",
        reference="ibm-granite/granite-4.0-h-micro",
        runtime=("mamba2 layers", "MoE"),
    ),
    Architecture(
        "gpt_oss",
        ("GptOssForCausalLM",),
        "gpt_oss",
        "GPTOSSModel",
        "gpt_oss",
        reference="openai/gpt-oss-20b",
        runtime=("MoE", "sliding window", "attention sinks"),
    ),
    Architecture(
        "lfm2_moe",
        ("Lfm2MoeForCausalLM",),
        "lfm2_moe",
        "LFM2MoEModel",
        None,
        reference="LiquidAI/LFM2-8B-A1B",
        runtime=("MoE",),
    ),
    Architecture(
        "gemma3_vl",
        ("Gemma3ForConditionalGeneration",),
        "gemma3",
        "Gemma3Model",
        "gemma3",
        reference="google/gemma-3-4b-it",
        amd_hybrid=True,
        config_fixes=("gemma3_rope_per_layer_type",),
        runtime=("sliding window", "q/k norm"),
        note="text decoder of the vision-language checkpoint",
    ),
    Architecture(
        "gemma4",
        ("Gemma4ForConditionalGeneration",),
        "gemma4",
        "Gemma4MoEModel",
        "gemma4",
        reference="google/gemma-4-26b-a4b-it",
        runtime=("MoE", "sliding window"),
        note="text decoder only",
    ),
    Architecture(
        "gemma4_unified",
        ("Gemma4UnifiedForConditionalGeneration",),
        "gemma4_unified",
        "Gemma4Model",
        "gemma4_unified",
        reference="google/gemma-4-e2b-it",
        runtime=("sliding window",),
        note="text decoder only",
    ),
    Architecture(
        "mistral3",
        ("Mistral3ForConditionalGeneration",),
        "mistral3",
        "Mistral3TextModel",
        None,
        reference="mistralai/Mistral-Small-3.1-24B-Instruct-2503",
        note="text decoder only",
    ),
    Architecture(
        "qwen2_5_vl",
        ("Qwen2_5_VLForConditionalGeneration",),
        "qwen2_5_vl",
        "Qwen25VLTextModel",
        None,
        reference="Qwen/Qwen2.5-VL-3B-Instruct",
        note="text decoder only",
    ),
    Architecture(
        "qwen3_vl",
        ("Qwen3VLForConditionalGeneration",),
        "qwen3_vl",
        "Qwen3VLTextModel",
        None,
        reference="Qwen/Qwen3-VL-2B-Instruct",
        note="text decoder only",
    ),
    Architecture(
        "qwen3_5",
        ("Qwen3_5ForConditionalGeneration",),
        "qwen3_5",
        "Qwen35Model",
        "qwen3_5",
        reference="Qwen/Qwen3.5-2B",
        runtime=("linear attention layers",),
    ),
    Architecture(
        "qwen3_5_moe",
        ("Qwen3_5MoeForConditionalGeneration",),
        "qwen3_5_moe",
        "Qwen35MoEModel",
        "qwen3_5_moe",
        reference="Qwen/Qwen3.5-35B-A3B",
        runtime=("MoE", "linear attention layers"),
    ),
    Architecture(
        "lfm2_vl",
        ("Lfm2VlForConditionalGeneration",),
        "lfm2_vl",
        "LFM2Model",
        None,
        reference="LiquidAI/LFM2-VL-450M",
        note="text decoder only",
    ),
    Architecture(
        "lfm2_audio",
        ("Lfm2AudioForConditionalGeneration",),
        "lfm2_audio",
        "LFM2AudioModel",
        None,
        reference="LiquidAI/LFM2-Audio-1.5B",
        note="text decoder only",
    ),
    # -------- the builder knows these, but oga-npu cannot prepare them
    Architecture(
        "phimoe",
        ("PhiMoEForCausalLM",),
        "phimoe",
        "Phi3MoELongRoPEModel",
        None,
        builder_refusal="the 0.18 builder makes PhiMoE for CUDA only (it switches -e to cuda); "
        "oga-npu has no CUDA target",
    ),
    Architecture(
        "internlm2",
        ("InternLM2ForCausalLM",),
        "internlm2",
        "InternLM2Model",
        None,
        builder_refusal="transformers 5 has no InternLM2 code: the checkpoint needs trust_remote_code, "
        "which oga-npu does not run (its remote code predates transformers 5)",
    ),
    Architecture(
        "chatglm",
        ("ChatGLMModel", "ChatGLMForConditionalGeneration"),
        "chatglm",
        "ChatGLMModel",
        None,
        builder_refusal="ChatGLM checkpoints need trust_remote_code, which oga-npu does not run",
    ),
    Architecture(
        "phi3small",
        ("Phi3SmallForCausalLM",),
        "phi3small",
        "Phi3SmallModel",
        None,
        builder_refusal="Phi-3-small checkpoints need trust_remote_code, which oga-npu does not run",
    ),
    Architecture(
        "phi3v",
        ("Phi3VForCausalLM",),
        "phi3_v",
        "Phi3VModel",
        None,
        builder_refusal="Phi-3-vision checkpoints need trust_remote_code, which oga-npu does not run",
    ),
    Architecture(
        "phi4mm",
        ("Phi4MMForCausalLM",),
        "phi4mm",
        "Phi4MMModel",
        None,
        builder_refusal="Phi-4-multimodal checkpoints need trust_remote_code, which oga-npu does not run",
    ),
    Architecture(
        "videochat_flash",
        ("VideoChatFlashQwenForCausalLM",),
        "videochat_flash_qwen",
        "VideoChatFlashQwenModel",
        None,
        builder_refusal="VideoChat-Flash checkpoints need trust_remote_code, which oga-npu does not run",
    ),
    Architecture(
        "whisper",
        ("WhisperForConditionalGeneration",),
        "whisper",
        "WhisperModel",
        None,
        builder_refusal="Whisper is speech-to-text, not a text decoder: `run`/`chat` cannot drive it",
    ),
)

# GGUF sources (the existing path: transformers dequantizes the file into an HF folder). transformers
# 5.24 reads these llama.cpp architectures (its GGUF_SUPPORTED_ARCHITECTURES); the rows above that
# it loads as name theirs in `gguf`, these others load as a model the 0.18 builder lacks or as one
# no row verifies. Any other name (gemma, granite, olmo, phi2, smollm3, ernie4_5, ...) it refuses:
# "GGUF model with architecture gemma is not supported yet." Mistral files from llama.cpp say
# "llama" (transformers reads them as Mistral only when general.name is exactly "mistral"), so they
# become Llama rows, the same graph without Mistral v0.1's window. Long-rope Phi-3.5/Phi-4-mini
# files load without their rope factors (transformers reads no rope.scaling keys for phi3).
GGUF_OTHERS = {
    "qwen2moe": "Qwen2MoeForCausalLM",
    "qwen3moe": "Qwen3MoeForCausalLM",
    "gpt-oss": "GptOssForCausalLM",
    "lfm2": "Lfm2ForCausalLM",
    "falcon": "FalconForCausalLM",
    "bloom": "BloomForCausalLM",
    "stablelm": "StableLmForCausalLM",
    "gpt2": "GPT2LMHeadModel",
    "starcoder2": "Starcoder2ForCausalLM",
    "mamba": "MambaForCausalLM",
    "gemma4": "Gemma4ForCausalLM",
    "deci": "DeciLMForCausalLM",
    "minimax-m2": "MiniMaxM2ForCausalLM",
    "t5": "T5ForConditionalGeneration",
    "t5encoder": "T5EncoderModel",
}


def gguf_config(gguf_arch: str | None, file_name: str = "the GGUF file") -> dict | None:
    """The config.json stand-in (architectures, model_type) of a GGUF's general.architecture,
    for the table's check before any work; raises ArchitectureError when transformers cannot
    read that architecture from GGUF at all. None when the header could not be read."""
    if not gguf_arch:
        return None
    for a in ARCHITECTURES:
        if a.gguf == gguf_arch:
            return {"architectures": [a.hf_architectures[0]], "model_type": a.model_type}
    if gguf_arch in GGUF_OTHERS:
        return {"architectures": [GGUF_OTHERS[gguf_arch]], "model_type": gguf_arch}
    readable = sorted(a.gguf for a in ARCHITECTURES if a.gguf and a.support("builder-int4", "cpu").allowed)
    row = next((a for a in ARCHITECTURES if gguf_arch.replace("-", "_") in (a.name, a.model_type)), None)
    if row is not None and row.support("builder-int4", "cpu").allowed:
        fix = "prepare it from its Hugging Face folder or hub id" + (f" (e.g. {row.reference})" * bool(row.reference))
    else:
        fix = "use a model of a supported architecture (`oga-npu architectures` lists them)"
    raise ArchitectureError(
        f"{file_name}: transformers cannot read GGUF files of architecture '{gguf_arch}', so it cannot be "
        f"dequantized for the builder (GGUF architectures that work: {', '.join(readable)})",
        fix + "; nothing was written",
    )


_BY_HF: dict[str, list[Architecture]] = {}
for _a in ARCHITECTURES:
    for _h in _a.hf_architectures:
        _BY_HF.setdefault(_h, []).append(_a)

# Well-known architectures the builder lacks, with what to use instead (for the refusal).
NO_BUILDER_HINTS = {
    "Olmo2ForCausalLM": "OLMo 2 is not in the 0.18 builder (OLMo 1, OlmoForCausalLM, is)",
    "GPTJForCausalLM": "GPT-J is not in the 0.18 builder",
}


def known_names() -> list[str]:
    return sorted(h for a in ARCHITECTURES for h in a.hf_architectures if not a.builder_refusal)


def hf_architecture(config: dict) -> str:
    archs = config.get("architectures") or []
    return archs[0] if archs else ""


def lookup(config: dict) -> Architecture:
    """The table row for a HF config.json (as a dict). Raises ArchitectureError when no row fits."""
    name = hf_architecture(config)
    rows = _BY_HF.get(name)
    if not rows:
        what = name or f"model_type '{config.get('model_type', '?')}' without `architectures`"
        hint = NO_BUILDER_HINTS.get(name, "")
        raise ArchitectureError(
            f"{what} cannot be prepared: the onnxruntime-genai 0.18 model builder has no such architecture"
            + (f" ({hint})" if hint else ""),
            "use a model of a supported architecture (`oga-npu architectures` lists them)",
        )
    if len(rows) == 1:
        return rows[0]
    # Phi3: the builder picks short or long rope by comparing the two context lengths.
    long_rope = config.get("max_position_embeddings") != config.get("original_max_position_embeddings")
    return next(r for r in rows if (r.builder or "").endswith("LongRoPEModel") == long_rope)


def recipe_kind(recipe) -> str:
    """awq | rtn | gptq | builder for a loaded recipe (oga_npu.recipe.Recipe)."""
    q = recipe.quantize
    if q.engine in ("builder", "gguf"):  # gguf-native: the builder's graph, the file's weights
        return "builder"
    return {"awq": "awq", "gptq": "gptq", "none": "rtn"}[q.algorithm]


def check(config: dict, recipe, target: str) -> tuple[Architecture, Support]:
    """Refuse (ArchitectureError) a combination that cannot work, naming what would."""
    arch = lookup(config)
    kind = recipe_kind(recipe) if not isinstance(recipe, str) else RECIPE_KIND.get(recipe, recipe)
    name = recipe.name if not isinstance(recipe, str) else recipe
    cell = arch.support(name if name in RECIPES else kind, target)
    if kind == "gptq" and arch.quark_template is not None and cell.allowed:
        cell = Support(UNTESTED, "Quark GPTQ is not tested here")
    if getattr(getattr(recipe, "quantize", None), "engine", None) == "gguf" and cell.allowed and target == "cpu":
        cell = (
            Support(VERIFIED, GGUF_NATIVE_VERIFIED[arch.name])
            if arch.name in GGUF_NATIVE_VERIFIED
            else Support(UNTESTED, "gguf-native: no test here prepares a GGUF of this architecture with it")
        )
    if cell.allowed:
        return arch, cell
    order = [target] + [x for x in TARGETS if x != target]
    rank = {VERIFIED: 0, EXPECTED: 1, UNTESTED: 2}
    options = sorted(
        (
            (rank[arch.support(r, t).status], order.index(t), r, t)
            for t in TARGETS
            for r in RECIPES
            if arch.support(r, t).allowed
        )
    )
    alternatives = [f"--recipe {r} --target {t}" + (" (not verified here)" if k == 2 else "") for k, _, r, t in options]
    fix = (
        f"use {alternatives[0]}" + (f" (or {alternatives[1]})" if len(alternatives) > 1 else "")
        if alternatives
        else "use a model of another architecture (`oga-npu architectures` lists them)"
    )
    raise ArchitectureError(
        f"{arch.hf_architectures[0]} with recipe {name} for --target {target} is refused: {cell.how}",
        fix + "; nothing was written",
    )


def runtime_needs(config: dict) -> RuntimeNeeds:
    cfg = config.get("text_config", config)
    window = cfg.get("sliding_window")
    if cfg.get("use_sliding_window") is False:
        window = None
    types = cfg.get("layer_types") or []
    sliding = [t for t in types if t == "sliding_attention"]
    if window and types:
        layers = "all" if len(sliding) == len(types) else f"{len(sliding)} of {len(types)}" if sliding else ""
        window = window if sliding else None
    else:
        layers = "all" if window else ""
    tie = cfg.get("tie_word_embeddings", config.get("tie_word_embeddings", False))
    return RuntimeNeeds(
        window or None, layers, cfg.get("attn_logit_softcapping"), cfg.get("final_logit_softcapping"), bool(tie)
    )


def tiny_config(arch: Architecture | str, vocab_size: int, **overrides) -> dict:
    """A 2-layer config.json dict of `arch` in its reference checkpoint's settings, narrow widths."""
    if isinstance(arch, str):
        arch = by_name(arch)
    cfg = {
        "architectures": [arch.hf_architectures[0]],
        "model_type": arch.model_type,
        "num_hidden_layers": 2,
        "vocab_size": vocab_size,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
    }
    cfg.update(copy.deepcopy(arch.settings))
    cfg.update(arch.tiny)
    cfg.update(overrides)
    return cfg


def by_name(name: str) -> Architecture:
    for a in ARCHITECTURES:
        if a.name == name:
            return a
    raise KeyError(name)


def table() -> list[dict]:
    """The whole table as plain data (for `oga-npu architectures --json`)."""
    rows = []
    for a in ARCHITECTURES:
        rows.append(
            {
                "name": a.name,
                "hf_architectures": list(a.hf_architectures),
                "model_type": a.model_type,
                "builder": a.builder,
                "quark_template": a.quark_template,
                "quark_template_source": a.quark_template_source if a.quark_template else None,
                "config_fixes": list(a.config_fixes),
                "runtime": list(a.runtime),
                "reference": a.reference,
                "gguf": a.gguf or None,
                "gguf_verified": a.gguf_verified,
                "note": a.note,
                "support": {
                    r: {t: {"status": c.status, "how": c.how} for t, c in cells.items()}
                    for r, cells in _cells(a).items()
                },
            }
        )
    return rows


_MARK = {VERIFIED: "V", EXPECTED: "e", UNTESTED: "?", REFUSED: "-"}


def render(rows: list[dict] | None = None, reasons: bool = False) -> str:
    """The table as text: one line per architecture, one letter per recipe x target cell."""
    rows = rows if rows is not None else table()
    head = f"{'architecture':<17} {'HF architectures[0]':<38} {'Quark template':<24}"
    groups = "  ".join(f"{r:<14}" for r in RECIPES)
    lines = [f"{'':<81}{groups}", head + "  " + "  ".join(f"{' '.join(t[0] for t in TARGETS):<14}" for _ in RECIPES)]
    notes, by_reason = [], {}
    for row in rows:
        quark = (
            "-"
            if not row["quark_template"]
            else row["quark_template"] + (" (oga-npu)" if row["quark_template_source"] == "oga_npu" else "")
        )
        cells = "  ".join(f"{' '.join(_MARK[row['support'][r][t]['status']] for t in TARGETS):<14}" for r in RECIPES)
        lines.append(f"{row['name']:<17} {row['hf_architectures'][0]:<38} {quark:<24}  {cells}")
        if reasons:
            for r in RECIPES:
                for t in TARGETS:
                    c = row["support"][r][t]
                    if c["status"] in (REFUSED, UNTESTED):
                        by_reason.setdefault((c["status"], c["how"]), {}).setdefault(row["name"], []).append(f"{r}/{t}")
    for (status, how), archs in by_reason.items():
        notes.append(f"  {status}: {how}")
        notes.append(
            "      "
            + "; ".join(f"{a} ({', '.join(cells) if len(cells) < 15 else 'all'})" for a, cells in archs.items())
        )
    lines.append("")
    lines.append(
        "targets: c=cpu w=webgpu d=dml h=hybrid n=npu.  V = verified here ("
        + VERIFIED_HOW.split(":")[0]
        + "), e = expected (not verifiable on this machine), ? = untested, - = refused by prepare"
    )
    if notes:
        lines.append("why:")
        lines += notes
    else:
        lines.append("`oga-npu architectures --reasons` says why a cell is refused or untested; --json has every cell")
    return "\n".join(lines)
