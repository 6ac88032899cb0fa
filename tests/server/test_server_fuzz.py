"""Fuzz: random JSON shapes to each route of a real server on loopback (malformed and
hostile bodies): every answer is 2xx or a 4xx in the OpenAI shape, never a 5xx,
and the server is alive after. Bounded: a fixed number of examples per route,
derandomized (the same examples each run), a 2-token generation where a body is valid.
The server runs with --no-kv-reuse, which /v1/models reports."""

from __future__ import annotations

import json
import os

import pytest
from serverutil import running

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the dev extra: pip install -e .[dev]")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# OGA_NPU_FUZZ_EXAMPLES=N: more examples, new ones each run (a longer hunt by hand)
EXAMPLES = int(os.environ.get("OGA_NPU_FUZZ_EXAMPLES", "60"))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
    | st.sampled_from(
        ["\ud800", "a\udfff b", "<|im_end|>", "", " ", "user", "assistant", "json_schema", "function", "text"]
    )
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.text(max_size=12)
        | st.sampled_from(
            [
                "role",
                "content",
                "type",
                "text",
                "schema",
                "json_schema",
                "function",
                "name",
                "arguments",
                "parameters",
                "tool_calls",
            ]
        ),
        inner,
        max_size=4,
    ),
    max_leaves=20,
)

CHAT_KEYS = [
    "messages",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "stream_options",
    "n",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "response_format",
    "tools",
    "tool_choice",
    "logprobs",
    "top_logprobs",
    "model",
    "ignore_eos",
    "cache_prompt",
    "user",
]
COMPLETION_KEYS = [
    "prompt",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "stop",
    "stream",
    "echo",
    "suffix",
    "logprobs",
    "model",
    "n",
    "cache_prompt",
]


def _mutated(base: dict, keys: list[str]):
    """A valid body with some fields replaced by random JSON (max_tokens stays small)."""
    return st.dictionaries(st.sampled_from(keys), json_values, max_size=3).map(lambda d: {**base, **d})


@pytest.fixture(scope="module")
def server(tiny_model):
    with running(tiny_model, args=("--no-kv-reuse", "--stream-interval", "0")) as s:
        yield s


def _send(server, path: str, body) -> tuple[int, dict | None]:
    if isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body, allow_nan=True).encode()
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        server.base + path, data=data, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, None
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, json.loads(raw)


def _check(server, path, body):
    code, err = _send(server, path, body)
    assert code < 500, (path, body, code, err)
    if code >= 400:
        assert isinstance(err["error"]["message"], str) and err["error"]["type"], err
        assert "/tmp" not in err["error"]["message"], err


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize="OGA_NPU_FUZZ_EXAMPLES" not in os.environ,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def test_kv_reuse_is_off(server, tiny_model):
    import urllib.request

    with urllib.request.urlopen(server.base + "/v1/models", timeout=30) as r:
        info = json.loads(r.read())["data"][0]
    assert info["kv_reuse"] is False and "--no-kv-reuse" in info["kv_reuse_note"]
    body = {"model": tiny_model.name, "max_tokens": 2, "messages": [{"role": "user", "content": "twice"}]}
    for _ in range(2):
        code, _, out = server.post("/v1/chat/completions", body)
        assert code == 200 and out["usage"]["prompt_tokens_details"]["cached_tokens"] == 0


def test_fuzz_chat(server, tiny_model):
    base = {"model": tiny_model.name, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}

    @FUZZ
    @given(body=_mutated(base, CHAT_KEYS) | json_values)
    def run(body):
        _check(server, "/v1/chat/completions", body)

    run()


def test_fuzz_messages(server, tiny_model):
    msg = st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool", "developer"])},
        optional={"content": json_values, "tool_calls": json_values, "name": json_values, "tool_call_id": json_values},
    )

    @FUZZ
    @given(msgs=st.lists(msg, min_size=1, max_size=4))
    def run(msgs):
        _check(server, "/v1/chat/completions", {"model": tiny_model.name, "max_tokens": 2, "messages": msgs})

    run()


def test_fuzz_completions(server, tiny_model):
    base = {"model": tiny_model.name, "max_tokens": 2, "prompt": "Once"}

    @FUZZ
    @given(body=_mutated(base, COMPLETION_KEYS) | json_values)
    def run(body):
        _check(server, "/v1/completions", body)

    run()


def test_fuzz_raw_bytes_and_model_routes(server):
    import urllib.parse
    import urllib.request

    @FUZZ
    @given(raw=st.binary(max_size=200), model_id=st.text(max_size=30))
    def run(raw, model_id):
        _check(server, "/v1/chat/completions", raw)
        code, _ = server.get("/v1/models/" + urllib.parse.quote(model_id, safe=""))
        assert code < 500

    run()
    with urllib.request.urlopen(server.base + "/health", timeout=10) as r:
        assert r.status == 200
    assert server.proc.poll() is None
