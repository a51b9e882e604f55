"""Reasoning apart from the answer: what a model writes between <think> and </think>, whole or as it streams.

The think parser reads the `<think>...</think>` family (Qwen3, DeepSeek-R1 and its distills; vLLM's qwen3 and
deepseek_r1 parsers). Where the output starts follows the prompt: a template that leaves `<think>` open in the
generation prompt (DeepSeek-R1 distills, Qwen3-Thinking) starts the output inside reasoning, so only `</think>`
appears; otherwise reasoning opens only where the output itself begins with `<think>` (Qwen3), and a Qwen3 prompt
with thinking switched off closes an empty block, so its output is all answer. Reasoning with no `</think>` (cut
short, or a model that never closes it) stays reasoning.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine_server.streaming import encode, encode_string

PARSERS = ("auto", "none", "think", "qwen3", "deepseek_r1")  # qwen3, deepseek_r1: vLLM's names for think
OPEN, CLOSE = "<think>", "</think>"
_START, _REASONING, _AFTER, _CONTENT = range(4)
_MARK = "\x01reasoning\x01"

# Renders messages with template kwargs to prompt text (the engine's chat template).
Render = Callable[[list[dict[str, Any]], dict[str, Any]], str]


def uses_think(parser: str, render: Render) -> bool:
    """Whether requests on this template have their output split: the configured parser, or for auto whether
    the template writes <think> at all."""
    if parser == "none":
        return False
    return parser != "auto" or probe_template(render)


def probe_template(render: Render) -> bool:
    """Whether a chat template writes <think>: opened in its generation prompt (DeepSeek-R1 distills), as the
    empty block of thinking switched off (Qwen3's enable_thinking), or around an earlier turn's reasoning."""
    user = [{"role": "user", "content": "x"}]
    answered = [*user, {"role": "assistant", "content": "y", "reasoning_content": "z"}]
    probes = (
        (user, {"add_generation_prompt": True}),
        (user, {"add_generation_prompt": True, "enable_thinking": False}),
        (answered, {"add_generation_prompt": False}),
    )
    for messages, kwargs in probes:
        try:
            if OPEN in render(messages, kwargs):
                return True
        except Exception:  # a template that cannot render the probe (say, one that needs a system turn)
            continue
    return False


def opened_in_prompt(prompt: str) -> bool:
    """Whether the prompt leaves a <think> open, so that the output starts inside reasoning."""
    return prompt.rfind(OPEN) > prompt.rfind(CLOSE)


class ThinkSplitter:
    """One choice's output as reasoning and content, piece by piece. A tag split across pieces is held back until
    it is known to be one (or not). Reasoning opens at the start of the output only, or in the prompt (`inside`);
    once it closes, the rest is content. The whitespace around the reasoning (the newlines templates put inside and
    after the tags) belongs to neither."""

    def __init__(self, inside: bool) -> None:
        self.inside = inside
        self.state = _START
        self.held = ""
        self.fresh = True  # no reasoning given out yet: its leading whitespace is dropped

    def feed(self, text: str, final: bool = False) -> tuple[str, str]:
        """The reasoning and the content of this piece; final: the output has ended, nothing is held back."""
        if self.state == _CONTENT:
            return "", text  # the common case: one test per piece
        text, self.held = self.held + text, ""
        reasoning = ""
        if self.state == _START:
            stripped = text.lstrip()
            if stripped.startswith(OPEN):
                self.state, text = _REASONING, stripped[len(OPEN) :]
            elif OPEN.startswith(stripped) and not final:
                self.held = text  # whitespace, or the start of a tag
                return "", ""
            elif self.inside:
                self.state, text = _REASONING, stripped
            else:
                self.state = _CONTENT
                return "", text
        if self.state == _REASONING:
            text = text.lstrip() if self.fresh else text
            end = text.find(CLOSE)
            if end < 0:
                keep = 0 if final else _partial_suffix(text, CLOSE)
                body = text[: len(text) - keep]
                reasoning = body.rstrip()  # trailing whitespace waits: it may come right before </think>
                self.held = "" if final else body[len(reasoning) :] + text[len(body) :]
                self.fresh = self.fresh and not reasoning
                return reasoning, ""
            reasoning, text = text[:end].rstrip(), text[end + len(CLOSE) :]
            self.state = _AFTER
        if self.state == _AFTER:
            text = text.lstrip()
            if not text:
                return reasoning, ""
            self.state = _CONTENT
        return reasoning, text


def split(text: str, inside: bool) -> tuple[str, str]:
    """A whole output's reasoning and content."""
    return ThinkSplitter(inside).feed(text, final=True)


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of text that begins tag (0: none)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def with_reasoning(shaped: dict[str, Any], reasoning: str) -> dict[str, Any]:
    """A chat choice's message with its reasoning, under both names clients read: `reasoning_content` (vLLM's
    older name, DeepSeek's API) and `reasoning` (vLLM's newer one, llama-server's); null when there is none. An
    answer that is all reasoning has no content (null), as from vLLM."""
    message = shaped["message"]
    if reasoning and not message.get("content"):
        message["content"] = None
    message["reasoning_content"] = message["reasoning"] = reasoning or None
    return shaped


def reasoning_delta(text: str, role: bool) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant"} if role else {}
    return {**delta, "reasoning_content": text, "reasoning": text}


def reasoning_chunk(head: dict[str, Any], index: int) -> list[str] | None:
    """The JSON of a choice's reasoning chunk, split where its text goes (twice): joined by the encoded text it is
    the chunk, as shapes.plain_chunk does for content; None if the split is ambiguous (a model named as the mark)."""
    choice = {"index": index, "delta": reasoning_delta(_MARK, False), "logprobs": None, "finish_reason": None}
    parts = encode({**head, "choices": [choice]}).split(encode_string(_MARK))
    return parts if len(parts) == 3 else None
