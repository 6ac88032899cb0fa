"""`oga-npu serve` queueing and lifecycle: --max-queue's 503, /health while loading, SIGTERM
mid-stream (the client and the server both see a clean end), --stream-interval 0. One real server process with
--max-queue 1 --stream-interval 0."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import openai
import pytest
from serverutil import free_port, running


@pytest.fixture(scope="module")
def server(tiny_model):
    with running(tiny_model, args=("--max-queue", "1", "--stream-interval", "0")) as s:
        yield s


def _long_stream(server, model_id, max_tokens=460):
    """A raw SSE stream (urllib) that the test reads line by line. Sampling over the whole
    vocabulary (top_k 0, top_p 1) costs onnxruntime-genai a sort of the 49k logits per token:
    about 12 ms a token here, so the stream is still running seconds later (greedy, the tiny
    model's 460 tokens take 0.2 s, less than the other requests of a test take to arrive)."""
    req = urllib.request.Request(
        server.base + "/v1/chat/completions",
        method="POST",
        headers={"Content-Type": "application/json"},
        data=json.dumps(
            {
                "model": model_id,
                "stream": True,
                "max_tokens": max_tokens,
                "temperature": 1.0,
                "top_k": 0,
                "top_p": 1.0,
                "seed": 1,
                "ignore_eos": True,
                "messages": [{"role": "user", "content": "A long answer."}],
            }
        ).encode(),
    )
    return urllib.request.urlopen(req, timeout=60)


def _events(resp):
    for line in resp:
        line = line.decode().strip()
        if line.startswith("data: "):
            yield line[6:]


def test_past_the_queue_limit_the_answer_is_503_with_retry_after(server, tiny_model):
    model_id = tiny_model.name
    resp = _long_stream(server, model_id)
    ev = _events(resp)
    next(ev)  # the first request is running
    out: list[tuple[int, dict]] = []

    def ask():
        code, headers, body = server.post(
            "/v1/chat/completions",
            {"model": model_id, "max_tokens": 4, "messages": [{"role": "user", "content": "queued"}]},
        )
        out.append((code, headers, body))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    rest = list(ev)  # the running stream is not disturbed
    assert rest[-1] == "[DONE]" and json.loads(rest[-2])["choices"][0]["finish_reason"] == "length"
    codes = sorted(c for c, _, _ in out)
    assert codes == [200, 503], out
    busy = next((h, b) for c, h, b in out if c == 503)
    assert int(busy[0]["retry-after"]) >= 1 and busy[1]["error"]["code"] == "server_busy"
    ok = next(b for c, _, b in out if c == 200)
    assert ok["usage"]["completion_tokens"] == 4


def test_stream_interval_0_sends_a_chunk_per_token(server, tiny_model):
    client = openai.OpenAI(base_url=server.base + "/v1", api_key="x", max_retries=0, timeout=60)
    chunks = list(
        client.chat.completions.create(
            model=tiny_model.name,
            messages=[{"role": "user", "content": "One by one."}],
            max_tokens=40,
            temperature=0,
            stream=True,
            extra_body={"ignore_eos": True},
            stream_options={"include_usage": True},
        )
    )
    content = [c for c in chunks if c.choices and c.choices[0].delta.content]
    assert chunks[-1].usage.completion_tokens == 40
    # a token whose bytes end inside a UTF-8 character is held back until the character is whole
    assert 30 <= len(content) <= 40, len(content)


def test_health_is_503_while_loading_then_200(tiny_model):
    """In process, with an injected provider that is still loading (the seam tests use)."""
    import uvicorn

    from oga_npu.server import create_app

    class Loading:
        ready, error, models = False, None, {}

    provider = Loading()
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(provider), host="127.0.0.1", port=port, log_level="error"))
    th = threading.Thread(target=srv.run, daemon=True)
    th.start()
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(100):
            if srv.started:
                break
            time.sleep(0.05)
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/health", timeout=5)
        assert e.value.code == 503 and json.loads(e.value.read())["status"] == "loading"
        client = openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as e2:
            client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert e2.value.status_code == 503 and e2.value.body["code"] == "loading"
        provider.ready = True
        with urllib.request.urlopen(base + "/health", timeout=5) as r:
            assert r.status == 200
    finally:
        srv.should_exit = True
        th.join(10)


def test_sigterm_mid_stream_sends_an_error_then_done_and_exits(server, tiny_model):
    resp = _long_stream(server, tiny_model.name)
    ev = _events(resp)
    next(ev)
    server.proc.terminate()
    rest = list(ev)
    assert rest[-1] == "[DONE]"
    err = json.loads(rest[-2])
    assert err.get("error", {}).get("code") == "shutting_down", (len(rest), rest[-3:])  # what came instead
    assert server.proc.wait(20) == 0


def test_public_bind_warns_and_a_bad_folder_is_one_line(tmp_path):
    from conftest import run_cli

    r = run_cli("serve", "-m", str(tmp_path / "missing"), "--host", "0.0.0.0", "--port", str(free_port()))
    assert r.returncode == 1
    assert "Warning: binding 0.0.0.0" in r.stderr and "--api-key" in r.stderr
    assert "Error:" in r.stderr and "does not exist" in r.stderr and "Traceback" not in r.stderr
