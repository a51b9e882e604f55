"""The Responses API (POST /v1/responses) on the chat serving path: its request becomes a chat request, the chat
completion becomes a response, and stored responses carry a conversation on (previous_response_id).
"""

from __future__ import annotations

import collections
import time
import uuid
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from engine_server.errors import BadRequest, NotFound, from_validation_error
from engine_server.protocol import ChatCompletionRequest, FieldError
from engine_server.responses_protocol import (
    CustomToolCallItem,
    FunctionCallItem,
    FunctionCallOutputItem,
    MessageItem,
    ReasoningItem,
    ResponsesRequest,
    TextFormat,
)
from engine_server.responses_tools import Offered, call_item, chat_call, chat_tool_choice, echoed_tools, tool_set

__all__ = ["ResponseStore", "ResponsesRequest", "Turn", "from_completion", "response_object", "to_chat"]


@dataclass
class Stored:
    response: dict[str, Any]
    messages: list[dict[str, Any]]  # the whole conversation as chat messages, this response's output included
    expires: float


class ResponseStore:
    """Responses kept for previous_response_id and GET: at most `size`, each for `ttl` seconds, oldest first out."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size, self.ttl = size, ttl
        self._items: collections.OrderedDict[str, Stored] = collections.OrderedDict()

    def put(self, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        if self.size == 0:
            return
        self._items[response["id"]] = Stored(response, messages, time.monotonic() + self.ttl)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def get(self, response_id: str, param: str | None = None) -> Stored:
        now = time.monotonic()
        while self._items and next(iter(self._items.values())).expires < now:
            self._items.popitem(last=False)
        stored = self._items.get(response_id)
        if stored is None:
            raise NotFound(f"Response with id '{response_id}' not found.", param=param, code="response_not_found")
        return stored

    def delete(self, response_id: str) -> None:
        self.get(response_id)
        del self._items[response_id]


@dataclass
class Turn:
    """A Responses request on the chat path: the chat request, and what a stored response keeps of it."""

    request: ResponsesRequest
    chat: ChatCompletionRequest
    messages: list[dict[str, Any]]  # the conversation so far (history and input), without the instructions
    model: str
    id: str
    created_at: int
    tools: dict[str, Offered]  # the names the model was offered: function or custom tool, and namespace


def to_chat(req: ResponsesRequest, store: ResponseStore, model: str) -> Turn:
    history: list[dict[str, Any]] = []
    if req.previous_response_id:
        history = list(store.get(req.previous_response_id, "previous_response_id").messages)
    messages = history + _input_messages(req.input)
    system = [{"role": "system", "content": req.instructions}] if req.instructions else []
    tools = tool_set(req.tools)
    body: dict[str, Any] = {
        "model": req.model,
        "messages": system + messages,
        "max_completion_tokens": req.max_output_tokens,
        "temperature": req.temperature,
        "top_p": req.top_p,
        "parallel_tool_calls": req.parallel_tool_calls,
        "stream": req.stream,
        "stream_options": {"include_usage": True} if req.stream else None,
        "user": req.user,
        "tools": tools.chat_tools or None,
        "tool_choice": chat_tool_choice(req.tool_choice, tools) if req.tool_choice is not None else None,
    }
    if req.reasoning is not None and req.reasoning.effort is not None:
        # Templates with a thinking switch (Qwen3's enable_thinking) follow the effort; the others ignore it.
        body["chat_template_kwargs"] = {"enable_thinking": req.reasoning.effort not in ("none", "minimal")}
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type == "json_schema":
        if fmt.schema_ is None:
            raise BadRequest("text.format of type json_schema needs a 'schema'", param="text.format.schema")
        spec = {"name": fmt.name or "response", "schema": fmt.schema_, "strict": fmt.strict}
        body["response_format"] = {"type": "json_schema", "json_schema": spec}
    elif fmt is not None:
        body["response_format"] = {"type": fmt.type}
    try:
        chat = ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})
    except ValidationError as exc:
        error = from_validation_error(exc)
        raise BadRequest(error.message, param=tools.param(error.param or ""), code=error.code) from None
    except FieldError as exc:
        raise BadRequest(str(exc), param=tools.param(exc.param)) from None
    return Turn(req, chat, messages, model, f"resp_{uuid.uuid4().hex}", int(time.time()), tools.names)


def _input_messages(items: str | list[Any]) -> list[dict[str, Any]]:
    """Input items as chat messages: an assistant message and the calls after it become one assistant message.

    A reasoning item becomes the reasoning_content of the assistant message after it, which templates that render
    earlier reasoning (Qwen3's) take and the others ignore: its reasoning text, else its summary. Encrypted content
    is not read: another server's is opaque (this one's repeats the text)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    reasoning = ""  # of a reasoning item that waits for its assistant message
    for item in items:
        if isinstance(item, ReasoningItem):
            parts = item.content or item.summary
            reasoning += "\n".join(p.text for p in parts)
            continue
        if isinstance(item, MessageItem):
            text = item.content if isinstance(item.content, str) else "".join(p.text for p in item.content)
            messages.append({"role": item.role, "content": text})
        elif isinstance(item, FunctionCallItem | CustomToolCallItem):
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":
                last.setdefault("tool_calls", []).append(chat_call(item))
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [chat_call(item)]})
        elif isinstance(item, FunctionCallOutputItem):
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.text})
        if reasoning and messages[-1]["role"] == "assistant":
            messages[-1].setdefault("reasoning_content", reasoning)
        reasoning = ""
    return messages


