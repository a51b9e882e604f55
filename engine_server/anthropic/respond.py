"""A Messages response from the engine's output: whole, or streamed as the API's events.

Streamed: message_start (with the prompt's usage), ping; per content block content_block_start,
content_block_delta (thinking_delta, text_delta or input_json_delta)..., content_block_stop (a thinking block's
after a signature_delta, as Anthropic streams them); then message_delta (stop reason, output tokens) and
message_stop. Every delta belongs to a block that was started and not yet stopped; thinking comes first.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

from engine_server.anthropic.translate import content_blocks, message, stop_reason, tool_use_id, usage
from engine_server.deltas import CallArguments, CallStart, Finished, Piece, Reasoning, Started, Text, pieces
from engine_server.serving import Prepared, Serving
from engine_server.streaming import encode


async def complete_message(serving: Serving, prepared: Prepared) -> dict[str, Any]:
    """The whole message of a non-streamed request (one prompt, one choice)."""
    collected = await serving.collect(prepared)
    choice = collected.choices[0]
    chat = serving.chat_choice(prepared, choice)
    blocks = content_blocks(chat["message"])
    called = any(b["type"] == "tool_use" for b in blocks)
    serving.usage(collected.num_prompt_tokens, choice.num_tokens)
    use = usage(collected.num_prompt_tokens, collected.num_cached_tokens, choice.num_tokens)
    reason = stop_reason(choice.finish_reason, choice.stop_sequence, called)
    return message(prepared.model, blocks, reason, choice.stop_sequence, use)


class _Blocks:
    """The content blocks as they open and close, and the events that tell it."""

    def __init__(self) -> None:
        self.index = -1
        self.open: str | None = None  # the type of the block in progress
        self.num_calls = 0

    def thinking(self, text: str) -> list[str]:
        events = [] if self.open == "thinking" else [*self.close(), self._start({"type": "thinking", "thinking": ""})]
        return [*events, self._delta({"type": "thinking_delta", "thinking": text})]

    def text(self, text: str) -> list[str]:
        events = [] if self.open == "text" else [*self.close(), self._start({"type": "text", "text": ""})]
        return [*events, self._delta({"type": "text_delta", "text": text})]

    def call(self, name: str) -> list[str]:
        self.num_calls += 1
        return [*self.close(), self._start({"type": "tool_use", "id": tool_use_id(), "name": name, "input": {}})]

    def arguments_delta(self, text: str) -> list[str]:
        return [self._delta({"type": "input_json_delta", "partial_json": text})]

    def close(self) -> list[str]:
        if self.open is None:
            return []
        signed = [self._delta({"type": "signature_delta", "signature": ""})] if self.open == "thinking" else []
        self.open = None
        return [*signed, encode({"type": "content_block_stop", "index": self.index})]

    def _start(self, block: dict[str, Any]) -> str:
        self.index += 1
        self.open = block["type"]
        return encode({"type": "content_block_start", "index": self.index, "content_block": block})

    def _delta(self, delta: dict[str, Any]) -> str:
        return encode({"type": "content_block_delta", "index": self.index, "delta": delta})


async def message_events(serving: Serving, prepared: Prepared) -> AsyncGenerator[str, None]:
    """The events of one streamed message (one prompt, one choice)."""
    blocks = _Blocks()
    output = pieces(serving, prepared)
    try:
        async for piece in output:
            if isinstance(piece, Started):
                use = usage(piece.num_prompt_tokens, piece.num_cached_tokens, 0)
                yield encode({"type": "message_start", "message": message(prepared.model, [], None, None, use)})
                yield encode({"type": "ping"})
                continue
            if isinstance(piece, Finished):
                for event in blocks.close():
                    yield event
                reason = stop_reason(piece.finish_reason, piece.stop_sequence, piece.num_calls > 0)
                delta = {"stop_reason": reason, "stop_sequence": piece.stop_sequence}
                num_output = piece.usage["completion_tokens"]
                yield encode({"type": "message_delta", "delta": delta, "usage": {"output_tokens": num_output}})
                yield encode({"type": "message_stop"})
                continue
            for event in _block_events(blocks, piece):
                yield event
    finally:
        await output.aclose()


def _block_events(blocks: _Blocks, piece: Piece) -> list[str]:
    if isinstance(piece, Reasoning):
        return blocks.thinking(piece.text)
    if isinstance(piece, Text):
        return blocks.text(piece.text)
    if isinstance(piece, CallStart):
        return blocks.call(piece.name)
    assert isinstance(piece, CallArguments)
    return blocks.arguments_delta(piece.text)
