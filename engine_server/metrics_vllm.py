"""vLLM's metrics, by vLLM's names, types, labels and buckets (vllm/v1/metrics/loggers.py and buckets.py), beside
ours: the routers and autoscalers put in front of LLM servers (the Gateway API Inference Extension's endpoint picker,
OPEA's autoscaling rules) read these names from /metrics, whatever engine runs behind them."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from backends.base import EngineStats, SpecDecodeStats

LABELS = ("model_name", "engine")
# vLLM labels each engine core of a data-parallel server by its index; this server runs one.
ENGINE = "0"
# The reasons a finished request reports; each starts at 0 so that rates over them exist before the first one.
FINISH_REASONS = ("stop", "length", "abort")

TIME_TO_FIRST_TOKEN_BUCKETS = (
    *(0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75),
    *(1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0),
)
INTER_TOKEN_LATENCY_BUCKETS = (
    *(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75),
    *(1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0),
)
REQUEST_LATENCY_BUCKETS = (
    *(0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0),
    *(30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0),
)


class VllmMetrics:
    """The vLLM families: counters and histograms fed per request, gauges read from the engine at scrape time."""

    def __init__(self, registry: CollectorRegistry, stats: Callable[[], EngineStats], model_name: str) -> None:
        self._labels = (model_name, ENGINE)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt (prefill) tokens processed.", LABELS, registry=registry
        ).labels(*self._labels)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Tokens generated.", LABELS, registry=registry
        ).labels(*self._labels)
        self._request_success = Counter(
            "vllm:request_success",
            "Requests finished by the engine, by why they finished.",
            [*LABELS, "finished_reason"],
            registry=registry,
        )
        for reason in FINISH_REASONS:
            self._request_success.labels(*self._labels, reason)
        self.time_to_first_token = Histogram(
            "vllm:time_to_first_token_seconds",
            "From request arrival to its first generated token, in seconds.",
            LABELS,
            buckets=TIME_TO_FIRST_TOKEN_BUCKETS,
            registry=registry,
        ).labels(*self._labels)
        self.inter_token_latency = Histogram(
            "vllm:inter_token_latency_seconds",
            "Between consecutive outputs of one sequence, in seconds.",
            LABELS,
            buckets=INTER_TOKEN_LATENCY_BUCKETS,
            registry=registry,
        ).labels(*self._labels)
        self.e2e_request_latency = Histogram(
            "vllm:e2e_request_latency_seconds",
            "From request arrival to the end of a finished sequence, in seconds.",
            LABELS,
            buckets=REQUEST_LATENCY_BUCKETS,
            registry=registry,
        ).labels(*self._labels)
        registry.register(_EngineFigures(stats, self._labels))

    def record_finish(self, finish_reason: str, seconds: float) -> None:
        """One finished sequence: vLLM counts each sequence of a request as an engine request of its own."""
        self._request_success.labels(*self._labels, finish_reason).inc()
        self.e2e_request_latency.observe(seconds)


class _EngineFigures(Collector):
    """The engine's figures at scrape time, so they are never stale."""

    def __init__(self, stats: Callable[[], EngineStats], labels: tuple[str, str]) -> None:
        self._stats = stats
        self._labels = list(labels)

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield self._gauge("vllm:num_requests_running", "Requests in the engine's running batch.", s.num_running)
        yield self._gauge("vllm:num_requests_waiting", "Requests waiting for the engine to run them.", s.num_waiting)
        yield self._gauge("vllm:kv_cache_usage_perc", "Fraction of the KV cache in use: 1 means all.", s.kv_cache_usage)
        if s.block_size and s.num_blocks:
            # An info metric, written as a gauge at 1 as vLLM writes it.
            info = GaugeMetricFamily(
                "vllm:cache_config_info",
                "The KV cache's layout: tokens per block, and blocks.",
                labels=[*LABELS, "block_size", "num_gpu_blocks"],
            )
            info.add_metric([*self._labels, str(s.block_size), str(s.num_blocks)], 1)
            yield info
        if s.prefix_cache_queries is not None and s.prefix_cache_hits is not None:
            yield self._counter(
                "vllm:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.", s.prefix_cache_queries
            )
            yield self._counter(
                "vllm:prefix_cache_hits", "Prompt tokens found in the prefix cache.", s.prefix_cache_hits
            )
        if s.spec_decode is not None:
            yield from self._spec_decode(s.spec_decode)

    def _spec_decode(self, d: SpecDecodeStats) -> Iterator[Metric]:
        yield self._counter(
            "vllm:spec_decode_num_drafts", "Steps of a sequence that checked draft tokens.", d.num_drafts
        )
        yield self._counter("vllm:spec_decode_num_draft_tokens", "Draft tokens checked.", d.num_draft_tokens)
        yield self._counter(
            "vllm:spec_decode_num_accepted_tokens", "Draft tokens the model accepted.", d.num_accepted_tokens
        )
        per_position = CounterMetricFamily(
            "vllm:spec_decode_num_accepted_tokens_per_pos",
            "Draft tokens accepted, by their position in the draft.",
            labels=[*LABELS, "position"],
        )
        for position, value in enumerate(d.accepted_per_position):
            per_position.add_metric([*self._labels, str(position)], value)
        yield per_position

    def _gauge(self, name: str, documentation: str, value: float) -> GaugeMetricFamily:
        family = GaugeMetricFamily(name, documentation, labels=LABELS)
        family.add_metric(self._labels, value)
        return family

    def _counter(self, name: str, documentation: str, value: float) -> CounterMetricFamily:
        family = CounterMetricFamily(name, documentation, labels=LABELS)
        family.add_metric(self._labels, value)
        return family
