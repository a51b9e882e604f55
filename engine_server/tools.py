"""Tools on chat requests: what the chat template is given, what the engine is held to, and how each choice's
output becomes OpenAI tool calls.

tool_choice "required" and a named function are enforced by the engine's structured output: the output is a JSON
array of calls (required; at most max_calls of them) or the named function's arguments, so even a tiny model's calls
validate. An output cut by max_tokens keeps the calls it completed. "auto" lets the
model choose and reads its own format (tool_parsers). "none" renders no tools and reads no calls.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine_server.protocol import ChatCompletionRequest, NamedToolChoice
from engine_server.tool_parsers import Call, Content, StreamParser, ToolCall, detect_format

# Renders messages with template kwargs to prompt text (the engine's chat template).
Render = Callable[[list[dict[str, Any]], dict[str, Any]], str]

# Templates that ignore `tools` (most small models' templates) get the tools in a system prompt instead, and their
# calls are read in the Hermes format it asks for. Tool results become user turns, as Hermes templates render them;
# small models often begin their answer by copying the result's tags, which are dropped from the content.
RESPONSE_TAGS = ("<tool_response>", "</tool_response>")
FALLBACK_PROMPT = """You can call these functions, described by their JSON schemas:
<tools>
{tools}
</tools>
{instruction}"""
FALLBACK_AUTO = (
    "To call a function, reply with one <tool_call></tool_call> block per call, holding a JSON object with the "
    'function\'s name and its arguments:\n<tool_call>\n{"name": "<function name>", "arguments": {"<name>": '
    "<value>}}\n</tool_call>\nOtherwise, answer in plain text."
)
FALLBACK_REQUIRED = (
    'Reply with a JSON array of calls, each an object with the function\'s name and its arguments: [{"name": '
    '"<function name>", "arguments": {"<name>": <value>}}]'
)
FALLBACK_NAMED = "Call the function {name}: reply with its arguments as one JSON object."
PROBE_TOOL = {
    "type": "function",
    "function": {"name": "probe", "description": "A probe.", "parameters": {"type": "object", "properties": {}}},
}
EMPTY_OBJECT = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class ToolPlan:
    """How a request's tools are served: mode auto, required or named, and the format its output is read in."""

    mode: str
    fmt: str
    names: tuple[str, ...]
    parallel: bool
    strict: dict[str, dict[str, Any]] = field(default_factory=dict)  # auto: schemas a strict tool's calls must meet
    json_schema: dict[str, Any] | None = None  # required / named: what the engine's output is held to


def plan_chat(
    req: ChatCompletionRequest, template_format: str | None, parser: str, max_calls: int
) -> tuple[list[dict[str, Any]], dict[str, Any], ToolPlan | None]:
    """The messages and template kwargs to render, and the plan for the output (None: plain text).

    template_format is what the chat template does with tools (None: it ignores them); parser is the configured
    format for "auto" ("auto": the template's); max_calls is the most calls "required" with parallel calls makes."""
    assert isinstance(req.messages, list)
    messages = [_template_message(m.model_dump(exclude_none=True)) for m in req.messages]
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    choice = req.tool_choice or ("auto" if tools else "none")
    native = template_format is not None
    kwargs: dict[str, Any] = {}
    if not native and (choice != "none" or _has_tool_turns(messages)):
        messages = _fallback_messages(messages)
    if not tools or choice == "none":
        return messages, kwargs, None
    names = tuple(t["function"]["name"] for t in tools)
    schemas = {t["function"]["name"]: _object_schema(t["function"].get("parameters")) for t in tools}
    if isinstance(choice, NamedToolChoice):
        name = choice.function.name
        plan = ToolPlan("named", "", (name,), False, json_schema=_closed(schemas[name]))
        instruction = FALLBACK_NAMED.format(name=name)
    elif choice == "required":
        calls = _calls_schema(schemas, max_calls if req.parallel_tool_calls else 1)
        plan = ToolPlan("required", "json", names, req.parallel_tool_calls, json_schema=calls)
        instruction = FALLBACK_REQUIRED
    else:
        fmt = parser if parser != "auto" else (template_format or "hermes")
        strict = {t["function"]["name"]: schemas[t["function"]["name"]] for t in tools if t["function"].get("strict")}
        plan = ToolPlan("auto", fmt, names, req.parallel_tool_calls, strict)
        instruction = FALLBACK_AUTO
    if native:
        kwargs["tools"] = tools
    else:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        messages = _with_system(messages, FALLBACK_PROMPT.format(tools=listing, instruction=instruction))
    return messages, kwargs, plan


