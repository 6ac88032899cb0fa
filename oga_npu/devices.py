"""What this machine has: Ryzen AI NPU (PCI ids), the Ryzen AI tools and their versions.

Linux: PCI devices from sysfs (`/sys/bus/pci/devices/*/{vendor,device,revision}`),
`/dev/accel/accel*`, the amdxdna driver version. Windows: `pnputil /enum-devices /bus PCI
/deviceids`. The sysfs root is injectable (OGA_NPU_SYSFS_ROOT or an argument) so tests
can present each NPU kind; the tools are found on PATH, in RYZEN_AI_INSTALLATION_PATH
and in the active conda environment.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .tools import capture

AMD_VENDOR = 0x1022
# (device id, revisions or None for any) -> kind
NPU_IDS = {0x1502: "phoenix", 0x17F0: "strix"}
KRACKAN_REVS = {0x20}
STRIX_REVS = {0x00, 0x10, 0x11}
NPU_NAMES = {"phoenix": "Phoenix/Hawk Point", "strix": "Strix", "krackan": "Krackan"}
HYBRID_NPUS = ("strix", "krackan")
RAI_TOOLS = ("onnx_utils", "model_generate", "model_benchmark", "xrt-smi")
INSTALL_HINT = (
    "install Ryzen AI Software (1.6 or newer) on Windows 11 and run from its conda env "
    "(conda activate ryzen-ai-1.x.y), or set RYZEN_AI_INSTALLATION_PATH"
)


@dataclass
class NPU:
    kind: str  # phoenix | strix | krackan
    pci_id: str  # 1022:17f0
    revision: int
    slot: str = ""
    accel_nodes: list[str] = field(default_factory=list)
    driver: str | None = None
    driver_version: str | None = None

    @property
    def name(self) -> str:
        return NPU_NAMES[self.kind]

    @property
    def supports_hybrid(self) -> bool:
        return self.kind in HYBRID_NPUS


def classify_pci(vendor: int, device: int, revision: int) -> str | None:
    if vendor != AMD_VENDOR or device not in NPU_IDS:
        return None
    if device == 0x17F0:
        return "krackan" if revision in KRACKAN_REVS else "strix"
    return NPU_IDS[device]


def sysfs_root() -> Path:
    return Path(os.environ.get("OGA_NPU_SYSFS_ROOT", "/"))


def _read_hex(p: Path) -> int | None:
    try:
        return int(p.read_text().strip(), 16)
    except (OSError, ValueError):
        return None


def find_npus_linux(root: Path | None = None) -> list[NPU]:
    root = root or sysfs_root()
    found = []
    pci = root / "sys" / "bus" / "pci" / "devices"
    if not pci.is_dir():
        return found
    accel = (
        sorted(str(p.relative_to(root).as_posix()) for p in (root / "dev" / "accel").glob("accel*"))
        if (root / "dev" / "accel").is_dir()
        else []
    )
    for dev in sorted(pci.iterdir()):
        vendor, device, rev = (_read_hex(dev / n) for n in ("vendor", "device", "revision"))
        if vendor is None or device is None:
            continue
        kind = classify_pci(vendor, device, rev or 0)
        if not kind:
            continue
        driver = None
        link = dev / "driver"
        if link.exists():
            driver = Path(os.path.realpath(link)).name
        version = None
        if driver:
            vfile = root / "sys" / "module" / driver / "version"
            version = vfile.read_text().strip() if vfile.is_file() else None
        found.append(
            NPU(kind, f"{vendor:04x}:{device:04x}", rev or 0, dev.name, ["/" + a for a in accel], driver, version)
        )
    return found


PNPUTIL_RE = re.compile(r"PCI\\VEN_1022&DEV_([0-9A-F]{4})[^\s]*?&REV_([0-9A-F]{2})", re.I)


def find_npus_windows(pnputil_output: str | None = None) -> list[NPU]:
    if pnputil_output is None:
        code, out, _ = capture(["pnputil", "/enum-devices", "/bus", "PCI", "/deviceids"])
        if code != 0:
            return []
        pnputil_output = out
    found, seen = [], set()
    for dev, rev in PNPUTIL_RE.findall(pnputil_output):
        key = (int(dev, 16), int(rev, 16))
        kind = classify_pci(AMD_VENDOR, *key)
        if kind and key not in seen:
            seen.add(key)
            found.append(NPU(kind, f"1022:{dev.lower()}", key[1]))
    return found


def find_npus() -> list[NPU]:
    if platform.system() == "Windows" and "OGA_NPU_SYSFS_ROOT" not in os.environ:
        return find_npus_windows()
    return find_npus_linux()


# ---------------------------------------------------------------- Ryzen AI tools


def tool_search_path() -> str:
    """PATH plus the Ryzen AI install's and the conda env's tool folders. AMD puts
    model_benchmark in `LLM\\example` (Windows, under RYZEN_AI_INSTALLATION_PATH) or
    `LLM/examples` (Linux, under the venv) (ryzen-ai-documentation hybrid_oga.rst, llm_linux.rst)."""
    dirs = [os.environ.get("PATH", "")]
    rai = os.environ.get("RYZEN_AI_INSTALLATION_PATH")
    if rai:
        for sub in ("bin", "Scripts", "", "deployment", "utils", "LLM/example", "LLM/examples"):
            dirs.append(str(Path(rai) / sub))
    venv = os.environ.get("VIRTUAL_ENV")
    if venv:
        dirs.append(str(Path(venv) / "LLM" / "examples"))
    conda = os.environ.get("CONDA_PREFIX")
    if conda:
        for sub in ("Scripts", "bin", "Library/bin"):
            dirs.append(str(Path(conda) / sub))
    return os.pathsep.join(d for d in dirs if d)


def find_rai_tool(name: str) -> str | None:
    return shutil.which(name, path=tool_search_path())


def tool_version(path: str) -> str | None:
    for flag in ("--version", "-v"):
        code, out, err = capture([path, flag], timeout=10)
        text = (out or err).strip()
        m = re.search(r"\d+\.\d+(\.\d+)?", text)
        if code == 0 and m:
            return m.group(0)
    return None


RAI_VERSION_RE = re.compile(r"ryzen[-_ ]?ai[-_ \\/]*(?:software[-_ \\/]*)?(\d+\.\d+(?:\.\d+)?)", re.I)


def detect_rai_version(explicit: str | None = None) -> tuple[str, str]:
    """(release, where it came from): --rai-version, conda env name, install path, else 1.6."""
    if explicit:
        return explicit, "--rai-version"
    env_name = os.environ.get("CONDA_DEFAULT_ENV", "")
    m = RAI_VERSION_RE.search(env_name)
    if m:
        return m.group(1), f"conda env {env_name}"
    path = os.environ.get("RYZEN_AI_INSTALLATION_PATH", "")
    m = RAI_VERSION_RE.search(path) or re.search(r"(\d+\.\d+(?:\.\d+)?)[\\/]*$", path)
    if path and m:
        return m.group(1), "RYZEN_AI_INSTALLATION_PATH"
    return "1.6", "default (the 1.6 flow)"


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


@dataclass
class MachineReport:
    os: str
    npus: list[NPU]
    tools: dict

    def to_dict(self) -> dict:
        return {"os": self.os, "npus": [asdict(n) | {"name": n.name} for n in self.npus], "tools": self.tools}


def machine_report() -> MachineReport:
    tools = {}
    for t in RAI_TOOLS:
        p = find_rai_tool(t)
        tools[t] = {"path": p}
    return MachineReport(platform.system(), find_npus(), tools)


# ---------------------------------------------------------------- xrt-smi (NPU firmware, driver, power mode)

PMODES = ("default", "powersaver", "balanced", "performance", "turbo")
# `examine --report platform`: "  Power Mode             : Default" (xrt_smi.rst 1.8), lower case
# with a trailing space in XRT's ReportRyzenPlatform.cpp
POWER_RE = re.compile(r"^\s*power\s*mode\s*:\s*(\w+)", re.I | re.M)
# plain `examine`: "  NPU Firmware Version : 1.0.7.97", "  NPU Driver Version   : 32.0.203.257" (Windows),
# "  amdxdna              : 2.20.0_20250617, e7233301..." (Linux), "  Version              : 2.19.0"
FW_RE = re.compile(r"^\s*NPU\s+firmware\s+version\s*:\s*([\w.\-/]+)", re.I | re.M)
DRIVER_RE = re.compile(r"^\s*(?:NPU\s+Driver\s+Version|amdxdna)\s*:\s*([^,\s]+)", re.I | re.M)
XRT_VER_RE = re.compile(r"^\s*version\s*:\s*([\w.\-]+)", re.I | re.M)


def _known(v) -> str | None:
    return None if v in (None, "", "N/A") else str(v)


def parse_xrt_json(data: dict) -> dict:
    """xrt-smi's host JSON (`examine -f JSON -o FILE`): system.host.xrt.{version, drivers[]},
    system.host.devices[] (XRT ReportHost.cpp; xrt_smi.rst 1.8 sample). It has no power mode."""
    host = (data.get("system") or {}).get("host") or {}
    xrt = host.get("xrt") or {}
    drivers = [d for d in xrt.get("drivers") or [] if isinstance(d, dict) and _known(d.get("version"))]
    devices = [
        {
            "name": d.get("name"),
            "bdf": d.get("bdf"),
            "device_class": d.get("device_class"),
            "firmware": _known(d.get("firmware_version")),
        }
        for d in host.get("devices") or []
        if isinstance(d, dict)
    ]
    info = {
        "xrt_version": _known(xrt.get("version")),
        "driver": drivers[0].get("name") if drivers else None,
        "driver_version": drivers[0]["version"] if drivers else None,
        "devices": devices,
    }
    if devices:
        info.update(firmware=devices[0]["firmware"], device=devices[0]["name"], bdf=devices[0]["bdf"])
    return info


def parse_xrt_text(text: str) -> dict:
    """Plain `xrt-smi examine`: XRT version, NPU driver version, NPU firmware version."""
    found = {
        k: rx.search(text)
        for k, rx in (("xrt_version", XRT_VER_RE), ("driver_version", DRIVER_RE), ("firmware", FW_RE))
    }
    return {k: _known(m.group(1)) for k, m in found.items() if m}


def parse_power_mode(text: str) -> str | None:
    """`examine --report platform`'s Power Mode, lower case (as configure --pmode takes it)."""
    m = POWER_RE.search(text)
    return m.group(1).lower() if m else None


