"""devices / doctor / hello: fake sysfs trees and a fake xrt-smi present each NPU kind."""

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import FAKE_TOOLS, call, run_cli

from oga_npu.devices import classify_pci, find_npus_linux, find_npus_windows
from oga_npu.workdir import MANIFEST


def fake_sysfs(root: Path, device: int, revision: int, driver: str | None = "amdxdna") -> Path:
    dev = root / "sys" / "bus" / "pci" / "devices" / "0000:c5:00.1"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x1022\n")
    (dev / "device").write_text(f"0x{device:04x}\n")
    (dev / "revision").write_text(f"0x{revision:02x}\n")
    (dev / "class").write_text("0x118000\n")
    if driver:
        drv = root / "sys" / "bus" / "pci" / "drivers" / driver
        drv.mkdir(parents=True)
        (dev / "driver").symlink_to(drv)
        mod = root / "sys" / "module" / driver
        mod.mkdir(parents=True)
        (mod / "version").write_text("2.19.0\n")
    (root / "dev" / "accel").mkdir(parents=True)
    (root / "dev" / "accel" / "accel0").write_text("")
    return root


@pytest.mark.parametrize(
    "device,rev,kind",
    [
        (0x1502, 0x00, "phoenix"),
        (0x17F0, 0x00, "strix"),
        (0x17F0, 0x10, "strix"),
        (0x17F0, 0x11, "strix"),
        (0x17F0, 0x20, "krackan"),
    ],
)
def test_sysfs_detects_each_npu(tmp_path, device, rev, kind):
    (npu,) = find_npus_linux(fake_sysfs(tmp_path, device, rev))
    assert npu.kind == kind and npu.pci_id == f"1022:{device:04x}"
    assert npu.driver == "amdxdna" and npu.driver_version == "2.19.0" and npu.accel_nodes == ["/dev/accel/accel0"]
    assert npu.supports_hybrid == (kind != "phoenix")


def test_non_npu_pci_devices_are_ignored():
    assert classify_pci(0x1022, 0x1234, 0) is None and classify_pci(0x10DE, 0x17F0, 0) is None


def test_pnputil_output_is_parsed():
    out = "Instance ID: PCI\\VEN_1022&DEV_17F0&SUBSYS_0001&REV_20\\4&1\nDevice IDs: PCI\\VEN_1022&DEV_17F0&REV_20\n"
    (npu,) = find_npus_windows(out)
    assert npu.kind == "krackan"


def test_devices_json_here_reports_no_npu_and_cpu():
    r = run_cli("devices", "--json", env={"OGA_NPU_SYSFS_ROOT": "/nonexistent"})
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["npus"] == [] and d["summary"] == "no NPU, CPU only"
    assert "CPUExecutionProvider" in d["providers"]["onnxruntime"]
    assert d["targets"]["cpu"] == {"prepare": True, "run": True}
    assert d["targets"]["hybrid"]["run"] is False
    from oga_npu.webgpu.ep import available

    ok, why = available()
    if not ok:  # the usual case here: no adapter, and the report says why
        assert d["webgpu"] == {"adapters": [], "why": why} and d["targets"]["webgpu"]["run"] is False


def test_devices_lists_webgpu_adapters(monkeypatch):
    from oga_npu import doctor
    from oga_npu.webgpu import ep as webgpu

    monkeypatch.setattr(webgpu, "available", lambda: (True, ""))
    # as seen on the lent H200: onnxruntime gave an empty vendor string, the PCI ids name it
    monkeypatch.setattr(webgpu, "adapters", lambda: [webgpu.Adapter("", "GPU", {"Discrete": "1"}, 0x10DE, 0x2335)])
    rep = doctor.webgpu_report()
    assert rep["adapters"][0]["name"] == "NVIDIA GPU 10de:2335" and rep["adapters"][0]["vendor_id"] == 0x10DE
    assert doctor.webgpu_line(rep) == "WebGPU adapters: NVIDIA GPU 10de:2335 [Discrete=1]"
    monkeypatch.setattr(webgpu, "available", lambda: (False, "no WebGPU adapter found: why"))
    assert doctor.webgpu_line(doctor.webgpu_report()) == "WebGPU adapters: none (no WebGPU adapter found: why)"


