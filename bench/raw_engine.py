"""The ceiling: vLLM's AsyncLLM driven directly, no HTTP, with the workload vLLM's benchmark client would send.

Prompts come from the client's own random-dataset sampler (same flags, same seed rules), go through the model's chat
template as the servers' chat endpoints do, and run under a semaphore of the workload's concurrency. TTFT, TPOT and
throughput follow `vllm.benchmarks.serve` definitions: TTFT is the first output carrying a token, latency ends at the
last one, TPOT = (latency - TTFT) / (output tokens - 1), throughputs divide by the whole run's wall time. As the client
does, one single request runs before the measured run.

    python -m bench.raw_engine --model DIR --runs '[{"workload": {...}, "seed": 1}]' --out result.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.client import client_args
from bench.cpu import CpuMeter
from bench.workloads import Workload


@dataclass
class Timing:
    ttft: float
    latency: float
    num_output: int


def sample_prompts(workload: Workload, seed: int, tokenizer: Any) -> list[list[int]]:
    """Token ids of the prompts the client would send for this workload and seed, after the chat template."""
    import random

    from vllm.benchmarks.datasets import get_samples
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = FlexibleArgumentParser()
    add_cli_args(parser)
    args = parser.parse_args(client_args(workload, "http://unused", "raw", seed))
    # The client seeds both generators just before sampling; doing the same gives the same kind of prompts.
    random.seed(seed)
    np.random.seed(seed)
    prompts = []
    for sample in get_samples(args, tokenizer):
        messages = [{"role": "user", "content": sample.prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        # The template carries the special tokens, as in the servers' chat path.
        prompts.append(list(tokenizer.encode(text, add_special_tokens=False)))
    return prompts


async def timed_generate(llm: Any, prompt: list[int], output_len: int) -> Timing:
    from vllm.inputs import TokensPrompt
    from vllm.sampling_params import RequestOutputKind, SamplingParams

    # Server defaults for a request that names no sampling values: temperature 1, text detokenized per step.
    params = SamplingParams(max_tokens=output_len, ignore_eos=True, output_kind=RequestOutputKind.DELTA)
    start = time.perf_counter()
    ttft = None
    last = start
    num_output = 0
    async for out in llm.generate(TokensPrompt(prompt_token_ids=prompt), params, f"raw-{uuid.uuid4().hex}"):
        num_new = len(out.outputs[0].token_ids)
        if num_new == 0:
            continue
        now = time.perf_counter()
        if ttft is None:
            ttft = now - start
        num_output += num_new
        last = now
    if ttft is None:
        raise RuntimeError("the engine produced no tokens")
    return Timing(ttft, last - start, num_output)


def summarize(timings: list[Timing], duration: float) -> dict[str, float]:
    ttfts = [t.ttft for t in timings]
    tpots = [(t.latency - t.ttft) / (t.num_output - 1) for t in timings if t.num_output > 1]
    total_output = sum(t.num_output for t in timings)
    return {
        "completed": len(timings),
        "failed": 0,
        "duration": duration,
        "total_output_tokens": total_output,
        "output_throughput": total_output / duration,
        "request_throughput": len(timings) / duration,
        "mean_ttft_ms": float(np.mean(ttfts)) * 1000,
        "p99_ttft_ms": float(np.percentile(ttfts, 99)) * 1000,
        "mean_tpot_ms": float(np.mean(tpots or [0.0])) * 1000,
        "p99_tpot_ms": float(np.percentile(tpots or [0.0], 99)) * 1000,
    }


async def run_workload(llm: Any, tokenizer: Any, workload: Workload, seed: int) -> dict[str, Any]:
    prompts = sample_prompts(workload, seed, tokenizer)
    await timed_generate(llm, prompts[0], workload.output_len)
    limit = asyncio.Semaphore(workload.concurrency)

    async def limited(prompt: list[int]) -> Timing:
        async with limit:
            return await timed_generate(llm, prompt, workload.output_len)

    # This process leads its own process group (the caller starts it in a new session): "front" is this
    # process (AsyncLLM's output processing and the driver), "engine" the engine-core processes it spawned.
    with CpuMeter((os.getpgid(0),)) as cpu:
        start = time.perf_counter()
        timings = await asyncio.gather(*(limited(p) for p in prompts))
        duration = time.perf_counter() - start
    # The driver runs inside the front process, so its CPU is already counted there; there is no separate client.
    return {"metrics": summarize(list(timings), duration), "cpu": {**cpu.seconds, "client": 0.0, "busy": cpu.busy}}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    # The same engine arguments our server's cpu backend passes for the benchmark's flags.
    engine_args = AsyncEngineArgs(
        model=args.model,
        dtype=args.dtype,
        enforce_eager=True,
        enable_prefix_caching=True,
        max_model_len=args.max_model_len,
    )
    llm = AsyncLLM.from_engine_args(engine_args)
    try:
        tokenizer = llm.get_tokenizer()
        ready_s = time.time() - args.t0
        runs = []
        for spec in json.loads(args.runs):
            workload = Workload(**spec["workload"])
            run = await run_workload(llm, tokenizer, workload, spec["seed"])
            runs.append({"workload": asdict(workload), "seed": spec["seed"], **run})
        return {"ready_s": ready_s, "runs": runs}
    finally:
        llm.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.raw_engine", description="Drive AsyncLLM directly (no HTTP).")
    parser.add_argument("--model", required=True)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--runs", required=True, help="JSON list of {workload: {...}, seed: N}")
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument(
        "--t0", type=float, default=None, help="time.time() when the caller launched this process (time to ready)"
    )
    args = parser.parse_args(argv)
    if args.t0 is None:
        args.t0 = time.time()
    result = asyncio.run(run(args))
    args.out.write_text(json.dumps(result, indent=2))
    return 0


# The guard matters: AsyncLLM spawns its engine core, which re-imports this module.
if __name__ == "__main__":
    sys.exit(main())
