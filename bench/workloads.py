"""The benchmark's shared vocabulary: what a workload is, and what one run of one contender on it produced."""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
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
    # None: random token ids, input_len in and output_len out (ignore_eos). Else a JSONL of chat prompts, each with
    # its own output_tokens (max_tokens), sent greedy, ending where the model ends them (edit_dataset writes it).
    dataset: str | None = None


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


# Real text to return with one small change, output about as long as the input (issue 25's `edit`): code files of
# this repository with one identifier renamed, and a passage of a license shipped here with one sentence reworded.
CODE_EDITS = (
    ("backends/json_grammar.py", "SchemaError", "SchemaProblem"),
    ("backends/vllm_engine.py", "engine_args", "engine_arguments"),
    ("engine_server/app.py", "create_app", "build_app"),
    ("engine_server/protocol.py", "FieldError", "FieldProblem"),
    ("engine_server/serving.py", "Prepared", "PreparedRequest"),
    ("backends/registry.py", "Backend", "BackendEntry"),
    ("engine_server/prefix_share.py", "Prefill", "PrefillInProgress"),
)
PASSAGE = ("licenses/SmolLM2-135M-Instruct.Apache-2.0.txt", "shall mean an individual or Legal Entity",
           "means a person or a Legal Entity")  # fmt: skip
EDIT_TOKENS = 700  # of text per prompt: prompt and answer fit the benchmark's 2,048-token context


def code_edit_prompt(code: str, old: str, new: str) -> str:
    ask = f"Rename `{old}` to `{new}` in this file. Answer with the whole file and nothing else.\n\n```python\n"
    return ask + code + "```"


def edit_prompts(tokenizer: Any, max_text_tokens: int = EDIT_TOKENS) -> list[tuple[str, int]]:
    """(prompt, max_tokens) of each edit: each text whole lines of about max_text_tokens from a little before the
    first line to change, max_tokens the text's tokens + 64."""

    def excerpt(path: str, needle: str) -> str:
        lines = (ROOT / path).read_text().splitlines(keepends=True)
        first = next(i for i, line in enumerate(lines) if needle in line)
        lines, kept = lines[max(0, first - 20) :], list[str]()
        while lines and len(tokenizer.encode("".join([*kept, lines[0]]))) <= max_text_tokens:
            kept.append(lines.pop(0))
        return "".join(kept)

    edits = [(code_edit_prompt(excerpt(path, old), old, new), excerpt(path, old)) for path, old, new in CODE_EDITS]
    path, sentence, reworded = PASSAGE
    passage = excerpt(path, sentence)
    ask = (
        f"Reword the sentence that says `{sentence}` so that it says `{reworded}` instead. Answer with the whole "
        "text and nothing else.\n\n"
    )
    edits.append((ask + passage, passage))
    return [(prompt, len(tokenizer.encode(text)) + 64) for prompt, text in edits]


def edit_dataset(model: str, out: Path) -> Path:
    """The edits as the benchmark client's custom dataset (JSONL: prompt, output_tokens), on model's tokenizer."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = [{"prompt": prompt, "output_tokens": n} for prompt, n in edit_prompts(tokenizer)]
    out.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return out


def edit_workloads(model: str, dataset: Path) -> list[Workload]:
    """One stream over half the edits (the client picks them by seed), four streams over all eight."""
    return [
        Workload("edit c1", model, 0, 0, 1, 4, str(dataset)),
        Workload("edit c4", model, 0, 0, 4, len(CODE_EDITS) + 1, str(dataset)),
    ]
