"""`oga-npu pull` (oga_npu/pull/) against a local hub-shaped server (tests/hubserver.py) through
huggingface_hub's own client: OGA folders by variant, GGUF files prepared, AMD hybrid folders
listed and refused here, resume, sha256, 401/404, offline; and the catalog's shape."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import tomllib
from conftest import call, smollm2_gguf
from hubserver import HubServer, folder_files

from oga_npu.errors import HubError, IntegrityError, PullError
from oga_npu.pull import PullRequest, pull
from oga_npu.pull import catalog as cat
from oga_npu.store import ModelStore
from oga_npu.workdir import MANIFEST, read_json

CPU_REPO = "acme/tiny-onnx"
HYBRID_REPO = "amd/Tiny-onnx-ryzenai-1.7-hybrid"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A hub-shaped server, and huggingface_hub (already imported) pointed at it, online."""
    from huggingface_hub import constants

    with HubServer() as h:
        cache = tmp_path / "hf_home" / "hub"
        for k, v in {
            "ENDPOINT": h.url,
            "HUGGINGFACE_CO_URL_TEMPLATE": h.url + "/{repo_id}/resolve/{revision}/{filename}",
            "HF_HUB_OFFLINE": False,
            "HF_HUB_CACHE": str(cache),
        }.items():
            monkeypatch.setattr(constants, k, v)
        monkeypatch.setenv("HF_ENDPOINT", h.url)
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        yield h


def _dml_copy(tiny_model, dst):
    shutil.copytree(tiny_model, dst, ignore=shutil.ignore_patterns("stages", "logs", MANIFEST, "prepare.json"))
    cfg = json.loads((dst / "genai_config.json").read_text())
    cfg["model"]["decoder"]["session_options"]["provider_options"] = [{"dml": {}}]
    (dst / "genai_config.json").write_text(json.dumps(cfg))
    return dst


def _hybrid_copy(tiny_model, dst):
    shutil.copytree(tiny_model, dst, ignore=shutil.ignore_patterns("stages", "logs", MANIFEST, "prepare.json"))
    cfg = json.loads((dst / "genai_config.json").read_text())
    cfg["model"]["decoder"]["session_options"]["provider_options"] = [
        {"RyzenAI": {"external_data_file": "model_jit.pb.bin", "hybrid_opt_max_seq_length": "4096"}}
    ]
    (dst / "genai_config.json").write_text(json.dumps(cfg))
    return dst


def _cpu_repo(hub, tiny_model, tmp_path):
    files = {**folder_files(tiny_model, "cpu_and_mobile/cpu-int4/"), "README.md": b"# tiny\n"}
    files.update(folder_files(_dml_copy(tiny_model, tmp_path / "dml"), "directml/dml-int4/"))
    return hub.add(CPU_REPO, files)


# ---------------------------------------------------------------- the catalog


def test_every_catalog_entry_has_its_shape():
    raw = tomllib.loads(cat.CATALOG_FILE.read_text())["model"]
    assert all(cat.check_entry(r) == [] for r in raw), [(r["name"], cat.check_entry(r)) for r in raw]
    entries = cat.load()
    targets = {e.target for e in entries}
    assert {"hybrid", "npu", "cpu", "dml", "gguf"} <= targets
    assert {e.release for e in entries if e.target in ("hybrid", "npu")} >= {"1.6", "1.7", "1.8"}
    assert len({e.name for e in entries}) == len(entries)
    # a malformed row is caught (the check is not vacuous)
    bad = dict(raw[0], target="tpu", repo="no-slash", size_bytes=0)
    assert len(cat.check_entry(bad)) == 3


def test_fits_here_reads_memory_npu_and_runtime():
    e = next(x for x in cat.load() if x.target == "hybrid" and x.release == "1.7")
    linux = cat.Machine(16 << 30, True, "Linux", "0.11.2", True, ("1.7", "1.7.1"))
    assert cat.fits(e, linux) == (False, pytest.approx(cat.fits(e, linux)[1])) and "Windows" in cat.fits(e, linux)[1]
    win = cat.Machine(32 << 30, True, "Windows", "0.14.0", True, ("1.8",))
    ok, why = cat.fits(e, win)
    assert not ok and "1.7" in why and "1.8" in why
    ok, _ = cat.fits(e, cat.Machine(32 << 30, True, "Windows", "0.11.2", True, ("1.7", "1.7.1")))
    assert ok
    small = cat.Machine(1 << 30, False, "Linux", "0.18.0", False, ())
    assert "memory" in cat.fits(next(x for x in cat.load() if x.size_bytes > 2e9 and x.target == "cpu"), small)[1]
    assert "pull" in cat.suggestion(list(cat.load()), win)


