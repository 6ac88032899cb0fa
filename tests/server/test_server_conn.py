"""Bounded connections (issue 30, item 3): the header timeout (slowloris), the idle keep-alive
timeout, a stalled body, the cap on open connections (the oldest waiting connection makes room;
503 when every one is busy), one log line per condition per interval, and the issue's case:
1,100 slow-header connections against a real server at an open-file limit of 1024."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import os
import resource
import socket
import threading
import time
import urllib.request

import pytest
from serverutil import free_port, running

from oga_npu.server import conn as connmod
from oga_npu.server.conn import ConnLimits, Tally, exception_handler, fit_file_limit
from oga_npu.server.run import uvicorn_server

HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


class _Ready:
    ready, error, models = True, None, {}


async def _ticker(scope, receive, send):
    """A raw ASGI app: /tick streams 10 chunks 0.2 s apart (2 s, longer than every timeout here)."""
    if scope["type"] != "http":
        return
    if scope["path"] != "/tick":
        from oga_npu.server import create_app

        return await create_app(_Ready())(scope, receive, send)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    for i in range(10):
        await asyncio.sleep(0.2)
        await send({"type": "http.response.body", "body": f"{i}\n".encode(), "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Server:
    """conn.py's Server in a thread: header timeout 0.6 s, keep-alive 0.4 s, at most 4 connections."""

    def __init__(self, limits=ConnLimits(0.6, 0.4, 4)):
        self.port = free_port()
        self.srv = uvicorn_server(_ticker, "127.0.0.1", self.port, "warning", limits, [])
        self.th = threading.Thread(target=self.srv.run, daemon=True)
        self.th.start()
        for _ in range(250):
            if self.srv.started:
                break
            time.sleep(0.02)

    def connect(self, timeout: float = 5) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", self.port))
        s.settimeout(timeout)
        return s

    def close(self):
        self.srv.should_exit = True
        self.th.join(10)


@pytest.fixture
def server():
    s = _Server()
    yield s
    s.close()


def _closed_after(s: socket.socket) -> tuple[bytes, float]:
    """What the server sends until it closes, and when it closed (s since the call)."""
    t0, got = time.monotonic(), b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return got, time.monotonic() - t0
        got += chunk


def test_a_half_head_gets_408_and_a_silent_connection_is_closed(server):
    half, silent = server.connect(), server.connect()
    half.sendall(b"GET /health HTTP/1.1\r\nHo")
    got, after = _closed_after(half)
    assert got.startswith(b"HTTP/1.1 408 ") and 0.4 < after < 3, (got, after)
    got, after = _closed_after(silent)
    assert got == b"" and after < 3


def test_a_head_trickling_in_is_cut_at_the_timeout_not_kept_alive_by_each_byte(server):
    s = server.connect()
    s.settimeout(0.1)
    t0, got = time.monotonic(), None
    for b in HEALTH[:-2]:  # a byte every 0.1 s (4 s in all); the timeout is 0.6 s
        try:
            s.sendall(bytes([b]))
            got = s.recv(4096)  # the 408, or b"" once closed
            break
        except TimeoutError:
            continue
        except OSError:  # reset: closed
            got = b""
            break
    assert got is not None and time.monotonic() - t0 < 2, (got, time.monotonic() - t0)


def test_keep_alive_serves_requests_then_closes_an_idle_connection(server):
    c = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    t0 = time.monotonic()
    c.request("GET", "/health")
    first = c.sock
    for _ in range(6):  # 6 requests over 1.5 s: longer than both timeouts, one connection
        r = c.getresponse()
        assert r.status == 200 and r.read()
        time.sleep(0.25)
        c.request("GET", "/health")
    c.getresponse().read()
    assert c.sock is first and time.monotonic() - t0 > 1.2
    got, after = _closed_after(c.sock)
    assert got == b"" and 0.2 < after < 1.5  # idle 0.4 s: closed


def test_a_stream_outlives_every_timeout(server):
    s = server.connect()
    s.sendall(b"GET /tick HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    t0, got = time.monotonic(), b""
    while b"0\r\n\r\n" not in got:  # the chunked body's end
        chunk = s.recv(4096)
        assert chunk, f"closed mid-stream after {time.monotonic() - t0:.1f} s: {got!r}"
        got += chunk
    assert b"9\n" in got and time.monotonic() - t0 > 1.5
    s.sendall(HEALTH)  # and the connection is still good for the next request
    assert s.recv(4096).startswith(b"HTTP/1.1 200 ")


def test_a_stalled_body_is_closed_without_a_traceback(server, caplog):
    s = server.connect()
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100\r\n\r\n{"
    )
    with caplog.at_level(logging.INFO):
        got, after = _closed_after(s)
        time.sleep(0.2)
    assert got == b"" and after < 3
    text = caplog.text
    assert "request body paused more than 0.6 s" in text and "Traceback" not in text and "request failed" not in text
    assert " 499 " not in text  # the request's own line is DEBUG: the tally's line says it


def test_at_the_cap_the_oldest_waiting_connection_makes_room(server, caplog):
    with caplog.at_level(logging.WARNING):
        slow = [server.connect() for _ in range(4)]
        for c in slow:
            c.sendall(b"G")
            time.sleep(0.02)
        late = server.connect()
        late.sendall(HEALTH)
        assert late.recv(4096).startswith(b"HTTP/1.1 200 ")
        assert slow[0].recv(4096) == b""  # the oldest was closed
    assert caplog.text.count("to make room for new ones: the connection cap (4) is reached") == 1


def test_past_the_cap_with_every_connection_busy_a_503(server, caplog):
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10\r\n\r\n"
    )
    with caplog.at_level(logging.WARNING):
        busy = [server.connect() for _ in range(4)]
        for c in busy:  # a head, and a body still to come: a request in progress
            c.sendall(head)
        time.sleep(0.2)
        refused = [_closed_after(server.connect())[0] for _ in range(3)]
    assert busy  # held open until here
    for got in refused:
        status, _, rest = got.partition(b"\r\n")
        assert status == b"HTTP/1.1 503 Service Unavailable" and b"Retry-After: 2" in rest, got
        assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "too_many_connections"
    assert caplog.text.count("with 503: 4 connections are open") == 1  # one line for three refusals