def probe_template(render: Render) -> str | None:
    """What a chat template does with tools: the call format it teaches, or None if it ignores them."""
    messages = [{"role": "user", "content": "Hello"}]
    try:
        plain = render(messages, {})
        with_tools = render(messages, {"tools": [PROBE_TOOL]})
    except Exception:  # a template that fails on tools cannot be given them
        return None
    return None if plain == with_tools else detect_format(with_tools)


def _object_schema(parameters: dict[str, Any] | None) -> dict[str, Any]:
    """A function's parameters as the schema its arguments are held to: always an object."""
    if not parameters:
        return EMPTY_OBJECT
    return parameters if "type" in parameters else {"type": "object", **parameters}


def _calls_schema(schemas: dict[str, dict[str, Any]], max_calls: int) -> dict[str, Any]:
    """The array of calls "required" holds the engine to. Bounded: with nothing that makes it end, a small model
    adds calls until max_tokens."""
    call = [
        {
            "type": "object",
            "properties": {"name": {"const": name}, "arguments": _closed(schema)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for name, schema in schemas.items()
    ]
    items = call[0] if len(call) == 1 else {"anyOf": call}
    return {"type": "array", "items": items, "minItems": 1, "maxItems": max_calls}


# Keywords whose value is a schema, a list of schemas, or a map of names to schemas. allOf is left out: closing the
# parts of a conjunction would refuse each part's properties in the others.
_SUBSCHEMA = ("items", "additionalItems", "contains", "not", "if", "then", "else")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "prefixItems")
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions")
_OPEN = ("additionalProperties", "patternProperties", "unevaluatedProperties")


def _closed(schema: Any) -> Any:
    """The schema with every object that lists its properties, and says nothing of others, held to those: the
    engine's output is then forced calls with the declared arguments only. JSON Schema's default allows any other
    property, and a small model given that freedom writes a key that never ends (as llama.cpp's grammars do, an
    unstated additionalProperties is taken as false)."""
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _SUBSCHEMA:
        if key in out:
            out[key] = _closed(out[key])
    for key in _SUBSCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_closed(s) for s in out[key]]
    for key in _SUBSCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _closed(s) for name, s in out[key].items()}
    if isinstance(out.get("properties"), dict) and not any(key in out for key in _OPEN):
        out["additionalProperties"] = False
    return out


def _template_message(m: dict[str, Any]) -> dict[str, Any]:
    """A message as chat templates take it: text content, call arguments as objects (Hugging Face's form), and
    reasoning as reasoning_content."""
    m.pop("annotations", None)
    if m.get("refusal") and not m.get("content"):
        m["content"] = m["refusal"]
    m.pop("refusal", None)
    reasoning = m.pop("reasoning", None)
    if reasoning and not m.get("reasoning_content"):
        m["reasoning_content"] = reasoning
    if isinstance(m.get("content"), list):
        m["content"] = "\n".join(part["text"] for part in m["content"])
    if m.get("tool_calls"):
        m["tool_calls"] = [
            {**c, "function": {**c["function"], "arguments": json.loads(c["function"]["arguments"])}}
            for c in m["tool_calls"]
        ]
    return m


def _has_tool_turns(messages: list[dict[str, Any]]) -> bool:
    return any(m["role"] == "tool" or m.get("tool_calls") for m in messages)


def _fallback_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calls and their results as text, for templates that know no tool turns, in the Hermes form the fallback
    prompt teaches."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            blocks = [
                "<tool_call>\n" + json.dumps(c["function"], ensure_ascii=False) + "\n</tool_call>"
                for c in m["tool_calls"]
            ]
            text = "\n".join(([m["content"]] if m.get("content") else []) + blocks)
            out.append({"role": "assistant", "content": text})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"{RESPONSE_TAGS[0]}\n{m.get('content', '')}\n{RESPONSE_TAGS[1]}"})
        else:
            out.append(m)
    return out


def _with_system(messages: list[dict[str, Any]], prompt: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] in ("system", "developer") and isinstance(messages[0].get("content"), str):
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + prompt}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


# -- output ----------------------------------------------------------------------------------------------------


