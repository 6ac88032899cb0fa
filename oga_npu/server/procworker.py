"""A loaded model in its own worker process (child.py), seen by the server as a ServedModel.

`ProcessModel.start` launches `python -m oga_npu.server.child`, hands it the load order and
waits for it to be ready. The routes and worker.py use it as they use a ServedModel: its
device queue and prep thread stay here; `build` runs a request's template and tokenizer in
the child (`RemoteLM` in the pickled call stands for the child's model); `produce` relays a
generation: the child's events go from the channel's reader thread straight to the event loop.

When the child dies (SIGBUS, SIGSEGV, an OOM kill), the reader thread sees the channel close:
every request in flight gets a 503 `model_crashed` naming the signal and the crash log, the
server logs one line, and `dead` says why; the manager drops the model and loads it afresh
on the next request. Unloading closes the channel, then kills a child that does not leave.
"""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path
from types import SimpleNamespace

from ..errors import OgaNpuError
from .child import Load, current_model, unpack
from .errors import ApiError
from .models import DEFAULT_MAX_QUEUE, DeviceQueue

log = logging.getLogger("oga_npu.server")
READY_TIMEOUT_S = 600  # a load (a big model, a first NPU compile) may take minutes


class RemoteLM:
    """The child's model as the server sees it: its facts here; pickled into a call, the model there."""

    def __init__(self, facts: dict):
        self.__dict__.update(facts)
        self.path = Path(facts["path"])

    def __reduce__(self):
        from . import child

        return (child.current_lm, ())


def _guidance() -> tuple[bool, str]:
    return current_model().guidance_support()


def _clear_cache() -> None:
    sm = current_model()
    if sm.cache is not None:
        sm.cache.clear()


def crash_log_path(model_id: str) -> Path:
    from .. import guard

    p = guard._crash_log_path()
    return p.with_name(p.stem + f"-{model_id}" + p.suffix)


