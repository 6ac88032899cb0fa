"""AMD's published hybrid and NPU model folders, classed and loaded (or refused with the real
reason) as AMD's tools and onnxruntime-genai do. Each fact carries its source.

Sources (checked in the mirrors under /work/.mirror):
- OGA-IF: microsoft/onnxruntime-genai src/ryzenai/interface.cpp at v0.12.0 and v0.14.0 (EP search
  order; "No RyzenAI devices detected"), and at main (0.16-dev: "Failed to register RyzenAI
  execution provider library: ").
- OGA-MODEL: microsoft/onnxruntime-genai v0.9.2 src/models/model.cpp: a relative custom_ops_library
  is tried against the model folder, the EP library directory, the working directory, then
  handed to the OS library search.
- LEMONADE-530: lemonade-sdk/lemonade src/lemonade/tools/oga/load.py at v8.2.2 ("Fix dll issue in
  RAI 1.6 (#530)"): <env>/Lib/site-packages/onnxruntime_genai put first on PATH, after checking
  libutf8_validity.dll and abseil_dll.dll there.
- RAI-DOCS: amd/ryzen-ai-documentation, branch per release: hybrid_oga.rst (1.7, 1.8: "Models from
  earlier releases are not compatible with this version"; 1.7 genai_config's RyzenAI options),
  oga_model_prepare.rst (1.6: custom_ops_library, hybrid_opt_token_backend "gpu"),
  llm_linux.rst (1.6.1/1.7: the NPU model's custom_ops_library edited to
  deployment/lib/libonnx_custom_ops.so, LD_LIBRARY_PATH=deployment/lib; 1.7.1/1.8:
  RYZENAI_EP_PATH=$PWD/deployment/lib/libonnxruntime_providers_ryzenai.so; 1.8: "Linux does
  not support Hybrid flow").
- HF-TREE: huggingface.co/amd/Llama-3.1-8B-onnx-ryzenai-hybrid/tree/main (file list; config.json
  is "{}"), cited in /tmp/r3/REPORT.md section 2c (not re-checked here).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from oga_npu import capabilities, ryzenai, ryzenai_folders
from oga_npu import model as model_mod
from oga_npu.capabilities import Runtime
from oga_npu.errors import ProviderError
from oga_npu.runtime_errors import translate

AMD = "onnxruntime-genai-directml-ryzenai"
TOKENIZER = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _write(folder: Path, files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        p = folder / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body if isinstance(body, str) else json.dumps(body, indent=4))
    return folder


def genai_config(filename: str, session_options: dict) -> dict:
    return {
        "model": {
            "type": "llama",
            "context_length": 4096,
            "decoder": {"filename": filename, "session_options": {"log_id": "onnxruntime-genai", **session_options}},
        },
        "search": {"max_length": 4096},
    }


def amd_17_hybrid(root: Path, backend: str | None = None) -> Path:
    """Laid out like amd/<name>-onnx-ryzenai-1.7-hybrid (HF-TREE file list; RAI-DOCS hybrid_oga.rst
    1.7 RyzenAI options). `backend` adds hybrid_opt_token_backend to the RyzenAI options."""
    opts = {"external_data_file": "model_jit.pb.bin", "hybrid_opt_free_after_prefill": "1"}
    opts["hybrid_opt_max_seq_length"] = "4096"
    if backend:
        opts["hybrid_opt_token_backend"] = backend
    files = {n: "x" for n in ("model_jit.onnx", "model_jit.onnx.data", "model_jit.bin", "model_jit.pb.bin")}
    files |= {n: "{}" for n in TOKENIZER} | {"config.json": "{}", "rai_config.json": {"max_prompt_length": 3072}}
    files["genai_config.json"] = genai_config("model_jit.onnx", {"provider_options": [{"RyzenAI": opts}]})
    return _write(root / ("npu-17" if backend == "npu" else "hybrid-17"), files)


def amd_16_npu(root: Path, lib: str = "onnx_custom_ops.dll") -> Path:
    """Laid out like amd/<name>-onnx-ryzenai-npu of Ryzen AI 1.6 (RAI-DOCS llm_linux.rst 1.6.1/1.7:
    custom_ops_library, config_entries and .cache/MatMulNBits_2_0_meta.json; the entries follow
    oga_model_prepare.rst 1.6, with the NPU token backend)."""
    so = {
        "custom_ops_library": lib,
        "custom_allocator": "ryzen_mm",
        "external_data_file": "prefill.pb.bin",
        "config_entries": {
            "dd_cache": ".cache",
            "hybrid_opt_token_backend": "npu",
            "hybrid_opt_max_seq_length": "4096",
            "max_length_for_kv_cache": "4096",
        },
        "provider_options": [],
    }
    files = {n: "x" for n in ("fusion.onnx", "fusion.onnx.data", "prefill.pb.bin")}
    files |= {n: "{}" for n in TOKENIZER} | {"rai_config.json": "{}"}
    files[".cache/MatMulNBits_2_0_meta.json"] = {"0": ".cache\\MatMulNBits_2_0.bin"}
    files["genai_config.json"] = genai_config("fusion.onnx", so)
    return _write(root / "npu-16", files)


def config_of(folder: Path) -> dict:
    return json.loads((folder / "genai_config.json").read_text())


@pytest.fixture
def runtime(monkeypatch):
    """Take the installed onnxruntime-genai for another distribution/version."""

    def use(version: str, distribution: str = AMD) -> None:
        monkeypatch.setattr(capabilities, "installed_runtime", lambda: Runtime(distribution, version))

    return use


@pytest.fixture
def reach_oga(monkeypatch):
    """og.Config stops the load: reaching it means every check passed and the folder went to OGA as is."""
    import onnxruntime_genai as og

    seen = {}

    def fake_config(path):
        seen["path"], seen["PATH"] = path, os.environ.get("PATH", "")
        raise RuntimeError("onnxruntime-genai reached")

    monkeypatch.setattr(og, "Config", fake_config)
    return seen


def _unset(monkeypatch, name: str) -> None:
    monkeypatch.setenv(name, "x")  # recorded, so the value before the test comes back after it
    monkeypatch.delenv(name)


@pytest.fixture
def windows(monkeypatch, tmp_path):
    """A Windows host without RYZENAI_EP_PATH, its conda env laid out in tmp_path: the folders OGA
    searches (beside onnxruntime-genai, onnxruntime, the executable)."""
    monkeypatch.setattr(ryzenai, "host_os", lambda: "Windows")
    _unset(monkeypatch, "RYZENAI_EP_PATH")
    env = tmp_path / "ryzen-ai-1.7.0"
    sp = env / "Lib" / "site-packages"
    dirs = {"onnxruntime-genai": sp / "onnxruntime_genai", "onnxruntime": sp / "onnxruntime" / "capi"}
    dirs["the Python executable"] = env
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    monkeypatch.setattr(ryzenai_folders, "oga_dirs", lambda: list(dirs.items()))
    return dirs


@pytest.fixture
def linux(monkeypatch, tmp_path):
    """A Linux host with AMD's NPU setup done (XRT, /dev/accel/accel0, memlock), no RYZENAI_EP_PATH."""
    monkeypatch.setattr(ryzenai, "host_os", lambda: "Linux")
    xrt = tmp_path / "xrt"
    xrt.mkdir()
    monkeypatch.setattr(ryzenai, "XRT_ROOT", xrt)
    monkeypatch.setenv("XILINX_XRT", str(xrt))
    (tmp_path / "sysroot" / "dev" / "accel").mkdir(parents=True)
    (tmp_path / "sysroot" / "dev" / "accel" / "accel0").write_text("")
    monkeypatch.setenv("OGA_NPU_SYSFS_ROOT", str(tmp_path / "sysroot"))
    monkeypatch.setattr(ryzenai, "memlock_limit", lambda: -1)
    _unset(monkeypatch, "RYZENAI_EP_PATH")
    monkeypatch.setenv("LD_LIBRARY_PATH", "")
    return tmp_path  # the working directory (conftest's isolated fixture)


