"""The prepare stages, in order. Each module is one stage (see its docstring for its
inputs, outputs and tool); `oga_npu.pipeline` runs them, resumes and publishes."""

from . import build, quantize, validate

# The source stage (hub download / GGUF dequantize) runs first and writes only to caches.
STAGES = (quantize, build, validate)
