"""vLLM's metric names on /metrics: Metrics on its own, then both real engines scraped while traffic is sent."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from backends.base import EngineStats, SpecDecodeStats
from engine_server.metrics import Metrics
from tests.conftest import LiveServer

# vLLM's families and their types, as its parser reads them (a counter's family drops the _total of its samples).
TYPES = {
    "vllm:num_requests_running": "gauge",
    "vllm:num_requests_waiting": "gauge",
    "vllm:kv_cache_usage_perc": "gauge",
    "vllm:cache_config_info": "gauge",
    "vllm:prompt_tokens": "counter",
    "vllm:generation_tokens": "counter",
    "vllm:request_success": "counter",
    "vllm:time_to_first_token_seconds": "histogram",
    "vllm:inter_token_latency_seconds": "histogram",
    "vllm:e2e_request_latency_seconds": "histogram",
}
PREFIX_CACHE = {"vllm:prefix_cache_queries": "counter", "vllm:prefix_cache_hits": "counter"}
HISTOGRAMS = {  # ours, vLLM's, and vLLM's bucket family
    "time_to_first_token": ("engine_server_time_to_first_token_seconds", "vllm:time_to_first_token_seconds"),
    "inter_token_latency": ("engine_server_inter_token_latency_seconds", "vllm:inter_token_latency_seconds"),
}
OPENVINO_BLOCK_SIZE = 32  # tokens per block of OpenVINO GenAI's KV cache on CPU


def families(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Metric], name: str, suffix: str = "", **labels: str) -> float:
    """The one sample of family name (or of its suffix series: _total, _count, ...) that has these labels."""
    (sample,) = (s for s in fams[name].samples if s.name == name + suffix and labels.items() <= s.labels.items())
    return float(sample.value)


def vllm_samples(fams: dict[str, Metric]) -> list[tuple[str, dict[str, str]]]:
    return [(s.name, s.labels) for f in fams.values() if f.name.startswith("vllm:") for s in f.samples]


# -- Metrics on its own ------------------------------------------------------------------------------------------


def metrics_with(stats: Callable[[], EngineStats]) -> tuple[Metrics, Callable[[], dict[str, Metric]]]:
    metrics = Metrics(stats, "tiny")
    return metrics, lambda: families(metrics.render().decode())


def vllm_like() -> EngineStats:
    return EngineStats(2, 3, 0.25, block_size=16, num_blocks=400, prefix_cache_queries=64, prefix_cache_hits=16)


def test_every_vllm_family_has_its_type_and_the_model_and_engine_labels() -> None:
    _, scrape = metrics_with(vllm_like)
    fams = scrape()
    assert {name: fams[name].type for name in {**TYPES, **PREFIX_CACHE}} == {**TYPES, **PREFIX_CACHE}
    for name, labels in vllm_samples(fams):
        assert labels["model_name"] == "tiny" and labels["engine"] == "0", name


def test_the_engine_figures_are_read_at_scrape_time() -> None:
    stats = [EngineStats(0, 0)]
    _, scrape = metrics_with(lambda: stats[-1])
    assert value(scrape(), "vllm:num_requests_running") == 0
    stats.append(vllm_like())
    fams = scrape()
    assert value(fams, "vllm:num_requests_running") == 2
    assert value(fams, "vllm:num_requests_waiting") == 3
    assert value(fams, "vllm:kv_cache_usage_perc") == 0.25
    assert value(fams, "vllm:cache_config_info", block_size="16", num_gpu_blocks="400") == 1
    assert value(fams, "vllm:prefix_cache_queries", "_total") == 64
    assert value(fams, "vllm:prefix_cache_hits", "_total") == 16


def test_cache_layout_only_once_known_and_prefix_cache_only_where_counted() -> None:
    _, scrape = metrics_with(lambda: EngineStats(1, 0, 0.5))
    fams = scrape()
    assert "vllm:cache_config_info" not in fams
    assert not PREFIX_CACHE.keys() & fams.keys()
    assert value(fams, "vllm:kv_cache_usage_perc") == 0.5


def test_spec_decode_counters_only_where_the_engine_speculates() -> None:
    assert not any(name.startswith("vllm:spec_decode") for name in metrics_with(vllm_like)[1]())
    spec = SpecDecodeStats(num_drafts=3, num_draft_tokens=12, num_accepted_tokens=7, accepted_per_position=(3, 2, 2))
    _, scrape = metrics_with(lambda: EngineStats(1, 0, spec_decode=spec))
    fams = scrape()
    assert value(fams, "vllm:spec_decode_num_drafts", "_total") == 3
    assert value(fams, "vllm:spec_decode_num_draft_tokens", "_total") == 12
    assert value(fams, "vllm:spec_decode_num_accepted_tokens", "_total") == 7
    per_pos = "vllm:spec_decode_num_accepted_tokens_per_pos"
    assert [value(fams, per_pos, "_total", position=str(p)) for p in range(3)] == [3, 2, 2]
    assert fams[per_pos].type == "counter"


def test_usage_moves_our_token_counters_and_vllms() -> None:
    metrics, scrape = metrics_with(vllm_like)
    metrics.record_usage(7, 5)
    metrics.record_usage(3, 0)
    fams = scrape()
    assert value(fams, "vllm:prompt_tokens", "_total") == value(fams, "engine_server_prompt_tokens", "_total") == 10
    assert value(fams, "vllm:generation_tokens", "_total") == 5
    assert value(fams, "engine_server_generation_tokens", "_total") == 5


@pytest.mark.parametrize("attribute", sorted(HISTOGRAMS))
def test_one_latency_observation_feeds_our_histogram_and_vllms(attribute: str) -> None:
    metrics, scrape = metrics_with(vllm_like)
    getattr(metrics, attribute).observe(0.03)
    getattr(metrics, attribute).observe(0.3)
    fams = scrape()
    for name in HISTOGRAMS[attribute]:
        assert value(fams, name, "_count") == 2
        assert value(fams, name, "_sum") == pytest.approx(0.33)


def test_the_histograms_have_vllms_default_buckets() -> None:
    from vllm.v1.metrics.buckets import histogram_buckets

    _, scrape = metrics_with(vllm_like)
    fams = scrape()
    for name, family in [
        ("vllm:time_to_first_token_seconds", "time_to_first_token"),
        ("vllm:inter_token_latency_seconds", "inter_token_latency"),
        ("vllm:e2e_request_latency_seconds", "request_latency"),
    ]:
        bounds = [s.labels["le"] for s in fams[name].samples if s.name.endswith("_bucket")]
        assert [float(b) for b in bounds[:-1]] == histogram_buckets(family), name  # type: ignore[arg-type]
        assert bounds[-1] == "+Inf"


def test_each_finished_sequence_counts_by_reason_with_its_latency() -> None:
    metrics, scrape = metrics_with(vllm_like)
    before = scrape()
    for reason in ("stop", "length", "abort"):  # present from the start, at 0
        assert value(before, "vllm:request_success", "_total", finished_reason=reason) == 0
    metrics.record_finish("stop", 0.4)
    for reason, seconds in [("length", 1.5), ("stop", 2.5)]:  # the sequences of one request with n=2
        metrics.record_finish(reason, seconds)
    fams = scrape()
    assert value(fams, "vllm:request_success", "_total", finished_reason="stop") == 2
    assert value(fams, "vllm:request_success", "_total", finished_reason="length") == 1
    assert value(fams, "vllm:request_success", "_total", finished_reason="abort") == 0
    assert value(fams, "vllm:e2e_request_latency_seconds", "_count") == 3
    assert value(fams, "vllm:e2e_request_latency_seconds", "_sum") == pytest.approx(4.4)
    assert value(fams, "vllm:e2e_request_latency_seconds", "_bucket", le="0.5") == 1


# -- the real engines ----------------------------------------------------------------------------------------------


def scrape(server: LiveServer) -> dict[str, Metric]:
    return families(httpx.get(f"{server.base_url}/metrics").text)


def complete(server: LiveServer, prompt: str, max_tokens: int) -> dict[str, int]:
    body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True, "temperature": 0}
    r = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60)
    r.raise_for_status()
    usage: dict[str, int] = r.json()["usage"]
    return usage


def test_the_server_exposes_vllms_families_with_the_served_model_name(server: LiveServer) -> None:
    complete(server, "Hello", 2)  # every histogram has had an observation
    fams = scrape(server)
    assert {name: fams[name].type for name in TYPES} == TYPES
    for name, labels in vllm_samples(fams):
        assert labels["model_name"] == "tiny" and labels["engine"] == "0", name
    (info,) = fams["vllm:cache_config_info"].samples
    assert info.value == 1 and int(info.labels["block_size"]) > 0 and int(info.labels["num_gpu_blocks"]) > 0
    if server.backend == "openvino":
        assert int(info.labels["block_size"]) == OPENVINO_BLOCK_SIZE
        assert not PREFIX_CACHE.keys() & fams.keys()  # the pipeline does not count its prefix cache lookups
    else:
        assert {name: fams[name].type for name in PREFIX_CACHE} == PREFIX_CACHE


def test_token_counters_and_ttft_move_with_the_traffic(server: LiveServer) -> None:
    before = scrape(server)
    usages = [complete(server, "The capital of France is", 5), complete(server, "One two three four", 3)]
    after = scrape(server)

    def moved(name: str, suffix: str) -> float:
        return value(after, name, suffix) - value(before, name, suffix)

    assert moved("vllm:prompt_tokens", "_total") == sum(u["prompt_tokens"] for u in usages)
    assert moved("vllm:generation_tokens", "_total") == sum(u["completion_tokens"] for u in usages) == 8
    assert moved("vllm:time_to_first_token_seconds", "_count") == 2
    assert moved("vllm:time_to_first_token_seconds", "_sum") > 0
    # One observation per step after a request's first token: at most one per token after the first (4 + 2). A step
    # may bring several tokens (OpenVINO's stepping loop hands over what it has when the event loop was busy), so a
    # request's remaining tokens may come in one step, or with its first.
    assert 0 <= moved("vllm:inter_token_latency_seconds", "_count") <= 4 + 2
    assert moved("vllm:prompt_tokens", "_total") == moved("engine_server_prompt_tokens", "_total")


def test_prefix_cache_hits_count_a_repeated_prompt(server: LiveServer) -> None:
    if server.backend == "openvino":
        pytest.skip("the OpenVINO pipeline does not count its prefix cache lookups")
    fams = scrape(server)
    (info,) = fams["vllm:cache_config_info"].samples
    block_size = int(info.labels["block_size"])
    prompt = " ".join(f"w{i}" for i in range(3 * block_size))  # at least 3 blocks, whatever the tokenizer makes
    complete(server, prompt, 1)
    before = scrape(server)
    usage = complete(server, prompt, 1)
    after = scrape(server)
    queries = value(after, "vllm:prefix_cache_queries", "_total") - value(before, "vllm:prefix_cache_queries", "_total")
    hits = value(after, "vllm:prefix_cache_hits", "_total") - value(before, "vllm:prefix_cache_hits", "_total")
    assert 0 < queries <= usage["prompt_tokens"]
    # The whole blocks of the first request's prompt are found again.
    assert usage["prompt_tokens"] - block_size <= hits <= queries


def test_the_running_gauge_counts_a_stream_in_flight(server: LiveServer) -> None:
    body = {"model": "tiny", "prompt": "story", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()  # kept: a dropped line iterator would close the connection
        assert next(line for line in lines if line.startswith("data:"))
        fams = scrape(server)
        assert value(fams, "vllm:num_requests_running") >= 1
        assert value(fams, "vllm:num_requests_waiting") == 0
        assert 0 < value(fams, "vllm:kv_cache_usage_perc") <= 1
    deadline = time.monotonic() + 10  # the abandoned stream is aborted: wait for it to leave the engine
    while value(fams := scrape(server), "vllm:num_requests_running") + value(fams, "vllm:num_requests_waiting"):
        assert time.monotonic() < deadline, "the engine still runs the abandoned request"
        time.sleep(0.05)


def test_finished_requests_count_by_reason_with_their_latency(server: LiveServer) -> None:
    before = scrape(server)
    complete(server, "Hello", 3)  # ends at max_tokens: "length"
    after = scrape(server)

    def moved(name: str, suffix: str, **labels: str) -> float:
        return value(after, name, suffix, **labels) - value(before, name, suffix, **labels)

    assert moved("vllm:request_success", "_total", finished_reason="length") == 1
    assert moved("vllm:request_success", "_total", finished_reason="stop") == 0
    assert moved("vllm:e2e_request_latency_seconds", "_count") == 1
    assert moved("vllm:e2e_request_latency_seconds", "_sum") > 0