def _xrt_json(tool: str) -> dict:
    import json
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "xrt.json"  # a new file: xrt-smi refuses an existing one without --force
        code, _, _ = capture([tool, "examine", "-f", "JSON", "-o", str(out)], timeout=30)
        if code != 0 or not out.is_file():
            return {}
        try:
            return parse_xrt_json(json.loads(out.read_text(encoding="utf-8", errors="replace")))
        except (ValueError, AttributeError):
            return {}


def xrt_examine() -> dict | None:
    """XRT version, NPU driver and firmware from `xrt-smi examine` (its JSON, else its text),
    the power mode from `xrt-smi examine --report platform`; None without xrt-smi."""
    tool = find_rai_tool("xrt-smi")
    if tool is None:
        return None
    info: dict = {"path": tool, **_xrt_json(tool)}
    if not (info.get("driver_version") and info.get("firmware") and info.get("xrt_version")):
        code, out, err = capture([tool, "examine"], timeout=30)
        if code == 0:
            for k, v in parse_xrt_text(out + err).items():
                info[k] = info.get(k) or v
    code, out, err = capture([tool, "examine", "--report", "platform"], timeout=30)
    info["power_mode"] = parse_power_mode(out + err) if code == 0 else None
    return info


def power_mode() -> str | None:
    info = xrt_examine()
    return (info or {}).get("power_mode")


def set_power_mode(mode: str) -> str | None:
    """`xrt-smi configure --pmode MODE`; returns the mode reported afterwards."""
    from .errors import DeviceError, ToolNotFound
    from .tools import run_tool, tool_env

    if mode not in PMODES:
        raise DeviceError(f"unknown power mode '{mode}'", f"use one of: {', '.join(PMODES)}")
    tool = find_rai_tool("xrt-smi")
    if tool is None:
        raise ToolNotFound(
            "xrt-smi not found: no Ryzen AI NPU driver on this machine",
            "install the NPU driver (Ryzen AI Software) on a machine with a Ryzen AI NPU",
        )
    run_tool([tool, "configure", "--pmode", mode], name="xrt-smi", env=tool_env())
    return power_mode()