# ---------------------------------------------------------------- classed by genai_config.json


def test_folders_are_classed_by_their_genai_config(tmp_path):
    h17, n16 = amd_17_hybrid(tmp_path), amd_16_npu(tmp_path)
    n17 = amd_17_hybrid(tmp_path, backend="npu")
    # RAI-DOCS hybrid_oga.rst 1.7: a RyzenAI provider entry; no backend key = AMD's hybrid config
    assert ryzenai_folders.folder_form(config_of(h17)) == "ep"
    assert ryzenai_folders.folder_kind(config_of(h17)) == "hybrid"
    # REPORT 2b: 1.7+ NPU configs carry hybrid_opt_* keys too; only hybrid_opt_token_backend tells
    assert ryzenai_folders.folder_kind(config_of(n17)) == "npu"
    # Lemonade's _is_preoptimized_model: custom_ops_library is "for hybrid as well as NPU only"
    assert ryzenai_folders.folder_form(config_of(n16)) == "custom_ops"
    assert ryzenai_folders.folder_kind(config_of(n16)) == "npu"
    # RAI-DOCS oga_model_prepare.rst 1.6: the hybrid fusion.onnx config says hybrid_opt_token_backend "gpu"
    h16 = config_of(n16)
    h16["model"]["decoder"]["session_options"]["config_entries"]["hybrid_opt_token_backend"] = "gpu"
    assert ryzenai_folders.folder_kind(h16) == "hybrid"
    # the config wins over oga-npu's manifest target
    assert ryzenai_folders.folder_kind(config_of(n17), {"target": "hybrid"}) == "npu"
    # HF-TREE (1.4/1.5 hybrid): <Name>_jit.onnx with custom ops and no backend key is hybrid
    old = genai_config("Llama-3.2-1B_jit.onnx", {"custom_ops_library": "onnx_custom_ops.dll"})
    assert ryzenai_folders.folder_kind(old) == "hybrid"
    # every one of them runs on "ryzenai", never on a provider swap or the CPU
    for cfg in (config_of(h17), config_of(n17), config_of(n16), h16):
        assert model_mod.configured_providers(cfg) == ["ryzenai"]
    assert ryzenai_folders.folder_form(genai_config("model.onnx", {})) is None


