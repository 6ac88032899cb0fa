"""ServerState: what the routes, the middleware and the worker share (one per app).

The routes reach it as `request.app.state.server`; nothing else is global."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..generate import GenerationEvent
from .metrics import Metrics


@dataclass
class ServerState:
    provider: Any  # models.ModelManager, or any object with .ready, .error, .models
    api_key: str | None = None
    metrics_key: str | None = None
    hosts: set[str] | None = None  # the Host header names answered (None: any)
    max_body: int = 4 * 2**20  # bytes
    stream_interval: float = 0.03  # seconds: tokens faster than this are sent together
    metrics: Metrics = field(default_factory=Metrics)
    stopping: bool = False  # SIGINT/SIGTERM: open streams end with an error event
    last: dict | None = None  # the last finished generation (/v1/stats)
    pulls: dict = field(default_factory=dict)  # source -> the running pull (pull.py)

    def finished(self, model: str, last: GenerationEvent | None) -> None:
        """A generation is over (its last event; None or unfinished: stopped early)."""
        self.metrics.generation_over(model, last)
        if last is not None and last.finish_reason is not None:
            self.last = {
                "model": model,
                "provider": last.runtime,
                "prompt_tokens": last.prompt_tokens,
                "completion_tokens": last.generated_tokens,
                "cached_tokens": last.cached_tokens,
                "ttft_s": last.ttft,
                "prefill_tokens_per_s": last.prefill_tps,
                "decode_tokens_per_s": last.decode_tps,
                "finish_reason": last.finish_reason,
            }
