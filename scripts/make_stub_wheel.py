"""Write an empty wheel for a distribution name and version: a stand-in for AMD's
onnxruntime-genai-directml-ryzenai (from AMD's own index, not PyPI) in the install tests.

    python scripts/make_stub_wheel.py onnxruntime-genai-directml-ryzenai 0.14.0 OUTDIR
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path


def make_stub_wheel(name: str, version: str, out_dir: Path) -> Path:
    norm = name.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    files = {
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        "Summary: test stand-in (no files)\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: oga-npu-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    record.append(f"{info}/RECORD,,")
    out_dir.mkdir(parents=True, exist_ok=True)
    wheel = out_dir / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    return wheel


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    print(make_stub_wheel(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
