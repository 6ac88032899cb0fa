"""`onnx_utils vaiml` as AMD documents it and as its source behaves, the fake that stands in
for it (tests/fake_tools/onnx_utils), and oga-npu's plugins stage (oga_npu/prepare/plugins.py).
Each fact is stated with its source beside the assertion.

Sources: OOP = amd/ryzen-ai-documentation docs/oga_op_prepare.rst (identical on branches 1.6,
1.7, 1.7.1, 1.8 but for the env name); SRC = the ryzenai_onnx_utils vaiml source, the public
copy in the code index (id 66450196621; the index does not name its repository).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from rai_env import _wrapper

from oga_npu.errors import ToolFailed
from oga_npu.prepare import plugins
from oga_npu.prepare.context import StageContext
from oga_npu.recipe import HybridConfig, Recipe
from oga_npu.ryzenai import plugins_root

FAKE = Path(__file__).resolve().parents[1] / "fake_tools"


def ctx(tmp_path: Path, **h) -> StageContext:
    recipe = Recipe(name="t", hybrid=HybridConfig(**h))
    tool = tmp_path / "bin" / "onnx_utils"
    if not tool.exists():  # the fake run by this Python (tests/rai_env.py's wrapper)
        tool.parent.mkdir(exist_ok=True)
        _wrapper(tool, FAKE / "onnx_utils", "1.8", "0.14.0")
    return StageContext(
        "hybrid",
        recipe,
        tmp_path,
        "",
        "",
        {},
        rai_version="1.8",
        dd_plugins=tmp_path / "dd_plugins",
        tools={"onnx_utils": str(tool)},
    )


def dml_folder(tmp_path: Path) -> Path:
    """A DML folder from the fake builder (GroupQueryAttention, q/k/v/o/gate_proj MatMulNBits)."""
    src, out = tmp_path / "hf", tmp_path / "dml"
    src.mkdir()
    (src / "config.json").write_text(json.dumps({"hidden_size": 64, "num_attention_heads": 4}))
    p = [sys.executable, str(FAKE / "fake_env_python"), "-m", "onnxruntime_genai.models.builder"]
    subprocess.run([*p, "-i", str(src), "-o", str(out), "-e", "dml"], check=True, capture_output=True)
    return out


def vaiml(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(FAKE / "onnx_utils"), "vaiml", *args], capture_output=True, text=True, cwd=cwd
    )


def test_context_length_from_the_recipe():
    # SRC: --context_length choices [2048, 3072, 4096], default 2048 ("Max context length (M)")
    assert plugins.CONTEXT_LENGTHS == (2048, 3072, 4096)
    assert [plugins.context_length(n) for n in (512, 2048, 2049, 3072, 4000, 4096, 16384)] == [
        2048,
        2048,
        3072,
        3072,
        4096,
        4096,
        4096,
    ]


def test_argv_and_dry_run(tmp_path):
    c = ctx(tmp_path, max_seq_length=4096)
    # OOP: `onnx_utils vaiml --model-dir <dml model folder> --plugin_name <plugin name> --compile --ops_type bfp16`
    a = plugins.argv(c, Path("/dml"))[1:]
    assert a[:8] == ["vaiml", "--model-dir", "/dml", "--plugin_name", "oga_npu_ops", "--compile", "--ops_type", "bfp16"]
    assert a[8:] == ["--context_length", "4096"]
    text = "\n".join(plugins.describe(c, Path("/dml"), tmp_path / "p"))
    assert "--context_length 4096" in text and "default 2048" in text
    long = "\n".join(plugins.describe(ctx(tmp_path, max_seq_length=16384), Path("/dml"), tmp_path / "p"))
    assert "the largest it accepts" in long


def test_fake_m_lists_follow_context_length(tmp_path):
    dml = dml_folder(tmp_path)
    # SRC: mha_M_list = [m for m in [128, ..., 4096] if m <= context_length]; mlp = [1] + that
    for m, top in ((None, 2048), ("4096", 4096)):
        extra = ["--context_length", m] if m else []
        r = vaiml(tmp_path, "--model-dir", str(dml), "--plugin_name", "p", "--ops_type", "bfp16", *extra)
        assert r.returncode == 0 and "OPS JSON created, Returning" in r.stdout  # SRC: no --compile
        spec = json.loads((tmp_path / "p" / "p.json").read_text())
        bmm1 = next(o for o in spec["op_types"] if o["op_type"] == "bmm1")
        assert max(bmm1["M"]) == top and spec["enable_v2"]  # SRC: bfp16 -> "enable_v2": true
    # SRC: --context_length takes only 2048, 3072, 4096 (argparse choices: exit 2)
    r = vaiml(tmp_path, "--model-dir", str(dml), "--plugin_name", "p", "--context_length", "8192")
    assert r.returncode == 2 and "invalid choice" in r.stderr


def test_fake_files_in_the_working_directory(tmp_path):
    dml = dml_folder(tmp_path)
    work = tmp_path / "w"
    work.mkdir()
    r = vaiml(work, "--model-dir", str(dml), "--plugin_name", "n", "--compile", "--ops_type", "bfp16")
    assert r.returncode == 0, r.stderr
    # SRC: <cwd>/<plugin>/ csvs and <plugin>.json, <cwd>/vitisai_config.json, <cwd>/ops_cache_dir/
    for f in ("model_node_summary.csv", "model_key_attributes.csv", "model_matmulnbits_kn_summary.csv", "n.json"):
        assert (work / "n" / f).is_file(), f
    assert (work / "vitisai_config.json").is_file() and (work / "ops_cache_dir" / "llm-dummy.onnx").is_file()
    assert "✅  OPS JSON written to:" in r.stdout
    # OOP: "This generates a compiled operator package at: transaction-plugin\<plugin name>.zip"
    assert plugins.check_zip(work / "transaction-plugin" / "n.zip")


def test_fake_failure_modes(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    # SRC: print(f"Error: 'model.onnx' not found in {model_dir}") (stdout), sys.exit(1)
    r = vaiml(tmp_path, "--model-dir", str(empty), "--plugin_name", "n", "--compile")
    assert r.returncode == 1 and r.stdout.strip() == f"Error: 'model.onnx' not found in {empty}" and not r.stderr
    # SRC: genai_config.json missing is only "Warning: genai_config.json not found"; without head_size
    # the key attributes are incomplete: "Warning: Cannot generate OPS JSON ..." and a null JSON, exit 0
    dml = dml_folder(tmp_path)
    (dml / "genai_config.json").unlink()
    r = vaiml(tmp_path, "--model-dir", str(dml), "--plugin_name", "n", "--compile")
    assert r.returncode == 0 and "Warning: genai_config.json not found" in r.stdout
    assert "Warning: Cannot generate OPS JSON" in r.stdout
    assert (tmp_path / "n" / "n.json").read_text() == "null"


def run_stage(tmp_path: Path, model_dir: Path) -> dict:
    out = tmp_path / "stage"
    out.mkdir(exist_ok=True)
    return plugins.run_stage(ctx(tmp_path), model_dir, out, tmp_path / "logs" / "plugins.log")


def test_stage_treats_the_real_failures_as_failures(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ToolFailed) as e:  # exit 1, the reason on stdout: it reaches the message
        run_stage(tmp_path, empty)
    assert e.value.code == 1 and "Error: 'model.onnx' not found" in str(e.value)
    dml = dml_folder(tmp_path)
    (dml / "genai_config.json").unlink()
    with pytest.raises(ToolFailed) as e:  # exit 0 with a null operator list
        run_stage(tmp_path, dml)
    assert e.value.code == 0 and "wrote no operator list" in str(e.value)
    assert any("Cannot generate OPS JSON" in line for line in e.value.tail)


def test_stage_records_dd_plugins_root(tmp_path):
    detail = run_stage(tmp_path, dml_folder(tmp_path))
    # OOP: "Create a folder named dd_plugins ... place <plugin name>.zip inside it"; DD_PLUGINS_ROOT
    # points to "folder containing <plugin name>.zip"
    assert (tmp_path / "dd_plugins" / "oga_npu_ops.zip").is_file()
    assert detail["dd_plugins_root"] == str(tmp_path / "dd_plugins") and detail["context_length"] == 4096
    manifest = {"stages": {"plugins": {"detail": detail}}}
    assert plugins_root(manifest) == tmp_path / "dd_plugins"
