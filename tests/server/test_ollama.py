"""Ollama's API (oga_npu/server/ollama.py): the translation as pure functions, then the official
`ollama` Python client against a real `oga-npu serve` (the tiny model, an API key)."""

from __future__ import annotations

import json
import shutil
import time

import httpx
import ollama
import pytest
from pydantic import ValidationError
from serverutil import running

from oga_npu.generate import GenerationEvent
from oga_npu.server import ollama as ol
from oga_npu.server import plan
from oga_npu.server.errors import ApiError
from oga_npu.server.ollama_models import folder_facts
from oga_npu.server.schemas import ChatRequest, CompletionRequest
from oga_npu.workdir import MANIFEST

KEY = "test-key-ollama"


# ---------------------------------------------------------------- translation (pure)


def test_chat_translation_maps_options_and_format():
    req = ol.OllamaChat.model_validate(
        {
            "model": "m",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "format": "json",
            "stream": False,
            "keep_alive": "5m",
            "options": {
                "temperature": 0.2,
                "top_p": 0.9,
                "top_k": 7,
                "seed": 3,
                "num_predict": 12,
                "stop": ["\n"],
                "repeat_penalty": 1.1,
            },
        }
    )
    inner = ol.chat_request(req)
    assert isinstance(inner, ChatRequest)
    assert [(m.role, m.content) for m in inner.messages] == [("system", "be brief"), ("user", "hi")]
    assert (inner.temperature, inner.top_p, inner.top_k, inner.seed) == (0.2, 0.9, 7, 3)
    assert inner.max_tokens == 12 and inner.stop == ["\n"] and inner.repetition_penalty == 1.1
    assert inner.response_format.type == "json_object" and inner.stream is False


def test_format_schema_and_unlimited_num_predict():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    req = ol.OllamaChat.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "x"}], "format": schema, "options": {"num_predict": -1}}
    )
    inner = ol.chat_request(req)
    assert inner.response_format.type == "json_schema" and inner.response_format.json_schema.schema_ == schema
    assert inner.max_tokens is None and inner.stream is True  # Ollama streams by default


def test_latest_tag_names_the_model_and_seed_minus_one_is_random():
    req = ol.OllamaChat.model_validate(
        {"model": "tiny:latest", "messages": [{"role": "user", "content": "x"}], "options": {"seed": -1}}
    )
    inner = ol.chat_request(req)
    assert inner.model == "tiny" and inner.seed is None  # a fresh seed, as llama.cpp takes -1
    assert ol.OllamaModel.model_validate({"name": "tiny:latest"}).name == "tiny"
    assert (
        ol.chat_request(
            ol.OllamaChat.model_validate({"model": "a:q4", "messages": [{"role": "user", "content": "x"}]})
        ).model
        == "a:q4"
    )  # other tags stay
    with pytest.raises(ValidationError):
        ol.OllamaChat.model_validate({"model": "m", "messages": [], "options": {"seed": -2}})


def test_generate_translation_template_or_raw():
    g = ol.generate_request(ol.OllamaGenerate.model_validate({"model": "m", "prompt": "why", "system": "s"}))
    assert isinstance(g, ChatRequest) and [m.role for m in g.messages] == ["system", "user"]
    raw = ol.generate_request(ol.OllamaGenerate.model_validate({"model": "m", "prompt": "abc", "raw": True}))
    assert isinstance(raw, CompletionRequest) and raw.prompt == "abc" and raw.max_tokens is None


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": "x", "template": "{{ .Prompt }}"}, "template"),
        ({"prompt": "x", "images": ["aGk="]}, "images"),
        ({"prompt": "x", "context": [1, 2]}, "context"),
        ({"prompt": "x", "raw": True, "format": "json"}, "format"),
        ({"prompt": "x", "think": True}, "think"),
        ({"prompt": "x", "options": {"num_predict": 0}}, "options.num_predict"),
    ],
)
def test_generate_refuses_what_it_does_not_do(body, param):
    with pytest.raises(ApiError) as e:
        ol.generate_request(ol.OllamaGenerate.model_validate({"model": "m", **body}))
    assert e.value.status == 400 and e.value.param == param