class ChoiceTools:
    """One choice's output read for tool calls: text in, chat deltas out (content, or tool_calls in OpenAI's
    streamed shape: the first delta of a call has its id, type and name, the next ones pieces of its arguments)."""

    def __init__(self, plan: ToolPlan) -> None:
        self.plan = plan
        self.parser = None if plan.mode == "named" else _parser(plan.fmt, plan.names)
        self.tags = _DropTags(RESPONSE_TAGS)
        self.calls: list[dict[str, Any]] = []  # as the message carries them: id, type, function

    def feed(self, text: str) -> list[dict[str, Any]]:
        if self.parser is not None:
            return self._deltas(self.parser.feed(text))
        if not text:
            return []
        deltas = [] if self.calls else [self._start(self.plan.names[0])]
        self.calls[0]["function"]["arguments"] += text
        return [*deltas, {"tool_calls": [{"index": 0, "function": {"arguments": text}}]}]

    def finish(self) -> list[dict[str, Any]]:
        if self.parser is None:
            return []
        deltas = self._deltas(self.parser.finish())
        rest = self.tags.finish()
        return [*deltas, {"content": rest}] if rest and self.plan.mode != "required" else deltas

    def finish_reason(self, reason: str | None) -> str | None:
        return "tool_calls" if self.calls and reason == "stop" else reason

    def message(self, text: str) -> dict[str, Any]:
        """The whole output as a chat message (non-streaming)."""
        if self.plan.mode == "named":
            arguments = _loads(text)
            if not isinstance(arguments, dict):
                return {"role": "assistant", "content": text}  # cut short: not a call
            self._start(self.plan.names[0])
            self.calls[0]["function"]["arguments"] = json.dumps(arguments, ensure_ascii=False, separators=(",", ":"))
            return {"role": "assistant", "content": None, "tool_calls": self.calls}
        content = "".join(d.get("content", "") for d in [*self.feed(text), *self.finish()])
        if not self.calls:
            return {"role": "assistant", "content": content}
        return {"role": "assistant", "content": content.strip() or None, "tool_calls": self.calls}

    def _deltas(self, events: list[Content | Call]) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = []
        for event in events:
            if isinstance(event, Content):
                text = self.tags.feed(event.text)
                # required: the output is held to a JSON array of calls; what is left of one cut short is no text
                if text and self.plan.mode != "required":
                    deltas.append({"content": text})
            elif self.calls and not self.plan.parallel:
                continue  # parallel_tool_calls false: the first call only
            elif not _meets_strict(event.call, self.plan.strict):
                deltas.append({"content": json.dumps({"name": event.call.name, "arguments": event.call.arguments})})
            else:
                start = self._start(event.call.name)
                index = len(self.calls) - 1
                self.calls[index]["function"]["arguments"] = event.call.arguments
                deltas += [start, {"tool_calls": [{"index": index, "function": {"arguments": event.call.arguments}}]}]
        return deltas

    def _start(self, name: str) -> dict[str, Any]:
        call = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": ""}}
        self.calls.append(call)
        head = {"index": len(self.calls) - 1, "id": call["id"], "type": "function"}
        return {"tool_calls": [{**head, "function": {"name": name, "arguments": ""}}]}


class _TagsOrJson:
    """Hermes tags, or a bare JSON call (or array of them) for an output that starts as JSON: small models often
    drop the tags. Which one is decided by the output's first non-blank character."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.held = ""
        self.parser: StreamParser | None = None

    def feed(self, text: str) -> list[Content | Call]:
        if self.parser is None:
            self.held += text
            start = self.held.lstrip()
            if not start:
                return []
            self.parser = StreamParser("json" if start[0] in "{[`" else "hermes", self.names)
            text, self.held = self.held, ""
        return self.parser.feed(text)

    def finish(self) -> list[Content | Call]:
        if self.parser is None:
            return [Content(self.held)] if self.held else []
        return self.parser.finish()


class _DropTags:
    """Content with the given tags taken out, a tag split across pieces included."""

    def __init__(self, tags: tuple[str, ...]) -> None:
        self.tags = tags
        self.held = ""

    def feed(self, text: str) -> str:
        text = self.held + text
        # Hold back a tail that may be the start of a tag, or a whole one whose newline may follow.
        keep = max((k for tag in self.tags for k in range(1, len(tag) + 1) if text.endswith(tag[:k])), default=0)
        text, self.held = text[: len(text) - keep], text[len(text) - keep :]
        for tag in self.tags:
            text = text.replace(tag + "\n", "").replace(tag, "")
        return text

    def finish(self) -> str:
        held, self.held = self.held, ""
        return "" if held in self.tags else held


def _parser(fmt: str, names: tuple[str, ...]) -> StreamParser | _TagsOrJson:
    return _TagsOrJson(names) if fmt == "hermes" else StreamParser(fmt, names)


def _meets_strict(call: ToolCall, strict: dict[str, dict[str, Any]]) -> bool:
    schema = strict.get(call.name)
    if schema is None:
        return True
    import jsonschema

    return bool(jsonschema.validators.validator_for(schema)(schema).is_valid(json.loads(call.arguments)))


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None
