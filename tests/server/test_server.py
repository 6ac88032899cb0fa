"""`oga-npu serve` through the official openai client: one real server process (tiny model)
for the module, on a free 127.0.0.1 port, with an API key. Fault cases 26-31, 34, 35."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest
from serverutil import running

KEY = "test-key-15"


@pytest.fixture(scope="module")
def server(tiny_model):
    with running(tiny_model, args=("--api-key", KEY)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key=KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def model_id(tiny_model):
    return tiny_model.name


def _chat(client, model_id, content, **kw):
    return client.chat.completions.create(
        model=model_id, messages=[{"role": "user", "content": content}], temperature=kw.pop("temperature", 0), **kw
    )


def _stream_text(stream):
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


def test_models_health_and_metrics(server, client, model_id):
    models = client.models.list().data
    assert [m.id for m in models] == [model_id]
    info = models[0].model_dump()
    assert info["provider"] == "cpu" and info["context_length"] == 512 and info["kv_reuse"] is True
    assert info["recipe"] == "cpu-fast" and info["target"] == "cpu"
    assert info["hub_id"] is None and info["revision"] is None  # a local folder, not a hub model
    assert server.get("/health")[0] == 200  # no key needed for health
    _chat(client, model_id, "count tokens", max_tokens=3)
    assert server.get("/metrics")[0] == 401  # the key opens /metrics too (no anonymous metrics)
    code, text = server.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    assert code == 200
    assert f'oga_npu_completion_tokens_total{{model="{model_id}"}}' in text
    assert "oga_npu_ttft_seconds_bucket" in text and "oga_npu_queue_depth" in text


def test_manifest_records_the_source_and_chat_template(tiny_model, tiny_hf):
    from oga_npu.model import read_chat_template

    man = json.loads((tiny_model / "oga_npu_manifest.json").read_text())
    assert man["source"] == str(tiny_hf.resolve()) and man["source_kind"] == "folder"
    assert man["chat_template"] and man["chat_template"] == read_chat_template(tiny_hf)
    assert "hub_id" in man and "revision" in man


def test_chat_non_streaming_and_streaming_agree(client, model_id):
    r = _chat(client, model_id, "Tell me a story.", max_tokens=12)
    c = r.choices[0]
    assert c.message.role == "assistant" and c.message.content
    assert c.finish_reason == "length" and r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    chunks, text = _stream_text(_chat(client, model_id, "Tell me a story.", max_tokens=12, stream=True))
    assert text == c.message.content  # temperature 0: same answer both ways
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({ch.id for ch in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[-1].choices[0].finish_reason == "length"
    assert all(ch.usage is None for ch in chunks)  # no usage chunk unless asked


def test_fast_tokens_are_sent_together_and_the_text_is_the_same(client, model_id):
    """Default --stream-interval (30 ms): the tiny model makes a token in about a millisecond,
    so 40 tokens come in a few chunks, the first at once; the text equals the whole answer.
    (test_server_lifecycle runs a server with --stream-interval 0: a chunk per token.)"""
    whole = _chat(client, model_id, "Group these.", max_tokens=40, extra_body={"ignore_eos": True})
    chunks, text = _stream_text(
        _chat(
            client,
            model_id,
            "Group these.",
            max_tokens=40,
            stream=True,
            extra_body={"ignore_eos": True},
            stream_options={"include_usage": True},
        )
    )
    assert text == whole.choices[0].message.content
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert chunks[-1].usage.completion_tokens == 40
    assert 1 <= len(content) <= 20, len(content)


def test_include_usage_chunk(client, model_id):
    chunks, text = _stream_text(
        _chat(client, model_id, "Usage please.", max_tokens=5, stream=True, stream_options={"include_usage": True})
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage.completion_tokens == 5
    assert last.usage.prompt_tokens_details.cached_tokens >= 0
    assert chunks[-2].choices[0].finish_reason == "length"
    assert len({ch.id for ch in chunks}) == 1


def test_list_of_text_parts_equals_string_content(client, model_id):
    a = _chat(client, model_id, "two parts", max_tokens=6).choices[0].message.content
    b = client.chat.completions.create(
        model=model_id,
        temperature=0,
        max_completion_tokens=6,
        messages=[{"role": "user", "content": [{"type": "text", "text": "two "}, {"type": "text", "text": "parts"}]}],
    )
    assert b.choices[0].message.content == a


def test_stop_strings_end_the_answer_before_them(client, model_id):
    full = _chat(client, model_id, "Say many words.", max_tokens=24).choices[0].message.content
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip()
    r = _chat(client, model_id, "Say many words.", max_tokens=24, stop=[stop, "\u2603never"])
    assert r.choices[0].message.content == full[: full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    _, streamed = _stream_text(_chat(client, model_id, "Say many words.", max_tokens=24, stop=stop, stream=True))
    assert streamed == full[: full.index(stop)]


def test_seed_repeats_and_sampling_differs_without_it(client, model_id):
    kw = dict(max_tokens=16, temperature=1.0, top_p=0.95, extra_body={"top_k": 40})
    a = _chat(client, model_id, "Random words", seed=1234, **kw).choices[0].message.content
    b = _chat(client, model_id, "Random words", seed=1234, **kw).choices[0].message.content
    _, c = _stream_text(_chat(client, model_id, "Random words", seed=1234, stream=True, **kw))
    assert a == b == c
    others = {_chat(client, model_id, "Random words", seed=s, **kw).choices[0].message.content for s in (1, 2, 3)}
    assert len(others | {a}) > 1


def test_second_turn_reports_cached_tokens(client, model_id):
    msgs = [{"role": "system", "content": "You are brief."}, {"role": "user", "content": "First turn here."}]
    r1 = client.chat.completions.create(model=model_id, messages=msgs, temperature=0, max_tokens=8)
    msgs += [
        {"role": "assistant", "content": r1.choices[0].message.content},
        {"role": "user", "content": "Second turn."},
    ]
    r2 = client.chat.completions.create(model=model_id, messages=msgs, temperature=0, max_tokens=8)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert r1.usage.prompt_tokens - 1 <= cached < r2.usage.prompt_tokens


def test_json_schema_answer_parses_and_validates(client, model_id):
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["answer", "count"],
        "properties": {
            "answer": {"type": "string", "enum": ["yes", "no"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 9},
        },
    }
    r = _chat(
        client,
        model_id,
        "Answer in JSON.",
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    )
    obj = json.loads(r.choices[0].message.content)
    assert set(obj) == {"answer", "count"} and obj["answer"] in ("yes", "no") and 0 <= obj["count"] <= 9
    assert r.choices[0].finish_reason == "stop"
    r = _chat(client, model_id, "Any JSON object.", max_tokens=60, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:  # a random model may write a long object; what came is an object's start
        assert r.choices[0].message.content.startswith("{")


def test_required_tool_call_in_the_openai_shape(client, model_id):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather of a city",
                "parameters": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["city"],
                    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                },
            },
        }
    ]
    r = _chat(client, model_id, "Weather in Paris?", max_tokens=40, tools=tools, tool_choice="required")
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    assert call.function.name == "get_weather" and json.loads(call.function.arguments)["city"] in ("Paris", "Rome")


def test_auto_tool_choice_is_a_call_or_text_and_streams_the_same(client, model_id):
    """tool_choice auto (the default with tools): the grammar allows one valid call, or text
    that does not start with '{'; greedy, the streamed answer equals the whole one."""
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["city"],
                    "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
                },
            },
        }
    ]
    for prompt in ("Weather in Paris?", "Tell me a joke.", "Call get_weather for Rome."):
        r = _chat(client, model_id, prompt, max_tokens=24, tools=tools)
        c = r.choices[0]
        chunks, text = _stream_text(_chat(client, model_id, prompt, max_tokens=24, tools=tools, stream=True))
        if c.finish_reason == "tool_calls":
            call = c.message.tool_calls[0]
            assert call.function.name == "get_weather"
            assert json.loads(call.function.arguments)["city"] in ("Paris", "Rome")
            assert chunks[-1].choices[0].finish_reason == "tool_calls"
        else:
            assert c.message.tool_calls is None and c.message.content
            assert not c.message.content.startswith("{") or c.finish_reason == "length"
            assert text == c.message.content


@pytest.mark.parametrize(
    "extra, param", [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"), ({"presence_penalty": 0.5}, "presence_penalty")]
)
def test_unsupported_features_are_400_not_ignored(client, model_id, extra, param):
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, model_id, "hi", max_tokens=3, **extra)
    assert e.value.body["param"] == param and "not supported" in e.value.body["message"]


def test_unknown_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as e:
        _chat(client, "no-such-model", "hi", max_tokens=3)
    assert e.value.body["type"] == "not_found_error" and e.value.body["code"] == "model_not_found"


def test_context_exceeded_names_both_counts(client, model_id):
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, model_id, "hi", max_tokens=600)
    body = e.value.body
    assert body["code"] == "context_length_exceeded" and body["n_ctx"] == 512 and 0 < body["n_prompt_tokens"] < 100
    assert f"n_prompt_tokens={body['n_prompt_tokens']}" in body["message"] and "n_ctx=512" in body["message"]
    with pytest.raises(openai.BadRequestError) as e:  # without max_tokens: the prompt alone is too long
        _chat(client, model_id, "word " * 600)
    assert e.value.body["code"] == "context_length_exceeded" and e.value.body["n_prompt_tokens"] > 512


def test_completions_route(client, model_id):
    r = client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=7, temperature=0)
    assert r.choices[0].text and r.usage.completion_tokens == 7 and r.choices[0].finish_reason == "length"
    s = list(
        client.completions.create(model=model_id, prompt="Once upon a time", max_tokens=7, temperature=0, stream=True)
    )
    assert "".join(c.choices[0].text for c in s if c.choices) == r.choices[0].text
    for ids in ([1, 2, 3], [[1, 2], [3]]):  # OpenAI's token-id prompt forms: refused by name
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=model_id, prompt=ids, max_tokens=3)
        assert e.value.body["param"] == "prompt" and e.value.body["code"] == "not_supported"
        assert "token-id prompts are not supported" in e.value.body["message"]


@pytest.mark.parametrize("prompt", [[1, 2, 3], [[1, 2], [3]], [[5]], [0]])
def test_token_id_prompts_are_refused_by_name(prompt):
    """In process: the body parses (no 'prompt.str: Input should be a valid string') and the
    plan refuses it with a 400 that says what to send instead."""
    from oga_npu.server.errors import ApiError
    from oga_npu.server.plan import completion_prompt
    from oga_npu.server.schemas import CompletionRequest

    with pytest.raises(ApiError) as e:
        completion_prompt(CompletionRequest.model_validate({"model": "m", "prompt": prompt}))
    err = e.value.body()["error"]
    assert e.value.status == 400 and err["param"] == "prompt" and err["code"] == "not_supported"
    assert err["message"] == "token-id prompts are not supported by oga-npu serve: send the prompt as text"
    # text prompts still parse as text
    assert completion_prompt(CompletionRequest.model_validate({"model": "m", "prompt": ["hi"]})) == "hi"


@pytest.mark.parametrize(
    "body, ctype, param",
    [
        ("{", "application/json", None),  # invalid JSON
        ("[1, 2]", "application/json", None),  # not an object
        ('{"model": "m", "messages": []}', "text/plain", None),  # wrong Content-Type
        ('{"model": "%s"}', "application/json", "messages"),  # messages missing
        ('{"model": "%s", "messages": []}', "application/json", "messages"),
        ('{"model": "%s", "messages": "hi"}', "application/json", "messages"),
        ('{"model": "%s", "messages": [{"role": "wizard", "content": "x"}]}', "application/json", "messages.0.role"),
        (
            '{"model": "%s", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}',
            "application/json",
            "max_tokens",
        ),
        ('{"model": "%s", "messages": [{"role": "user", "content": "x"}], "top_p": 1.5}', "application/json", "top_p"),
        (
            '{"model": "%s", "messages": [{"role": "user", "content": "x"}], "frobnicate": 1}',
            "application/json",
            "frobnicate",
        ),
    ],
)
def test_bad_bodies_are_400_in_the_openai_shape(server, model_id, body, ctype, param):
    code, _, out = server.post(
        "/v1/chat/completions", body.replace("%s", model_id), {"Content-Type": ctype, "Authorization": f"Bearer {KEY}"}
    )
    assert code == 400, out
    assert out["error"]["type"] == "invalid_request_error" and out["error"]["message"]
    assert out["error"]["param"] == param


def test_api_key_is_required_on_v1(server, model_id):
    bad = openai.OpenAI(base_url=server.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.models.list()
    assert e.value.body["type"] == "authentication_error"
    code, _, out = server.post("/v1/chat/completions", {"model": model_id, "messages": []})  # no key at all
    assert code == 401 and out["error"]["code"] == "invalid_api_key"


def _metric(server, name: str) -> float:
    _, text = server.get("/metrics", headers={"Authorization": f"Bearer {KEY}"})
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{"))


def test_disconnect_mid_stream_stops_it_and_the_next_request_is_served(server, client, model_id):
    before = _metric(server, "oga_npu_completion_tokens_total")
    # whole-vocabulary sampling (top_k 0) costs ~12 ms a token: the stream is still running when
    # the client leaves (greedy, the tiny model's 460 tokens take 0.2 s)
    stream = _chat(
        client,
        model_id,
        "A very long answer please.",
        max_tokens=460,
        stream=True,
        temperature=1.0,
        top_p=1.0,
        seed=1,
        extra_body={"top_k": 0, "ignore_eos": True},
    )
    for i, _chunk in enumerate(stream):
        if i == 2:
            break
    stream.close()  # the client goes away
    t0 = time.monotonic()
    r = _chat(client, model_id, "Next one.", max_tokens=4)
    assert r.choices[0].message.content and time.monotonic() - t0 < 10
    deadline = time.monotonic() + 10
    while _metric(server, "oga_npu_cancelled_requests_total") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _metric(server, "oga_npu_cancelled_requests_total") >= 1
    generated = _metric(server, "oga_npu_completion_tokens_total") - before - 4
    assert 2 <= generated < 400  # stopped long before its 460 tokens


def test_eight_concurrent_requests_are_whole_and_unmixed(client, model_id):
    prompts = [f"Request number {i}: {'abcdefgh'[i] * (i + 1)}" for i in range(8)]
    alone = {p: _chat(client, model_id, p, max_tokens=10).choices[0].message.content for p in prompts}
    results: dict[str, str] = {}
    errors = []

    def ask(p, stream):
        try:
            if stream:
                results[p] = _stream_text(_chat(client, model_id, p, max_tokens=10, stream=True))[1]
            else:
                results[p] = _chat(client, model_id, p, max_tokens=10).choices[0].message.content
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=ask, args=(p, i % 2 == 0)) for i, p in enumerate(prompts)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    assert results == alone


def test_auto_grammar_call_branch_gives_only_valid_calls(tiny_model):
    """The random model never starts with '{' on its own, so the call half of tool_choice auto's
    grammar is checked alone (the same %json clause, sampled): every answer is a valid call."""
    import onnxruntime_genai as og

    from oga_npu.server.plan import auto_grammar as _auto_grammar

    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "arguments"],
        "properties": {
            "name": {"const": "get_weather"},
            "arguments": {
                "type": "object",
                "additionalProperties": False,
                "required": ["city"],
                "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]}},
            },
        },
    }
    kind, grammar = _auto_grammar(schema)
    assert "start: call | text" in grammar
    grammar = grammar.replace("start: call | text", "start: call")
    model = og.Model(str(tiny_model))
    tok = og.Tokenizer(model)
    for seed in range(3):
        p = og.GeneratorParams(model)
        p.set_search_options(max_length=120, do_sample=True, random_seed=seed, temperature=1.0)
        p.set_guidance(kind, grammar)
        g = og.Generator(model, p)
        g.append_tokens(tok.encode("hello"))
        out = []
        while not g.is_done():
            g.generate_next_token()
            out.append(int(g.get_next_tokens()[0]))
        call = json.loads(tok.decode(out))
        assert call["name"] == "get_weather" and call["arguments"]["city"] in ("Paris", "Rome")