def test_unknown_option_is_refused_not_ignored():
    with pytest.raises(Exception) as e:
        ol.OllamaChat.model_validate({"model": "m", "messages": [], "options": {"mirostat": 2}})
    assert "mirostat" in str(e.value)
    with pytest.raises(ApiError) as e:
        ol.chat_request(
            ol.OllamaChat.model_validate(
                {"model": "m", "tools": [{"type": "function"}], "messages": [{"role": "user", "content": "x"}]}
            )
        )
    assert e.value.param == "tools"


def test_final_object_counts_and_durations_in_ns():
    ev = GenerationEvent(
        text="", token=None, prompt_tokens=9, generated_tokens=5, finish_reason="length", ttft=0.25, decode_tps=8.0
    )
    out = ol.final(ol.chat_piece("m", ""), "hello", ev, started=0.0, load_s=0.5)
    assert out["done"] is True and out["done_reason"] == "length" and out["message"]["content"] == "hello"
    assert out["prompt_eval_count"] == 9 and out["eval_count"] == 5
    assert out["prompt_eval_duration"] == 250_000_000 and out["eval_duration"] == 500_000_000  # 4 tokens / 8 tok/s
    assert out["load_duration"] == 500_000_000 and out["total_duration"] > 0
    gen = ol.final(ol.generate_piece("m", ""), "t", None, 0.0, 0.0)
    assert gen["response"] == "t" and gen["done_reason"] == "stop" and gen["eval_count"] == 0


def test_error_shape_only_on_ollama_paths():
    assert ol.is_ollama_path("/api/chat") and ol.is_ollama_path("/api/tags")
    assert not ol.is_ollama_path("/api/v1/load") and not ol.is_ollama_path("/v1/models")
    assert ol.ollama_body(ApiError(404, "no model x")) == {"error": "no model x"}


# ---------------------------------------------------------------- the official client, a real server


