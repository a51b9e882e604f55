"""The openvino backend's ceiling: OpenVINO GenAI's ContinuousBatchingPipeline driven directly, no HTTP, no asyncio.

Runs in .venv-openvino. The pipeline is built from our server's own flags (the same Config, model export and
`backends.openvino_process.open_pipeline` the server uses), so only the serving layer is missing. The prompts arrive as
token ids: the caller samples them in the vLLM venv with vLLM's benchmark sampler and the chat template
(`bench.raw_engine.sample_prompts`), as for the raw vLLM engine. One loop keeps up to `concurrency` requests in the
pipeline, steps it, and reads each request's new tokens after every step (no detokenization: this is the ceiling).
Sampling is what our server asks for when a request names nothing (temperature 1), with ignore_eos. TTFT, TPOT and
throughput follow `vllm.benchmarks.serve` definitions, as in bench/raw_engine.py, and one single request runs first.

    .venv-openvino/bin/python -m bench.raw_pipeline --server-args '[...]' --runs prompts.json --out result.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from bench.cpu import CpuMeter
from bench.raw_engine import Timing, summarize


class Driver:
    def __init__(self, pipe: Any, config: Any) -> None:
        self.pipe = pipe
        self.config = config
        self.ids = 0

    def run(self, prompts: list[list[int]], concurrency: int) -> tuple[list[Timing], float]:
        import numpy as np
        import openvino

        waiting = deque(prompts)
        active: dict[int, tuple[Any, float, list[float]]] = {}  # id -> (handle, start, [first, last, tokens])
        timings: list[Timing] = []
        start = time.perf_counter()
        while waiting or active:
            while waiting and len(active) < concurrency:
                prompt = openvino.Tensor(np.array([waiting.popleft()], dtype=np.int64))
                self.ids += 1
                handle = self.pipe.add_request(self.ids, prompt, self.config)
                active[self.ids] = (handle, time.perf_counter(), [0.0, 0.0, 0])
            self.pipe.step()
            now = time.perf_counter()
            for request_id, (handle, started, seen) in list(active.items()):
                finished = handle.get_status().name == "FINISHED"  # read first: nothing changes until step()
                while handle.can_read():
                    new = sum(len(out.generated_ids) for out in handle.read().values())
                    if new:
                        seen[0] = seen[0] or now
                        seen[1] = now
                        seen[2] += new
                if finished:
                    del active[request_id]
                    timings.append(Timing(seen[0] - started, seen[1] - started, int(seen[2])))
        return timings, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.raw_pipeline", description=__doc__.splitlines()[0])
    parser.add_argument("--server-args", required=True, help="JSON list: our server's flags (model and engine)")
    parser.add_argument("--runs", required=True, type=Path, help='JSON file: [{"workload": {...}, "prompts": [...]}]')
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--t0", type=float, default=None, help="time.time() when the caller launched this process")
    args = parser.parse_args(argv)
    t0 = args.t0 if args.t0 is not None else time.time()

    from backends.base import SamplingOptions
    from backends.openvino_process import open_pipeline
    from backends.openvino_sampling import generation_config
    from backends.openvino_settings import pipeline_settings
    from backends.registry import settings_for
    from engine_server.cli import load_config
    from model_prep.sources import resolve

    _, config = load_config(["serve", *json.loads(args.server_args)], {})
    model = resolve(config, "openvino")  # exported into the cache on first use, as the server does
    settings = pipeline_settings(settings_for("openvino", config))
    if settings.max_model_len is None:
        parser.error("the server args must set --max-model-len")
    pipe = open_pipeline(model, settings, settings.max_model_len)
    defaults = pipe.get_config()
    eos, stops = int(defaults.eos_token_id), {int(t) for t in defaults.stop_token_ids}
    ready_s = time.time() - t0

    runs = []
    for spec in json.loads(args.runs.read_text()):
        workload, prompts = spec["workload"], spec["prompts"]
        options = SamplingOptions(workload["output_len"], ignore_eos=True)
        driver = Driver(pipe, generation_config(options, eos, stops, settings.prompt_lookup))
        driver.run(prompts[:1], 1)
        with CpuMeter((os.getpgid(0),)) as cpu:  # the caller starts this process as its own group's leader
            timings, duration = driver.run(prompts, workload["concurrency"])
        # The driver is this process, already counted as "front"; there is no separate client.
        result = {"metrics": summarize(timings, duration), "cpu": {**cpu.seconds, "client": 0.0, "busy": cpu.busy}}
        runs.append({"workload": workload, "seed": spec["seed"], **result})
    args.out.write_text(json.dumps({"ready_s": ready_s, "runs": runs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
