"""oga-npu: prepare Hugging Face models for ONNX Runtime GenAI and chat with them.

from oga_npu import ModelStore, load, stream_generate, GenerationOptions
lm = load(ModelStore().resolve("smollm2-135m-instruct-q4_1-cpu"))  # a name in the store, or a folder
for ev in stream_generate(lm, "What is the capital of France?"):
    print(ev.text, end="", flush=True)

The public API is re-exported here. Where things live: `prepare/` (a source into a model
folder: request -> plan -> run -> stages), `model.py` (load: check -> make_files -> open),
`generate.py` (the one decode loop), `server/` (the OpenAI and Ollama APIs), `cli/` (the
commands), `gguf/` and `webgpu/` (their wings), `architectures/` (one row per architecture).
"""

from ._version import __version__
from .errors import OgaNpuError
from .generate import GenerationEvent, GenerationOptions, generate, stream_generate
from .model import LoadedModel, check_folder, load
from .prepare import PrepareRequest, PrepareResult, prepare
from .recipe import Recipe, load_recipe
from .store import ModelEntry, ModelStore

__all__ = [
    "GenerationEvent",
    "GenerationOptions",
    "LoadedModel",
    "ModelEntry",
    "ModelStore",
    "OgaNpuError",
    "PrepareRequest",
    "PrepareResult",
    "Recipe",
    "check_folder",
    "generate",
    "load",
    "load_recipe",
    "prepare",
    "stream_generate",
    "__version__",
]
