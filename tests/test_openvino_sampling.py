"""What the openvino backend refuses, with a 400 that says why (checked without OpenVINO installed)."""

from __future__ import annotations

import pytest

from backends.base import InvalidRequestError, SamplingOptions
from backends.openvino_sampling import check_supported, openvino_message
from backends.openvino_speculation import PromptLookup

GREEDY = {"max_tokens": 4, "temperature": 0.0}


@pytest.mark.parametrize(
    "options",
    [
        {**GREEDY, "logprobs": 0},
        {**GREEDY, "logprobs": 1},  # greedy: the chosen token is the most likely one
        {"max_tokens": 4, "logprobs": 0, "temperature": 0.8, "presence_penalty": 1.0},
        {"max_tokens": 4, "ignore_eos": True},
        {"max_tokens": 4, "stop_token_ids": (2, 2047)},
        {"max_tokens": 4, "min_p": 1.0, "top_k": 5, "n": 3, "seed": 1, "json_object": True},
    ],
)
def test_what_openvino_does_as_asked_passes(options: dict[str, object]) -> None:
    check_supported(SamplingOptions(**options), vocab_size=2048)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options,message",
    [
        ({**GREEDY, "logprobs": 2}, "can be 0 or 1 here, not 2"),
        ({"max_tokens": 4, "logprobs": 1, "temperature": 0.7}, "use greedy decoding"),
        ({**GREEDY, "logprobs": 1, "repetition_penalty": 1.2}, "without penalties"),
        ({**GREEDY, "logprobs": 1, "json_schema": {"type": "object"}}, "response_format"),
        ({"max_tokens": 4, "ignore_eos": True, "stop_token_ids": (5,)}, "cannot combine ignore_eos"),
        ({"max_tokens": 4, "stop_token_ids": (2048,)}, r"outside the model's vocabulary \(ids 0..2047\)"),
    ],
)
def test_what_openvino_would_do_differently_is_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        check_supported(SamplingOptions(**options), vocab_size=2048)  # type: ignore[arg-type]


def test_openvino_messages_keep_the_sentence_and_drop_the_source_location() -> None:
    raw = (
        "Exception from src/cpp/src/generation_config.cpp:345:\n"
        "Check 'min_p >= 0.0f && min_p < 1.0f' failed at src/cpp/src/generation_config.cpp:345:\n"
        "When 'do_sample' is true, min_p must be in [0.0, 1.0), but got 1\n"
    )
    assert openvino_message(RuntimeError(raw)) == "When 'do_sample' is true, min_p must be in [0.0, 1.0), but got 1"


def test_speculative_fields_need_a_prompt_lookup_pipeline_and_one_sequence() -> None:
    lookup = PromptLookup(num_speculative_tokens=5, max_ngram=3)
    check_supported(SamplingOptions(4, num_speculative_tokens=2, prompt_lookup_max_ngram=1), 2048, lookup)
    check_supported(SamplingOptions(4, num_speculative_tokens=0), 2048)  # none asked, none run
    with pytest.raises(InvalidRequestError, match="start it with --prompt-lookup"):
        check_supported(SamplingOptions(4, num_speculative_tokens=2), 2048)
    with pytest.raises(InvalidRequestError, match="without drafts"):
        check_supported(SamplingOptions(4, num_speculative_tokens=0), 2048, lookup)
    with pytest.raises(InvalidRequestError, match="n must be 1"):
        check_supported(SamplingOptions(4, n=2), 2048, lookup)