class ProcessModel:
    """A ServedModel whose model lives in a worker process (see the module docstring)."""

    def __init__(self, model_id: str, proc: subprocess.Popen, conn: Connection, info: dict, crash_log: Path, **kw):
        self.id, self.proc, self.conn, self.crash_log = model_id, proc, conn, crash_log
        self.queue = DeviceQueue(kw.get("max_queue", DEFAULT_MAX_QUEUE))
        self.kv_reuse = kw.get("kv_reuse", True)
        self.lm = RemoteLM(info.pop("lm"))
        self.cache = SimpleNamespace(stats=SimpleNamespace(**info["kv_stats"])) if info["kv_stats"] else None
        self._reuse = tuple(info.pop("reuse"))
        self._info = {k: v for k, v in info.items() if k not in ("kv_stats", "pid")}
        self._guidance: tuple[bool, str] | None = None
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"relay-{model_id}")
        self.prep = ThreadPoolExecutor(1, thread_name_prefix=f"prep-{model_id}")
        self.dead: str | None = None  # why the worker is gone (a crash), None while it runs
        self._handlers: dict[int, object] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True, name=f"channel-{model_id}").start()

    # ------------------------------------------------------------ starting

    @classmethod
    def start(cls, model_id: str, folder: Path, provider=None, fallback=None, loader=None, **kw) -> ProcessModel:
        """The worker started and its model loaded (blocking); the load's error raised here."""
        ours, theirs = socket.socketpair()
        crash_log = crash_log_path(model_id)
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        proc = subprocess.Popen(
            [sys.executable, "-m", "oga_npu.server.child", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            env=env,
            start_new_session=False,
        )
        theirs.close()
        conn = Connection(ours.detach())
        order = Load(model_id, str(folder), provider, fallback, loader, kw.get("kv_reuse", True), str(crash_log))
        try:
            conn.send(order)
            if not conn.poll(READY_TIMEOUT_S):
                raise TimeoutError(f"the worker did not load the model in {READY_TIMEOUT_S} s")
            kind, payload = conn.recv()
        except (EOFError, OSError, TimeoutError) as e:
            _end(proc, conn)
            raise OgaNpuError(
                f"the model's worker process ended while loading ({_how(proc)}): {e}" + _log_note(crash_log),
                f"run `oga-npu doctor -m {folder}`",
            ) from None
        if kind == "failed":
            _end(proc, conn)
            raise unpack(payload)
        log.info("model %s: worker process %d", model_id, proc.pid)
        return cls(model_id, proc, conn, payload, crash_log, **kw)

    # ------------------------------------------------------------ the channel

    def _read(self) -> None:
        """The reader thread: each message to its request's handler; at EOF, the crash."""
        while True:
            try:
                rid, kind, payload = self.conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                handler = self._handlers.get(rid)
                if kind in ("ok", "err", "end"):
                    self._handlers.pop(rid, None)
            if handler is not None:
                handler(kind, unpack(payload) if kind == "err" else payload)
        self._died()

    def _died(self) -> None:
        if self.dead is None:  # not closed by us: a crash
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            how = _how(self.proc)
            self.dead = f"its worker process died ({how})" + _log_note(self.crash_log)
            log.error("model %s crashed: %s; it is loaded afresh on the next request", self.id, self.dead)
        with self._lock:
            pending, self._handlers = list(self._handlers.values()), {}
        for h in pending:
            h("err", self.crashed())

    def crashed(self) -> ApiError:
        return ApiError(
            503,
            f"the model '{self.id}' crashed: {self.dead or 'its worker process is gone'}; "
            "it is loaded afresh on the next request",
            type_="server_error",
            code="model_crashed",
        )

    def _ask(self, msg_tail: tuple, handler) -> int:
        """Register `handler` for a new request id and send the order; a dead worker answers at once."""
        rid = next(self._ids)
        with self._lock:
            alive = self.dead is None
            if alive:
                self._handlers[rid] = handler
                try:
                    self.conn.send((msg_tail[0], rid, *msg_tail[1:]))
                except OSError:
                    self._handlers.pop(rid, None)
                    alive = False
        if not alive:
            handler("err", self.crashed())
        return rid

    def call(self, fn):
        """fn() in the child's prep thread (blocking: in this side's prep thread)."""
        fut: Future = Future()

        def done(kind, payload):
            if kind == "ok":
                fut.set_result(payload)
            else:
                fut.set_exception(payload)

        self._ask(("call", fn), done)
        return fut.result()

    # ------------------------------------------------------------ what worker.py and the routes use

    def build(self, fn):
        return self.call(fn)

    def produce(self, _sm, ids, opts, reuse, put, stop: threading.Event, st) -> None:
        """Relay one generation (in the relay thread, one at a time): events to `put`, then None
        or the error; when the request stops first, cancel it in the child."""
        over = threading.Event()

        def on(kind, payload):
            if kind == "ev":
                put(payload)
                return
            over.set()
            if kind == "end":
                if payload is not None and self.cache is not None:
                    self.cache.stats = SimpleNamespace(**payload)
                put(None)
            else:
                put(payload)

        if stop.is_set():
            put(None)
            return
        rid = self._ask(("gen", ids, opts, reuse), on)
        stop.wait()  # events() sets it when it ends, whatever the reason
        if not over.is_set():
            with self._lock:
                if self.dead is None:
                    try:
                        self.conn.send(("cancel", rid))
                    except OSError:
                        pass

    def guidance_support(self) -> tuple[bool, str]:
        if self._guidance is None:
            self._guidance = tuple(self.call(_guidance))
        return self._guidance

    @property
    def guidance(self) -> bool:
        return self.guidance_support()[0]

    def reuse(self) -> tuple[bool, str]:
        return self._reuse

    def info(self) -> dict:
        out = dict(self._info)
        if self._guidance is not None:
            ok, why = self._guidance
            out.pop("guided_output_note", None)
            out.update({"guided_output": ok, **({"guided_output_note": why} if not ok else {})})
        return out

    def close(self) -> None:
        """The worker ended (its memory goes with it) and the threads here stopped."""
        if self.dead is None:
            self.dead = "unloaded"
        _end(self.proc, self.conn)
        self.executor.shutdown(wait=True)
        self.prep.shutdown(wait=True)

    def clear_cache(self) -> None:
        self.call(partial(_clear_cache))


def _end(proc: subprocess.Popen, conn: Connection) -> None:
    try:
        conn.send(("exit",))
    except OSError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
    conn.close()


def _how(proc: subprocess.Popen) -> str:
    code = proc.poll()
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _log_note(crash_log: Path) -> str:
    try:
        if crash_log.stat().st_size > 0:
            return f"; the Python stacks at the crash: {crash_log}"
    except OSError:
        pass
    return ""
