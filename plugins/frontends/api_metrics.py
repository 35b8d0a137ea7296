"""GET /metrics: Prometheus text format, read from the engine when scraped.

Requests by endpoint and status, tokens in and out, time to first token and inter-token
latency histograms, KV cache usage, prefix-cache hit rate, and the queues (the server's
admission queue and the engine's waiting sequences).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.async_engine import AsyncEngine
from core.engine_stats import Histogram
from plugins.frontends.api_limits import Admission

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    buckets = [("+Inf" if le == float("inf") else repr(le), n) for le, n in h.cumulative()]
    return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=h.sum)


class EngineCollector(Collector):
    """Reads the engine's counters, histograms and cache state at scrape time."""

    def __init__(self, engine: AsyncEngine, admission: Admission) -> None:
        self.engine = engine
        self.admission = admission

    def collect(self) -> Iterator:
        eng = self.engine.engine
        stats, bm, sched = eng.stats, eng.block_manager, eng.scheduler
        yield CounterMetricFamily(
            "nybble_prompt_tokens", "Prompt tokens of the requests added", value=stats.prompt_tokens
        )
        yield CounterMetricFamily(
            "nybble_generation_tokens", "Tokens generated", value=stats.generation_tokens
        )
        finished = CounterMetricFamily(
            "nybble_request_finished", "Finished sequences by finish reason", labels=["reason"]
        )
        for reason, n in sorted(stats.finished.items()):
            finished.add_metric([reason], n)
        yield finished
        yield _histogram(
            "nybble_time_to_first_token_seconds",
            "From a request's arrival in the engine to its first token",
            stats.ttft_histogram,
        )
        yield _histogram(
            "nybble_inter_token_latency_seconds",
            "Between consecutive outputs with new tokens of one request",
            stats.itl_histogram,
        )
        yield GaugeMetricFamily(
            "nybble_kv_cache_usage_ratio", "Fraction of KV cache blocks in use", value=bm.usage
        )
        yield GaugeMetricFamily(
            "nybble_prefix_cache_hit_rate",
            "Prompt tokens found in the prefix cache / prompt tokens looked up",
            value=bm.prefix_hit_rate,
        )
        yield CounterMetricFamily(
            "nybble_prefix_cache_queries", "Prompt tokens looked up", value=bm.num_prefix_queries
        )
        yield CounterMetricFamily(
            "nybble_prefix_cache_hits", "Prompt tokens found cached", value=bm.num_prefix_hits
        )
        yield GaugeMetricFamily(
            "nybble_requests_running", "Requests admitted by the server", value=self.admission.num_running
        )  # fmt: skip
        yield GaugeMetricFamily(
            "nybble_requests_waiting",
            "Requests waiting for admission (frontend.max_queued_requests)",
            value=self.admission.num_waiting,
        )
        yield GaugeMetricFamily(
            "nybble_engine_sequences_running", "Sequences in the batch", value=len(sched.running)
        )
        yield GaugeMetricFamily(
            "nybble_engine_sequences_waiting",
            "Sequences waiting for a batch slot or KV blocks",
            value=len(sched.waiting),
        )
        yield GaugeMetricFamily(
            "nybble_engine_healthy", "1 while the engine steps without error",
            value=int(self.engine.is_healthy),
        )  # fmt: skip


class Metrics:
    """The server's registry: the engine collector and an HTTP request counter."""

    def __init__(self, engine: AsyncEngine, admission: Admission) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(engine, admission))
        self.requests = Counter(
            "nybble_http_requests",
            "HTTP requests by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class CountRequests:
    """ASGI middleware: count each answered request by endpoint (known paths only, so a
    scanner cannot grow the label set) and status code."""

    def __init__(self, app: ASGIApp, metrics: Metrics, endpoints: set[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else "other"
        status = "500"  # if the app fails before answering

        async def send_and_count(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_count)
        finally:
            self.metrics.requests.labels(endpoint, status).inc()
