"""`oga-npu serve`: the options checked, then server.serve (oga_npu/server/ holds the server)."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path
from typing import Annotated, Optional

import typer

from ._cli_utils import DraftModel, DraftTokens, Fallback, Provider, Speculative, load_speculative, model_folder

Models = Annotated[
    Optional[list[str]],
    typer.Option(
        "--model",
        "-m",
        metavar="NAME|DIR",
        help="A model's name in the store or a model folder (repeatable), loaded at start; the model id is the "
        "folder name. Default: every ready model of the store, loaded on demand.",
        show_default=False,
    ),
]
ModelsDir = Annotated[
    Optional[Path],
    typer.Option("--models-dir", metavar="DIR", help="Without -m: serve the models in DIR instead of the store."),
]
MaxLoaded = Annotated[
    int,
    typer.Option(
        "--max-loaded",
        metavar="N",
        help="Without -m: at most N models loaded at once; the least recently used idle one is unloaded first.",
    ),
]
Host = Annotated[str, typer.Option("--host", help="Address to bind (0.0.0.0 exposes the server to the network).")]
Port = Annotated[int, typer.Option("--port", help="TCP port.")]
ApiKey = Annotated[
    Optional[str],
    typer.Option(
        "--api-key",
        envvar="OGA_NPU_API_KEY",
        help="Require 'Authorization: Bearer KEY' on every route but /health and the chat page; "
        "set OGA_NPU_API_KEY instead to keep it out of ps.",
    ),
]
MaxQueue = Annotated[
    int, typer.Option("--max-queue", help="Requests that may wait per model; past it: 503 with Retry-After.")
]
StreamInterval = Annotated[
    float,
    typer.Option(
        "--stream-interval",
        metavar="MS",
        help="Streams send tokens that come faster than this together (the first at once); 0: one chunk per token.",
    ),
]
MaxBodyMb = Annotated[
    float, typer.Option("--max-body-mb", help="Largest request body; past it: 413 before reading the rest.")
]
MetricsKey = Annotated[
    Optional[str],
    typer.Option(
        "--metrics-key",
        envvar="OGA_NPU_METRICS_KEY",
        help="A second key that opens /metrics only (a scraper need not hold the API key).",
    ),
]
AllowedHost = Annotated[
    Optional[list[str]],
    typer.Option(
        "--allowed-host",
        metavar="NAME",
        help="Another Host header to answer (repeatable; '*' = any). Default: the bound address, and loopback "
        "names for a loopback bind.",
    ),
]
CorsOrigin = Annotated[
    Optional[list[str]],
    typer.Option(
        "--cors-origin",
        metavar="ORIGIN",
        help="Let web pages from ORIGIN call the API (repeatable). Default: no CORS.",
    ),
]
HeaderTimeout = Annotated[
    float,
    typer.Option(
        "--header-timeout",
        metavar="S",
        envvar="OGA_NPU_HEADER_TIMEOUT",
        help="A connection must send its request head within S seconds (of opening, or of its first byte after a "
        "response), and its body may pause at most S seconds; past it: closed (slow clients, slowloris). "
        "A running request or stream is never timed.",
    ),
]
KeepAlive = Annotated[
    float,
    typer.Option(
        "--keep-alive-timeout",
        metavar="S",
        envvar="OGA_NPU_KEEP_ALIVE_TIMEOUT",
        help="An idle connection between requests is closed after S seconds.",
    ),
]
MaxConnections = Annotated[
    int,
    typer.Option(
        "--max-connections",
        metavar="N",
        envvar="OGA_NPU_MAX_CONNECTIONS",
        help="At most N open connections (lowered to fit the open-file limit, which is raised toward its hard limit "
        "when needed). At N a new connection closes the oldest one waiting for a request; when every one has a "
        "request in progress: 503 with Retry-After.",
    ),
]
NoKvReuse = Annotated[
    bool, typer.Option("--no-kv-reuse", help="Prefill every prompt in full (no KV cache kept between requests).")
]


def serve(
    model: Models = None,
    models_dir: ModelsDir = None,
    max_loaded: MaxLoaded = 1,
    host: Host = "127.0.0.1",
    port: Port = 8000,
    api_key: ApiKey = None,
    max_queue: MaxQueue = 16,
    stream_interval: StreamInterval = 30,
    provider: Provider = None,
    fallback: Fallback = None,
    max_body_mb: MaxBodyMb = 4,
    metrics_key: MetricsKey = None,
    allowed_host: AllowedHost = None,
    cors_origin: CorsOrigin = None,
    no_kv_reuse: NoKvReuse = False,
    speculative: Speculative = None,
    draft_model: DraftModel = None,
    draft_tokens: DraftTokens = 4,
    header_timeout: HeaderTimeout = 10,
    keep_alive_timeout: KeepAlive = 5,
    max_connections: MaxConnections = 1000,
) -> None:
    """OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics);
    without -m every ready model of the store, loaded on demand."""
    from ..server import serve as run_server

    api_key = _check(model, models_dir, max_loaded, max_queue, stream_interval, api_key, metrics_key, max_body_mb)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"Warning: binding {host} makes the server reachable from other machines"
            + ("" if api_key else "; nothing protects it (pass --api-key)"),
            file=sys.stderr,
        )
    limits = _limits(header_timeout, keep_alive_timeout, max_connections)
    loader = _loader(speculative, draft_model, draft_tokens)
    folders = [model_folder(m, "serve") for m in model] if model else None
    rc = run_server(
        folders,
        models_dir=models_dir,
        max_loaded=max_loaded,
        host=host,
        port=port,
        api_key=api_key,
        max_queue=max_queue,
        provider=provider,
        fallback=fallback,
        stream_interval_ms=stream_interval,
        max_body_mb=max_body_mb,
        metrics_key=metrics_key,
        allowed_host=tuple(allowed_host or ()),
        cors_origin=tuple(cors_origin or ()),
        kv_reuse=not no_kv_reuse,
        loader=loader,
        limits=limits,
    )
    if rc:
        raise typer.Exit(rc)


def _check(model, models_dir, max_loaded, max_queue, stream_interval, api_key, metrics_key, max_body_mb):
    """Usage errors (exit 2) before anything starts; returns the API key (OGA_NPU_API_KEY set but empty counts)."""
    if max_queue < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--max-queue")
    if max_loaded < 1:
        raise typer.BadParameter("must be 1 or more", param_hint="--max-loaded")
    if model and models_dir is not None:
        raise typer.BadParameter(
            "serves a folder of models; -m names the models itself: give one or the other", param_hint="--models-dir"
        )
    if not 0 <= stream_interval <= 1000:
        raise typer.BadParameter("must be 0 to 1000 (milliseconds)", param_hint="--stream-interval")
    if api_key is None and os.environ.get("OGA_NPU_API_KEY") is not None:
        api_key = os.environ["OGA_NPU_API_KEY"]  # set but empty: click reads that as unset
    if api_key is not None and not api_key.strip():
        raise typer.BadParameter(
            "is empty (an empty key would let every request in): give a key or leave it out",
            param_hint="--api-key / OGA_NPU_API_KEY",
        )
    if metrics_key is not None and not metrics_key.strip():
        raise typer.BadParameter("is empty: give a key or leave it out", param_hint="--metrics-key")
    if not 0 < max_body_mb <= 1024:
        raise typer.BadParameter("must be more than 0 and at most 1024", param_hint="--max-body-mb")
    return api_key


def _limits(header_timeout: float, keep_alive: float, max_connections: int):
    from ..server import ConnLimits

    for name, v in (("--header-timeout", header_timeout), ("--keep-alive-timeout", keep_alive)):
        if not 0 < v <= 3600:
            raise typer.BadParameter("must be more than 0 and at most 3600 (seconds)", param_hint=name)
    if max_connections < 1:
        raise typer.BadParameter("must be 1 or more", param_hint="--max-connections")
    return ConnLimits(header_timeout, keep_alive, max_connections)


def _loader(speculative, draft_model, draft_tokens):
    """None (plain load), or load() with the drafter attached; a bad flag fails before the server starts."""
    if speculative is None and draft_model is None:
        return None
    from .. import speculative as spec_mod

    spec_mod.parse(speculative, draft_model, draft_tokens)  # a bad flag fails before the server starts
    return partial(_load_with_drafter, spec=(speculative, draft_model, draft_tokens))


def _load_with_drafter(f, provider=None, fallback=None, *, spec):
    """model.load with the drafter attached: module-level, so a model worker process gets it pickled."""
    return load_speculative(f, provider, fallback, *spec)
