"""The OpenVINO pipeline in a process of its own (--engine-process), against the same pipeline in the server's
process: the same tokens, requests freed on cancel, and a clear answer when the engine process dies."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import LiveServer, start_server, stop, wait_healthy

ENGINE_PID = re.compile(r"the OpenVINO pipeline runs in process (\d+)")
PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "1, 2, 3, 4,"]


@pytest.fixture(scope="module")
def pair(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LiveServer]]:
    """One server per mode, started together (each compiles its pipeline on its own)."""
    started = {}
    try:
        for mode, flags in {"thread": ["--no-engine-process"], "process": []}.items():
            log = tmp_path_factory.mktemp("openvino-process") / f"{mode}.log"
            args = ["--hw-mode", "openvino", "--model", str(tiny_model), "--max-model-len", "2048"]
            args += ["--kv-cache-space", "1", "--served-model-name", "tiny", *flags]
            process, url = start_server(args, log, backend="openvino")
            started[mode] = LiveServer(url, process, log, "tiny", backend="openvino")
        for s in started.values():
            wait_healthy(s.process, s.base_url, s.log)
        yield started
    finally:
        for s in started.values():
            stop(s.process)


def engine_pid(server: LiveServer) -> int:
    match = ENGINE_PID.search(server.log.read_text())
    assert match, "the server did not log its engine process"
    return int(match.group(1))


def parent_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]


def complete(server: LiveServer, **body: object) -> dict:
    r = httpx.post(f"{server.base_url}/v1/completions", json={"model": "tiny", **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_pipeline_runs_in_a_child_process(pair: dict[str, LiveServer]) -> None:
    pid = engine_pid(pair["process"])
    assert parent_of(pid) == pair["process"].process.pid
    assert not ENGINE_PID.search(pair["thread"].log.read_text())  # the default keeps it in the server's process


@pytest.mark.parametrize("prompt", PROMPTS)
def test_both_modes_give_the_same_tokens(pair: dict[str, LiveServer], prompt: str) -> None:
    """Greedy with logprobs and a stop string, and seeded sampling: the engine process builds the same config."""
    greedy = {"prompt": prompt, "max_tokens": 24, "temperature": 0, "logprobs": 1, "stop": ["\n\n"]}
    seeded = {"prompt": prompt, "max_tokens": 24, "temperature": 0.9, "top_p": 0.9, "seed": 7}
    for body in (greedy, seeded):
        thread, process = (complete(pair[mode], **body) for mode in ("thread", "process"))
        assert process["choices"][0]["text"] == thread["choices"][0]["text"]
        assert process["choices"][0]["finish_reason"] == thread["choices"][0]["finish_reason"]
        assert process["usage"] == thread["usage"]
    thread_lp = complete(pair["thread"], **greedy)["choices"][0]["logprobs"]["token_logprobs"]
    process_lp = complete(pair["process"], **greedy)["choices"][0]["logprobs"]["token_logprobs"]
    assert process_lp == pytest.approx(thread_lp, abs=1e-4) and len(process_lp) > 0


def test_a_refused_config_is_a_400_in_both_modes(pair: dict[str, LiveServer]) -> None:
    for server in pair.values():
        body = {"model": "tiny", "prompt": "x", "max_tokens": 4, "temperature": 0.5, "top_p": 0}
        r = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text


def test_a_cancelled_stream_frees_its_kv_blocks(pair: dict[str, LiveServer]) -> None:
    server = pair["process"]
    body = {"messages": "story", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        assert server.metric("engine_server_requests_running") == 1
        assert server.metric("engine_server_kv_cache_usage_ratio") > 0
    deadline = time.monotonic() + 5
    while server.metric("engine_server_requests_running") + server.metric("engine_server_requests_waiting") > 0:
        assert time.monotonic() < deadline, "the engine process still runs the cancelled request"
        time.sleep(0.02)
    assert server.metric("engine_server_kv_cache_usage_ratio") == 0


def test_concurrent_streams_all_finish(pair: dict[str, LiveServer]) -> None:
    """Eight requests at once through the process: each gets its own tokens, counted right."""
    import concurrent.futures

    server = pair["process"]
    bodies = [
        {"prompt": p, "max_tokens": 16 + i, "temperature": 0, "ignore_eos": True} for i, p in enumerate(PROMPTS * 2)
    ]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda b: complete(server, **b), bodies))
    for body, answer in zip(bodies, answers, strict=True):
        assert answer["usage"]["completion_tokens"] == body["max_tokens"]
        alone = complete(pair["thread"], **body)
        assert answer["choices"][0]["text"] == alone["choices"][0]["text"]


def test_when_the_engine_process_dies_the_server_says_so_and_exits(tiny_model: Path, tmp_path: Path) -> None:
    """As when any engine dies: unhealthy, then the server stops (nonzero) so that its supervisor restarts it."""
    log = tmp_path / "server.log"
    args = ["--hw-mode", "openvino", "--model", str(tiny_model), "--max-model-len", "2048", "--engine-process"]
    process, url = start_server([*args, "--kv-cache-space", "1"], log, backend="openvino")
    try:
        wait_healthy(process, url, log)
        os.kill(engine_pid(LiveServer(url, process, log, "tiny", backend="openvino")), signal.SIGKILL)
        process.wait(30)  # idle: the watchdog notices it, not a request
        assert process.returncode != 0
        assert "the OpenVINO engine process ended (exit code -9)" in log.read_text()
    finally:
        stop(process)


def test_stopping_the_server_stops_the_engine_process(tiny_model: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    args = ["--hw-mode", "openvino", "--model", str(tiny_model), "--max-model-len", "2048", "--engine-process"]
    process, url = start_server([*args, "--kv-cache-space", "1"], log, backend="openvino")
    try:
        wait_healthy(process, url, log)
        pid = engine_pid(LiveServer(url, process, log, "tiny", backend="openvino"))
    finally:
        assert stop(process) == 0
    assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
