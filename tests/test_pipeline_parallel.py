"""One model across two hosts, played by two processes on this one: node 0 serves HTTP, node 1 runs headless.

The tiny model has two layers, so with --pipeline-parallel-size 2 each node runs one of them; each node's worker is
pinned to its own CPU, as on two hosts.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import free_port, start_server, stop, wait_healthy

PROMPTS = ["The cat", "What is the capital of France?", "Our team builds some code", "Who wrote the letter"]
FLAGS = ["--kv-cache-space", "1", "--dtype", "float32", "--max-model-len", "2048", "--served-model-name", "tiny"]
NODE_DEATH_TIMEOUT_S = 60


def greedy(base_url: str) -> list[tuple[str, str, int]]:
    """Each prompt's greedy completion, one request at a time: text, finish reason, tokens."""
    answers = []
    with httpx.Client(base_url=base_url, timeout=60) as client:
        for prompt in PROMPTS:
            body = {"model": "tiny", "prompt": prompt, "max_tokens": 16, "temperature": 0}
            r = client.post("/v1/completions", json=body)
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            answers.append((choice["text"], choice["finish_reason"], r.json()["usage"]["completion_tokens"]))
    return answers


@pytest.fixture(scope="module")
def single_process_answers(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> list[tuple[str, str, int]]:
    log = tmp_path_factory.mktemp("single") / "server.log"
    process, base_url = start_server(["--model", str(tiny_model), *FLAGS], log)
    try:
        wait_healthy(process, base_url, log)
        return greedy(base_url)
    finally:
        assert stop(process) == 0


class Nodes:
    def __init__(self, tiny_model: Path, tmp: Path) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        common = [
            "--model",
            str(tiny_model),
            *FLAGS,
            "--log-format",
            "text",
            "--pipeline-parallel-size",
            "2",
            "--nnodes",
            "2",
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            str(free_port()),
        ]
        self.log0, self.log1 = tmp / "node0.log", tmp / "node1.log"
        # Node 1 first, as a host would be started before the one that serves: it waits for node 0.
        self.node1, _ = start_server(
            [*common, "--node-rank", "1", "--headless"],
            self.log1,
            env={"VLLM_CPU_OMP_THREADS_BIND": str(cpus[1 % len(cpus)])},
        )
        self.node0, self.base_url = start_server(
            [*common, "--node-rank", "0"], self.log0, env={"VLLM_CPU_OMP_THREADS_BIND": str(cpus[0])}
        )

    def kill_node1(self) -> None:
        """As a host would go away: the headless process and its workers at once, with no chance to clean up."""
        tree = [psutil.Process(self.node1.pid), *psutil.Process(self.node1.pid).children(recursive=True)]
        for process in tree:
            process.kill()
        self.node1.wait(10)


@pytest.fixture(scope="module")
def nodes(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory, single_process_answers: list[tuple[str, str, int]]
) -> Iterator[Nodes]:
    # The single-process answers come first: the two servers never share this machine's CPUs.
    nodes = Nodes(tiny_model, tmp_path_factory.mktemp("nodes"))
    try:
        wait_healthy(nodes.node0, nodes.base_url, nodes.log0)
        assert nodes.node1.poll() is None, nodes.log1.read_text()[-4000:]
        yield nodes
    finally:
        stop(nodes.node0)
        stop(nodes.node1)


def test_headless_node_serves_no_http_and_runs_its_share_of_the_layers(nodes: Nodes) -> None:
    log1 = nodes.log1.read_text()
    assert "headless node 1: workers ready, serving node 0" in log1
    assert "Uvicorn running" not in log1 and "listening on" not in log1
    assert "PP rank 1" in log1 and "PP rank 0" in nodes.log0.read_text()


def test_greedy_output_equals_the_single_process_output(
    nodes: Nodes, single_process_answers: list[tuple[str, str, int]]
) -> None:
    assert greedy(nodes.base_url) == single_process_answers
    assert all(tokens == 16 for _, _, tokens in single_process_answers)


def poll_health(base_url: str, process: subprocess.Popen[bytes], since: float) -> list[tuple[float, int | str]]:
    """/health every 50 ms, with the seconds since `since`, until the process exits (or the time is up)."""
    seen: list[tuple[float, int | str]] = []
    with httpx.Client(timeout=2) as client:
        while process.poll() is None and time.monotonic() - since < NODE_DEATH_TIMEOUT_S:
            try:
                seen.append((time.monotonic() - since, client.get(f"{base_url}/health").status_code))
            except httpx.TransportError:
                seen.append((time.monotonic() - since, "refused"))
            time.sleep(0.05)
    return seen


def test_killing_the_headless_node_turns_health_503_and_node_0_exits_nonzero(nodes: Nodes) -> None:
    body = {"model": "tiny", "prompt": "The cat", "max_tokens": 1900, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{nodes.base_url}/v1/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        nodes.kill_node1()
        killed_at = time.monotonic()
        with ThreadPoolExecutor(1) as pool:
            health = pool.submit(poll_health, nodes.base_url, nodes.node0, killed_at)
            rest = [line for line in lines if line.startswith("data:")]
            stream_ended_after = time.monotonic() - killed_at
            seen = health.result()
    try:
        code = nodes.node0.wait(max(NODE_DEATH_TIMEOUT_S - (time.monotonic() - killed_at), 1))
    except subprocess.TimeoutExpired:
        pytest.fail(f"node 0 still runs {NODE_DEATH_TIMEOUT_S} s after node 1 was killed: {seen[-5:]}")
    exited_after = time.monotonic() - killed_at
    # The stream in flight ends with the error instead of waiting for vLLM's step timeout (300 s).
    assert rest[-1] == "data: [DONE]" and '"code":"engine_dead"' in rest[-2], rest[-3:]
    assert "node 1 has not been heard from" in rest[-2]
    # Healthy until the silence limit (5 s), then 503 until the server has stopped listening, then refused.
    first_unhealthy = next((i for i, (t, status) in enumerate(seen) if status != 200), None)
    assert first_unhealthy is not None, seen
    assert all(status in (503, "refused") for t, status in seen[first_unhealthy:]), seen
    assert seen[first_unhealthy][0] < 15, seen
    assert code == 1 and exited_after < NODE_DEATH_TIMEOUT_S
    assert "the engine died: node 1 has not been heard from for 5 s" in nodes.log0.read_text()
    statuses = sorted({str(status) for t, status in seen[first_unhealthy:]})
    print(
        f"\nnode 0 after node 1's kill: stream ended {stream_ended_after:.1f} s, /health {statuses} from "
        f"{seen[first_unhealthy][0]:.1f} s, exited {exited_after:.1f} s with {code}"
    )