# ---------------------------------------------------------------- Windows: the EP as OGA finds it


@pytest.mark.parametrize("place", ["onnxruntime-genai", "onnxruntime", "the Python executable", "cwd"])
def test_17_hybrid_loads_on_windows_without_ryzenai_ep_path(tmp_path, windows, runtime, reach_oga, place):
    # OGA-IF (0.12+, Windows): beside onnxruntime-genai.dll, beside onnxruntime.dll, beside the exe, the cwd
    runtime("0.14.0")
    folder = amd_17_hybrid(tmp_path)
    where = tmp_path if place == "cwd" else windows[place]
    (where / "onnxruntime_providers_ryzenai.dll").write_bytes(b"MZ")
    with pytest.raises(Exception, match="onnxruntime-genai reached"):
        model_mod.load(folder)
    assert reach_oga["path"] == str(folder)


def test_17_hybrid_on_windows_without_the_ep_names_where_oga_looked(tmp_path, windows, runtime, monkeypatch):
    runtime("0.14.0")
    folder = amd_17_hybrid(tmp_path)
    with pytest.raises(ProviderError) as e:
        model_mod.load(folder)
    msg = e.value.message
    assert "onnxruntime_providers_ryzenai.dll is not found" in msg and str(windows["onnxruntime-genai"]) in msg
    assert "RYZENAI_EP_PATH" in msg
    # OGA-IF: a set RYZENAI_EP_PATH is loaded as it is; OGA looks nowhere else
    (windows["onnxruntime-genai"] / "onnxruntime_providers_ryzenai.dll").write_bytes(b"MZ")
    monkeypatch.setenv("RYZENAI_EP_PATH", str(tmp_path / "nowhere.dll"))
    with pytest.raises(ProviderError, match="looks nowhere else"):
        model_mod.load(folder)