@pytest.fixture(scope="module")
def server(tiny_model):
    with running(tiny_model, args=("--api-key", KEY)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server.base, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


@pytest.fixture(scope="module")
def model_id(tiny_model):
    return tiny_model.name


def test_client_tags_show_ps_version(server, client, model_id):
    models = client.list().models
    assert [m.model for m in models] == [model_id]
    assert models[0].size > 0 and models[0].details.format == "onnx"
    info = client.show(model_id)
    assert info.modelinfo["oga_npu.context_length"] == 512 and "completion" in info.capabilities
    assert [m.model for m in client.ps().models] == [model_id]  # -m preloads it
    assert client.show(f"{model_id}:latest").modelinfo == info.modelinfo  # the tag clients add
    r = httpx.get(server.base + "/api/version", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["version"]


def test_show_details_family_parameters_quantization(server, client, model_id, tiny_model, tmp_path):
    """details.family is the model's type (genai_config.json), never empty; a gguf-native model's
    quantization_level is its GGUF's type."""
    family = json.loads((tiny_model / "genai_config.json").read_text())["model"]["type"]
    d = client.show(model_id).details
    assert d.family == family and d.families == [family] and d.format == "onnx"
    assert d.parameter_size and d.quantization_level
    assert client.list().models[0].details.family == family
    copy = tmp_path / "native-cpu"
    shutil.copytree(tiny_model, copy)
    manifest = json.loads((copy / MANIFEST).read_text())
    manifest.update(source="/m/SmolLM2-135M-Instruct.Q4_1.gguf", source_kind="gguf", recipe="gguf-native")
    (copy / MANIFEST).write_text(json.dumps(manifest))
    facts = folder_facts(copy)
    assert facts["architecture"] == family and facts["quantization"] == "Q4_1" and facts["params"]


def test_format_json_is_an_object_with_a_member(client, model_id):
    """format "json": held to compact JSON with `{}` allowed, a small model answered `{}`; the
    grammar asks for at least one member and allows a little whitespace."""
    kind, grammar = plan.response_format_guidance(
        ChatRequest.model_validate(
            {"model": "m", "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}
        ),
        True,
    )
    assert kind == "json_schema" and json.loads(grammar)["minProperties"] == 1
    r = client.chat(
        model=model_id,
        messages=[{"role": "user", "content": "Describe a cat as JSON."}],
        format="json",
        options={"temperature": 0, "num_predict": 60},
    )
    text = r.message.content
    assert text.lstrip().startswith("{") and not text.replace(" ", "").replace("\n", "").startswith("{}"), text
    if r.done_reason == "stop":  # a random model may write a long object; what came is an object's start
        obj = json.loads(text)
        assert isinstance(obj, dict) and len(obj) >= 1


def test_client_chat_whole_and_streamed(server, client, model_id):
    msgs = [{"role": "user", "content": "count: one two three"}]
    r = client.chat(model=model_id, messages=msgs, options={"temperature": 0, "num_predict": 6})
    assert r.done and r.done_reason == "length" and r.eval_count == 6 and r.prompt_eval_count > 0
    assert r.message.role == "assistant" and r.message.content
    assert r.total_duration >= r.prompt_eval_duration > 0
    parts = list(client.chat(model=model_id, messages=msgs, stream=True, options={"temperature": 0, "num_predict": 6}))
    assert parts[-1].done and not any(p.done for p in parts[:-1]) and len(parts) >= 2
    assert "".join(p.message.content for p in parts) == r.message.content  # greedy: the same answer
    assert parts[-1].eval_count == 6
    last = httpx.get(server.base + "/v1/stats", headers={"Authorization": f"Bearer {KEY}"}).json()
    assert last["last_request"]["cached_tokens"] >= r.prompt_eval_count - 1  # the same prompt: KV reused


def test_client_generate_whole_and_streamed(client, model_id):
    r = client.generate(model=model_id, prompt="say hi", options={"temperature": 0, "num_predict": 5})
    assert r.done and r.response and r.eval_count == 5
    parts = list(
        client.generate(model=model_id, prompt="say hi", stream=True, options={"temperature": 0, "num_predict": 5})
    )
    assert "".join(p.response for p in parts) == r.response and parts[-1].done
    raw = client.generate(model=model_id, prompt="one two", raw=True, options={"num_predict": 3, "temperature": 0})
    assert raw.eval_count == 3


def test_client_errors_are_ollama_shaped_4xx(server, client, model_id):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 404 and "no-such-model" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.show("no-such-model")
    assert e.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=model_id, prompt="x", options={"num_ctx": 100000})
    assert e.value.status_code == 400 and "num_ctx" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model=model_id, prompt="x", options={"mirostat": 1})
    assert e.value.status_code == 400 and "mirostat" in e.value.error
    # the same door as the OpenAI routes: no key, wrong content type, past the body limit
    r = httpx.post(server.base + "/api/chat", json={"model": model_id, "messages": []})
    assert r.status_code == 401 and isinstance(r.json()["error"], str)
    r = httpx.post(
        server.base + "/api/chat",
        content=b"{}",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "text/plain"},
    )
    assert r.status_code == 400 and "Content-Type" in r.json()["error"]
    r = httpx.get(server.base + "/api/tags", headers={"Authorization": f"Bearer {KEY}", "Host": "evil.example"})
    assert r.status_code == 400


def test_num_ctx_caps_the_answer_and_empty_request_loads(server, client, model_id):
    r = client.generate(model=model_id, prompt="one two three", options={"num_ctx": 40, "temperature": 0})
    assert r.prompt_eval_count + r.eval_count <= 40 and r.done
    r = client.generate(model=model_id, prompt="")
    assert r.done and r.done_reason == "load"
    with httpx.stream(
        "POST",
        server.base + "/api/generate",
        headers={"Authorization": f"Bearer {KEY}"},
        json={"model": model_id, "prompt": "hello", "options": {"num_predict": 4}},
    ) as s:
        assert s.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(x) for x in s.iter_lines() if x]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 4


