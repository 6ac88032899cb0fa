"""Run by scripts/test_oga_versions.sh only (the name keeps it out of the main suite): each
recipe's folder, prepared once by the main venv (scripts/make_version_folders.py), in the
onnxruntime-genai of this venv: it loads and answers, or the refusal names the version it needs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from oga_npu.capabilities import installed_runtime, older

FOLDERS = Path(os.environ["OGA_NPU_VERSION_FOLDERS"])
LISTING = json.loads((FOLDERS / "folders.json").read_text())


def test_every_recipe_is_there():
    assert {v["recipe"] for v in LISTING.values()} == {"gguf-native", "builder-int4", "cpu-fast", "default"}


@pytest.mark.parametrize("name", sorted(LISTING))
def test_folder_loads_and_answers_or_names_the_version_it_needs(name):
    from oga_npu.errors import VersionError
    from oga_npu.generate import GenerationOptions, generate
    from oga_npu.model import load

    need = LISTING[name]["requires"]
    here = installed_runtime().version
    if older(here, need):
        with pytest.raises(VersionError) as e:
            load(FOLDERS / name)
        assert f"needs onnxruntime-genai {need} or newer" in e.value.message and here in e.value.message
        assert f"--oga-version {here}" in e.value.fix
        return
    lm = load(FOLDERS / name)
    text, ev = generate(lm, "What is the capital of France?", GenerationOptions(max_tokens=6, temperature=0))
    assert ev.generated_tokens >= 1 and ev.finish_reason in ("stop", "length"), (text, ev)
    again, _ = generate(lm, "What is the capital of France?", GenerationOptions(max_tokens=6, temperature=0))
    assert again == text