def test_ryzenai_folders_need_a_runtime_of_their_release(tmp_path, windows, runtime):
    h17, n16 = amd_17_hybrid(tmp_path), amd_16_npu(tmp_path)
    (windows["onnxruntime-genai"] / "onnxruntime_providers_ryzenai.dll").write_bytes(b"MZ")
    # RAI-DOCS hybrid_oga.rst 1.7/1.8: "Models from earlier releases are not compatible with this version"
    runtime("0.14.0")
    with pytest.raises(ProviderError, match="Ryzen AI 1.6 model.*0.9.2.x.*not compatible"):
        model_mod.load(n16)
    runtime("0.9.2.1")  # Lemonade pins onnxruntime-genai-directml-ryzenai==0.9.2.1 for 1.6
    with pytest.raises(ProviderError, match="1.7\\+ model.*no RyzenAI provider"):
        model_mod.load(h17)
    # REPORT 1a: public 0.9.2 and 0.11.2 have no src/ryzenai; the EP is public from 0.12
    runtime("0.11.2", "onnxruntime-genai")
    with pytest.raises(ProviderError, match="has no RyzenAI execution provider"):
        model_mod.load(h17)
    # a model oga-npu made with Ryzen AI 1.7 under 1.8's runtime
    manifest = {"stages": {"hybrid": {"detail": {"rai_version": "1.7"}}}}
    runtime("0.14.0")
    assert "made with Ryzen AI 1.7" in ryzenai_folders.release_problem(config_of(h17), manifest)
    runtime("0.11.2")
    assert ryzenai_folders.release_problem(config_of(h17), manifest) is None


# ---------------------------------------------------------------- Windows: Ryzen AI 1.6's custom ops


def test_16_npu_loads_on_windows_as_lemonade_and_oga_0_9_2_find_its_library(tmp_path, windows, runtime, reach_oga):
    runtime("0.9.2.1")
    folder = amd_16_npu(tmp_path)
    oga_dir = windows["onnxruntime-genai"]
    # missing everywhere: refused, naming the places looked in (OGA-MODEL: folder, cwd, then the OS search)
    with pytest.raises(ProviderError) as e:
        model_mod.load(folder)
    assert "custom_ops_library onnx_custom_ops.dll is not found" in e.value.message
    assert str(folder) in e.value.message and str(oga_dir) in e.value.message
    # LEMONADE-530: the env's site-packages/onnxruntime_genai holds it, with libutf8_validity.dll, abseil_dll.dll
    (oga_dir / "onnx_custom_ops.dll").write_bytes(b"MZ")
    with pytest.raises(ProviderError, match="libutf8_validity.dll, abseil_dll.dll"):
        model_mod.load(folder)
    for dep in ryzenai_folders.CUSTOM_OPS_DEPS:
        (oga_dir / dep).write_bytes(b"MZ")
    with pytest.raises(Exception, match="onnxruntime-genai reached"):
        model_mod.load(folder)
    assert reach_oga["path"] == str(folder)
    assert reach_oga["PATH"].split(os.pathsep)[0] == str(oga_dir)  # on the DLL search path before OGA opens it
    # OGA-MODEL: the model folder is tried first
    (oga_dir / "onnx_custom_ops.dll").unlink()
    (folder / "onnx_custom_ops.dll").write_bytes(b"MZ")
    lib, where = ryzenai_folders.find_custom_ops(config_of(folder), folder, "Windows")
    assert lib == folder / "onnx_custom_ops.dll" and where == "the model folder"


# ---------------------------------------------------------------- Linux, as AMD's Linux page sets it up


def test_hybrid_is_refused_on_linux(tmp_path, linux, runtime):
    runtime("0.14.0")
    # RAI-DOCS llm_linux.rst 1.8: "Linux does not support Hybrid flow"
    with pytest.raises(ProviderError, match="Linux does not support Hybrid flow"):
        model_mod.load(amd_17_hybrid(tmp_path))


