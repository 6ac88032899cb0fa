"""xrt-smi as it is: the host JSON layout, the platform report's power mode, -o without --force.

Sources:
  DOC  amd/ryzen-ai-documentation docs/xrt_smi.rst, branch 1.8 (0860e4dd)
  XRT  Xilinx/XRT 963c58ee: core/tools/common/reports/ReportHost.cpp, common/sysinfo.cpp,
       pcie/linux/system_linux.cpp, reports/platform/ReportRyzenPlatform.cpp,
       xbutil2/SubCmdExamine.cpp, xbutil2/OO_Performance.cpp, common/XBUtilities.cpp
"""

import json
import os
import subprocess
import sys
from pathlib import Path

from oga_npu.devices import parse_power_mode, parse_xrt_json, parse_xrt_text

FAKE = Path(__file__).resolve().parent.parent / "fake_tools" / "xrt-smi"

# DOC@1.8 "Sample JSON Output" (its unbalanced closing braces fixed), Windows
DOC_JSON = {
    "schema_version": {"schema": "JSON", "creation_date": "Tue Mar 18 22:43:38 2025 GMT"},
    "system": {
        "host": {
            "os": {"sysname": "Windows NT", "release": "26100", "machine": "x86_64"},
            "xrt": {
                "version": "2.19.0",
                "branch": "HEAD",
                "hash": "f62307ddadf65b54acbed420a9f0edc415fefafc",
                "build_date": "2025-03-12 16:34:48",
                "drivers": [{"name": "NPU Driver", "version": "32.0.203.257"}],
            },
            "devices": [
                {
                    "bdf": "00c4:00:01.1",
                    "device_class": "Ryzen",
                    "name": "NPU Strix",
                    "id": "0x0",
                    "firmware_version": "1.0.7.97",
                    "instance": "mgmt(inst=1)",
                    "is_ready": "true",
                }
            ],
        }
    },
}


def xrt_smi(tmp_path, *args, host="Linux"):
    env = dict(os.environ, OGA_NPU_HOST_OS=host, FAKE_XRT_STATE=str(tmp_path / "pmode"))
    env.pop("OGA_NPU_FAKE_LOG", None)
    return subprocess.run([sys.executable, str(FAKE), *args], capture_output=True, text=True, env=env, cwd=tmp_path)


def test_doc_json_gives_driver_firmware_device():
    """DOC@1.8 JSON: driver at system.host.xrt.drivers[].version, device and firmware at
    system.host.devices[] (the flat `xrt.driver_version` / top-level `devices` the old code read
    are not there: on a real machine it returned no driver and no firmware)."""
    info = parse_xrt_json(DOC_JSON)
    assert (info["xrt_version"], info["driver"], info["driver_version"]) == ("2.19.0", "NPU Driver", "32.0.203.257")
    assert (info["device"], info["bdf"], info["firmware"]) == ("NPU Strix", "00c4:00:01.1", "1.0.7.97")
    assert "power_mode" not in info  # XRT ReportHost.cpp puts none in the host report


def test_linux_driver_and_na_firmware():
    """XRT system_linux.cpp driver_version(): name amdxdna, version, hash; firmware_version is
    "%u.%u.%u.%u" or "N/A" (ReportHost.cpp)."""
    data = json.loads(json.dumps(DOC_JSON))
    data["system"]["host"]["xrt"]["drivers"] = [{"name": "amdxdna", "version": "2.20.0_20250617", "hash": "e72"}]
    data["system"]["host"]["devices"][0]["firmware_version"] = "N/A"
    info = parse_xrt_json(data)
    assert info["driver_version"] == "2.20.0_20250617" and info["firmware"] is None


def test_text_examine_both_hosts():
    """DOC@1.8 plain `xrt-smi examine`: Windows `NPU Driver Version   : 32.0.203.257`, Linux
    `amdxdna              : 2.20.0_20250617, <hash>`; `NPU Firmware Version : ...`."""
    win = (
        "XRT\n  Version              : 2.19.0\n  NPU Driver Version   : 32.0.203.257\n"
        "  NPU Firmware Version : 1.0.7.97\n"
    )
    lin = (
        "XRT\n     Version              : 2.20.0\n     amdxdna              : 2.20.0_20250617, "
        "e7233301f8e4d8d1b1678f3dc3492c826290e314\n     NPU Firmware Version : 255.0.1.5\n"
    )
    assert parse_xrt_text(win) == {"xrt_version": "2.19.0", "driver_version": "32.0.203.257", "firmware": "1.0.7.97"}
    assert parse_xrt_text(lin) == {
        "xrt_version": "2.20.0",
        "driver_version": "2.20.0_20250617",
        "firmware": "255.0.1.5",
    }


def test_power_mode_from_platform_report():
    """DOC@1.8 `examine --report platform`: `  Power Mode             : Default`; XRT
    ReportRyzenPlatform.cpp: `"  %-23s: %s \\n"` with the lower-case mode."""
    assert parse_power_mode("Platform\n  Name                   : NPU Strix\n  Power Mode             : Default\n") == (
        "default"
    )
    assert parse_power_mode("  Power Mode             : turbo \n") == "turbo"


def test_fake_json_is_the_real_layout(tmp_path):
    """The fake writes what XRT writes: schema_version + system.host.{os, xrt{drivers[]}, devices[]}."""
    for host in ("Linux", "Windows"):
        out = tmp_path / f"{host}.json"
        p = xrt_smi(tmp_path, "examine", "-f", "JSON", "-o", str(out), host=host)
        assert p.returncode == 0, p.stderr
        data = json.loads(out.read_text())
        assert set(data) == {"schema_version", "system"} and set(data["system"]["host"]) == {"os", "xrt", "devices"}
        dev = data["system"]["host"]["devices"][0]
        assert {"bdf", "device_class", "name", "firmware_version"} <= set(dev) and "power_mode" not in dev
        assert data["system"]["host"]["xrt"]["drivers"][0]["version"]
    assert parse_xrt_json(json.loads((tmp_path / "Windows.json").read_text()))["driver_version"] == "32.0.203.257"


def test_fake_refuses_an_existing_output_without_force(tmp_path):
    """XRT SubCmdExamine.cpp:245: an existing -o file without --force is an error; DOC@1.8
    `--force` "overwrite a file in examine or validate"."""
    out = tmp_path / "x.json"
    out.write_text("old")
    p = xrt_smi(tmp_path, "examine", "-f", "JSON", "-o", str(out))
    assert p.returncode == 1 and f"The output file '{out}' already exists" in p.stderr and out.read_text() == "old"
    assert xrt_smi(tmp_path, "examine", "-f", "JSON", "-o", str(out), "--force").returncode == 0
    assert json.loads(out.read_text())["system"]


def test_fake_power_mode_only_in_platform_report(tmp_path):
    """DOC@1.8: the plain examine has no Power Mode line; `configure --pmode` prints
    `\\nPower mode is set to <mode> \\n` (XRT OO_Performance.cpp:99)."""
    p = xrt_smi(tmp_path, "configure", "--pmode", "performance")
    assert p.returncode == 0 and p.stdout == "\nPower mode is set to performance \n"
    assert "Power Mode" not in xrt_smi(tmp_path, "examine").stdout
    assert parse_power_mode(xrt_smi(tmp_path, "examine", "--report", "platform").stdout) == "performance"
