"""Each loaded model in its own worker process (procworker.py, child.py): a worker killed
mid-stream or its weights truncated fails only that model's requests; the server and the
other model keep answering; a crashed model loads afresh on its next request, a changed one
is refused with its fix. One real server over a store of two copies of the tiny model."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import urllib.request

import pytest
from serverutil import ServerProcess

from oga_npu.server import watch


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("workers") / "models"
    root.mkdir()
    for name in ("one-cpu", "two-cpu"):
        shutil.copytree(tiny_model, root / name)
    return root


@pytest.fixture(scope="module")
def server(store):
    s = ServerProcess(args=("--models-dir", str(store), "--max-loaded", "2", "--stream-interval", "0"))
    s.wait_ready()
    yield s
    s.stop()


def chat(server, model: str, max_tokens: int = 4) -> tuple[int, dict]:
    status, _, body = server.post(
        "/v1/chat/completions",
        {"model": model, "max_tokens": max_tokens, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]},
    )
    return status, body


def long_stream(server, model: str):
    """A stream that runs for seconds (sampling over the whole vocabulary: see test_server_lifecycle)."""
    body = {
        "model": model,
        "stream": True,
        "max_tokens": 460,
        "temperature": 1.0,
        "top_k": 0,
        "top_p": 1.0,
        "ignore_eos": True,
        "messages": [{"role": "user", "content": "A long answer."}],
    }
    req = urllib.request.Request(
        server.base + "/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    resp = urllib.request.urlopen(req, timeout=60)
    return (line.decode().strip()[6:] for line in resp if line.startswith(b"data: "))


def worker_pid(server, model: str) -> int:
    pids = re.findall(rf"model {re.escape(model)}: worker process (\d+)", server.output())
    assert pids, server.output()
    return int(pids[-1])


def test_a_worker_killed_mid_stream_fails_only_its_requests_and_reloads(server):
    assert chat(server, "two-cpu")[0] == 200  # the other model, loaded
    events = long_stream(server, "one-cpu")
    next(events), next(events)  # the role chunk, a token: it is generating
    pid = worker_pid(server, "one-cpu")
    os.kill(pid, signal.SIGKILL)
    rest = list(events)
    assert rest[-1] == "[DONE]"
    error = json.loads(rest[-2])["error"]
    assert error["code"] == "model_crashed" and "SIGKILL" in error["message"], error
    assert server.get("/health")[0] == 200
    assert chat(server, "two-cpu")[0] == 200  # the other model never noticed
    assert "model one-cpu crashed" in server.output()
    status, body = chat(server, "one-cpu")  # loaded afresh
    assert status == 200, body
    assert worker_pid(server, "one-cpu") != pid


def test_truncated_weights_fail_that_model_only_and_refuse_it_with_the_fix(server, store):
    assert chat(server, "two-cpu")[0] == 200
    assert chat(server, "one-cpu")[0] == 200
    data = store / "two-cpu" / "model.onnx.data"
    events = long_stream(server, "two-cpu")
    next(events), next(events)
    os.truncate(data, 1000)  # under a running generation: the worker's next read of a mapped page is SIGBUS
    rest = list(events)
    assert rest[-1] == "[DONE]"
    status, _, body = server.post(
        "/v1/chat/completions", {"model": "two-cpu", "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert status in (404, 409), body
    assert "model.onnx.data" in body["error"]["message"] and "oga-npu doctor -m two-cpu" in body["error"]["message"]
    assert server.get("/health")[0] == 200
    assert chat(server, "one-cpu")[0] == 200  # the other model keeps answering
    listed = {m["id"]: m for m in json.loads(server.get("/v1/models")[1])["data"]}
    assert listed["two-cpu"]["loadable"] is False and "doctor" in listed["two-cpu"]["not_loadable_reason"]
    assert server.proc.poll() is None


def test_unloading_a_model_ends_its_worker_process(server):
    """An unload (and an eviction: the same ModelManager._unload) ends the model's worker, so all
    its memory goes back; test_router checks routing and memory with in-process models."""
    import psutil

    assert chat(server, "one-cpu")[0] == 200
    pid = worker_pid(server, "one-cpu")
    children = {p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)}
    assert pid in children
    status, _, body = server.post("/api/v1/unload", {"model_name": "one-cpu"})
    assert status == 200 and body["unloaded"] == ["one-cpu"], body
    assert pid not in {p.pid for p in psutil.Process(server.proc.pid).children(recursive=True)}
    assert not psutil.pid_exists(pid)  # ended and reaped, not a zombie holding its memory
    assert chat(server, "one-cpu")[0] == 200  # loads again in a new worker
    assert worker_pid(server, "one-cpu") != pid


def test_restarts_are_limited_per_minute():
    now = time.monotonic()
    assert watch.restart_refusal("m", [now - 1, now], limit=3) is None
    e = watch.restart_refusal("m", [now - 2, now - 1, now], limit=3)
    assert e.status == 503 and e.code == "model_crashed" and "3 times" in e.message
    assert 1 <= int(e.headers["Retry-After"]) <= 61
    assert watch.recent([now - 120, now]) == [now]
