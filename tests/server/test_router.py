"""serve without -m: every model of the store, loaded on demand (a real server process).

Two copies of the tiny prepared model and a damaged one in a store; `--max-loaded 1`. The models
load in the server process (serverutil.IN_PROCESS): the module loads a model 15 times, each a
worker process start otherwise; unloading a worker process is checked in test_worker_process."""

from __future__ import annotations

import json
import re
import shutil

import psutil
import pytest
from serverutil import IN_PROCESS, ServerProcess

from oga_npu.workdir import MANIFEST


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("router") / "models"
    root.mkdir()
    for name in ("one-cpu", "two-cpu", "bad-cpu"):
        shutil.copytree(tiny_model, root / name)
    manifest = json.loads((root / "bad-cpu" / MANIFEST).read_text())
    victim = next(f for f in manifest["files"] if f.endswith(".json") and f != MANIFEST)
    with open(root / "bad-cpu" / victim, "a") as f:  # its size no longer matches the manifest
        f.write(" ")
    return root


@pytest.fixture(scope="module")
def server(store):
    s = ServerProcess(args=("--models-dir", str(store), "--max-loaded", "1"), env=IN_PROCESS)
    s.wait_ready()
    yield s
    s.stop()


def chat(server, model: str) -> tuple[int, dict]:
    status, _, body = server.post(
        "/v1/chat/completions",
        {"model": model, "max_tokens": 4, "temperature": 0, "messages": [{"role": "user", "content": "Hi"}]},
    )
    return status, body


def models(server) -> dict:
    status, text = server.get("/v1/models")
    assert status == 200
    return {m["id"]: m for m in json.loads(text)["data"]}


def rss(server) -> int:
    """The server's resident memory and any child processes' (none here: the models are in process)."""
    proc = psutil.Process(server.proc.pid)
    return sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)])


def test_every_model_is_listed_unloaded_and_the_damaged_one_is_not_loadable(server):
    ms = models(server)
    assert set(ms) == {"one-cpu", "two-cpu", "bad-cpu"}
    assert ms["one-cpu"]["loaded"] is False and ms["one-cpu"]["loadable"] is True
    assert ms["one-cpu"]["target"] == "cpu" and ms["one-cpu"]["recipe"] == "cpu-fast"
    assert ms["one-cpu"]["size"] > 0 and ms["one-cpu"]["context_length"] > 0
    assert ms["bad-cpu"]["loadable"] is False and ms["bad-cpu"]["not_loadable_reason"]
    assert server.get("/health")[0] == 200  # up before any model is loaded
    status, body = chat(server, "bad-cpu")
    assert status == 404 and body["error"]["code"] == "model_not_loadable"
    assert "model bad-cpu ready" not in server.output()


def test_a_model_named_by_its_folder_path_answers_and_sources_show_no_path(server, store, tiny_hf):
    """A client naming a listed model by its folder path gets that model (the response names
    its id); /v1/models shows the source by its folder name, not this machine's path."""
    status, body = chat(server, str(store / "one-cpu") + "/")
    assert status == 200 and body["model"] == "one-cpu", body
    status, body = chat(server, str(store / "nope-cpu"))
    assert status == 404 and f"'{store / 'nope-cpu'}'" in body["error"]["message"]
    status, text = server.get("/v1/models")
    assert status == 200 and str(store) not in text and str(tiny_hf) not in text
    assert {m["source"] for m in models(server).values()} == {tiny_hf.name}


def test_requests_alternate_between_two_models_and_both_answer(server):
    for name in ["one-cpu", "two-cpu"] * 3:
        status, body = chat(server, name)
        assert status == 200, body
        assert body["model"] == name and body["usage"]["completion_tokens"] >= 1
        ms = models(server)
        assert ms[name]["loaded"] is True and sum(m["loaded"] for m in ms.values()) == 1
    out = server.output()
    assert out.count("model one-cpu ready") == 3 and out.count("model two-cpu unloaded") == 2


