"""Responses tools on the chat path: what the model is offered for each kind of tool, and what its calls become.

A function is offered as it is; a namespace's functions are offered under their own names, and their calls carry the
namespace back (`function_call.namespace`, how Codex routes them). A custom (freeform) tool is offered as a function
of one string argument, `input`, and its calls come back as `custom_tool_call` items with that string: a regex
grammar is enforced as the argument's JSON-schema `pattern`, a Lark grammar is given to the model in the tool's
description, as a hint it is not held to. Hosted tools (web search, file search, ...) cannot run here: they are not
offered, only echoed in the response's `tools`, and logged once per type.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from engine_server.errors import BadRequest
from engine_server.responses_protocol import (
    CustomTool,
    CustomToolCallItem,
    FunctionCallItem,
    FunctionTool,
    GrammarFormat,
    HostedChoice,
    NamedChoice,
    NamespaceTool,
    ResponsesRequest,
    Tool,
)

logger = logging.getLogger("engine_server")
_logged_hosted: set[str] = set()

LARK_HINT = "Write `input` in this Lark grammar:\n{definition}"
REGEX_HINT = "`input` matches this regular expression: {definition}"


@dataclass(frozen=True)
class Offered:
    """A name the model may call: a function or a custom tool, maybe in a namespace."""

    kind: Literal["function", "custom"]
    namespace: str | None = None


@dataclass
class ToolSet:
    """The request's tools as chat tools, the Responses path of each (for errors), and what each name is."""

    chat_tools: list[dict[str, Any]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    names: dict[str, Offered] = field(default_factory=dict)

    def add(self, path: str, chat_tool: dict[str, Any], offered: Offered) -> None:
        self.chat_tools.append(chat_tool)
        self.paths.append(path)
        self.names.setdefault(chat_tool["function"]["name"], offered)

    def param(self, chat_param: str) -> str:
        """A chat request's param (`tools[3].function.parameters`) as the Responses request's (`tools.2.tools.0...`)."""
        found = re.fullmatch(r"tools\[(\d+)\](?:\.function)?\.?(.*)", chat_param)
        if found is None or int(found.group(1)) >= len(self.paths):
            return chat_param
        rest = found.group(2)
        return self.paths[int(found.group(1))] + (f".{rest}" if rest else "")


def tool_set(tools: list[Tool] | None) -> ToolSet:
    result = ToolSet()
    for i, tool in enumerate(tools or []):
        if isinstance(tool, NamespaceTool):
            for j, member in enumerate(tool.tools):
                _add(result, f"tools.{i}.tools.{j}", member, tool.name)
        elif isinstance(tool, FunctionTool | CustomTool):
            _add(result, f"tools.{i}", tool, None)
        elif tool.type not in _logged_hosted:
            _logged_hosted.add(tool.type)
            logger.info(
                "responses: the hosted tool %r cannot run on this server; it is not offered to the model", tool.type
            )
    return result


def _add(result: ToolSet, path: str, tool: FunctionTool | CustomTool, namespace: str | None) -> None:
    if isinstance(tool, FunctionTool):
        # A Responses function tool is strict unless it says otherwise (a chat tool is not).
        spec = {
            **tool.model_dump(exclude={"type", "defer_loading"}, exclude_none=True),
            "strict": tool.strict is not False,
        }
        result.add(path, {"type": "function", "function": spec}, Offered("function", namespace))
        return
    text: dict[str, Any] = {"type": "string"}
    hint = None
    if isinstance(tool.format, GrammarFormat) and tool.format.syntax == "regex":
        try:
            re.compile(tool.format.definition)
        except re.error as exc:
            raise BadRequest(f"not a valid regular expression: {exc}", param=f"{path}.format.definition") from None
        text["pattern"] = f"^(?:{tool.format.definition})$"
        hint = REGEX_HINT.format(definition=tool.format.definition)
    elif isinstance(tool.format, GrammarFormat):
        hint = LARK_HINT.format(definition=tool.format.definition)
    description = "\n\n".join(part for part in (tool.description, hint) if part)
    parameters = {"type": "object", "properties": {"input": text}, "required": ["input"], "additionalProperties": False}
    spec = {
        "name": tool.name,
        "parameters": parameters,
        "strict": True,
        **({"description": description} if description else {}),
    }
    result.add(path, {"type": "function", "function": spec}, Offered("custom", namespace))


def chat_tool_choice(choice: Any, tools: ToolSet) -> str | dict[str, Any] | None:
    """The request's tool_choice as the chat request's: a named function or custom tool, or a mode."""
    if isinstance(choice, HostedChoice):
        raise BadRequest(
            f"tool_choice forces the hosted tool '{choice.type}', which this server cannot run", param="tool_choice"
        )
    if isinstance(choice, NamedChoice):
        offered = tools.names.get(choice.name)
        if offered is None or offered.kind != choice.type:
            raise BadRequest(
                f"tool_choice names the {choice.type} tool '{choice.name}', not in tools", param="tool_choice"
            )
        return {"type": "function", "function": {"name": choice.name}}
    if not tools.chat_tools and choice in ("auto", "none"):
        return None  # only hosted tools (or none): nothing to choose from
    return choice  # type: ignore[no-any-return]


def echoed_tools(req: ResponsesRequest) -> list[dict[str, Any]]:
    """The request's tools as the response object lists them: functions' `strict` resolved, hosted ones as sent."""
    out: list[dict[str, Any]] = []
    for tool in req.tools or []:
        if isinstance(tool, FunctionTool):
            out.append(_echo_function(tool))
        elif isinstance(tool, NamespaceTool):
            members = [
                _echo_function(t) if isinstance(t, FunctionTool) else t.model_dump(exclude_none=True)
                for t in tool.tools
            ]
            out.append({**tool.model_dump(exclude_none=True), "tools": members})
        else:
            out.append(tool.model_dump(exclude_none=True))
    return out


def _echo_function(tool: FunctionTool) -> dict[str, Any]:
    return {**tool.model_dump(exclude_none=True), "strict": tool.strict is not False}


def chat_call(item: FunctionCallItem | CustomToolCallItem) -> dict[str, Any]:
    """A call input item as a chat tool call: a custom tool's input is the `input` argument it was offered with."""
    arguments = item.arguments if isinstance(item, FunctionCallItem) else json.dumps({"input": item.input})
    return {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": arguments}}


def call_item(
    names: dict[str, Offered], call_id: str, name: str, arguments: str, status: str, item_id: str | None = None
) -> dict[str, Any]:
    """A chat tool call as a Responses output item: function_call (with its namespace) or custom_tool_call."""
    offered = names.get(name, Offered("function"))
    namespace = {"namespace": offered.namespace} if offered.namespace else {}
    if offered.kind == "custom":
        return {
            "type": "custom_tool_call",
            "id": item_id or f"ctc_{uuid.uuid4().hex}",
            "call_id": call_id,
            **namespace,
            "name": name,
            "input": custom_input(arguments),
            "status": status,
        }
    return {
        "type": "function_call",
        "id": item_id or f"fc_{uuid.uuid4().hex}",
        "call_id": call_id,
        **namespace,
        "name": name,
        "arguments": arguments,
        "status": status,
    }


def custom_input(arguments: str) -> str:
    """A custom tool's raw input, from the arguments of the function it was offered as (as written, if cut short)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return value["input"] if isinstance(value, dict) and isinstance(value.get("input"), str) else arguments
