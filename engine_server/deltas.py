"""One choice's output as typed pieces, for the surfaces that stream one answer in their own shape (Responses,
Anthropic Messages): the reasoning read apart, tool calls read from the content, the usage at the end. Each
surface renders these; none re-reads another surface's JSON.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any

from engine_server.reasoning import ThinkSplitter
from engine_server.serving import Prepared, Serving
from engine_server.tools import ChoiceTools


@dataclass(frozen=True)
class Started:
    """The prompt is read: its token count, and how many of them the prefix cache served (None: not reported)."""

    num_prompt_tokens: int
    num_cached_tokens: int | None


@dataclass(frozen=True)
class Reasoning:
    text: str


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class CallStart:
    call_id: str
    name: str


@dataclass(frozen=True)
class CallArguments:
    text: str  # the next piece of the call's arguments (JSON text)


@dataclass(frozen=True)
class Finished:
    finish_reason: str | None  # the engine's: stop, length, abort
    stop_sequence: str | None
    num_calls: int
    usage: dict[str, Any]  # counted in the metrics, in the chat shape


Piece = Started | Reasoning | Text | CallStart | CallArguments | Finished


async def pieces(serving: Serving, prepared: Prepared) -> AsyncGenerator[Piece, None]:
    """The pieces of a one-prompt, one-choice request as the engine makes them; closing this aborts the request."""
    steps = serving.steps(prepared)
    shaper = ChoiceTools(prepared.tools) if prepared.tools is not None else None
    splitter = ThinkSplitter(prepared.think) if prepared.think is not None else None
    started: Started | None = None
    num_output = 0
    finish: str | None = None
    stop: str | None = None
    try:
        async for _, step in steps:
            if started is None:
                started = Started(step.num_prompt_tokens, step.num_cached_tokens)
                yield started
            for d in step.deltas:
                num_output += d.num_tokens
                finish = d.finish_reason or finish
                stop = d.stop_sequence or stop
                text = d.text
                if splitter is not None:
                    reasoning, text = splitter.feed(text, final=d.finish_reason is not None)
                    if reasoning:
                        yield Reasoning(reasoning)
                if shaper is None:
                    if text:
                        yield Text(text)
                    continue
                for delta in shaper.feed(text) + (shaper.finish() if d.finish_reason is not None else []):
                    if delta.get("content"):
                        yield Text(delta["content"])
                    for call in delta.get("tool_calls") or []:
                        if "id" in call:
                            yield CallStart(call["id"], call["function"]["name"])
                        if call["function"].get("arguments"):
                            yield CallArguments(call["function"]["arguments"])
    finally:
        await steps.aclose()  # a client gone mid-stream: the engine request is aborted now, not when collected
    if started is None:
        started = Started(sum(len(r.prompt_token_ids) for r in prepared.requests), None)
        yield started
    usage = serving.usage(started.num_prompt_tokens, num_output, started.num_cached_tokens)
    yield Finished(finish, stop, len(shaper.calls) if shaper is not None else 0, usage)
