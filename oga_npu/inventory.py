"""`oga-npu models`: prepared model folders with target, recipe, size and state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .workdir import folder_state, models_dir, published_files


@dataclass
class ModelRow:
    path: Path
    state: str
    target: str | None
    recipe: str | None
    size_mb: float
    detail: str = ""
    quality: dict | None = None  # the manifest's `quality` (written by `oga-npu eval`)

    def quality_line(self) -> str:
        q = self.quality
        if not q or "perplexity" not in q:
            return "-"
        refs = ", ".join(f"{k} {v:.2f}" for k, v in (q.get("references") or {}).items())
        return f"{q['perplexity']:.2f}" + (f" ({refs})" if refs else "")


def list_models(root: Path | None = None) -> list[ModelRow]:
    root = Path(root) if root else models_dir()
    if not root.is_dir():
        return []
    rows = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        st = folder_state(d)
        if st.state in ("foreign", "empty", "missing"):
            if not (d / "genai_config.json").is_file():
                continue
        info = st.manifest or st.request or {}
        recipe = info.get("recipe")
        if recipe and ("/" in recipe or "\\" in recipe):
            recipe = Path(recipe).stem
        size = sum(p.stat().st_size for p in published_files(d)) / 1e6
        state = {"foreign": "external", "damaged": "incomplete"}.get(st.state, st.state)
        quality = (st.manifest or {}).get("quality")
        rows.append(ModelRow(d, state, info.get("target"), recipe, size, st.detail, quality))
    return rows