def test_models_available_lists_the_catalog(capsys):
    code, out, err = call(capsys, "models", "--available", "--json")
    rows = json.loads(out)
    assert code == 0 and len(rows) == len(cat.load())
    assert set(rows[0]) == set(cat.FIELDS) | {"fits", "why", "installed"}
    assert all(r["fits"] is False for r in rows if r["target"] == "hybrid")  # no NPU here


# ---------------------------------------------------------------- OGA folders


def test_oga_folder_by_variant_is_checked_placed_and_runs(hub, tiny_model, tmp_path, capsys):
    repo = _cpu_repo(hub, tiny_model, tmp_path)
    with pytest.raises(PullError) as e:
        pull(PullRequest(CPU_REPO))
    assert "2 model variants" in e.value.message and "directml/dml-int4" in e.value.message
    events = []
    res = pull(PullRequest(CPU_REPO, variant="cpu"), events.append)
    assert res.path == ModelStore().root / "tiny-onnx-cpu-int4" and res.revision == repo.commit
    m = read_json(res.path / MANIFEST)
    assert m["pull"]["repo"] == CPU_REPO and m["pull"]["variant"] == "cpu_and_mobile/cpu-int4"
    assert m["pull"]["revision"] == repo.commit and m["target"] == "cpu"
    assert m["pull"]["checked"]["model.onnx"] == "sha256" and "README.md" not in m["files"]
    statuses = [ev.status for ev in events]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    assert any(ev.digest and ev.completed == ev.total > 0 for ev in events)
    assert not (res.path.parent / (res.path.name + ".partial")).exists()
    assert pull(PullRequest(CPU_REPO, variant="cpu")).already  # a second pull finds it
    code, out, err = call(capsys, "run", "-m", res.name, "--max-tokens", "3", "Hi")
    assert code == 0, err
    code, out, _ = call(capsys, "models", "--json")
    row = next(r for r in json.loads(out) if r["name"] == res.name)
    assert row["state"] == "ready" and row["target"] == "cpu"


def test_hybrid_folder_is_listed_with_its_release_and_refused_with_the_reason(hub, tiny_model, tmp_path, capsys):
    hub.add(HYBRID_REPO, folder_files(_hybrid_copy(tiny_model, tmp_path / "hy")))
    res = pull(PullRequest(HYBRID_REPO))
    m = read_json(res.path / MANIFEST)
    assert m["target"] == "hybrid" and m["pull"]["release"] == "1.7"
    assert m["requires"]["onnxruntime-genai"] == "0.11.2"
    code, out, err = call(capsys, "run", "-m", res.name, "Hi")
    assert code != 0 and "hybrid" in err.lower() and "Fix" in err
    code, out, err = call(capsys, "models")
    assert code == 0 and f"{res.name}: a Ryzen AI 1.7 hybrid model; runs here: no (" in err
    assert "hybrid" in next(line for line in out.splitlines() if line.startswith(res.name))


def test_interrupted_pull_shows_incomplete_and_a_dropped_connection_resumes(hub, tiny_model, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)  # bytes reach the .incomplete file before the drop
    _cpu_repo(hub, tiny_model, tmp_path)
    store = ModelStore()
    (store.root / "tiny-onnx-cpu-int4.partial").mkdir(parents=True)
    (store.root / "tiny-onnx-cpu-int4.partial" / "prepare.json").write_text('{"source": "x", "pull": true}')
    partial = {e.name: e for e in store.entries(facts=False)}["tiny-onnx-cpu-int4.partial"]
    assert partial.state == "incomplete" and "oga-npu pull x resumes it" in partial.reason
    big = "cpu_and_mobile/cpu-int4/model.onnx"
    hub.drop_once.add(f"{CPU_REPO}/{big}")
    res = pull(PullRequest(CPU_REPO, variant="cpu"))
    ranges = [r for m, p, r in hub.requests if p.endswith(big) and m == "GET"]
    assert len(ranges) == 2 and ranges[0] is None and ranges[1].startswith("bytes=")  # resumed, not restarted
    assert (res.path / "model.onnx").read_bytes() == (tiny_model / "model.onnx").read_bytes()
    assert [e.name for e in store.entries(facts=False)] == ["tiny-onnx-cpu-int4"]


def test_sha256_mismatch_is_refused_and_the_bad_copy_dropped(hub, tiny_model, tmp_path):
    _cpu_repo(hub, tiny_model, tmp_path)
    hub.tamper.add(f"{CPU_REPO}/cpu_and_mobile/cpu-int4/model.onnx")
    with pytest.raises(IntegrityError) as e:
        pull(PullRequest(CPU_REPO, variant="cpu"))
    assert "sha256" in e.value.message and e.value.fix
    assert not (ModelStore().root / "tiny-onnx-cpu-int4").exists()
    hub.tamper.clear()
    assert pull(PullRequest(CPU_REPO, variant="cpu")).path.is_dir()  # the next pull downloads it again


