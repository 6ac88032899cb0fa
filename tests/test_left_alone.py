"""Issue 31's "noticed and left alone", one cheap test each: the resume command repeats the
recipe as the user gave it, the build stage's estimate speaks of a first kernel-library
build, a failed kernel build says where its folder is, a GGUF recipe's verification is its
own; and the newcomer's paths (a mistyped recipe, a --source that is not there, Ctrl+C
under --force) end in one line and its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from oga_npu.errors import StageInterrupted


def _interrupted_prepare(monkeypatch, source: Path, out: Path, **kw) -> StageInterrupted:
    """prepare, Ctrl+C in its build stage (before the builder starts)."""
    from oga_npu.prepare import PrepareRequest, build, prepare

    def cut(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "run_stage", cut)
    with pytest.raises(StageInterrupted) as e:
        prepare(PrepareRequest(str(source), output=out, **kw))
    return e.value


@pytest.mark.parametrize("given", ["builder-int4", "path"])
def test_resume_command_repeats_the_recipe_as_given(given, tiny_hf, tmp_path, monkeypatch):
    from oga_npu.recipe import list_recipes
    from oga_npu.workdir import folder_state, resume_command

    recipe = given
    if given == "path":  # a copy of a shipped recipe, by a relative path
        (tmp_path / "mine.toml").write_text(list_recipes()["builder-int4"].read_text())
        recipe = "./mine.toml"
    out = tmp_path / "o"
    _interrupted_prepare(monkeypatch, tiny_hf, out, recipe=recipe)
    assert json.loads((out / "prepare.json").read_text())["recipe"] == recipe
    assert f"--recipe {recipe} --target cpu" in resume_command(folder_state(out))


def test_a_folder_recording_a_shipped_recipes_path_resumes_by_its_name(tmp_path):
    """prepare.json written before: the TOML's absolute path inside the package (here or in
    another install); a user's own TOML stays a path."""
    from oga_npu.workdir import folder_state, resume_command

    out = tmp_path / "o"
    out.mkdir()
    for recorded, shown in [
        ("/venv/lib/python3.12/site-packages/oga_npu/recipes/gguf-ggml.toml", "gguf-ggml"),
        ("/home/me/oga_npu/recipes/mine.toml", "/home/me/oga_npu/recipes/mine.toml"),
        ("/home/me/gguf-ggml.toml", "/home/me/gguf-ggml.toml"),
    ]:
        (out / "prepare.json").write_text(json.dumps({"source": "m.gguf", "recipe": recorded, "target": "cpu"}))
        assert resume_command(folder_state(out)).endswith(f"--recipe {shown} --target cpu")


def test_ctrl_c_under_force_says_to_resume_without_it(tiny_hf, tmp_path, monkeypatch):
    e = _interrupted_prepare(monkeypatch, tiny_hf, tmp_path / "o", recipe="builder-int4", force=True)
    assert e.message.startswith("interrupted during build;")
    assert e.fix.startswith("re-run the same command without --force to resume at build")
    e = _interrupted_prepare(monkeypatch, tiny_hf, tmp_path / "o", recipe="builder-int4")
    assert e.fix == "re-run the same command to resume"
