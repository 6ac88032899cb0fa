"""A model worker process: one loaded model, serving the server process over a local channel.

`python -m oga_npu.server.child FD` (procworker.py starts it): FD is one end of a socket pair,
framed and pickled by multiprocessing.connection. The first message is the load order
(`Load`); the answer is ("ready", info) or ("failed", error). Then, until the channel closes:

    ("call", rid, fn)                fn() in the prep thread (template, tokenizer, options,
                                     the guidance probe) -> (rid, "ok", value) | (rid, "err", e)
    ("gen", rid, ids, opts, reuse)   the decode loop (worker.produce) in the decode thread
                                     -> (rid, "ev", event)..., then (rid, "end", kv stats) | (rid, "err", e)
    ("cancel", rid)                  that generation stops after the token in hand
    ("exit",)                        leave (unload)

A `RemoteLM` in a pickled call stands for this process's model (`current_lm`). A native crash
here (SIGBUS, SIGSEGV) ends only this process; faulthandler writes its Python stacks to the
crash log the server named.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass
from multiprocessing.connection import Connection
from types import SimpleNamespace

_sm = None  # the ServedModel of this process (its lm, cache, threads)
_send_lock = threading.Lock()
_stops: dict[int, threading.Event] = {}
_STATE = SimpleNamespace(stopping=False)  # worker.produce reads st.stopping

log = logging.getLogger("oga_npu.server")


@dataclass
class Load:
    id: str
    folder: str
    provider: str | None
    fallback: str | None
    loader: object  # None: model.load; else a picklable callable (speculative decoding's)
    kv_reuse: bool
    crash_log: str
    log_level: str = "info"


def current_lm():
    """What a pickled RemoteLM becomes here: this process's model."""
    return _sm.lm


def current_model():
    return _sm


def pack(e: BaseException) -> BaseException:
    """An exception that pickles and unpickles (some have __init__ signatures pickle cannot
    rebuild): the same class, args and attributes (see `unpack`), or a plain one saying it."""
    import pickle

    try:
        pickle.loads(pickle.dumps((type(e), e.args, vars(e))))
        return _Packed(type(e), e.args, vars(e))
    except Exception:  # noqa: BLE001 - whatever does not pickle becomes text
        from ..errors import GenerationError

        return _Packed(
            GenerationError, (f"{type(e).__name__}: {e}",), {"message": f"{type(e).__name__}: {e}", "fix": ""}
        )


class _Packed(Exception):
    def __init__(self, cls, args, attrs):
        super().__init__(cls, args, attrs)

    def unpack(self) -> BaseException:
        cls, args, attrs = self.args
        e = cls.__new__(cls, *args)
        e.args = args
        e.__dict__.update(attrs)
        return e


def unpack(e: BaseException) -> BaseException:
    return e.unpack() if isinstance(e, _Packed) else e


def send(conn: Connection, msg) -> None:
    with _send_lock:
        conn.send(msg)


def load(conn: Connection, order: Load) -> bool:
    global _sm
    from .. import guard
    from ..model import load as load_model
    from .models import ServedModel

    guard.enable_crash_log(order.crash_log)
    try:
        lm = (order.loader or load_model)(order.folder, provider=order.provider, fallback=order.fallback)
        _sm = ServedModel(order.id, lm, kv_reuse=order.kv_reuse)
        reuse = _sm.reuse()
        info = {**_sm.info(), "kv_stats": _stats(), "reuse": reuse, "pid": os.getpid()}
        info["lm"] = {k: getattr(lm, k, None) for k in ("context_length", "hybrid_limit", "provider", "decoder")}
        info["lm"].update(manifest=lm.manifest, path=str(lm.path))
    except BaseException as e:  # noqa: BLE001 - the server reports it
        send(conn, ("failed", pack(e)))
        return False
    send(conn, ("ready", info))
    return True


def _stats() -> dict | None:
    return dict(vars(_sm.cache.stats)) if _sm.cache is not None else None


def call(conn: Connection, rid: int, fn) -> None:
    try:
        out = fn()
    except BaseException as e:  # noqa: BLE001 - handed to the request
        send(conn, (rid, "err", pack(e)))
        return
    send(conn, (rid, "ok", out))


def generate(conn: Connection, rid: int, ids, opts, reuse: bool) -> None:
    from .worker import produce

    stop = _stops.setdefault(rid, threading.Event())

    def put(x):
        if x is None:
            send(conn, (rid, "end", _stats()))
        elif isinstance(x, BaseException):
            send(conn, (rid, "err", pack(x)))
        else:
            send(conn, (rid, "ev", x))

    try:
        produce(_sm, ids, opts, reuse, put, stop, _STATE)
    finally:
        _stops.pop(rid, None)


def serve(conn: Connection) -> None:
    """Orders until the channel closes or says exit."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        except Exception:  # an order that does not unpickle: logged, the rest served
            log.exception("an order the worker cannot read")
            continue
        kind = msg[0]
        if kind == "exit":
            return
        if kind == "call":
            _sm.prep.submit(call, conn, msg[1], msg[2])
        elif kind == "gen":
            _stops[msg[1]] = threading.Event()
            _sm.executor.submit(generate, conn, *msg[1:])
        elif kind == "cancel":
            ev = _stops.get(msg[1])
            if ev is not None:
                ev.set()


def main(fd: int) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is the server's; it ends us by closing the channel
    conn = Connection(fd)
    order: Load = conn.recv()
    logging.basicConfig(level=order.log_level.upper(), format="%(levelname)s:     [worker] %(message)s")
    if not load(conn, order):
        return 1
    try:
        serve(conn)
    finally:
        _STATE.stopping = True
        for ev in list(_stops.values()):
            ev.set()
    os._exit(0)  # the model's threads and native pools need no orderly teardown


if __name__ == "__main__":
    from oga_npu.server import child  # the module pickled calls name (not this __main__ copy)

    sys.exit(child.main(int(sys.argv[1])))