def output_items(turn: Turn, message: dict[str, Any], status: str = "completed") -> list[dict[str, Any]]:
    """A chat message as Responses output items: its reasoning, its text, then one call item per call."""
    items: list[dict[str, Any]] = []
    reasoning = message.get("reasoning_content")
    if reasoning:
        items.append(reasoning_item(reasoning, turn.request.include, status))
    if message.get("content") or not (message.get("tool_calls") or reasoning):
        items.append(message_item(message.get("content") or "", status))
    for call in message.get("tool_calls") or []:
        function = call["function"]
        items.append(call_item(turn.tools, call["id"], function["name"], function["arguments"], status))
    return items


def message_item(text: str, status: str, item_id: str | None = None) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"type": "message", "id": item_id or _id("msg"), "status": status, "role": "assistant", "content": content}


def reasoning_item(text: str, include: list[str] | None, status: str, item_id: str | None = None) -> dict[str, Any]:
    """Reasoning as an output item: the text as its reasoning_text content and as its summary (no summary is
    written apart), and, when `include` asks, as its encrypted_content: plain, nothing here is encrypted, so that a
    stateless client (store false) that sends the item back sends the reasoning."""
    item = {
        "type": "reasoning",
        "id": item_id or _id("rs"),
        "summary": [{"type": "summary_text", "text": text}],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": status,
    }
    return {**item, "encrypted_content": text} if include and "reasoning.encrypted_content" in include else item


def response_object(
    turn: Turn, output: list[dict[str, Any]], status: str, usage: dict[str, int] | None
) -> dict[str, Any]:
    """The response as the API returns it: the request's settings echoed, the output, and the usage."""
    req = turn.request
    fmt = req.text.format if req.text and req.text.format else TextFormat.model_validate({"type": "text"})
    verbosity = req.text.verbosity if req.text and req.text.verbosity else "medium"
    choice = req.tool_choice or "auto"
    reasoning = req.reasoning
    response = {
        "id": turn.id,
        "object": "response",
        "created_at": turn.created_at,
        "status": status,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": turn.model,
        "output": output,
        "parallel_tool_calls": req.parallel_tool_calls,
        "previous_response_id": req.previous_response_id,
        # What was asked, echoed; reasoning items come of what the model wrote (a model without reasoning: none).
        "reasoning": {
            "effort": reasoning.effort if reasoning else None,
            "summary": (reasoning.summary or reasoning.generate_summary) if reasoning else None,
        },
        "store": req.store,
        "temperature": req.temperature if req.temperature is not None else 1.0,
        "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True), "verbosity": verbosity},
        "tool_choice": choice if isinstance(choice, str) else choice.model_dump(),
        "tools": echoed_tools(req),
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "truncation": "disabled",
        "usage": _usage(usage) if usage is not None else None,
        "metadata": req.metadata or {},
    }
    # Optional fields appear when the request gave them (the spec has no null user, cache key or identifier).
    given = {"user": req.user, "prompt_cache_key": req.prompt_cache_key, "safety_identifier": req.safety_identifier}
    return {**response, **{k: v for k, v in given.items() if v is not None}}


def from_completion(turn: Turn, completion: dict[str, Any], store: ResponseStore) -> dict[str, Any]:
    """A chat completion (non-streaming) as a response, stored if asked."""
    choice = completion["choices"][0]
    status = "incomplete" if choice["finish_reason"] == "length" else "completed"
    response = response_object(turn, output_items(turn, choice["message"], "completed"), status, completion["usage"])
    finish(turn, response, choice["message"], store)
    return response


def finish(turn: Turn, response: dict[str, Any], message: dict[str, Any], store: ResponseStore) -> None:
    """Keep a finished response, and the conversation it ends, when the request asks to store it."""
    if turn.request.store:
        assistant = {k: v for k, v in message.items() if k in ("role", "content", "tool_calls", "reasoning_content")}
        store.put(response, [*turn.messages, assistant])


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    # Prompt tokens served from the prefix cache, where the engine reports them (vLLM does, OpenVINO GenAI does not);
    # nothing is written to a prompt cache on request, so cache_write_tokens is 0.
    cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    return {
        "input_tokens": usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
        "output_tokens": usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage["total_tokens"],
    }


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"
