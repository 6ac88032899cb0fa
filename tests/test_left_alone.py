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


def _interrupted_prepare(monkeypatch, source: Path, out: Path, raised=KeyboardInterrupt, **kw) -> StageInterrupted:
    """prepare, Ctrl+C in its build stage (before the builder starts, or in it: `raised`)."""
    from oga_npu.prepare import PrepareRequest, build, prepare

    def cut(*a, **k):
        raise raised

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
    builder = StageInterrupted("onnxruntime-genai model builder interrupted", "re-run the same command to resume")
    e = _interrupted_prepare(monkeypatch, tiny_hf, tmp_path / "o", builder, recipe="builder-int4", force=True)
    assert e.message.startswith("interrupted during build (onnxruntime-genai model builder); ")
    assert e.fix.startswith("re-run the same command without --force to resume at build")
    e = _interrupted_prepare(monkeypatch, tiny_hf, tmp_path / "o", recipe="builder-int4")
    assert e.message.startswith("interrupted during build; ") and e.fix == "re-run the same command to resume"


def test_build_estimate_adds_the_kernel_librarys_first_build(tmp_path, monkeypatch):
    """gguf-ggml before its library is built: the build stage's line says the compile (minutes on
    2 cores), not only the builder's seconds; once built, or for gguf-native, it does not."""
    import os
    from types import SimpleNamespace

    from oga_npu import kernels
    from oga_npu.prepare import build
    from oga_npu.prepare.plan import estimate_line
    from oga_npu.recipe import load_recipe

    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(build, "physical_cores", lambda: 2)
    monkeypatch.setattr(kernels, "built", lambda: None)
    ggml, native = (SimpleNamespace(recipe=load_recipe(r)) for r in ("gguf-ggml", "gguf-native"))
    monkeypatch.setattr(build, "estimate", lambda ctx, d: 34.0)
    assert (
        estimate_line(build, ggml, tmp_path) == "estimate about 34 s + about 2 min compiling the kernel library, once"
    )
    assert estimate_line(build, native, tmp_path) == "estimate about 34 s"
    monkeypatch.setattr(build, "estimate", lambda ctx, d: None)  # a size it cannot tell: the compile alone
    assert estimate_line(build, ggml, tmp_path) == "estimate about 2 min compiling the kernel library, once"
    monkeypatch.setattr(kernels, "built", lambda: tmp_path / "liboga_npu_ggml.so")
    assert estimate_line(build, ggml, tmp_path) == ""


def test_a_failed_kernel_build_says_its_folder_is_kept_and_force_starts_clean(tmp_path, monkeypatch):
    """cmake failing (here: stood in for) keeps build-<key> for the next try, and says so in the
    fix line: where, how big, and that --force starts clean (which it does)."""
    import importlib

    from oga_npu import kernels
    from oga_npu.errors import KernelBuildError, ToolFailed

    kbuild = importlib.import_module("oga_npu.kernels.build")  # (the package's `build` is the function)

    monkeypatch.setenv("OGA_NPU_KERNELS", str(tmp_path / "k"))
    monkeypatch.setattr(kbuild, "_tools", lambda: {"cmake": "cmake", "cxx": "c++"})
    monkeypatch.setattr(kbuild, "ort_include", lambda: tmp_path)
    src = tmp_path / "llama.cpp"
    (src / "ggml").mkdir(parents=True)
    (src / "ggml" / "CMakeLists.txt").write_text("")
    seen = []

    def cmake(plan, source, tools, log):
        seen.append(sorted(p.name for p in plan.build_dir.iterdir()))
        (plan.build_dir / "ggml").mkdir(exist_ok=True)
        (plan.build_dir / "ggml" / "objects.o").write_bytes(b"\0" * 3_000_000)
        raise ToolFailed("cmake", ["cmake"], 2, ["error: no"], log)

    monkeypatch.setattr(kbuild, "_cmake", cmake)
    with pytest.raises(KernelBuildError) as e:
        kernels.ensure(source=src)
    folder = kbuild.Plan.current(src).build_dir
    assert (folder / "ggml" / "objects.o").is_file()
    assert e.value.message.startswith("building the ggml kernels failed: cmake")
    assert e.value.fix == (
        f"see {folder / 'build.log'}; its folder (3 MB) is kept for the next try to reuse, "
        f"`oga-npu kernels build --force` (or deleting {folder}) starts clean"
    )
    with pytest.raises(KernelBuildError):
        kernels.ensure(source=src)  # the next try reuses it
    with pytest.raises(KernelBuildError):
        kernels.ensure(source=src, force=True)
    assert seen == [[], ["ggml"], []]  # --force: nothing of the earlier tries


def test_a_gguf_recipes_cell_is_its_own_tests_not_gguf_natives(tmp_path):
    from oga_npu.architectures import UNTESTED, VERIFIED, Support, by_name, check, render, table, tiny_config
    from oga_npu.recipe import list_recipes, load_recipe

    native, ggml = load_recipe("gguf-native"), load_recipe("gguf-ggml")
    (tmp_path / "my-gguf.toml").write_text(list_recipes()["gguf-native"].read_text().replace("gguf-native", "my-gguf"))
    mine = load_recipe(str(tmp_path / "my-gguf.toml"))
    llama, mistral = (tiny_config(by_name(a), 256) for a in ("llama", "mistral"))
    cells = {(r.name, c["model_type"]): check(c, r, "cpu")[1] for r in (native, ggml, mine) for c in (llama, mistral)}
    assert (
        cells["gguf-native", "mistral"].status == VERIFIED and "test_gguf_native" in cells["gguf-native", "mistral"].how
    )
    assert cells["gguf-ggml", "llama"].status == VERIFIED and "test_gguf_ggml" in cells["gguf-ggml", "llama"].how
    assert cells["gguf-ggml", "mistral"] == Support(
        UNTESTED,
        "gguf-ggml: no test here prepares a GGUF of this architecture with it",
    )
    assert cells["my-gguf", "llama"].status == UNTESTED and cells["my-gguf", "llama"].how.startswith("my-gguf:")
    rows = {r["name"]: r["gguf_recipes"] for r in table()}
    assert rows["mistral"]["gguf-ggml"]["status"] == UNTESTED and rows["llama"]["gguf-ggml"]["status"] == VERIFIED
    assert "gguf-native verified here for llama, mistral; gguf-ggml verified here for llama;" in render()


def test_a_mistyped_recipe_names_the_closest_one(capsys, tmp_path):
    from conftest import call

    src = tmp_path / "model"  # a HF folder, as far as the request's checks look
    src.mkdir()
    (src / "config.json").write_text("{}")
    code, out, err = call(capsys, "prepare", str(src), "--recipe", "gguf-gml")
    assert code == 1 and out == ""
    assert err.splitlines() == [
        "Error: unknown recipe 'gguf-gml' (known: builder-int4, cpu-fast, default, gguf-ggml, gguf-native)",
        "Fix: use --recipe gguf-ggml (the closest known name), or a path to a .toml file",
    ]
    code, _, err = call(capsys, "prepare", str(src), "--recipe", "zzz")
    assert code == 1 and err.endswith("Fix: pass one of the known names or a path to a .toml file\n")
