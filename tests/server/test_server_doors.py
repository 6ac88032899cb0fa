"""`serve`'s doors, in process with an injected provider and no model: body size and depth
limits, Content-Type, the API key on every route but /health and the chat page, /metrics' own
key, the Host header (DNS rebinding), CORS only when asked, an empty key refused at start."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import pytest
from serverutil import free_port

KEY = "doors-key"
MKEY = "scrape-key"


class _Ready:
    ready, error, models = True, None, {}


class _App:
    def __init__(self, **kw):
        import uvicorn

        from oga_npu.server import create_app

        self.port = free_port()
        self.srv = uvicorn.Server(
            uvicorn.Config(create_app(_Ready(), **kw), host="127.0.0.1", port=self.port, log_level="error")
        )
        self.th = threading.Thread(target=self.srv.run, daemon=True)
        self.th.start()
        for _ in range(200):
            if self.srv.started:
                break
            time.sleep(0.02)

    def request(self, method, path, body: bytes | None = None, headers: dict | None = None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=20)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def close(self):
        self.srv.should_exit = True
        self.th.join(10)


@pytest.fixture(scope="module")
def app():
    a = _App(api_key=KEY, metrics_key=MKEY, max_body_mb=1)
    yield a
    a.close()


AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def _err(data: bytes) -> dict:
    return json.loads(data)["error"]


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/x", "/v1/stats", "/metrics", "/openapi.json"])
def test_every_route_but_health_needs_the_key(app, path):
    code, _, data = app.request("GET", path)
    assert code == 401 and _err(data)["code"] == "invalid_api_key"
    assert app.request("GET", path, headers={"Authorization": "Bearer wrong"})[0] == 401


def test_health_and_the_chat_page_paths_need_no_key(app):
    assert app.request("GET", "/health")[0] == 200
    # the chat page and its files hold no data: no key needed; other unknown paths still need it
    assert app.request("GET", "/")[0] == 200
    assert app.request("GET", "/web/app.js")[0] == 200
    assert app.request("GET", "/web/nonexistent.js")[0] == 404
    assert app.request("GET", "/static/app.js")[0] == 401


def test_metrics_key_opens_metrics_only(app):
    m = {"Authorization": f"Bearer {MKEY}"}
    assert app.request("GET", "/metrics", headers=m)[0] == 200
    assert app.request("GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"})[0] == 200
    assert app.request("GET", "/v1/models", headers=m)[0] == 401


@pytest.mark.parametrize(
    "ctype",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "text/json", "application/jsonx", ""],
)
def test_json_routes_take_only_application_json(app, ctype):
    headers = {"Authorization": f"Bearer {KEY}"}
    if ctype:
        headers["Content-Type"] = ctype
    code, _, data = app.request("POST", "/v1/chat/completions", b'{"model": "m", "messages": []}', headers)
    assert code == 400 and _err(data)["code"] == "invalid_content_type"


def test_application_json_with_charset_is_accepted(app):
    code, _, data = app.request(
        "POST",
        "/v1/chat/completions",
        b'{"model": "m", "messages": []}',
        {**AUTH, "Content-Type": "application/json; charset=utf-8"},
    )
    assert code == 400 and _err(data)["param"] == "messages"  # past the door, refused for its content


def test_a_declared_50_mb_body_is_413_before_it_is_sent(app):
    """Only the headers and 10 bytes go out: the answer comes without the server waiting for the rest."""
    s = socket.create_connection(("127.0.0.1", app.port), timeout=20)
    try:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + KEY.encode() + b'\r\nContent-Length: 52428800\r\n\r\n{"model":'
        )
        got = b""
        while b'"body_too_large"' not in got:  # the headers and the body may come in two reads
            part = s.recv(65536)
            if not part:
                break
            got += part
        head = got.decode(errors="replace")
    finally:
        s.close()
    assert head.startswith("HTTP/1.1 413"), head[:200]
    assert '"body_too_large"' in head


def test_a_chunked_body_past_the_limit_is_413(app):
    c = http.client.HTTPConnection("127.0.0.1", app.port, timeout=20)
    big = b'{"model": "m", "messages": [{"role": "user", "content": "' + b"x" * (2 * 2**20) + b'"}]}'
    c.request(
        "POST",
        "/v1/chat/completions",
        body=iter([big[i : i + 65536] for i in range(0, len(big), 65536)]),
        headers={**AUTH},
        encode_chunked=True,
    )
    r = c.getresponse()
    assert r.status == 413 and _err(r.read())["code"] == "body_too_large"
    c.close()


@pytest.mark.parametrize(
    "body, code, param",
    [
        (b"[" * 100_000 + b"]" * 100_000, "too_deep", None),  # the RecursionError 500
        (b'{"model": "m", "messages": [], "x": ' + b'{"a": ' * 70 + b"1" + b"}" * 70 + b"}", "too_deep", "x.a.a"),
        (b'{"model": "\\ud800", "messages": [{"role": "user", "content": "hi"}]}', "invalid_value", "model"),
        (
            b'{"model": "m", "messages": [{"role": "user", "content": "a\\udc00"}]}',
            "invalid_value",
            "messages.0.content",
        ),
        (b'{"model": "m", "messages": [], "temperature": NaN}', "invalid_value", "temperature"),
        (b'{"model": "m", "messages": [], "temperature": 1e309}', "invalid_value", "temperature"),
        (b'{"model": "m", "messages": [], "top_p": -Infinity}', "invalid_value", "top_p"),
        (b'{"model": "m", "messages": [], "seed": 1' + b"0" * 30 + b"}", "invalid_value", "seed"),
    ],
)
def test_hostile_json_is_400_naming_the_field(app, body, code, param):
    status, _, data = app.request("POST", "/v1/chat/completions", body, AUTH)
    err = _err(data)
    assert status == 400 and err["code"] == code and err["param"] == param, err


def test_the_host_header_must_name_this_server(app):
    ok = app.request("GET", "/health", headers={"Host": f"localhost:{app.port}"})
    assert ok[0] == 200
    for host in ("evil.example", f"evil.example:{app.port}", "127.0.0.1.evil.example"):
        code, _, data = app.request("GET", "/health", headers={"Host": host})
        assert code == 400 and _err(data)["code"] == "invalid_host", host


def test_no_cors_unless_asked(app):
    code, headers, _ = app.request(
        "OPTIONS",
        "/v1/chat/completions",
        headers={
            "Origin": "http://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert "access-control-allow-origin" not in headers
    _, headers, _ = app.request("GET", "/health", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in headers


def test_cors_origin_and_allowed_host_open_what_they_name():
    a = _App(api_key=KEY, cors_origin=["http://app.example"], allowed_host=["box.lan"])
    try:
        code, headers, _ = a.request(
            "OPTIONS",
            "/v1/chat/completions",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
            },
        )
        assert code == 200 and headers["access-control-allow-origin"] == "http://app.example"
        _, headers, _ = a.request(
            "OPTIONS",
            "/v1/chat/completions",
            headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
        )
        assert headers.get("access-control-allow-origin") != "http://evil.example"
        assert a.request("GET", "/health", headers={"Host": "box.lan:8000"})[0] == 200
        assert a.request("GET", "/v1/models", headers={"Host": "box.lan", "Authorization": f"Bearer {KEY}"})[0] == 200
    finally:
        a.close()


def test_an_empty_key_is_refused_at_start(tmp_path):
    from conftest import run_cli

    from oga_npu.server import create_app

    with pytest.raises(ValueError):
        create_app(_Ready(), api_key="")
    with pytest.raises(ValueError):
        create_app(_Ready(), api_key="k", metrics_key="  ")
    for args, env in ((("--api-key", ""), {}), ((), {"OGA_NPU_API_KEY": ""})):
        r = run_cli("serve", "-m", str(tmp_path), "--port", str(free_port()), *args, env=env, timeout=60)
        assert r.returncode == 2 and "empty" in r.stderr, (args, env, r.stderr)