def test_devices_with_fake_strix_and_xrt_smi(tmp_path):
    root = fake_sysfs(tmp_path / "sysfs", 0x17F0, 0x10)
    env = {
        "OGA_NPU_SYSFS_ROOT": str(root),
        "PATH": str(FAKE_TOOLS) + os.pathsep + os.environ["PATH"],
        "FAKE_XRT_STATE": str(tmp_path / "pmode"),
    }
    (tmp_path / "pmode").write_text("balanced")
    r = run_cli("devices", "--json", env=env)
    d = json.loads(r.stdout)
    assert d["npus"][0]["name"] == "Strix"
    # read from the real layout: system.host.xrt.drivers[], system.host.devices[]; power mode
    # from `examine --report platform` (the fake plays Linux: amdxdna, firmware 255.0.1.5)
    x = d["xrt_smi"]
    assert x["firmware"] == "255.0.1.5" and x["power_mode"] == "balanced" and x["xrt_version"] == "2.20.0"
    assert (x["driver"], x["driver_version"]) == ("amdxdna", "2.20.0_20250617") and x["bdf"] == "0000:c5:00.1"
    # as the Windows host (xrt_smi.rst 1.8 sample): the NPU Driver's version
    d = json.loads(run_cli("devices", "--json", env=dict(env, OGA_NPU_HOST_OS="Windows")).stdout)
    assert (d["xrt_smi"]["driver_version"], d["xrt_smi"]["firmware"]) == ("32.0.203.257", "1.0.7.97")


def test_pmode_turbo_runs_xrt_smi_configure(tmp_path):
    log = tmp_path / "f.jsonl"
    env = {
        "PATH": str(FAKE_TOOLS) + os.pathsep + os.environ["PATH"],
        "OGA_NPU_FAKE_LOG": str(log),
        "FAKE_XRT_STATE": str(tmp_path / "pmode"),
    }
    r = run_cli("devices", "--pmode", "turbo", env=env)
    assert r.returncode == 0, r.stderr
    calls = [json.loads(x)["argv"] for x in log.read_text().splitlines()]
    assert ["configure", "--pmode", "turbo"] in calls
    assert "turbo" in r.stdout  # the mode reported after


def test_pmode_without_xrt_smi_is_one_line():
    r = run_cli("devices", "--pmode", "turbo")
    assert r.returncode == 1
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("Error:")] == [
        "Error: xrt-smi not found: no Ryzen AI NPU driver on this machine"
    ]


def test_doctor_finds_missing_weights_and_lfs_pointer(tmp_path, tiny_model, capsys):
    """The CLI in process (conftest.call): three child processes cost more than the checks."""
    d = tmp_path / "m"
    shutil.copytree(tiny_model, d)
    code, out, _ = call(capsys, "doctor", "-m", str(d))
    assert code == 0, out
    assert "manifest matches every file" in out
    (d / "model.onnx.data").unlink()
    code, out, _ = call(capsys, "doctor", "-m", str(d))
    assert code == 1 and "model.onnx.data is missing" in out and "fix:" in out
    shutil.rmtree(d)
    shutil.copytree(tiny_model, d)
    (d / MANIFEST).unlink()
    (d / "tokenizer.json").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 3522871\n")
    code, out, _ = call(capsys, "doctor", "-m", str(d))
    assert code == 1 and "git-lfs pointer" in out and "git lfs pull" in out


def test_hello_runs_cpu_and_says_why_npu_skipped(tmp_path):
    """Also: nothing lands in the current directory (Quark's quantized_info.csv went there)
    and the temporary work folder is removed."""
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    r = run_cli(
        "hello", "--runs", "3", "--json", cwd=cwd, env={"OGA_NPU_SYSFS_ROOT": "/nonexistent", "TMPDIR": str(tmp)}
    )
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert list(cwd.iterdir()) == []
    # no folder left in TMPDIR (onnxruntime itself keeps a 51-byte TMPDIR/.ses session file)
    assert [p.name for p in tmp.iterdir() if p.name != ".ses"] == []
    assert d["workdir"] == "" and d["runs"] == 3
    assert d["fp32_cpu_ms"] > 0 and d["int8_cpu_ms"] > 0
    assert d["int8_npu_ms"] is None and "no Ryzen AI NPU" in d["npu_skipped"]
    # XINT8 keeps the FP32 model's output: a real bound, not a formality
    assert d["agreement_cosine"] > 0.999 and d["agreement_rel_error"] < 0.02