def test_client_format_schema_is_enforced(client, model_id):
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["answer"],
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
    }
    r = client.chat(
        model=model_id,
        messages=[{"role": "user", "content": "yes or no?"}],
        format=schema,
        options={"temperature": 0, "num_predict": 30},
    )
    assert json.loads(r.message.content)["answer"] in ("yes", "no") and r.done_reason == "stop"
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=model_id, messages=[{"role": "user", "content": "x"}], format={"type": "nonsense"})
    assert e.value.status_code == 400 and "response_format" not in e.value.error


def test_closed_stream_stops_its_generation(server, client, model_id):
    auth = {"Authorization": f"Bearer {KEY}"}

    def cancelled() -> float:
        text = httpx.get(server.base + "/metrics", headers=auth).text
        return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith("oga_npu_cancelled_requests_total{"))

    before = cancelled()
    with httpx.stream(
        "POST",
        server.base + "/api/generate",
        headers=auth,
        json={
            "model": model_id,
            "prompt": "go on forever",  # whole-vocabulary sampling: slow
            "options": {"num_predict": 460, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "seed": 1},
        },
    ) as s:
        first = json.loads(next(s.iter_lines()))
        assert first["done"] is False
    r = client.generate(model=model_id, prompt="hi", options={"num_predict": 2})  # the device is free again
    assert r.eval_count == 2
    deadline = time.monotonic() + 10
    while cancelled() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert cancelled() == before + 1


# ---------------------------------------------------------------- fuzz: never a 5xx, always Ollama's error shape

OLLAMA_KEYS = [
    "model",
    "messages",
    "prompt",
    "system",
    "template",
    "raw",
    "format",
    "options",
    "stream",
    "keep_alive",
    "think",
    "tools",
    "images",
    "suffix",
    "context",
]
OPTION_KEYS = ["temperature", "top_p", "top_k", "seed", "num_predict", "stop", "repeat_penalty", "num_ctx", "mirostat"]


def _send(server, path: str, body) -> tuple[int, list[dict]]:
    data = body if isinstance(body, bytes) else json.dumps(body, allow_nan=True).encode()
    r = httpx.post(
        server.base + path,
        content=data,
        timeout=60,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    return r.status_code, [json.loads(x) for x in r.text.splitlines() if x.strip()]


def test_fuzz_chat_and_generate(server, tiny_model):
    pytest.importorskip("hypothesis", reason="hypothesis is in the dev extra: pip install -e .[dev]")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    scalars = (
        st.none()
        | st.booleans()
        | st.integers(min_value=-(2**40), max_value=2**40)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=12)
        | st.sampled_from(["json", "", "user", "assistant", "\ud800", "5m"])
    )
    values = st.recursive(
        scalars,
        lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(["role", "content", "type"]), inner, max_size=3),
        max_leaves=12,
    )
    options = st.dictionaries(st.sampled_from(OPTION_KEYS), values, max_size=3)
    base = {"model": tiny_model.name, "options": {"num_predict": 2}}
    bodies = (
        st.dictionaries(st.sampled_from(OLLAMA_KEYS), values, max_size=3).map(lambda d: {**base, **d})
        | options.map(lambda o: {**base, "prompt": "hi", "options": {"num_predict": 2, **o}})
        | values
    )

    @settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(body=bodies, path=st.sampled_from(["/api/chat", "/api/generate", "/api/show"]))
    def run(body, path):
        code, objs = _send(server, path, body)
        assert code < 500, (path, body, code, objs)
        if code >= 400:
            assert len(objs) == 1 and isinstance(objs[0]["error"], str) and "/tmp" not in objs[0]["error"]
        else:
            assert not any("error" in o for o in objs), (path, body, objs)

    run()
    assert httpx.get(server.base + "/health").status_code == 200
