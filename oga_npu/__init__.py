"""oga-npu: prepare Hugging Face models for ONNX Runtime GenAI and chat with them.

    from oga_npu import ModelStore, load, stream_generate, GenerationOptions
    lm = load(ModelStore().resolve("smollm2-135m-instruct-q4_1-cpu"))  # a name in the store, or a folder
    for ev in stream_generate(lm, "What is the capital of France?"):
        print(ev.text, end="", flush=True)
"""

__version__ = "0.1.0"

from .errors import OgaNpuError  # noqa: E402
from .generate import GenerationEvent, GenerationOptions, generate, stream_generate  # noqa: E402
from .model import LoadedModel, check_folder, load  # noqa: E402
from .pipeline import PrepareRequest, PrepareResult, prepare  # noqa: E402
from .recipe import Recipe, load_recipe  # noqa: E402
from .store import ModelEntry, ModelStore  # noqa: E402

__all__ = [
    "GenerationEvent", "GenerationOptions", "LoadedModel", "ModelEntry", "ModelStore", "OgaNpuError", "PrepareRequest",
    "PrepareResult", "Recipe", "check_folder", "generate", "load", "load_recipe", "prepare", "stream_generate", "__version__",
]