@pytest.mark.parametrize("code,words", [(401, "private"), (404, "not found")])
def test_401_and_404_give_one_line_and_a_fix(hub, code, words):
    hub.add("acme/secret", {"config.json": b"{}"})
    hub.status["acme/secret"] = code
    with pytest.raises(HubError) as e:
        pull(PullRequest("acme/secret"))
    assert words in e.value.message and "\n" not in e.value.message and "HF_TOKEN" in e.value.fix


def test_offline_with_a_populated_cache(hub, tiny_model, tmp_path, monkeypatch):
    from huggingface_hub import constants

    _cpu_repo(hub, tiny_model, tmp_path)
    first = pull(PullRequest(CPU_REPO, variant="cpu"))
    shutil.rmtree(first.path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    n = len(hub.requests)
    res = pull(PullRequest(CPU_REPO, variant="cpu"))
    assert len(hub.requests) == n  # nothing asked of the hub
    assert read_json(res.path / MANIFEST)["pull"]["offline"] is True
    assert read_json(res.path / MANIFEST)["pull"]["checked"]["model.onnx"] == "sha256"  # the blob's name


def test_unknown_name_and_missing_quant_say_what_exists(hub):
    hub.add("acme/m-GGUF", {"m-Q8_0.gguf": b"GGUF" + b"\0" * 64})
    with pytest.raises(PullError) as e:
        pull(PullRequest("acme/m-GGUF:Q4_1"))
    assert "Q8_0" in e.value.message
    with pytest.raises(PullError) as e:
        pull(PullRequest("smollm"))
    assert "smollm2-135m-instruct" in e.value.fix


# ---------------------------------------------------------------- GGUF: pulled, prepared, run (the CLI)


@pytest.mark.slow
def test_gguf_by_quant_then_run_answers(tmp_path, session_home, smol_native, hub, capsys, inprocess_tools):
    """The session's prepare of the same file (smol_native) dequantized it: the pulled copy (a
    link to a blob in the HF cache) uses that copy instead of dequantizing it again. The CLI,
    and the prepare's builder and validate, run in this process (conftest.call, inprocess_tools;
    huggingface_hub pointed at the hub server by the hub fixture); the pull as a child process is
    test_ollama_client_pull_streams_progress_and_the_model_then_chats' server."""
    gguf = smollm2_gguf()
    assert os.environ["OGA_NPU_HOME"] == str(session_home)
    hub.add("acme/SmolLM2-135M-Instruct-GGUF", {"SmolLM2-135M-Instruct.Q4_1.gguf": gguf, "README.md": b"x"})
    code, out, err = call(capsys, "pull", "acme/SmolLM2-135M-Instruct-GGUF:Q4_1")
    assert code == 0, err
    name = out.strip()
    assert name == "smollm2-135m-instruct-q4_1-cpu" and "pulling manifest" in err
    assert "use the dequantized copy of SmolLM2-135M-Instruct.Q4_1.gguf" in err, err
    code, out, err = call(capsys, "run", "-m", name, "--max-tokens", "8", "What is the capital of France?")
    assert code == 0 and out.strip(), err


def test_a_pulled_gguf_shares_the_dequantize_cache_of_the_same_file(tmp_path):
    """A pulled GGUF is an HF-cache link named like the file to a blob named by its hash: its
    dequantize cache (and the source stage's key) is the one the same file gets from its own
    path, so pulling a GGUF prepared before does not dequantize it again (named by the blob it did)."""
    from oga_npu.prepare.source import Source, gguf_cache_of, local_key

    own = tmp_path / "own" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    own.parent.mkdir()
    own.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    blob = tmp_path / "hub" / "blobs" / ("b179c952" * 8)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(own.read_bytes())
    link = tmp_path / "hub" / "snapshots" / "accb7703" / own.name
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    assert gguf_cache_of(str(link)) == gguf_cache_of(str(own))
    assert gguf_cache_of(str(link)).name.startswith("smollm2-135m-instruct-")
    assert local_key(Source(str(link), "gguf", "x")) == local_key(Source(str(own), "gguf", "x"))
    blob.write_bytes(own.read_bytes()[:-1] + b"x")  # other content: another cache
    assert gguf_cache_of(str(link)) != gguf_cache_of(str(own))


# ---------------------------------------------------------------- the server: Ollama's pull, /api/v1/pull, the catalog

KEY = "test-key-pull"


def test_ollama_client_pull_streams_progress_and_the_model_then_chats(tiny_model, tmp_path):
    import ollama
    from serverutil import running

    store = tmp_path / "models"
    shutil.copytree(tiny_model, store / "tiny", ignore=shutil.ignore_patterns("stages", "logs"))
    with HubServer() as h:
        files = {**folder_files(tiny_model, "cpu_and_mobile/cpu-int4/")}
        h.add(CPU_REPO, files)
        h.add(HYBRID_REPO, folder_files(_hybrid_copy(tiny_model, tmp_path / "hy")))
        env = {"HF_ENDPOINT": h.url, "HF_HUB_OFFLINE": "0", "OGA_NPU_MODELS": str(store)}
        with running(args=("--api-key", KEY), env=env) as s:
            client = ollama.Client(host=s.base, headers={"Authorization": f"Bearer {KEY}"})
            parts = list(client.pull(CPU_REPO, stream=True))
            statuses = [p.status for p in parts]
            assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
            assert any(p.digest and p.total and p.completed == p.total for p in parts)
            assert "verifying sha256 digest" in statuses and "writing manifest" in statuses
            reply = client.chat(
                model="tiny-onnx-cpu-int4", messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 3}
            )
            assert reply.message.role == "assistant"
            # the same pull again: already in the store, one final object with stream=false
            assert client.pull(CPU_REPO, stream=False).status == "success"
            # /api/v1/pull: behind the key, NDJSON lines, the last one names the model
            code, _, body = s.post("/api/v1/pull", {"model": HYBRID_REPO})
            assert code == 401
            code, _, body = s.post(
                "/api/v1/pull", {"model": HYBRID_REPO, "stream": False}, {"Authorization": f"Bearer {KEY}"}
            )
            assert code == 200 and body == {"status": "success", "model": "tiny-onnx-ryzenai-1.7-hybrid"}
            # a 404 from the hub: Ollama's error shape with a 4xx
            code, _, body = s.post(
                "/api/pull", {"model": "acme/nope", "stream": False}, {"Authorization": f"Bearer {KEY}"}
            )
            assert code == 404 and "not found" in body["error"]
            code, text = s.get("/api/v1/catalog", {"Authorization": f"Bearer {KEY}"})
            rows = json.loads(text)["data"]
            assert code == 200 and set(rows[0]) == set(cat.FIELDS) | {"fits", "why", "installed"}
            code, text = s.get("/v1/models", {"Authorization": f"Bearer {KEY}"})
            ids = [m["id"] for m in json.loads(text)["data"]]
            assert "tiny-onnx-cpu-int4" in ids and "tiny-onnx-ryzenai-1.7-hybrid" in ids


