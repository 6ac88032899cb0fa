"""model.release_mapped_pages: touched pages of memory-mapped model files leave RSS."""

from __future__ import annotations

import mmap
import sys

import pytest

from oga_npu.model import release_mapped_pages

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps and madvise: Linux")

SIZE = 4 << 20


def _resident_kb(path) -> int:
    total, cur = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                cur = len(head) >= 6 and head[5] == str(path)
            elif cur and head[0] == "Rss:":
                total += int(head[1])
    return total


def _mapped(path):
    """A private writable mapping, as onnxruntime maps external data, every page read."""
    with open(path, "rb") as f:
        m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    assert sum(m[i] for i in range(0, SIZE, 4096)) == (SIZE // 4096) * 7
    return m


def test_read_pages_are_dropped_and_read_back_written_ones_kept(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.onnx.data").write_bytes(bytes([7]) * SIZE)
    (folder / "other.data").write_bytes(bytes([7]) * SIZE)
    outside = tmp_path / "outside.data"
    outside.write_bytes(bytes([7]) * SIZE)
    read, written, other = _mapped(folder / "model.onnx.data"), _mapped(folder / "other.data"), _mapped(outside)
    written[0] = 9  # a page of its own (copy on write): dropping it would lose the write
    before = _resident_kb(folder / "model.onnx.data")
    kept = _resident_kb(folder / "other.data")  # (the write itself can unmap a huge page's rest)
    assert before >= SIZE // 1024 * 0.9 and kept > 0

    assert release_mapped_pages(folder) == SIZE
    assert _resident_kb(folder / "model.onnx.data") < before * 0.1
    assert _resident_kb(folder / "other.data") == kept  # the written mapping is left alone
    assert _resident_kb(outside) >= SIZE // 1024 * 0.9  # not in the folder: untouched
    assert read[0] == 7 and read[SIZE - 1] == 7 and written[0] == 9  # read back from the file
    for m in (read, written, other):
        m.close()
