"""The row and cell types of the architecture table (`Architecture`, `Support`), the shipped
recipes and targets they are read for, and the AWQ layouts this project registers with Quark."""

from __future__ import annotations

from dataclasses import dataclass, field

RECIPES = ("default", "cpu-fast", "builder-int4")  # the shipped recipes, by what they do
RECIPE_KIND = {"default": "awq", "cpu-fast": "rtn", "builder-int4": "builder"}
TARGETS = ("cpu", "webgpu", "dml", "hybrid", "npu")

VERIFIED, EXPECTED, UNTESTED, REFUSED = "verified", "expected", "untested", "refused"
VERIFIED_HOW = "tests/test_architectures.py: a tiny random model of the real settings is prepared and runs on CPU"
# The GGUF recipes (the file's own blocks; builder-kind graphs) have their own tests, each its own
# architectures: gguf-native through onnxruntime's kernels, gguf-ggml through llama.cpp's.
GGUF_RECIPES = ("gguf-native", "gguf-ggml")
GGUF_VERIFIED = {
    "gguf-native": {
        "llama": "tests/test_gguf_native.py: the bundled SmolLM2 Q4_1 GGUF is prepared and scored on CPU",
        "mistral": "tests/test_gguf_native.py: a tiny Q4_K_M Mistral GGUF matches transformers fp32 on CPU",
    },
    "gguf-ggml": {
        "llama": "tests/test_gguf_ggml.py: a tiny Q4_K_M llama GGUF matches gguf-native's logits and the "
        "bundled SmolLM2 Q4_1 GGUF answers on CPU",
    },
}
GGUF_NATIVE_VERIFIED = GGUF_VERIFIED["gguf-native"]
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
