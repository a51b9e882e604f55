"""Prompt lookup (n-gram speculative decoding) against plain decoding on the raw OpenVINO pipeline, in one run.

Runs in .venv-openvino. Two pipelines are built from our server's own flags (the same Config, export and
`backends.openvino_process.open_pipeline`), one with --prompt-lookup, and are driven in turn, interleaved, on:
- edit: a chat request to return one of this repository's own source files (about 300 lines) with one identifier
  renamed, greedy; the output is about as long as the input (max_tokens: the file's tokens + 64, or
  --edit-max-tokens);
- random: random token ids decoded to text (as vLLM's random dataset makes them), 256 tokens out with ignore_eos,
  greedy and sampled (temperature 1, our server's default).
It prints output tok/s per contender, the ratio, the drafts the pipeline checked and accepted (counted as the server
counts them, backends/openvino_speculation.py), and whether greedy outputs were identical.

    .venv-openvino/bin/python -m bench.prompt_lookup --model smollm2-135m-instruct --repeat 2 --concurrency 1,4
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.workloads import CODE_EDITS, ROOT, code_edit_prompt

RANDOM_INPUT, RANDOM_OUTPUT = 128, 256


@dataclass
class Request:
    prompt: list[int]
    options: Any  # SamplingOptions
    tokens: list[int] = field(default_factory=list)


def edit_requests(tokenizer: Any, concurrency: int, max_tokens: int | None) -> list[Request]:
    from backends.base import SamplingOptions

    out = []
    for path, old, new in CODE_EDITS[:concurrency]:
        code = (ROOT / path).read_text()
        messages = [{"role": "user", "content": code_edit_prompt(code, old, new)}]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        whole = len(tokenizer(code, add_special_tokens=False).input_ids) + 64
        out.append(Request(list(prompt), SamplingOptions(min(whole, max_tokens or whole), temperature=0.0)))
    return out


def random_requests(tokenizer: Any, concurrency: int, temperature: float, seed: int) -> list[Request]:
    from backends.base import SamplingOptions

    rng = random.Random(seed)
    out = []
    for _ in range(concurrency):
        text = tokenizer.decode([rng.randrange(len(tokenizer)) for _ in range(RANDOM_INPUT)])
        prompt = tokenizer(text, add_special_tokens=False).input_ids[:RANDOM_INPUT]
        options = SamplingOptions(RANDOM_OUTPUT, temperature=temperature, ignore_eos=True, seed=seed)
        out.append(Request(list(prompt), options))
    return out


def run(pipe: Any, lookup: Any, requests: list[Request], eos: int, stops: set[int]) -> dict[str, Any]:
    """All requests at once; output tok/s over the wall time, and the drafts as the server counts them."""
    import numpy as np
    import openvino

    from backends.openvino_sampling import generation_config, request_prompt_lookup
    from backends.openvino_speculation import SequenceSpeculation, SpecDecodeCounts

    counts = SpecDecodeCounts()
    active: deque[tuple[Request, Any, Any]] = deque()
    start = time.perf_counter()
    for i, r in enumerate(requests):
        r.tokens = []
        config = generation_config(r.options, eos, stops, lookup)
        handle = pipe.add_request(i, openvino.Tensor(np.array([r.prompt], dtype=np.int64)), config)
        spec = (
            None
            if lookup is None
            else SequenceSpeculation(r.prompt, request_prompt_lookup(r.options, lookup), r.options.max_tokens)
        )
        active.append((r, handle, spec))
    first = 0.0
    while pipe.has_non_finished_requests():
        pipe.step()
        for r, handle, spec in active:
            while handle.can_read():
                for out in handle.read().values():
                    ids = [int(t) for t in out.generated_ids]
                    r.tokens += ids
                    if spec is not None:
                        spec.pending += ids
            if spec is not None:
                spec.end_step(counts)
        first = first or time.perf_counter()
    wall = time.perf_counter() - start
    num_tokens = sum(len(r.tokens) for r in requests)
    return {
        "wall_s": wall,
        "out_tokens": num_tokens,
        "tok_s": num_tokens / wall,
        "ttft_s": first - start,
        "drafts": counts.num_drafts,
        "draft_tokens": counts.num_draft_tokens,
        "accepted": counts.num_accepted_tokens,
        "mismatches": counts.num_mismatches,
        "outputs": [list(r.tokens) for r in requests],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.prompt_lookup", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--server-args", default="[]", help="JSON list: more of our server's flags")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--concurrency", default="1", help="comma list, at most 4")
    parser.add_argument("--workloads", default="edit,random,random-sampled")
    parser.add_argument(
        "--edit-max-tokens", type=int, default=None, help="cut the edit's output here (default: the whole file)"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON file for all figures")
    args = parser.parse_args(argv)

    from backends.openvino import load_tokenizer
    from backends.openvino_process import open_pipeline
    from backends.openvino_settings import pipeline_settings
    from backends.registry import settings_for
    from engine_server.cli import load_config
    from model_prep.sources import resolve

    flags = ["--hw-mode", "openvino", "--model", args.model, "--kv-cache-space", "1", *json.loads(args.server_args)]
    _, config = load_config(["serve", *flags, "--max-model-len", "8192"], {})
    model = resolve(config, "openvino")
    plain = pipeline_settings(settings_for("openvino", config))
    spec = pipeline_settings(settings_for("openvino", config.with_changes(prompt_lookup=True)))
    pipes = {"plain": open_pipeline(model, plain, 8192), "prompt lookup": open_pipeline(model, spec, 8192)}
    lookups = {"plain": None, "prompt lookup": spec.prompt_lookup}
    tokenizer = load_tokenizer(model)
    defaults = pipes["plain"].get_config()
    eos, stops = int(defaults.eos_token_id), {int(t) for t in defaults.stop_token_ids}
    print(f"model {model}; prompt lookup {spec.prompt_lookup}", flush=True)

    makers = {
        "edit": lambda c, seed: edit_requests(tokenizer, c, args.edit_max_tokens),
        "random": lambda c, seed: random_requests(tokenizer, c, 0.0, seed),
        "random-sampled": lambda c, seed: random_requests(tokenizer, c, 1.0, seed),
    }
    results: list[dict[str, Any]] = []
    for name in list(pipes):  # one short request each: compile the first steps' kernels before timing
        run(pipes[name], lookups[name], random_requests(tokenizer, 1, 0.0, 0)[:1], eos, stops)
    for repeat in range(args.repeat):
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            for workload in args.workloads.split(","):
                order = list(pipes) if repeat % 2 == 0 else list(pipes)[::-1]  # alternate who goes first
                row: dict[str, Any] = {"workload": workload, "concurrency": concurrency, "repeat": repeat}
                for name in order:
                    requests = makers[workload](concurrency, 1000 + repeat)
                    row[name] = run(pipes[name], lookups[name], requests, eos, stops)
                same = row["plain"]["outputs"] == row["prompt lookup"]["outputs"]
                p, s = row["plain"], row["prompt lookup"]
                print(
                    f"{workload:15s} c{concurrency} #{repeat}: plain {p['tok_s']:7.1f} tok/s ({p['out_tokens']} tok) | "
                    f"prompt lookup {s['tok_s']:7.1f} tok/s  x{s['tok_s'] / p['tok_s']:.2f} | drafts {s['drafts']} "
                    f"draft tokens {s['draft_tokens']} accepted {s['accepted']} "
                    f"({s['accepted'] / max(s['draft_tokens'], 1):.0%}) mismatches {s['mismatches']} | "
                    f"outputs identical: {same}",
                    flush=True,
                )
                results.append(row)
    if args.out is not None:
        args.out.write_text(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
