"""models.py in process: the served models and how a request finds one (a fake loader, no OGA)."""

from __future__ import annotations

import asyncio
import threading

import pytest
from fakes import FakeLM

from oga_npu.errors import ModelFolderError
from oga_npu.server.errors import ApiError
from oga_npu.server.models import FolderProvider, served


def _wait(cond, timeout=10):
    ev = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if cond():
            return True
        ev.wait(0.01)
    return False


def test_folders_load_in_the_background_and_are_served_by_folder_name(tmp_path):
    a, b = tmp_path / "a-cpu", tmp_path / "b-cpu"
    loaded = []

    def loader(path, **kw):
        loaded.append((path, kw))
        return FakeLM(path)

    p = FolderProvider([a, b], provider="cpu", loader=loader, kv_reuse=False)
    with pytest.raises(ApiError) as e:
        asyncio.run(served(p, "a-cpu"))
    assert e.value.status == 503 and e.value.code == "loading"
    p.start()
    assert _wait(lambda: p.ready)
    assert [x[0] for x in loaded] == [a, b] and loaded[0][1]["provider"] == "cpu"
    assert list(p.models) == ["a-cpu", "b-cpu"]
    assert asyncio.run(served(p, "b-cpu")).lm.path == b
    with pytest.raises(ApiError) as e:
        asyncio.run(served(p, "c-cpu"))
    assert e.value.status == 404 and e.value.code == "model_not_found" and "a-cpu, b-cpu" in e.value.message


def test_a_load_failure_is_reported_and_every_request_is_503(tmp_path):
    seen = []

    def loader(path, **kw):
        raise ModelFolderError("model.onnx is missing", "prepare it again")

    p = FolderProvider([tmp_path / "x-cpu"], loader=loader)
    p.start(seen.append)
    assert _wait(lambda: p.error is not None)
    assert seen == [p.error] and not p.ready
    with pytest.raises(ApiError) as e:
        asyncio.run(served(p, "x-cpu"))
    assert e.value.status == 503 and e.value.code == "model_load_failed"


def test_two_folders_with_one_name_are_refused(tmp_path):
    with pytest.raises(Exception, match="same name"):
        FolderProvider([tmp_path / "one" / "m", tmp_path / "two" / "m"], loader=FakeLM)
