"""Pipeline outputs into StepOutput deltas, with outputs shaped like OpenVINO's (no OpenVINO needed)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from transformers import AutoTokenizer

from backends.base import CompletionDelta, GenerateRequest, SamplingOptions, StepOutput, TokenLogprob
from backends.openvino_request import OpenVinoRequest, merge_outputs

EOS = 2


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model)


def output(ids: list[int], finish: str = "NONE", logprobs: list[float] | None = None) -> Any:
    return SimpleNamespace(
        generated_ids=ids,
        generated_log_probs=logprobs if logprobs is not None else [-1.0] * len(ids),
        finish_reason=SimpleNamespace(name=finish),
    )


def make(tokenizer: Any, **sampling: Any) -> OpenVinoRequest:
    config = SimpleNamespace(stop_token_ids={EOS})
    request = GenerateRequest("r", [1, 273], SamplingOptions(**{"max_tokens": 16, **sampling}))
    return OpenVinoRequest(request, config, tokenizer)


def test_streamed_tokens_then_eos_give_text_counts_and_stop(tokenizer: Any) -> None:
    ids = tokenizer.encode(" capital of France", add_special_tokens=False)
    req = make(tokenizer)
    first = req.take({0: output(ids[:1])})
    last = req.take({0: output([*ids[1:], EOS], finish="STOP")})
    assert [d.text for d in first + last] == [" capital", " of France"]
    assert [d.num_tokens for d in first + last] == [1, len(ids)]  # the EOS is counted
    assert (last[0].finish_reason, req.all_done, req.step_output(last).finished) == ("stop", True, True)


def test_n_sequences_arrive_together_at_the_end(tokenizer: Any) -> None:
    req = make(tokenizer, n=2, max_tokens=3)
    deltas = req.take({1: output([400, 401, 402], "LENGTH"), 0: output([300, EOS], "STOP")})
    assert [(d.index, d.finish_reason, d.num_tokens) for d in deltas] == [(0, "stop", 2), (1, "length", 3)]
    assert req.all_done


def test_our_stop_string_match_ends_the_sequence(tokenizer: Any) -> None:
    ids = tokenizer.encode(" capital of France is", add_special_tokens=False)
    req = make(tokenizer, stop=("France",))
    deltas = req.take({0: output(ids)})
    assert (deltas[0].text, deltas[0].finish_reason, req.all_done) == (" capital of ", "stop", True)


def test_logprobs_with_one_top_alternative_list_the_chosen_token(tokenizer: Any) -> None:
    req = make(tokenizer, temperature=0.0, logprobs=1)
    (delta,) = req.take({0: output([300], logprobs=[-0.25])})
    assert delta.logprobs is not None
    token = delta.logprobs[0]
    assert (token.logprob, token.top) == (-0.25, ((token.token, -0.25),))


def test_a_finished_request_without_a_last_output_is_closed(tokenizer: Any) -> None:
    req = make(tokenizer, max_tokens=2)
    req.take({0: output([300, 301])})
    (delta,) = req.close()
    assert (delta.finish_reason, delta.num_tokens, req.all_done) == ("length", 0, True)


def test_outputs_that_piled_up_are_merged_per_sequence() -> None:
    first = StepOutput(3, [CompletionDelta(0, "a", 1, [TokenLogprob("a", -1.0)]), CompletionDelta(1, "x", 1)])
    second = StepOutput(3, [CompletionDelta(0, "b", 2, [TokenLogprob("b", -2.0)], "stop")], finished=False)
    third = StepOutput(3, [CompletionDelta(1, "y", 1, finish_reason="length")], finished=True)
    merged = merge_outputs([first, second, third])
    assert [(d.index, d.text, d.num_tokens, d.finish_reason) for d in merged.deltas] == [
        (0, "ab", 3, "stop"),
        (1, "xy", 2, "length"),
    ]
    assert merged.deltas[0].logprobs is not None and [t.token for t in merged.deltas[0].logprobs] == ["a", "b"]
    assert merged.deltas[1].logprobs is None and merged.finished and first.deltas[0].text == "a"
    assert merge_outputs([first]) is first