def test_load_and_unload_routes_and_memory_comes_back(server):
    def load(name):
        status, _, body = server.post("/api/v1/load", {"model_name": name})
        assert status == 200 and body["status"] == "success", body

    def unload(name=None):
        status, _, body = server.post("/api/v1/unload", {"model_name": name} if name else {})
        assert status == 200, body
        return body["unloaded"]

    unload()
    empty = rss(server)  # the runtime warm, no model loaded
    load("one-cpu")
    models(server)  # as after each switch below
    one = rss(server)
    for name in ["two-cpu", "one-cpu"] * 3:  # each load unloads the other
        load(name)
        assert [m for m, v in models(server).items() if v["loaded"]] == [name]
    after_switches = rss(server)
    assert unload("one-cpu") == ["one-cpu"]
    freed = rss(server)
    print(
        f"RSS: none loaded {empty / 2**20:.1f} MiB, one model {one / 2**20:.1f} MiB, after 6 switches "
        f"{after_switches / 2**20:.1f} MiB, unloaded again {freed / 2**20:.1f} MiB"
    )
    model = one - empty  # one model's memory (the tiny one: ~25 MiB here)
    assert model > 0
    # within 10% of one model's RSS after six switches (a model kept per switch: +150 MiB)
    assert after_switches - one <= 0.1 * one
    # unloaded: most of the model's memory handed back (without malloc_trim ~60% stays; noise here ~6 MiB)
    assert freed - empty <= 0.5 * model
    status, _, body = server.post("/api/v1/load", {"model_name": "nope"})
    assert status == 404 and body["error"]["code"] == "model_not_found"
    status, _, body = server.post("/api/v1/unload", {"model_name": "one-cpu", "extra": 1})
    assert status == 400 and body["error"]["code"] == "unknown_field"


def test_ollama_client_through_the_router(server):
    """Ollama's routes over the same manager: tags lists the loadable models, a chat loads its
    model on demand (load_duration counts the load), ps shows the one loaded."""
    ollama = pytest.importorskip("ollama", reason="ollama is in the dev extra: pip install -e .[dev]")
    client = ollama.Client(host=server.base, timeout=120)
    tags = {m.model: m for m in client.list().models}
    assert set(tags) == {"one-cpu", "two-cpu"} and tags["one-cpu"].size > 0  # bad-cpu is not loadable
    client.generate(model="one-cpu", prompt="")  # Ollama's way to load: an empty prompt
    r = client.chat(model="two-cpu", messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 3})
    assert r.model == "two-cpu" and r.eval_count == 3 and r.load_duration > 0
    assert [m.model for m in client.ps().models] == ["two-cpu"]  # --max-loaded 1
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="bad-cpu", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.status_code == 404 and "bad-cpu" in e.value.error


def test_a_model_copied_in_after_start_answers_and_once_removed_is_404(server, store, tiny_model):
    """The store is live (store_scan.py): no restart to see a model come or go. (This module's
    models load in the server process; where workers are on, the removed model's worker must
    stop too: tests/server/test_store_live.py checks the model is released.)"""
    shutil.copytree(tiny_model, store / "late-cpu")
    try:
        status, body = chat(server, "late-cpu")  # named before any listing saw it
        assert status == 200 and body["model"] == "late-cpu", body
        assert models(server)["late-cpu"]["loaded"] is True
        pids = re.findall(r"model late-cpu: worker process (\d+)", server.output())
        workers_on = IN_PROCESS.get("OGA_NPU_SERVE_WORKERS", "1") != "0"
        assert pids or not workers_on, server.output()
        worker = psutil.Process(int(pids[-1])) if pids else None
    finally:
        shutil.rmtree(store / "late-cpu")
    status, body = chat(server, "late-cpu")
    assert status == 404 and body["error"]["code"] == "model_not_found", body
    assert "late-cpu" not in models(server)
    if worker is not None:  # its worker process stopped
        worker.wait(20)
        assert not worker.is_running()
    assert server.get("/health")[0] == 200 and server.proc.poll() is None
