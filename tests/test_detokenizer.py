"""The incremental detokenizer: partial UTF-8 held back, stop strings cut, EOS counted but not shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from backends.detokenizer import IncrementalDetokenizer

TEXT = "The capital of France is Paris. Ünïcödé → 日本語 🙂 ok"


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model)


class SlowTokenizer:
    """Only decode(): what a tokenizer without a Rust backend offers."""

    def __init__(self, fast: Any) -> None:
        self.fast = fast

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return str(self.fast.decode(ids, skip_special_tokens=skip_special_tokens))


def stream(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    pieces = []
    for token_id in ids:
        detok.update([token_id])
        pieces.append(detok.next_text(finished=False))
    pieces.append(detok.next_text(finished=True))
    return pieces


@pytest.mark.parametrize("slow", [False, True])
def test_one_token_at_a_time_gives_the_full_decode_and_never_half_a_character(tokenizer: Any, slow: bool) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    assert tokenizer.decode(ids[-8:-6]).count("\ufffd"), "the text must split characters over tokens"
    prompt = tokenizer.encode("Hello", add_special_tokens=True)
    pieces = stream(IncrementalDetokenizer(SlowTokenizer(tokenizer) if slow else tokenizer, prompt), ids)
    assert "".join(pieces) == TEXT
    assert not any("\ufffd" in piece for piece in pieces)


def test_stop_string_cuts_the_text_and_the_tokens_after_it(tokenizer: Any) -> None:
    ids = tokenizer.encode(TEXT, add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, [1], stop=["France"])
    shown, matched = "", None
    for token_id in ids:
        matched = detok.update([token_id])
        shown += detok.next_text(finished=matched is not None)
        if matched:
            break
    assert (matched, shown, detok.text) == ("France", "The capital of ", "The capital of ")
    # Counted up to the token that completed the stop string, as vLLM counts them.
    assert detok.num_tokens == len(tokenizer.encode("The capital of France", add_special_tokens=False))


def test_streaming_holds_back_what_may_become_a_stop_string(tokenizer: Any) -> None:
    ids = tokenizer.encode("The capital of France", add_special_tokens=False)
    detok = IncrementalDetokenizer(tokenizer, [1], stop=["of Germany"])
    pieces = stream(detok, ids)
    assert all(len("".join(pieces[: i + 1])) <= len(detok.text) - 9 for i in range(len(ids)))
    assert "".join(pieces) == "The capital of France"  # not a stop string after all: released at the end


def test_several_tokens_at_once_stop_at_the_earliest_stop_string(tokenizer: Any) -> None:
    detok = IncrementalDetokenizer(tokenizer, [1], stop=["Paris", "capital"])
    assert detok.update(tokenizer.encode(TEXT, add_special_tokens=False)) == "capital"
    assert detok.next_text(finished=True) == "The "


def test_the_eos_that_ended_the_sequence_is_counted_not_shown(tokenizer: Any) -> None:
    ids = [*tokenizer.encode(" Paris", add_special_tokens=False), tokenizer.eos_token_id]
    detok = IncrementalDetokenizer(tokenizer, [1], skip_special_tokens=False)
    detok.update(ids, stop_terminated=True)
    assert (detok.next_text(finished=True), detok.num_tokens) == (" Paris", len(ids))


@pytest.mark.parametrize("skip,expected", [(True, "hi"), (False, "<|user|>hi")])
def test_special_tokens_are_skipped_on_request(tokenizer: Any, skip: bool, expected: str) -> None:
    ids = [tokenizer.convert_tokens_to_ids("<|user|>"), *tokenizer.encode("hi", add_special_tokens=False)]
    assert "".join(stream(IncrementalDetokenizer(tokenizer, [1], skip_special_tokens=skip), ids)) == expected
