"""The Responses API (POST /v1/responses) on the chat serving path: its request becomes a chat request, the chat
completion becomes a response, and stored responses carry a conversation on (previous_response_id).
"""

from __future__ import annotations

import collections
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError

from engine_server.errors import BadRequest, NotFound, from_validation_error
from engine_server.protocol import ChatCompletionRequest, FieldError, PositiveInt, Strict


class InputText(Strict):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class MessageItem(Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]
    id: str | None = None
    status: str | None = None


class FunctionCallItem(Strict):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output"]
    call_id: str
    output: str
    id: str | None = None
    status: str | None = None


InputItem = Annotated[MessageItem | FunctionCallItem | FunctionCallOutputItem, Field(union_mode="left_to_right")]


class FunctionTool(Strict):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionChoice(Strict):
    type: Literal["function"]
    name: str


class TextFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(Strict):
    format: TextFormat | None = None
    verbosity: Literal["medium"] | None = None  # the only one a model without verbosity control gives


class ResponsesRequest(Strict):
    model: str | None = None
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionChoice | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    max_output_tokens: PositiveInt | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stream: bool = False
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    # Accepted only at the value that asks for nothing this server lacks.
    truncation: Literal["disabled"] | None = None
    include: Annotated[list[str], Field(max_length=0)] | None = None
    reasoning: None = None
    background: Literal[False] | None = None
    service_tier: Literal["auto", "default"] | None = None


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


def to_chat(req: ResponsesRequest, store: ResponseStore, model: str) -> Turn:
    history: list[dict[str, Any]] = []
    if req.previous_response_id:
        history = list(store.get(req.previous_response_id, "previous_response_id").messages)
    messages = history + _input_messages(req.input)
    system = [{"role": "system", "content": req.instructions}] if req.instructions else []
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
    }
    if req.tools:
        # A Responses function tool is strict unless it says otherwise (a chat tool is not).
        body["tools"] = [
            {
                "type": "function",
                "function": {**t.model_dump(exclude={"type"}, exclude_none=True), "strict": t.strict is not False},
            }
            for t in req.tools
        ]
    if req.tool_choice is not None:
        choice = req.tool_choice
        body["tool_choice"] = (
            choice if isinstance(choice, str) else {"type": "function", "function": {"name": choice.name}}
        )
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
        raise from_validation_error(exc) from None
    except FieldError as exc:
        raise BadRequest(str(exc), param=exc.param) from None
    return Turn(req, chat, messages, model, f"resp_{uuid.uuid4().hex}", int(time.time()))


def _input_messages(items: str | list[Any]) -> list[dict[str, Any]]:
    """Input items as chat messages: consecutive function calls become one assistant message's tool_calls."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, MessageItem):
            text = item.content if isinstance(item.content, str) else "".join(p.text for p in item.content)
            messages.append({"role": item.role, "content": text})
        elif isinstance(item, FunctionCallItem):
            call = {
                "id": item.call_id,
                "type": "function",
                "function": {"name": item.name, "arguments": item.arguments},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    return messages


def output_items(message: dict[str, Any], status: str = "completed") -> list[dict[str, Any]]:
    """A chat message as Responses output items: its text, then one function_call item per call."""
    items: list[dict[str, Any]] = []
    if message.get("content") or not message.get("tool_calls"):
        items.append(message_item(message.get("content") or "", status))
    for call in message.get("tool_calls") or []:
        items.append(function_call_item(call["id"], call["function"]["name"], call["function"]["arguments"], status))
    return items


def message_item(text: str, status: str, item_id: str | None = None) -> dict[str, Any]:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {"type": "message", "id": item_id or _id("msg"), "status": status, "role": "assistant", "content": content}


def function_call_item(
    call_id: str, name: str, arguments: str, status: str, item_id: str | None = None
) -> dict[str, Any]:
    return {
        "type": "function_call",
        "id": item_id or _id("fc"),
        "call_id": call_id,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def response_object(
    turn: Turn, output: list[dict[str, Any]], status: str, usage: dict[str, int] | None
) -> dict[str, Any]:
    """The response as the API returns it: the request's settings echoed, the output, and the usage."""
    req = turn.request
    fmt = req.text.format if req.text and req.text.format else TextFormat.model_validate({"type": "text"})
    choice = req.tool_choice or "auto"
    return {
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
        "reasoning": {"effort": None, "summary": None},
        "store": req.store,
        "temperature": req.temperature if req.temperature is not None else 1.0,
        "text": {"format": fmt.model_dump(by_alias=True, exclude_none=True)},
        "tool_choice": choice if isinstance(choice, str) else choice.model_dump(),
        "tools": [{**t.model_dump(exclude_none=True), "strict": t.strict is not False} for t in req.tools or []],
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "truncation": "disabled",
        "usage": _usage(usage) if usage is not None else None,
        "user": req.user,
        "metadata": req.metadata or {},
    }


def from_completion(turn: Turn, completion: dict[str, Any], store: ResponseStore) -> dict[str, Any]:
    """A chat completion (non-streaming) as a response, stored if asked."""
    choice = completion["choices"][0]
    status = "incomplete" if choice["finish_reason"] == "length" else "completed"
    response = response_object(turn, output_items(choice["message"], "completed"), status, completion["usage"])
    finish(turn, response, choice["message"], store)
    return response


def finish(turn: Turn, response: dict[str, Any], message: dict[str, Any], store: ResponseStore) -> None:
    """Keep a finished response, and the conversation it ends, when the request asks to store it."""
    if turn.request.store:
        assistant = {k: v for k, v in message.items() if k in ("role", "content", "tool_calls")}
        store.put(response, [*turn.messages, assistant])


def _usage(usage: dict[str, int]) -> dict[str, Any]:
    return {
        "input_tokens": usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage["completion_tokens"],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage["total_tokens"],
    }


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"
