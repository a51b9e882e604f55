"""Prompt lookup: the drafts counted as OpenVINO looks them up, greedy output unchanged by it on the real pipeline,
its counters on /metrics, and clear refusals where it cannot be honored (the vLLM backend among them)."""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from backends.openvino_speculation import NgramDrafter, PromptLookup, SequenceSpeculation, SpecDecodeCounts
from tests.conftest import ROOT, LiveServer, start_server, stop, wait_healthy

# Repeats, so that the tiny model's greedy output soon repeats too: drafts are proposed and accepted.
PROMPT = "one two three four five six seven eight nine ten " * 12
SPECULATION = ["--prompt-lookup", "--num-speculative-tokens", "4", "--prompt-lookup-max-ngram", "3"]


def reference_draft(tokens: list[int], num_pred: int, max_ngram: int) -> list[int]:
    """OpenVINO GenAI's ContinuousBatchingForPromptLookupImpl::generate_candidates, loop for loop."""
    if num_pred == 0:
        return []
    length = len(tokens)
    if max_ngram >= length:
        max_ngram = length // 2
    for n in range(max_ngram, 0, -1):
        ngram = tokens[length - n :]
        for i in range(length - n):
            if tokens[i : i + n] == ngram:
                begin = i + n
                return tokens[begin : begin + min(length - begin, num_pred)]
    return []


@pytest.mark.parametrize("seed", range(20))
def test_the_drafts_are_the_ones_openvino_looks_up(seed: int) -> None:
    rng = random.Random(seed)
    vocab, max_ngram, k = rng.choice([3, 8, 50]), rng.randint(1, 4), rng.randint(1, 6)
    prompt = [rng.randrange(vocab) for _ in range(rng.randint(1, 40))]
    max_new = rng.randint(2, 60)
    drafter = NgramDrafter(prompt, max_ngram, max_new)
    generated: list[int] = []
    while len(generated) < max_new - 1:
        new = [rng.randrange(vocab) for _ in range(rng.randint(1, 3))]
        drafter.add_generated(new)
        generated += new
        left = max(min(k, max_new - len(generated) - 1), 0)
        assert drafter.draft(k) == reference_draft(prompt + generated, left, max_ngram)


def test_a_step_accepts_all_its_tokens_but_the_models_own() -> None:
    counts = SpecDecodeCounts()
    seq = SequenceSpeculation([1, 2, 3, 1, 2, 3, 4, 5], PromptLookup(3, 2), max_new_tokens=20)
    seq.pending = [1]  # the prefill's token: no draft was checked
    seq.end_step(counts)
    assert counts.num_drafts == 0 and seq.draft == [2, 3, 1]  # "1" first occurs at 0, followed by 2 3 1
    seq.pending = [2, 3, 9]  # accepted 2 and 3, then the model's own 9
    seq.end_step(counts)
    assert (counts.num_drafts, counts.num_draft_tokens, counts.num_accepted_tokens) == (1, 3, 2)
    seq.end_step(counts)  # not scheduled this step: nothing counted, the same draft waits
    assert counts.num_drafts == 1
    assert counts.snapshot().accepted_per_position == (1, 1, 0)
    assert counts.num_mismatches == 0


# -- the real engine: the tiny model on the openvino backend ----------------------------------------------------


@pytest.fixture(scope="module")
def servers(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LiveServer]]:
    started = {}
    # f16 KV cache: with a u8 cache (and with int8 weights, whose activations are quantized on the fly) a pass that
    # checks a draft computes logits a little off a one-token step's, which can flip a near-tie (docs/openvino.md).
    base = ["--hw-mode", "openvino", "--model", str(tiny_model), "--max-model-len", "2048", "--kv-cache-space", "1"]
    base += ["--kv-cache-precision", "f16"]
    try:
        for name, extra in {"plain": [], "lookup": SPECULATION}.items():
            log = tmp_path_factory.mktemp("speculation") / f"{name}.log"
            process, url = start_server([*base, *extra, "--served-model-name", "tiny"], log, backend="openvino")
            started[name] = LiveServer(url, process, log, "tiny", backend="openvino")
        for s in started.values():
            wait_healthy(s.process, s.base_url, s.log)
        yield started
    finally:
        for s in started.values():
            stop(s.process)


def complete(server: LiveServer, **fields: object) -> httpx.Response:
    body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 96, "temperature": 0, **fields}
    return httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120)


def spec_counters(server: LiveServer) -> dict[str, float]:
    text = httpx.get(f"{server.base_url}/metrics").text
    return {
        s.name: s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith("vllm:spec_decode_num_") and "per_pos" not in s.name
    }


def test_greedy_output_with_prompt_lookup_is_the_output_without(servers: dict[str, LiveServer]) -> None:
    before = spec_counters(servers["lookup"])
    plain = complete(servers["plain"]).json()
    for fields in ({}, {"num_speculative_tokens": 2, "prompt_lookup_max_ngram": 1}, {"num_speculative_tokens": 8}):
        fast = complete(servers["lookup"], **fields).json()
        assert fast["choices"][0]["text"] == plain["choices"][0]["text"], fields
        assert fast["usage"] == plain["usage"]
    after = spec_counters(servers["lookup"])
    moved = {name: after[name] - before.get(name, 0) for name in after}
    assert moved["vllm:spec_decode_num_drafts_total"] > 0
    assert 0 < moved["vllm:spec_decode_num_accepted_tokens_total"] <= moved["vllm:spec_decode_num_draft_tokens_total"]
    assert "prompt lookup counts" not in servers["lookup"].log.read_text()  # our drafts matched the pipeline's
    assert spec_counters(servers["plain"]) == {}  # no speculation, no spec-decode families


@pytest.mark.parametrize(
    "server,fields,message",
    [
        ("lookup", {"num_speculative_tokens": 0}, "cannot run a request without drafts"),
        ("lookup", {"n": 2, "temperature": 0.8}, "n must be 1"),
        ("plain", {"num_speculative_tokens": 3}, "start it with --prompt-lookup"),
        ("plain", {"prompt_lookup_max_ngram": 2}, "start it with --prompt-lookup"),
    ],
)
def test_what_cannot_be_honored_is_a_400(
    servers: dict[str, LiveServer], server: str, fields: dict[str, object], message: str
) -> None:
    r = complete(servers[server], **fields)
    assert r.status_code == 400 and message in r.json()["error"]["message"], r.text


def test_vllm_cpu_refuses_prompt_lookup_at_startup(tiny_model: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "engine_server.cli", "--hw-mode", "cpu", "--model", str(tiny_model), "--prompt-lookup"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 2 and "vllm issue 28384" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_vllm_refuses_a_requests_speculative_fields() -> None:
    from backends.base import InvalidRequestError, SamplingOptions
    from backends.vllm_engine import VllmEngine

    engine = VllmEngine.__new__(VllmEngine)  # _sampling_params reads nothing of the engine
    with pytest.raises(InvalidRequestError, match="vllm issue 28384"):
        engine._sampling_params(SamplingOptions(8, num_speculative_tokens=3))
    engine._sampling_params(SamplingOptions(8, num_speculative_tokens=0))  # none asked: served
