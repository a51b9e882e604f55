"""Faults and load against the real engine: disconnects, bursts, engine death, SIGTERM, fuzzing, metrics."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import LiveServer, start_server, stop, wait_healthy

CHAT = "/v1/chat/completions"


def launch(tiny_model: Path, tmp: Path, *flags: str) -> LiveServer:
    log = tmp / "server.log"
    args = ["--model", str(tiny_model), "--kv-cache-space", "1", "--dtype", "float32", "--served-model-name", "tiny"]
    process, base_url = start_server([*args, "--log-format", "text", *flags], log)
    first = wait_healthy(process, base_url, log)
    return LiveServer(base_url, process, log, "tiny", first)


@pytest.fixture(scope="module")
def guarded(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Output capped at 64 tokens, so that fuzzed requests stay cheap."""
    server = launch(tiny_model, tmp_path_factory.mktemp("guarded"), "--max-tokens-limit", "64", "--max-n", "4")
    yield server
    assert stop(server.process) == 0


def idle_within(server: LiveServer, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.metric("engine_server_requests_running") + server.metric("engine_server_requests_waiting") == 0:
            return True
        time.sleep(0.05)
    return False


async def test_hundred_clients_disconnecting_mid_generation_leave_the_engine_idle(guarded: LiveServer) -> None:
    body = {"messages": "tell a story", "ignore_eos": True, "stream": True}

    async def leave_after_first_token(client: httpx.AsyncClient) -> bool:
        async with client.stream("POST", CHAT, json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    return True  # leaving the block closes the connection mid-stream
        return False

    limits = httpx.Limits(max_connections=100)
    async with httpx.AsyncClient(base_url=guarded.base_url, timeout=120, limits=limits) as client:
        started = await asyncio.gather(*(leave_after_first_token(client) for _ in range(100)))
    assert all(started)
    assert idle_within(guarded, 5), "requests of clients that left still run"
    assert guarded.metric("engine_server_requests_admitted") == 0


def test_metrics_move_by_exactly_the_traffic_sent(guarded: LiveServer) -> None:
    def figures() -> tuple[float, float, float, float]:
        return (
            guarded.metric('engine_server_http_requests_total{route="/v1/chat/completions",status="200"}'),
            guarded.metric("engine_server_generation_tokens_total"),
            guarded.metric("engine_server_prompt_tokens_total"),
            guarded.metric("engine_server_time_to_first_token_seconds_count"),
        )

    before = figures()
    prompt_tokens = 0
    for i in range(5):
        body = {"messages": f"request {i}", "max_tokens": 7, "ignore_eos": True, "stream": i % 2 == 1}
        body["stream_options"] = {"include_usage": True} if body["stream"] else None
        r = httpx.post(f"{guarded.base_url}{CHAT}", json={k: v for k, v in body.items() if v is not None})
        assert r.status_code == 200
        if body["stream"]:
            usage = [line for line in r.text.splitlines() if '"usage"' in line][-1]
            prompt_tokens += int(usage.split('"prompt_tokens":')[1].split(",")[0])
        else:
            prompt_tokens += r.json()["usage"]["prompt_tokens"]
    after = figures()
    assert [a - b for a, b in zip(after, before, strict=True)] == [5, 35, prompt_tokens, 5]


def test_secrets_stay_out_of_metrics_and_logs(guarded: LiveServer) -> None:
    assert "hf_" not in httpx.get(f"{guarded.base_url}/metrics").text


def test_fuzzed_requests_never_get_a_5xx(guarded: LiveServer) -> None:
    """Requests generated from our published OpenAPI schema (valid and invalid ones), a bounded number per route."""
    schema = schemathesis.openapi.from_url(f"{guarded.base_url}/openapi.json")
    seen: dict[str, list[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def call(case: schemathesis.Case) -> None:
            response = case.call(base_url=guarded.base_url, timeout=60)
            seen.setdefault(case.operation.label, []).append(response.status_code)
            assert response.status_code < 500, f"{case.method} {case.path} {case.body!r} -> {response.status_code}"

        call()
    assert len(seen) == 11 and sum(map(len, seen.values())) >= 110


def test_server_is_healthy_after_fuzzing(guarded: LiveServer) -> None:
    assert httpx.get(f"{guarded.base_url}/health").status_code == 200
    r = httpx.post(f"{guarded.base_url}{CHAT}", json={"messages": "still there?", "max_tokens": 3}, timeout=60)
    assert r.status_code == 200


@pytest.fixture(scope="module")
def bounded(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = launch(tiny_model, tmp_path_factory.mktemp("bounded"), "--max-concurrent-requests", "8")
    yield server
    stop(server.process)


async def test_burst_of_five_times_the_bound_gets_200s_and_quick_429s(bounded: LiveServer) -> None:
    body = {"messages": "burst", "max_tokens": 32, "ignore_eos": True}

    async def one(client: httpx.AsyncClient) -> tuple[int, float, httpx.Response]:
        started = time.monotonic()
        r = await client.post(CHAT, json=body)
        return r.status_code, time.monotonic() - started, r

    async with httpx.AsyncClient(base_url=bounded.base_url, timeout=120, limits=httpx.Limits(max_connections=40)) as c:
        results = await asyncio.gather(*(one(c) for _ in range(40)))
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 8 and 429 in statuses
    for status, seconds, r in results:
        if status == 200:
            assert r.json()["usage"]["completion_tokens"] == 32  # admitted requests complete in full
        else:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
            assert seconds < 2.0  # refused at once, not after waiting


def test_engine_death_turns_health_503_ends_streams_with_an_error_and_exits_nonzero(bounded: LiveServer) -> None:
    body = {"messages": "long", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{bounded.base_url}{CHAT}", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        engine_processes = psutil.Process(bounded.process.pid).children(recursive=True)
        assert engine_processes
        killed_at = time.monotonic()
        for child in engine_processes:
            child.kill()
        rest = [line for line in lines if line.startswith("data:")]
    assert rest[-1] == "data: [DONE]" and '"error"' in rest[-2], rest[-3:]
    # After the kill, /health answers 503 until the server has stopped listening, then the port refuses.
    seen: list[tuple[float, int | str]] = []
    while bounded.process.poll() is None and time.monotonic() - killed_at < 60:
        try:
            seen.append((time.monotonic() - killed_at, httpx.get(f"{bounded.base_url}/health").status_code))
        except httpx.TransportError:
            seen.append((time.monotonic() - killed_at, "refused"))
        time.sleep(0.1)
    assert all(status != 200 for t, status in seen if t > 3), seen
    assert bounded.process.wait(60) != 0


def test_sigterm_lets_the_stream_in_flight_finish_then_exits_zero(tiny_model: Path, tmp_path: Path) -> None:
    server = launch(tiny_model, tmp_path, "--shutdown-grace", "60")
    try:
        body = {"messages": "finish me", "max_tokens": 300, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", f"{server.base_url}{CHAT}", json=body, timeout=60) as r:
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            server.process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            with pytest.raises(httpx.TransportError):  # no new connections once stopping
                httpx.get(f"{server.base_url}/health", timeout=2)
            rest = [line for line in lines if line.startswith("data:")]
        assert rest[-1] == "data: [DONE]" and '"finish_reason":"length"' in rest[-2]
        assert len([first, *rest[:-1]]) >= 250  # every step streamed, nothing cut (a step may carry 2 tokens)
        assert server.process.wait(60) == 0
    finally:
        stop(server.process)


def test_sigterm_while_the_engine_starts_exits_at_once_and_leaves_no_process(tiny_model: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    args = ["--model", str(tiny_model), "--kv-cache-space", "1", "--dtype", "float32", "--log-format", "text"]
    process, base_url = start_server(args, log)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the port answers 503 while the engine starts (about half a minute)
            try:
                if httpx.get(f"{base_url}/health", timeout=2).status_code == 503:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        children: list[psutil.Process] = []
        while not children and time.monotonic() < deadline:  # into the engine's start: its processes are made
            time.sleep(0.5)
            children = psutil.Process(process.pid).children(recursive=True)
        assert children and "ready in" not in log.read_text()
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        assert time.monotonic() - stopped < 15, "the stop waited for the engine to finish starting"
        assert "stopped while the engine was starting" in log.read_text()
        _, alive = psutil.wait_procs(children, timeout=5)
        assert not alive, f"left behind: {alive}"
    finally:
        stop(process)
