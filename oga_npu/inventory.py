"""`oga-npu models`: the model store's folders with what each one is (see store.py)."""

from __future__ import annotations

from pathlib import Path

from .store import ModelEntry, ModelStore

ModelRow = ModelEntry  # the name this listing had before the store


def list_models(root: Path | None = None) -> list[ModelEntry]:
    """The models in `root` (default: the store), with parameters, bits, context, size and state."""
    return ModelStore(root).entries()
