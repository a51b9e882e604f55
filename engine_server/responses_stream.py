"""Streamed responses: the output pieces of a Responses request (engine_server.deltas) as the API's events.

response.created, response.in_progress; per output item: output_item.added, then for reasoning
reasoning_summary_part.added, content_part.added, (reasoning_summary_text.delta, reasoning_text.delta)...,
reasoning_summary_text.done, reasoning_summary_part.done, reasoning_text.done, content_part.done, for a message
content_part.added, output_text.delta..., output_text.done, content_part.done, for a function call
function_call_arguments.delta..., function_call_arguments.done, and for a custom tool call
custom_tool_call_input.delta, custom_tool_call_input.done; output_item.done; finally response.completed (or
response.incomplete when cut short).

A custom tool's input is the one string argument of the function the model was offered: it is known once the call's
JSON ends, so it comes as one delta when the call closes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncGenerator
from typing import Any

from engine_server.deltas import CallArguments, CallStart, Finished, Piece, Reasoning, Text
from engine_server.responses import ResponseStore, Turn, finish, message_item, reasoning_item, response_object
from engine_server.responses_tools import Offered, call_item, custom_input
from engine_server.streaming import encode, frame


def named_frame(data: str) -> bytes:
    """An event as server-sent events with its name (the event's type), as the Responses API streams them."""
    if data.startswith('{"type":"'):
        name = data[9 : data.index('"', 9)]
        return b"event: " + name.encode() + b"\n" + frame(data)
    return frame(data)  # an error body: data only


class _Events:
    """The output items as they grow, and the events that tell it."""

    def __init__(self, tools: dict[str, Offered], include: list[str] | None) -> None:
        self.seq = itertools.count()
        self.output: list[dict[str, Any]] = []
        self.item: dict[str, Any] | None = None  # the item in progress
        self.tools = tools
        self.include = include
        self.arguments = ""  # the call in progress's arguments so far

    def event(self, kind: str, **fields: Any) -> str:
        return encode({"type": kind, "sequence_number": next(self.seq), **fields})

    def text(self, delta: str) -> list[str]:
        events = (
            [] if self.item is not None and self.item["type"] == "message" else [*self.close(), *self._open_message()]
        )
        assert self.item is not None
        self.item["content"][0]["text"] += delta
        where = {"item_id": self.item["id"], "output_index": len(self.output), "content_index": 0}
        return [*events, self.event("response.output_text.delta", **where, delta=delta, logprobs=[])]

    def reasoning(self, delta: str) -> list[str]:
        """A piece of reasoning: told as its summary's and as its text's (the item carries it as both)."""
        events = [] if self.item is not None and self.item["type"] == "reasoning" else self._open_reasoning()
        assert self.item is not None
        self.item["summary"][0]["text"] += delta
        self.item["content"][0]["text"] += delta
        where = {"item_id": self.item["id"], "output_index": len(self.output)}
        return [
            *events,
            self.event("response.reasoning_summary_text.delta", **where, summary_index=0, delta=delta),
            self.event("response.reasoning_text.delta", **where, content_index=0, delta=delta),
        ]

    def call(self, call_id: str, name: str) -> list[str]:
        events = self.close()
        self.item = call_item(self.tools, call_id, name, "", "in_progress")
        self.arguments = ""
        return [*events, self.event("response.output_item.added", output_index=len(self.output), item=self.item)]

    def more_arguments(self, delta: str) -> list[str]:
        assert self.item is not None and self.item["type"] in ("function_call", "custom_tool_call")
        self.arguments += delta
        if self.item["type"] == "custom_tool_call":
            return []  # told whole when the call closes
        self.item["arguments"] = self.arguments
        where = {"item_id": self.item["id"], "output_index": len(self.output)}
        return [self.event("response.function_call_arguments.delta", **where, delta=delta)]

    def close(self) -> list[str]:
        item, self.item = self.item, None
        if item is None:
            return []
        where = {"item_id": item["id"], "output_index": len(self.output)}
        item["status"] = "completed"
        if item["type"] == "reasoning":
            summary, part = item["summary"][0], item["content"][0]
            events = [
                self.event("response.reasoning_summary_text.done", **where, summary_index=0, text=summary["text"]),
                self.event("response.reasoning_summary_part.done", **where, summary_index=0, part=summary),
                self.event("response.reasoning_text.done", **where, content_index=0, text=part["text"]),
                self.event("response.content_part.done", **where, content_index=0, part=part),
            ]
            item = reasoning_item(part["text"], self.include, "completed", item["id"])
        elif item["type"] == "message":
            part = item["content"][0]
            events = [
                self.event("response.output_text.done", **where, content_index=0, text=part["text"], logprobs=[]),
                self.event("response.content_part.done", **where, content_index=0, part=part),
            ]
        elif item["type"] == "custom_tool_call":
            item["input"] = text = custom_input(self.arguments)
            events = [self.event("response.custom_tool_call_input.delta", **where, delta=text)] if text else []
            events.append(self.event("response.custom_tool_call_input.done", **where, input=text))
        else:
            args = item["arguments"]
            events = [self.event("response.function_call_arguments.done", **where, name=item["name"], arguments=args)]
        events.append(self.event("response.output_item.done", output_index=len(self.output), item=item))
        self.output.append(item)
        return events

    def _open_reasoning(self) -> list[str]:
        events = self.close()
        self.item = reasoning_item("", None, "in_progress")
        where = {"item_id": self.item["id"], "output_index": len(self.output)}
        added = {**self.item, "summary": [], "content": []}
        summary, part = dict(self.item["summary"][0]), dict(self.item["content"][0])
        return [
            *events,
            self.event("response.output_item.added", output_index=len(self.output), item=added),
            self.event("response.reasoning_summary_part.added", **where, summary_index=0, part=summary),
            self.event("response.content_part.added", **where, content_index=0, part=part),
        ]

    def _open_message(self) -> list[str]:
        self.item = message_item("", "in_progress")
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self.item["content"] = [dict(part)]
        where = {"item_id": self.item["id"], "output_index": len(self.output), "content_index": 0}
        return [
            self.event("response.output_item.added", output_index=len(self.output), item={**self.item, "content": []}),
            self.event("response.content_part.added", **where, part=part),
        ]


async def response_events(
    turn: Turn, output: AsyncGenerator[Piece, None], store: ResponseStore
) -> AsyncGenerator[str, None]:
    """The events of one streamed response, from the output pieces of its request."""
    events = _Events(turn.tools, turn.request.include)
    started = response_object(turn, [], "in_progress", None)
    yield events.event("response.created", response=started)
    yield events.event("response.in_progress", response=started)
    finished: Finished | None = None
    try:
        async for piece in output:
            if isinstance(piece, Finished):
                finished = piece
            for event in _piece_events(events, piece):
                yield event
    finally:
        await output.aclose()  # a client gone mid-stream: the engine request is aborted now, not when collected
    if events.item is None and not events.output:
        for event in events.text(""):
            yield event
    for event in events.close():
        yield event
    assert finished is not None  # the pieces always end with it
    status = "incomplete" if finished.finish_reason == "length" else "completed"
    final = response_object(turn, events.output, status, finished.usage)
    finish(turn, final, _message(events.output), store)
    yield events.event(f"response.{status}", response=final)


def _piece_events(events: _Events, piece: Piece) -> list[str]:
    if isinstance(piece, Reasoning):
        return events.reasoning(piece.text)
    if isinstance(piece, Text):
        return events.text(piece.text)
    if isinstance(piece, CallStart):
        return events.call(piece.call_id, piece.name)
    if isinstance(piece, CallArguments):
        return events.more_arguments(piece.text)
    return []  # Started, Finished: told by response.created and response.completed


def _message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """The output items as the chat message a stored conversation keeps (a custom tool's input as its argument)."""
    text = "".join(i["content"][0]["text"] for i in output if i["type"] == "message")
    calls = [
        {"id": i["call_id"], "type": "function", "function": {"name": i["name"], "arguments": _arguments(i)}}
        for i in output
        if i["type"] in ("function_call", "custom_tool_call")
    ]
    reasoning = "".join(i["content"][0]["text"] for i in output if i["type"] == "reasoning")
    message = {"role": "assistant", "content": text or None, **({"tool_calls": calls} if calls else {})}
    return {**message, "reasoning_content": reasoning} if reasoning else message


def _arguments(item: dict[str, Any]) -> str:
    return str(item["arguments"]) if item["type"] == "function_call" else json.dumps({"input": item["input"]})