def test_manager_refresh_lists_a_model_pulled_after_start(tmp_path):
    from oga_npu.server.models import ModelManager

    store = ModelStore(tmp_path / "store")
    (store.root / "a").mkdir(parents=True)
    (store.root / "a" / "genai_config.json").write_text("{}")
    m = ModelManager.from_store(store)
    assert [e.id for e in m.entries()] == ["a"]
    (store.root / "b").mkdir()
    (store.root / "b" / "genai_config.json").write_text("{}")
    assert "b" in m.refresh(force=True).added and {e.id for e in m.entries()} == {"a", "b"}
    assert m.get("a") is not None and not ModelManager.preloaded([]).refresh(force=True)


def test_too_little_disk_is_refused_before_any_download(hub, monkeypatch):
    import collections

    from oga_npu.pull import place

    cfg = json.dumps({"model": {"type": "llama", "decoder": {"filename": "model.onnx"}}}).encode()
    hub.add("acme/big", {"genai_config.json": cfg, "model.onnx": b"x" * 5000})
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(place.shutil, "disk_usage", lambda _p: usage(10**6, 10**6 - 100, 100))
    with pytest.raises(PullError) as e:
        pull(PullRequest("acme/big"))
    assert "GB free" in e.value.message and "HF_HOME" in e.value.fix
    assert not any("/resolve/" in p for _, p, _ in hub.requests)  # nothing downloaded
    assert not (ModelStore().root / "big.partial").exists()


def test_revision_pins_the_commit_and_an_unknown_one_is_named(hub):
    cfg = json.dumps({"model": {"type": "llama", "decoder": {"filename": "model.onnx"}}}).encode()
    repo = hub.add("acme/pinned", {"genai_config.json": cfg, "model.onnx": b"x" * 5000})
    res = pull(PullRequest("acme/pinned", revision=repo.commit, name="pinned"))
    assert read_json(res.path / MANIFEST)["pull"]["revision"] == repo.commit and res.name == "pinned"
    assert all(repo.commit in p for m, p, _ in hub.requests if "/resolve/" in p)  # every file fetched by commit
    with pytest.raises(HubError) as e:
        pull(PullRequest("acme/pinned", revision="v9"))
    assert "revision not found" in e.value.message and "--revision" in e.value.fix