def test_npu_loads_on_linux_with_amds_deployment_layout(tmp_path, linux, runtime, reach_oga, monkeypatch):
    runtime("0.14.0")
    folder = amd_17_hybrid(tmp_path, backend="npu")
    lib = tmp_path / "deployment" / "lib" / "libonnxruntime_providers_ryzenai.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF")
    # OGA-IF (Linux): RYZENAI_EP_PATH, else $CWD/libonnxruntime_providers_ryzenai.so; nothing beside a module
    with pytest.raises(ProviderError, match="libonnxruntime_providers_ryzenai.so is not found"):
        model_mod.load(folder)
    # RAI-DOCS llm_linux.rst 1.7.1/1.8: RYZENAI_EP_PATH=$PWD/deployment/lib/... and deployment/lib on LD_LIBRARY_PATH
    monkeypatch.setenv("RYZENAI_EP_PATH", str(lib))
    with pytest.raises(ProviderError, match="LD_LIBRARY_PATH does not hold .*deployment/lib"):
        model_mod.load(folder)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/lib/x86_64-linux-gnu:deployment/lib")
    with pytest.raises(Exception, match="onnxruntime-genai reached"):
        model_mod.load(folder)
    # the same library in the working directory, without RYZENAI_EP_PATH
    monkeypatch.delenv("RYZENAI_EP_PATH")
    (tmp_path / lib.name).write_bytes(b"\x7fELF")
    monkeypatch.setenv("LD_LIBRARY_PATH", str(tmp_path))
    with pytest.raises(Exception, match="onnxruntime-genai reached"):
        model_mod.load(folder)


def test_16_npu_on_linux_needs_amds_edit(tmp_path, linux, runtime, reach_oga, monkeypatch):
    runtime("0.9.2.2")  # Ryzen AI 1.6.1's onnxruntime-genai
    folder = amd_16_npu(tmp_path)
    # RAI-DOCS llm_linux.rst 1.6.1/1.7: the Windows DLL name is edited to deployment/lib/libonnx_custom_ops.so
    with pytest.raises(ProviderError, match="deployment/lib/libonnx_custom_ops.so"):
        model_mod.load(folder)
    cfg = config_of(folder)
    cfg["model"]["decoder"]["session_options"]["custom_ops_library"] = "deployment/lib/libonnx_custom_ops.so"
    (folder / "genai_config.json").write_text(json.dumps(cfg))
    lib = tmp_path / "deployment" / "lib" / "libonnx_custom_ops.so"
    lib.parent.mkdir(parents=True)
    lib.write_bytes(b"\x7fELF")
    with pytest.raises(ProviderError, match="LD_LIBRARY_PATH does not hold"):
        model_mod.load(folder)
    monkeypatch.setenv("LD_LIBRARY_PATH", "deployment/lib")  # export LD_LIBRARY_PATH=deployment/lib:$LD_LIBRARY_PATH
    with pytest.raises(Exception, match="onnxruntime-genai reached"):
        model_mod.load(folder)


# ---------------------------------------------------------------- the release of AMD's wheels, the errors


def test_amd_wheel_versions_name_their_release(tmp_path, monkeypatch):
    # LEMONADE-530: onnxruntime-genai-directml-ryzenai 0.9.2.1 is "1.6.0"; REPORT 1a: 1.6.1 = 0.9.2.2
    _unset(monkeypatch, "RYZEN_AI_INSTALLATION_PATH")
    for v in ("0.9.2.1", "0.9.2.2"):
        rel, source = ryzenai._release_of(tmp_path / "env", {AMD: v}, None)
        assert rel.version == "1.6" and v in source


def test_ryzenai_runtime_errors_have_a_cause_and_a_fix():
    # OGA-IF v0.12/v0.14 SetupProvider
    e = translate(RuntimeError("No RyzenAI devices detected"))
    assert "no NPU" in e.message and "driver" in e.fix
    # OGA-IF main (0.16-dev)
    e = translate(RuntimeError("Failed to register RyzenAI execution provider library: LoadLibrary failed"))
    assert "could not load the RyzenAI execution provider library" in e.message and "RYZENAI_EP_PATH" in e.fix
