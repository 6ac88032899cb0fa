"""The prepare stages, in order. Each module is one stage (see its docstring for its
inputs, outputs and tool); `oga_npu.pipeline` runs them, resumes and publishes."""

from . import build, hybrid, plugins, quantize, validate

# The source stage (hub download / GGUF dequantize) runs first and writes only to caches.
# Each stage's applies(ctx) says whether it runs for the target and recipe.
STAGES = (quantize, build, plugins, hybrid, validate)
