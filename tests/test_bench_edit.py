"""The benchmark's edit workload: the prompts the client sends are the texts with their edit, and vLLM's benchmark
client reads the dataset as written, each prompt with its own max_tokens."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from bench.client import client_args
from bench.workloads import CODE_EDITS, PASSAGE, ROOT, edit_dataset, edit_workloads


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # vLLM's benchmark imports torch.jit
def test_edit_dataset_is_read_by_the_benchmark_client(tiny_model: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer
    from vllm.benchmarks.datasets import get_samples
    from vllm.benchmarks.serve import add_cli_args
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    dataset = edit_dataset(str(tiny_model), tmp_path / "edit.jsonl")
    rows = [json.loads(line) for line in dataset.read_text().splitlines()]
    assert len(rows) == len(CODE_EDITS) + 1
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    for row, (path, old, new) in zip(rows, [*CODE_EDITS, PASSAGE], strict=True):
        text = row["prompt"].split("\n\n", 1)[1].removeprefix("```python\n").removesuffix("```")
        assert text in (ROOT / path).read_text() and old in text, path  # a real text holding what to change
        assert f"`{old}`" in row["prompt"] and f"`{new}`" in row["prompt"]
        assert row["output_tokens"] == len(tokenizer.encode(text)) + 64  # room to copy the whole text back

    for workload in edit_workloads(str(tiny_model), dataset):
        parser = FlexibleArgumentParser()
        add_cli_args(parser)
        args = parser.parse_args(client_args(workload, "http://unused", "served", 7))
        assert args.temperature == 0 and not args.ignore_eos
        random.seed(7)
        samples = get_samples(args, tokenizer)
        assert len(samples) == workload.num_prompts
        by_prompt = {row["prompt"]: row["output_tokens"] for row in rows}
        assert all(by_prompt[s.prompt] == s.expected_output_len for s in samples)
