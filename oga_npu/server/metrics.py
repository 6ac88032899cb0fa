"""Prometheus counters and histograms of `oga-npu serve` (prometheus-client, own registry)."""

from __future__ import annotations

from ..generate import GenerationEvent

# the routes counted by name; every other path counts as "other"
COUNTED_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/v1/stats")


class Metrics:
    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("oga_npu_requests", "HTTP requests", ["route", "status"], registry=r)
        self.prompt_tokens = Counter("oga_npu_prompt_tokens", "Prompt tokens", ["model"], registry=r)
        self.completion_tokens = Counter("oga_npu_completion_tokens", "Generated tokens", ["model"], registry=r)
        self.cached_tokens = Counter(
            "oga_npu_cached_tokens", "Prompt tokens reused from the KV cache", ["model"], registry=r
        )
        self.ttft = Histogram(
            "oga_npu_ttft_seconds",
            "Time to first token",
            ["model"],
            registry=r,
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.decode = Histogram(
            "oga_npu_decode_tokens_per_second",
            "Decode speed per request",
            ["model"],
            registry=r,
            buckets=(1, 2, 5, 10, 20, 35, 50, 75, 100, 150, 250, 500, 1000),
        )
        self.cancelled = Counter(
            "oga_npu_cancelled_requests",
            "Generations stopped early (client gone, error, shutdown)",
            ["model"],
            registry=r,
        )
        self.queue = Gauge("oga_npu_queue_depth", "Requests running or waiting", ["model"], registry=r)

    def count_request(self, path: str, status: int) -> None:
        self.requests.labels(path if path in COUNTED_ROUTES else "other", str(status)).inc()

    def observe(self, model: str, ev: GenerationEvent) -> None:
        self.prompt_tokens.labels(model).inc(ev.prompt_tokens)
        self.completion_tokens.labels(model).inc(ev.generated_tokens)
        self.cached_tokens.labels(model).inc(ev.cached_tokens)
        if ev.ttft is not None:
            self.ttft.labels(model).observe(ev.ttft)
        if ev.decode_tps:
            self.decode.labels(model).observe(ev.decode_tps)

    def generation_over(self, model: str, last: GenerationEvent | None) -> None:
        """A finished generation is observed; one stopped early counts as cancelled."""
        if last is None or last.finish_reason is None:
            self.cancelled.labels(model).inc()
            if last is not None:
                self.completion_tokens.labels(model).inc(last.generated_tokens)
        else:
            self.observe(model, last)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)
