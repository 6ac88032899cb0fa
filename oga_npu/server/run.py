"""`oga-npu serve`: the app under uvicorn until SIGINT/SIGTERM."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import GenerationError, OgaNpuError
from . import log as serverlog
from .app import DEFAULT_STREAM_INTERVAL_MS, create_app
from .conn import ConnLimits
from .http import DEFAULT_MAX_BODY_MB
from .models import DEFAULT_MAX_QUEUE, ModelManager

WORKERS_ENV = "OGA_NPU_SERVE_WORKERS"  # "0": models load in the server process (no worker processes)


def serve(
    folders: list[Path] | None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    provider: str | None = None,
    fallback: str | None = None,
    log_level: str = "info",
    stream_interval_ms: float = DEFAULT_STREAM_INTERVAL_MS,
    max_body_mb: float = DEFAULT_MAX_BODY_MB,
    metrics_key: str | None = None,
    allowed_host: tuple[str, ...] | list[str] = (),
    cors_origin: tuple[str, ...] | list[str] = (),
    kv_reuse: bool = True,
    models_dir: Path | None = None,
    max_loaded: int = 1,
    loader=None,
    limits: ConnLimits | None = None,
) -> int:
    """Run until SIGINT/SIGTERM (open streams then get an error event and [DONE]). `folders`: these models,
    loaded at start; none: the store's (`models_dir`), on demand. `loader` replaces model.load (speculative);
    `limits`: timeouts and the connection cap (conn.py)."""
    check_port(host, port)  # before anything loads or the banner: one line, not uvicorn's [Errno 98]
    serverlog.setup(log_level)
    models = manager(
        folders,
        models_dir,
        max_loaded=max_loaded,
        max_queue=max_queue,
        provider=provider,
        fallback=fallback,
        kv_reuse=kv_reuse,
        loader=loader,
    )
    try:
        app = create_app(
            models,
            api_key,
            stream_interval_ms,
            max_body_mb=max_body_mb,
            metrics_key=metrics_key,
            host=host,
            allowed_host=allowed_host,
            cors_origin=cors_origin,
        )
    except ValueError as e:
        raise GenerationError(str(e), "pass a non-empty key (or set OGA_NPU_API_KEY), or leave --api-key out") from e
    stopped: list[int] = []
    server = uvicorn_server(app, host, port, log_level, limits or ConnLimits(), stopped)
    failed: list[OgaNpuError] = []

    def on_error(e: OgaNpuError):
        failed.append(e)
        print(f"Error: {e.message}" + (f"\nFix: {e.fix}" if e.fix else ""), file=sys.stderr, flush=True)
        server.should_exit = True

    if folders:
        models.start(on_error)
    print(
        f"oga-npu serve: http://{host}:{port}/v1 ({banner(models, bool(folders), max_loaded)}); "
        f"chat page: http://{host}:{port}/",
        file=sys.stderr,
        flush=True,
    )
    server.run()
    if stopped:
        print("oga-npu serve: stopped", file=sys.stderr, flush=True)
    return 1 if failed else 0


def uvicorn_server(app, host: str, port: int, log_level: str, limits: ConnLimits, stopped: list[int]):
    """uvicorn's Server with the bounded connections of conn.py; a signal lands in `stopped`."""
    import uvicorn

    from . import conn

    cap, note = conn.fit_file_limit(limits.max_connections)
    serverlog.log.info(
        "%s; a request head within %g s, idle keep-alive %g s",
        note,
        limits.header_timeout,
        limits.keep_alive,
    )
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5, access_log=False
    )

    class Server(conn.Server):
        def handle_exit(self, sig, frame):
            app.state.server.stopping = True  # open streams end with an error event, then [DONE]
            super().handle_exit(sig, frame)
            stopped.append(sig)
            self._captured_signals.clear()  # a clean stop exits 0 instead of re-raising the signal

    return Server(config, limits, cap)


def _bind(host: str, port: int) -> OSError | None:
    """Bind host:port as uvicorn will (SO_REUSEADDR), and let go; the error, or None."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        return e
    family, kind, proto, _name, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            return e
    return None


def check_port(host: str, port: int) -> None:
    """OgaNpuError naming the port and a free one when host:port cannot be bound."""
    import errno

    err = _bind(host, port)
    if err is None:
        return
    if err.errno != errno.EADDRINUSE:
        raise OgaNpuError(
            f"cannot listen on {host} port {port}: {err.strerror or err}", "pass another --host or --port"
        )
    free = next((p for p in range(port + 1, min(port + 50, 65536)) if _bind(host, p) is None), None)
    raise OgaNpuError(
        f"port {port} on {host} is in use",
        (f"pass --port {free} (free now), " if free else "pass another --port, ")
        + f"or stop the program listening on {port}",
    )


def manager(folders: list[Path] | None, models_dir: Path | None, **kw) -> ModelManager:
    """-m folders (checked now, loaded at start), or the store's models (loaded on demand)."""
    from ..errors import ModelFolderError
    from ..model import check_folder
    from ..store import ModelStore
    from .procworker import ProcessModel

    kw.setdefault("spawn", ProcessModel.start if os.environ.get(WORKERS_ENV, "1") != "0" else None)

    if folders:
        for f in folders:
            rep = check_folder(Path(f), deep=False)
            if not rep.ok:
                raise ModelFolderError(
                    f"{f} cannot be served: " + "; ".join(rep.problems), "pass a folder made by `oga-npu prepare`"
                )
        return ModelManager.preloaded(folders, **{k: v for k, v in kw.items() if k != "max_loaded"})
    return ModelManager.from_store(ModelStore(models_dir), **kw)  # empty: the page and /api/pull fill it


def banner(models: ModelManager, preload: bool, max_loaded: int) -> str:
    names = ", ".join(e.id for e in models.entries() if e.problem is None)
    if not preload and not names:
        where = getattr(models.store, "root", "the model store")
        return (
            f"no model in {where} yet: add one with oga-npu pull NAME or oga-npu prepare SOURCE, "
            "or from the chat page's Models panel"
            + (
                f"; not loadable: {', '.join(e.id for e in models.entries())} (see /v1/models)"
                if models.entries()
                else ""
            )
        )
    if preload:
        return f"models: {names}; loading, /health says when ready"
    skipped = [e.id for e in models.entries() if e.problem is not None]
    return f"models: {names}, loaded on demand, at most {max_loaded} at a time" + (
        f"; not loadable: {', '.join(skipped)} (see /v1/models)" if skipped else ""
    )
