"""A Messages request as the internal chat request, and a finished chat result as a Messages response."""

from __future__ import annotations

import json
import uuid
from typing import Any

from pydantic import ValidationError

from engine_server.anthropic.protocol import (
    CountTokensRequest,
    MediaBlock,
    Message,
    MessagesRequest,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolUseBlock,
)
from engine_server.errors import BadRequest, from_validation_error
from engine_server.protocol import ChatCompletionRequest, FieldError

# Claude Code opens every system prompt with this block; its text changes per request (a version and a hash), so
# left in it would make every turn's prompt differ from the first token on and defeat prefix caching.
BILLING_HEADER = "x-anthropic-billing-header:"
# Context edits that change nothing here: thinking blocks of earlier turns never reach the prompt.
NO_OP_EDITS = ("clear_thinking_",)
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "abort": "end_turn", None: "end_turn"}


def to_chat(req: CountTokensRequest, model: str) -> ChatCompletionRequest:
    """The chat request that serves a Messages request (or counts its prompt)."""
    for i, edit in enumerate(req.context_management.edits if req.context_management else []):
        if not edit.type.startswith(NO_OP_EDITS):
            raise BadRequest(
                f"context_management edit '{edit.type}' is not supported by this server; "
                f"it supports {', '.join(e + '*' for e in NO_OP_EDITS)}",
                param=f"context_management.edits.{i}.type",
            )
    system = _system_text(req.system)
    messages = ([{"role": "system", "content": system}] if system else []) + _messages(req.messages, model)
    body: dict[str, Any] = {"model": req.model, "messages": messages}
    if req.tools:
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "parameters": t.input_schema,
                    **({"strict": True} if t.strict else {}),
                },
            }
            for t in req.tools
        ]
    choice = req.tool_choice
    if choice is not None and (req.tools or choice.type == "none"):
        if choice.type == "tool":
            if not choice.name:
                raise BadRequest("tool_choice of type 'tool' needs a 'name'", param="tool_choice.name")
            body["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice.disable_parallel_tool_use:
            body["parallel_tool_calls"] = False
    elif choice is not None and choice.type in ("any", "tool"):
        raise BadRequest(f"tool_choice '{choice.type}' needs at least one tool in tools", param="tool_choice")
    fmt = req.output_config.format if req.output_config else None
    if fmt is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt.schema_}}
    if req.thinking is not None:
        # Templates with a thinking switch (Qwen3's enable_thinking) follow it; the others ignore it.
        body["chat_template_kwargs"] = {"enable_thinking": req.thinking.type != "disabled"}
    if isinstance(req, MessagesRequest):
        body |= {
            "max_tokens": req.max_tokens,
            "temperature": req.temperature,
            "top_p": req.top_p,
            "top_k": req.top_k,
            "stop": req.stop_sequences or None,
            "stream": req.stream,
            "stream_options": {"include_usage": True} if req.stream else None,
        }
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in body.items() if v is not None})
    except ValidationError as exc:
        raise from_validation_error(exc) from None
    except FieldError as exc:
        raise BadRequest(str(exc), param=exc.param) from None


def _system_text(system: str | list[TextBlock] | None) -> str:
    if system is None or isinstance(system, str):
        return system or ""
    return "\n".join(b.text for b in system if not b.text.startswith(BILLING_HEADER))


def _messages(turns: list[Message], model: str) -> list[dict[str, Any]]:
    """Turns as chat messages: a user turn's tool results become tool messages (before its text), an assistant
    turn's tool_use blocks its tool_calls; thinking from earlier turns is left out, as Anthropic's API does."""
    out: list[dict[str, Any]] = []
    for i, turn in enumerate(turns):
        if isinstance(turn.content, str):
            out.append({"role": turn.role, "content": turn.content})
            continue
        texts: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, block in enumerate(turn.content):
            where = f"messages.{i}.content.{j}"
            if isinstance(block, TextBlock):
                texts.append(block.text)
            elif isinstance(block, MediaBlock):
                raise _no_media(block, model, where)
            elif isinstance(block, ToolUseBlock):
                _expect(turn.role == "assistant", "tool_use blocks belong to assistant turns", where)
                arguments = json.dumps(block.input, ensure_ascii=False)
                calls.append(
                    {"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}}
                )
            elif isinstance(block, ToolResultBlock):
                _expect(turn.role == "user", "tool_result blocks belong to user turns", where)
                out.append(
                    {"role": "tool", "tool_call_id": block.tool_use_id, "content": _result_text(block, model, where)}
                )
            elif isinstance(block, ThinkingBlock) or block.type == "redacted_thinking":
                _expect(turn.role == "assistant", f"{block.type} blocks belong to assistant turns", where)
        if texts or calls or not out or out[-1]["role"] != "tool":
            message: dict[str, Any] = {"role": turn.role, "content": "\n".join(texts) if texts or not calls else None}
            out.append({**message, "tool_calls": calls} if calls else message)
    return out


def _result_text(block: ToolResultBlock, model: str, where: str) -> str:
    if block.content is None or isinstance(block.content, str):
        text = block.content or ""
    else:
        for part in block.content:
            if isinstance(part, MediaBlock):
                raise _no_media(part, model, where + ".content")
        text = "\n".join(part.text for part in block.content if isinstance(part, TextBlock))
    return f"Error: {text}" if block.is_error else text


def _no_media(block: MediaBlock, model: str, where: str) -> BadRequest:
    kind = "images" if block.type == "image" else "documents"
    return BadRequest(f"The model '{model}' does not accept {kind}: it reads text only.", param=where)


def _expect(ok: bool, message: str, where: str) -> None:
    if not ok:
        raise BadRequest(message, param=where)


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def tool_use_id() -> str:
    return f"toolu_{uuid.uuid4().hex[:24]}"


def usage(num_prompt: int, num_cached: int | None, num_output: int) -> dict[str, Any]:
    """Anthropic counts the prompt's cached tokens apart from input_tokens."""
    cached = num_cached or 0
    return {
        "input_tokens": num_prompt - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": num_output,
    }


def stop_reason(finish_reason: str | None, stop_sequence: str | None, called: bool) -> str:
    if called and finish_reason == "stop":
        return "tool_use"
    return "stop_sequence" if stop_sequence is not None else STOP_REASONS.get(finish_reason, "end_turn")


def content_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    """A chat message (reasoning and tool calls read out) as Messages content blocks: thinking, text, tool_use.
    The thinking block's signature is empty: nothing here signs it, and it is not read back."""
    blocks: list[dict[str, Any]] = []
    if message.get("reasoning_content"):
        blocks.append({"type": "thinking", "thinking": message["reasoning_content"], "signature": ""})
    if message.get("content"):
        blocks.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        arguments = json.loads(call["function"]["arguments"])
        blocks.append({"type": "tool_use", "id": tool_use_id(), "name": call["function"]["name"], "input": arguments})
    return blocks


def message(
    model: str, blocks: list[dict[str, Any]], reason: str | None, stop: str | None, use: dict[str, Any]
) -> dict[str, Any]:
    return {
        "id": message_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": reason,
        "stop_sequence": stop,
        "usage": use,
    }
