"""The benchmark's shared vocabulary: what a workload is, and what one run of one contender on it produced."""

from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field

# The figures compared, keyed as vLLM's benchmark client names them in its result dict.
METRICS = ("output_throughput", "request_throughput", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms")


@dataclass(frozen=True)
class Workload:
    name: str  # as printed in the table
    model: str  # model directory (also the tokenizer the client samples prompts with)
    input_len: int
    output_len: int
    concurrency: int
    num_prompts: int


@dataclass
class RunResult:
    contender: str
    workload: str
    ready_s: float | None
    metrics: dict[str, float]
    seed: int
    # 1-minute load average before and after the run: other jobs on this small machine skew figures.
    load: tuple[float, float] = (0.0, 0.0)
    extra: dict[str, float] = field(default_factory=dict)


def combine(runs: list[RunResult]) -> RunResult:
    """Repeated runs of one contender on one workload as one result: the median of each figure, so that a burst
    of other jobs during one run does not decide the comparison; the spread of output tok/s is kept."""
    if len(runs) == 1:
        return runs[0]
    first = runs[0]
    keys = set.intersection(*(set(r.metrics) for r in runs))
    metrics = {
        k: statistics.median(r.metrics[k] for r in runs) for k in keys if isinstance(first.metrics[k], int | float)
    }
    outputs = [r.metrics["output_throughput"] for r in runs]
    metrics.update(num_runs=len(runs), min_output_throughput=min(outputs), max_output_throughput=max(outputs))
    extra = {k: statistics.median(r.extra[k] for r in runs) for k in first.extra}
    load = (first.load[0], runs[-1].load[1])
    return RunResult(first.contender, first.workload, first.ready_s, metrics, first.seed, load, extra)


def load_average() -> float:
    return os.getloadavg()[0]


def tiny_workload(model: str, quick: bool) -> Workload:
    # Bound by serving overhead: a very small model, many short concurrent streams.
    return Workload("tiny in128/out64 c32", model, 128, 64, 32, 64 if quick else 200)


def model_workloads(group: str, model: str, quick: bool) -> list[Workload]:
    # Bound by compute: 10-40 tok/s at one stream here, so prompt counts are kept small to finish in minutes.
    return [
        Workload(f"{group} in128/out128 c1", model, 128, 128, 1, 2 if quick else 6),
        Workload(f"{group} in128/out128 c8", model, 128, 128, 8, 8 if quick else 32),
    ]
