"""Deleting models through the server (manage.py) and `serve` on an empty store, in process:
the real app over a ModelManager of a store holding copies of the tiny prepared model, loaded
by a fake loader (no OGA)."""

from __future__ import annotations

import json

import pytest
from fakes import FakeLM
from fastapi.testclient import TestClient

from oga_npu.server import create_app
from oga_npu.server.models import ModelManager
from oga_npu.server.run import banner, manager
from oga_npu.store import ModelStore
from oga_npu.workdir import publish

KEY = "manage-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def fake_load(path, **_kw):
    return FakeLM(path, {"target": "cpu"})


def prepared(out, tmp_path):
    """A folder that reads as made by prepare (files published, then the manifest), no real weights."""
    stage = tmp_path / f"stage-{out.name}"
    stage.mkdir()
    cfg = {"model": {"context_length": 256, "decoder": {"filename": "model.onnx"}}}
    (stage / "genai_config.json").write_text(json.dumps(cfg))
    (stage / "model.onnx").write_bytes(b"x" * 1000)
    (stage / "tokenizer.json").write_text("{}")
    out.mkdir(parents=True)
    publish(out, stage, {"source": f"org/{out.name}", "target": "cpu", "recipe": "cpu-fast"})
    return out


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    for name in ("tiny-a", "tiny-b"):
        prepared(root / name, tmp_path)
    return root


def app_for(m: ModelManager) -> TestClient:
    return TestClient(create_app(m, api_key=KEY), base_url="http://127.0.0.1")


def test_delete_needs_the_key_unloads_first_and_removes_the_folder(store):
    m = ModelManager.from_store(ModelStore(store), loader=fake_load, kv_reuse=False, max_loaded=2)
    c = app_for(m)
    body = {"model": "tiny-a"}
    assert c.post("/api/v1/delete", json=body).status_code == 401
    assert c.request("DELETE", "/api/delete", json=body).status_code == 401
    assert (store / "tiny-a").is_dir()
    r = c.post("/api/v1/delete", json={"model": "nope"}, headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]["message"] == "model 'nope' not found"
    r = c.request("DELETE", "/api/delete", json={"model": "nope"}, headers=AUTH)
    assert r.status_code == 404 and r.json() == {"error": "model 'nope' not found"}
    assert c.post("/api/v1/delete", json={}, headers=AUTH).status_code == 400
    assert c.post("/api/v1/load", json={"model_name": "tiny-a"}, headers=AUTH).status_code == 200
    assert "tiny-a" in m.models
    r = c.post("/api/v1/delete", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "success" and r.json()["freed_bytes"] > 0
    assert m.models == {} and m.get("tiny-a") is None  # unloaded, no longer offered
    assert sorted(p.name for p in store.iterdir()) == ["tiny-b"]  # no trash left behind
    ids = [d["id"] for d in c.get("/v1/models", headers=AUTH).json()["data"]]
    assert ids == ["tiny-b"]
    r = c.post(
        "/v1/chat/completions", json={"model": "tiny-a", "messages": [{"role": "user", "content": "x"}]}, headers=AUTH
    )
    assert r.status_code == 404
    # Ollama's shape: DELETE (or POST) with "name" or "model", 200 and an empty body
    r = c.request("DELETE", "/api/delete", json={"name": "tiny-b:latest"}, headers=AUTH)
    assert r.status_code == 200 and r.content == b""
    assert list(store.iterdir()) == [] and c.get("/api/tags", headers=AUTH).json()["models"] == []
    assert c.post("/api/delete", json={"model": "tiny-b"}, headers=AUTH).status_code == 404


def test_a_model_in_use_or_given_with_m_is_not_deleted(store, tmp_path):
    m = ModelManager.from_store(ModelStore(store), loader=fake_load, kv_reuse=False)
    c = app_for(m)
    m.get("tiny-a").leases += 1  # a request holds it
    r = c.post("/api/v1/delete", json={"model": "tiny-a"}, headers=AUTH)
    assert r.status_code == 409 and (store / "tiny-a").is_dir()
    m.get("tiny-a").leases -= 1
    # serve -m FOLDER: that folder is the user's, never deleted by the server
    outside = prepared(tmp_path / "mine" / "tiny-c", tmp_path)
    pre = ModelManager.preloaded([outside], loader=fake_load, kv_reuse=False)
    pre.ready = True
    r = app_for(pre).post("/api/v1/delete", json={"model": "tiny-c"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["code"] == "not_in_store", r.text
    assert "serve -m" in r.json()["error"]["message"] and outside.is_dir()


def test_serve_starts_on_an_empty_store_and_says_how_to_fill_it(tmp_path):
    empty = tmp_path / "empty-store"
    m = manager(None, empty, loader=fake_load, kv_reuse=False, spawn=None)
    text = banner(m, False, 1)
    assert f"no model in {empty} yet" in text and "oga-npu pull NAME" in text and "oga-npu prepare" in text
    c = app_for(m)
    assert c.get("/health").status_code == 200
    assert c.get("/v1/models", headers=AUTH).json()["data"] == []
    r = c.post(
        "/v1/chat/completions", json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}, headers=AUTH
    )
    assert r.status_code == 404 and "oga-npu pull NAME" in r.json()["error"]["message"], r.text
    r = c.post("/api/chat", json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]}, headers=AUTH)
    assert r.status_code == 404 and "no model is installed yet" in r.json()["error"]