def test_garbage_on_many_connections_logs_one_line(server, caplog, capfd):
    with caplog.at_level(logging.WARNING):
        for _ in range(20):
            c = server.connect()
            c.sendall(b"\x16\x03\x01 not http\r\n\r\n")
            assert _closed_after(c)[0].startswith(b"HTTP/1.1 400 ")
    assert caplog.text.count("invalid HTTP request(s)") == 1
    assert "Invalid HTTP request received" not in capfd.readouterr().err


def test_the_tally_says_the_first_at_once_and_the_rest_in_one_line_per_interval(caplog):
    async def main():
        tally = Tally(interval=0.2)
        for _ in range(1000):
            tally.count("k", logging.WARNING, "closed {n} connection(s) {when}")
        await asyncio.sleep(0.3)
        tally.count("k", logging.WARNING, "closed {n} connection(s) {when}")
        await asyncio.sleep(0.5)  # a line for the one, then a quiet interval

    with caplog.at_level(logging.WARNING, logger="oga_npu.server"):
        asyncio.run(main())
    assert caplog.messages == [
        "closed 1 connection(s) just now",
        "closed 999 connection(s) in the last 0.2 s",
        "closed 1 connection(s) in the last 0.2 s",
    ]


def test_accept_at_the_file_limit_logs_one_line_not_a_traceback_each(caplog):
    async def main():
        handle = exception_handler(Tally(interval=5))
        loop = asyncio.get_running_loop()
        err = OSError(24, "Too many open files")
        for _ in range(5000):
            handle(loop, {"message": "socket.accept() out of system resource", "exception": err})
        for _ in range(100):
            handle(loop, {"message": "Fatal error on transport {x}", "exception": ValueError("v")})

    with caplog.at_level(logging.DEBUG):
        asyncio.run(main())
    accept = [m for m in caplog.messages if "could not accept" in m]
    assert len(accept) == 1 and "Too many open files" in accept[0] and "open-file limit is" in accept[0]
    assert caplog.text.count("ValueError") == 1  # the first with its traceback, the rest counted


def test_the_cap_fits_under_the_file_limit_which_is_raised_toward_the_hard_one(monkeypatch):
    calls = []
    monkeypatch.setattr(resource, "setrlimit", lambda k, v: calls.append(v))
    monkeypatch.setattr(resource, "getrlimit", lambda k: (1024, 4096))
    cap, note = fit_file_limit(1000)
    assert (cap, calls) == (1000, [(1000 + connmod.FD_RESERVE, 4096)]) and "raised from 1024" in note
    calls.clear()
    monkeypatch.setattr(resource, "getrlimit", lambda k: (1024, 1024))
    cap, note = fit_file_limit(1000)
    assert cap == 1024 - connmod.FD_RESERVE and "the open-file limit is 1024" in note and "ulimit -n" in note
    assert calls == [] and "raised" not in note


# ---------------------------------------------------------------- the case, on the real server


def _nofile_1024():
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


def _timed(fn) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def test_1100_slow_header_connections_at_1024_files_leave_health_and_chat_answering(tiny_model):
    chat = {"model": tiny_model.name, "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
    with running(tiny_model, env={"OGA_NPU_SERVE_WORKERS": "0"}, preexec=_nofile_1024) as s:
        assert s.post("/v1/chat/completions", chat)[0] == 200  # warm
        log_before = os.path.getsize(s.log.name)
        socks = []
        try:
            for _ in range(1100):
                c = socket.socket()
                c.setblocking(False)
                c.connect_ex(("127.0.0.1", s.port))
                socks.append(c)
            time.sleep(0.3)
            for c in socks:  # the first byte of a head; the rest never comes
                try:
                    c.send(b"G")
                except OSError:
                    pass
            time.sleep(0.5)

            def health():
                with urllib.request.urlopen(s.base + "/health", timeout=10) as r:
                    assert r.status == 200

            def answer():
                code, _, body = s.post("/v1/chat/completions", chat)
                assert code == 200 and body["choices"][0]["message"]["content"] is not None, body

            assert _timed(health) < 2
            assert _timed(answer) < 2
            files = len(os.listdir(f"/proc/{s.proc.pid}/fd"))
        finally:
            for c in socks:
                c.close()
        time.sleep(0.3)
        grown = os.path.getsize(s.log.name) - log_before
        out = s.output()
    assert files < 1024
    assert f"to make room for new ones: the connection cap ({1024 - connmod.FD_RESERVE}) is reached" in out
    assert "Too many open files" not in out and "Traceback" not in out
    assert grown < 4000, out
