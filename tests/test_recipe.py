import pytest
from conftest import run_cli

from oga_npu.errors import RecipeError
from oga_npu.recipe import fitting_group_size, list_recipes, load_recipe


def test_shipped_recipes_load():
    names = list_recipes()
    assert {"default", "cpu-fast"} <= set(names)
    d = load_recipe("default")
    assert (d.quantize.algorithm, d.quantize.scheme) == ("awq", "uint4_wo_128")
    fast = load_recipe("cpu-fast")
    assert fast.quantize.algorithm == "none"
    # any recipe works with any target: a target without a table gets defaults
    assert fast.build_for("webgpu").precision == "int4"


def test_unknown_key_names_file_and_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[quantize]\nalgorithm = "awq"\ngroupsize = 64\n')
    with pytest.raises(RecipeError) as e:
        load_recipe(str(bad))
    assert str(bad) in e.value.message and "quantize.groupsize" in e.value.message


def test_bad_value_is_refused(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[quantize]\ngroup_size = 100\n")
    with pytest.raises(RecipeError, match="quantize.group_size"):
        load_recipe(str(bad))


def test_unknown_recipe_key_via_cli_is_one_line(tmp_path, tiny_hf):
    bad = tmp_path / "bad.toml"
    bad.write_text('[calibration]\nsamples = 4\nfoo = "bar"\n')
    out = tmp_path / "out"
    r = run_cli("prepare", str(tiny_hf), "--recipe", str(bad), "--output", str(out))
    assert r.returncode == 1
    err_lines = [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")]
    assert len(err_lines) == 1 and "calibration.foo" in err_lines[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()


def test_unknown_recipe_name_lists_known():
    with pytest.raises(RecipeError, match="cpu-fast"):
        load_recipe("no-such-recipe")


@pytest.mark.parametrize(
    "requested,widths,expected",
    [
        (128, [576, 1536], 64),  # SmolLM2-135M
        (128, [2048, 8192], 128),  # Llama-3.2-1B
        (128, [96, 192], 32),
        (64, [4096, 11008], 64),
        (32, [100], None),
    ],
)
def test_fitting_group_size(requested, widths, expected):
    assert fitting_group_size(requested, widths) == expected


def test_auto_threads_follow_the_cpus_this_process_may_use(monkeypatch):
    """'auto' threads are the physical cores, but no more than the allowed CPUs (taskset, cpuset)."""
    import psutil

    from oga_npu.prepare import build
    from oga_npu.recipe import BuildConfig

    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 16)
    cfg = BuildConfig(session_options={"intra_op_num_threads": "auto"})
    monkeypatch.setattr(build.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert build.resolved_session_options(cfg) == {"intra_op_num_threads": 2}
    monkeypatch.setattr(build.os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    assert build.resolved_session_options(cfg) == {"intra_op_num_threads": 16}


def test_exclude_layers_and_data_type_are_per_target_unless_the_recipe_says():
    for name in ("default", "cpu-fast"):
        q = load_recipe(name).quantize
        assert q.exclude_layers is None and q.data_type == "auto"
        for target in ("cpu", "webgpu", "dml"):  # today's behaviour: lm_head in full precision, fp32 load
            assert q.exclude_for(target) == ["lm_head"]
            assert q.data_type_for(target, "bfloat16") == "float32"
        for target in ("hybrid", "npu"):  # AMD: --exclude_layers [], --data_type per checkpoint
            assert q.exclude_for(target) == []
            assert q.data_type_for(target, "bfloat16") == "bfloat16"
            assert q.data_type_for(target, "float16") == q.data_type_for(target, "float32") == "float16"
            assert q.data_type_for(target, None) == "float16"


def test_recipe_exclude_layers_and_data_type_win(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('[quantize]\nexclude_layers = ["lm_head"]\ndata_type = "float32"\n')
    q = load_recipe(str(p)).quantize
    assert q.exclude_for("hybrid") == ["lm_head"] and q.data_type_for("npu", "bfloat16") == "float32"
    p.write_text("[quantize]\nexclude_layers = []\n")
    assert load_recipe(str(p)).quantize.exclude_for("cpu") == []
    p.write_text('[quantize]\ndata_type = "int8"\n')
    with pytest.raises(RecipeError, match="quantize.data_type"):
        load_recipe(str(p))
