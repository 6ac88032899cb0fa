"""A real `oga-npu serve` child process on a free port (llama.cpp's ServerProcess idea)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent


# `serve` with every model loaded in the server process (run.py's WORKERS_ENV) instead of a worker
# process a model: a model loads in well under a second instead of a fresh Python's start and
# imports. For tests about routing, the page or the API, not about the worker processes
# (test_worker_process.py, test_server.py, test_server_lifecycle.py and test_server_hardening.py
# keep the default, a worker per model).
IN_PROCESS = {"OGA_NPU_SERVE_WORKERS": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, *models: Path, args: tuple[str, ...] = (), env: dict | None = None, preexec=None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(REPO) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env.update(env or {})
        argv = [sys.executable, "-m", "oga_npu", "serve", "--port", str(self.port)]
        for m in models:
            argv += ["-m", str(m)]
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"oga-npu-serve-{self.port}.log", "w+")  # noqa: SIM115 - the server's log, closed by stop()
        self.proc = subprocess.Popen(
            [*argv, *args], stdout=self.log, stderr=subprocess.STDOUT, env=full_env, preexec_fn=preexec
        )

    def wait_ready(self, timeout: float = 120) -> list[int]:
        """Poll /health until 200; returns the status codes seen (503 while loading)."""
        seen = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited {self.proc.returncode}: {self.output()}")
            try:
                with urllib.request.urlopen(self.base + "/health", timeout=2) as r:
                    seen.append(r.status)
                    return seen
            except urllib.error.HTTPError as e:
                seen.append(e.code)
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not ready in {timeout}s: {self.output()}")

    def post(self, path: str, body: bytes | str | dict, headers: dict | None = None) -> tuple[int, dict, dict]:
        data = (
            json.dumps(body).encode() if isinstance(body, dict) else (body.encode() if isinstance(body, str) else body)
        )
        req = urllib.request.Request(
            self.base + path, data=data, method="POST", headers={"Content-Type": "application/json", **(headers or {})}
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read())

    def get(self, path: str, headers: dict | None = None) -> tuple[int, str]:
        req = urllib.request.Request(self.base + path, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def output(self) -> str:
        self.log.flush()
        self.log.seek(0)
        return self.log.read()[-4000:]

    def stop(self, sig=signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        return self.proc.returncode


@contextmanager
def running(*models: Path, args: tuple[str, ...] = (), env: dict | None = None, preexec=None):
    """A server started and ready, stopped when the block ends (a fixture: `with running(...) as s: yield s`);
    `preexec` runs in the child before exec (resource limits)."""
    s = ServerProcess(*models, args=args, env=env, preexec=preexec)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()
