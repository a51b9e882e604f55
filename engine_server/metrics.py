"""Prometheus metrics: request counts by route and status, token counters, and the engine's own figures; the same
figures under vLLM's names too (metrics_vllm)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from backends.base import EngineStats
from engine_server.metrics_vllm import VllmMetrics

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _EngineCollector(Collector):
    """Reads the engine's figures at scrape time, so they are never stale."""

    def __init__(self, stats: Callable[[], EngineStats]) -> None:
        self._stats = stats

    def collect(self):  # type: ignore[no-untyped-def]
        s = self._stats()
        yield GaugeMetricFamily("engine_server_requests_running", "Requests the engine is running.", s.num_running)
        yield GaugeMetricFamily("engine_server_requests_waiting", "Requests queued in the engine.", s.num_waiting)
        yield GaugeMetricFamily(
            "engine_server_kv_cache_usage_ratio", "Fraction of the KV cache in use.", s.kv_cache_usage
        )


class _Histograms:
    """Observes into several histograms: serving times a token once, for our name and for vLLM's."""

    def __init__(self, *histograms: Histogram) -> None:
        self._histograms = histograms

    def observe(self, value: float) -> None:
        for histogram in self._histograms:
            histogram.observe(value)


class Metrics:
    def __init__(self, stats: Callable[[], EngineStats], model_name: str) -> None:
        """model_name: the served model name, which labels the vLLM families as vLLM labels them."""
        self.registry = CollectorRegistry(auto_describe=True)
        self.vllm = VllmMetrics(self.registry, stats, model_name)
        self.requests = Counter(
            "engine_server_http_requests",
            "HTTP requests by route and status.",
            ["route", "status"],
            registry=self.registry,
        )
        self.prompt_tokens = Counter("engine_server_prompt_tokens", "Prompt tokens processed.", registry=self.registry)
        self.generation_tokens = Counter("engine_server_generation_tokens", "Tokens generated.", registry=self.registry)
        time_to_first_token = Histogram(
            "engine_server_time_to_first_token_seconds",
            "From request arrival to its first generated token.",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.time_to_first_token = _Histograms(time_to_first_token, self.vllm.time_to_first_token)
        inter_token_latency = Histogram(
            "engine_server_inter_token_latency_seconds",
            "Between consecutive outputs of one sequence.",
            buckets=(0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2.5),
            registry=self.registry,
        )
        self.inter_token_latency = _Histograms(inter_token_latency, self.vllm.inter_token_latency)
        self.admitted = Gauge(
            "engine_server_requests_admitted",
            "Generation requests admitted (in the engine or streaming).",
            registry=self.registry,
        )
        self.prefix_share_waits = Counter(
            "engine_server_prefix_share_waits",
            "Requests that waited for another request's prefill of the prompt prefix they share "
            "(--prefix-share-min-tokens), then found it in the prefix cache.",
            registry=self.registry,
        )
        self.ready = Gauge("engine_server_ready", "1 when the engine serves requests.", registry=self.registry)
        self.registry.register(_EngineCollector(stats))

    def record_usage(self, num_prompt: int, num_output: int) -> None:
        self.prompt_tokens.inc(num_prompt)
        self.generation_tokens.inc(num_output)
        self.vllm.prompt_tokens.inc(num_prompt)
        self.vllm.generation_tokens.inc(num_output)

    def record_finish(self, finish_reason: str, seconds: float) -> None:
        """One sequence of a request finished (stop, length, abort), this many seconds after the request arrived.
        A sequence that never finishes (its client went away) is not recorded, as vLLM does not count it either."""
        self.vllm.record_finish(finish_reason, seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
