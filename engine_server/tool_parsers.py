"""Tool calls out of a model's generated text, whole or streamed, for chat completions with `tools`.

Each format is a small incremental parser. parse() is the stream parser run over the whole text, so a streamed response
and a non-streamed one always agree. Anything that is not a well-formed call of a known tool stays content, verbatim.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # compact JSON text of an object


@dataclass(frozen=True)
class Content:
    text: str


@dataclass(frozen=True)
class Call:
    call: ToolCall


Event: TypeAlias = Content | Call


@dataclass
class Parsed:
    content: str | None
    calls: list[ToolCall]


FORMATS = ("hermes", "llama3_json", "pythonic", "json")

PYTHON_TAG = "<|python_tag|>"
PYTHON_START = "<|python_start|>"
PYTHON_END = "<|python_end|>"
FENCE = "```"
# The instruction Llama 3.2 / 4 pythonic templates give: "[func_name1(params_name1=params_value1, ...".
_PYTHONIC_TEMPLATE = re.compile(r"\[\s*func_name\d*\s*\(")


def detect_format(chat_template: str | None) -> str:
    template = chat_template or ""
    if "<tool_call>" in template:
        return "hermes"
    # Before the Llama checks: pythonic Llama templates also carry the Llama-3 headers and mention JSON.
    if _PYTHONIC_TEMPLATE.search(template):
        return "pythonic"
    llama_json = "<|start_header_id|>" in template and "parameters" in template and "json" in template.lower()
    if PYTHON_TAG in template or llama_json:
        return "llama3_json"
    # The fallback system prompt for templates that ignore tools asks for hermes tags.
    return "hermes"


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _to_call(obj: Any, tool_names: Collection[str]) -> ToolCall | None:
    """The call `obj` describes, or None unless it is a well-formed call of a known tool."""
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    # A tool without parameters may be called with no arguments at all.
    args = obj["arguments"] if "arguments" in obj else obj.get("parameters", {})
    if isinstance(args, str):  # some models send the arguments object as a JSON string
        args = _loads(args)
    if not isinstance(name, str) or name not in tool_names or not isinstance(args, dict):
        return None
    try:
        # allow_nan=False: NaN and Infinity are not JSON, and a client's json parser may reject them.
        arguments = json.dumps(args, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        return None
    return ToolCall(name, arguments)


class _Format(Protocol):
    """What every format does: text in, events out, as early as they are certain."""

    def feed(self, text: str) -> list[Event]: ...

    def finish(self) -> list[Event]: ...


def _content(text: str) -> list[Event]:
    return [Content(text)] if text else []


class _Hermes(_Format):
    """`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks anywhere in the text."""

    OPEN = "<tool_call>"
    CLOSE = "</tool_call>"

    def __init__(self, tool_names: Collection[str]) -> None:
        self.tool_names = tool_names
        self.buf = ""  # held back: a possible start of OPEN, or the inside of an open block
        self.inside = False
        self.search_from = 0  # where CLOSE may start in buf, so a block streamed in small pieces is scanned once

    def feed(self, text: str) -> list[Event]:
        self.buf += text
        out: list[Event] = []
        while True:
            if not self.inside:
                start = self.buf.find(self.OPEN)
                if start < 0:
                    # Hold back only an end of the text that OPEN could still begin with.
                    held = next((n for n in range(len(self.OPEN) - 1, 0, -1) if self.buf.endswith(self.OPEN[:n])), 0)
                    out += _content(self.buf[: len(self.buf) - held])
                    self.buf = self.buf[len(self.buf) - held :]
                    return out
                out += _content(self.buf[:start])
                self.buf = self.buf[start + len(self.OPEN) :]
                self.inside, self.search_from = True, 0
            else:
                end = self.buf.find(self.CLOSE, self.search_from)
                if end < 0:
                    self.search_from = max(0, len(self.buf) - len(self.CLOSE) + 1)
                    return out
                call = _to_call(_loads(self.buf[:end]), self.tool_names)
                block_end = end + len(self.CLOSE)
                out.append(Call(call) if call else Content(self.OPEN + self.buf[:block_end]))
                self.buf = self.buf[block_end:]
                self.inside = False

    def finish(self) -> list[Event]:
        rest = (self.OPEN if self.inside else "") + self.buf  # an unclosed block is content
        self.buf, self.inside = "", False
        return _content(rest)


class _JsonCalls(_Format):
    """Call objects filling the whole output: llama3_json (`;`-separated, after an optional python tag) or json (an
    array or a single object, optionally fenced). Each call is emitted as soon as its object closes; at the first
    thing that breaks the structure, everything not yet consumed as calls becomes content."""

    def __init__(self, tool_names: Collection[str], *, llama: bool) -> None:
        self.tool_names = tool_names
        self.llama = llama
        self.buf = ""
        self.pos = 0  # next character to scan
        self.keep = 0  # start of what becomes content if the structure breaks
        self.phase = "lead"
        self.failed = self.fenced = self.in_array = self.called = self.in_str = self.escaped = False
        self.obj_start = self.depth = 0
        self.out: list[Event] = []

    def feed(self, text: str) -> list[Event]:
        if self.failed:
            return _content(text)
        self.buf += text
        while not self.failed and self.pos < len(self.buf) and self._step():
            pass
        out, self.out = self.out, []
        return out

    def finish(self) -> list[Event]:
        rest, self.buf, self.pos, self.keep = self.buf[self.keep :], "", 0, 0
        # After calls, whitespace (or a closing fence cut off by max_tokens) is no content.
        return [] if self.called and not rest.strip() else _content(rest)

    def _fail(self) -> bool:
        self.out += _content(self.buf[self.keep :])
        self.buf, self.pos, self.keep, self.failed = "", 0, 0, True
        return False

    def _consumed(self) -> None:
        """What has been scanned is markup of well-formed calls: it never becomes content."""
        self.buf, self.pos, self.keep = self.buf[self.pos :], 0, 0

    def _literal(self, token: str, then: str, *, optional: bool = False) -> bool:
        """Consume `token` (if there, when optional) and go on to phase `then`; False while more text is needed."""
        rest = self.buf[self.pos : self.pos + len(token)]
        if rest == token:
            self.pos += len(token)
        elif token.startswith(rest):
            return False
        elif not optional:
            return self._fail()
        self.phase = then
        return True

    def _step(self) -> bool:
        """Advance by one piece of structure; False when more text is needed (or the structure broke)."""
        if self.phase == "object":
            return self._scan_object()
        if self.phase == "fence_lang":  # "```json", or a bare "```"
            return self._literal("json", "first", optional=True)
        while self.buf[self.pos].isspace():
            self.pos += 1
            if self.pos == len(self.buf):
                return False
        char = self.buf[self.pos]
        if self.phase == "lead":
            self.fenced = not self.llama and char == "`"
            token = PYTHON_TAG if self.llama else FENCE
            return self._literal(token, "fence_lang" if self.fenced else "first", optional=not self.fenced)
        if self.phase in ("first", "item"):
            if char == "[" and self.phase == "first" and not self.llama:
                self.in_array = True
                return self._literal("[", "item")
            if char != "{":
                return self._fail()
            self.obj_start, self.depth, self.in_str, self.escaped = self.pos, 0, False, False
            self.phase = "object"
            return True
        if self.phase == "after" and (self.llama or self.in_array):
            if char == (";" if self.llama else ","):
                return self._literal(char, "item")
            if char != "]" or self.llama:
                return self._fail()
            self.pos += 1
            self._consumed()
        if self.phase == "after":
            self.phase = "end"
            return True
        # "end": only the closing fence, if one was opened, and whitespace may follow the calls.
        if not self.fenced:
            return self._fail()
        if not self._literal(FENCE, "end"):
            return False
        self._consumed()
        self.fenced = False
        return True

    def _scan_object(self) -> bool:
        buf = self.buf
        while self.pos < len(buf):
            char = buf[self.pos]
            self.pos += 1
            if self.in_str:
                if self.escaped:
                    self.escaped = False
                elif char == "\\":
                    self.escaped = True
                elif char == '"':
                    self.in_str = False
            elif char == '"':
                self.in_str = True
            elif char in "{[":
                self.depth += 1
            elif char in "}]":
                self.depth -= 1
                if self.depth == 0:
                    call = _to_call(_loads(buf[self.obj_start : self.pos]), self.tool_names)
                    if call is None:
                        return self._fail()
                    self.out.append(Call(call))
                    self.called = True
                    self._consumed()
                    self.phase = "after"
                    return True
        return False


# What a pythonic call list begins with, after an optional <|python_start|>: "[name(".
_PYTHONIC_HEAD = re.compile(r"\[\s*([A-Za-z_]\w*\s*(\()?)?")


def _pythonic_head(text: str) -> bool | None:
    """Whether text begins like a pythonic call list; None while it is too short to tell."""
    rest = text.lstrip()
    if PYTHON_START.startswith(rest):
        return None
    rest = rest.removeprefix(PYTHON_START).lstrip()
    match = _PYTHONIC_HEAD.match(rest)
    if match is None:
        return None if not rest else False
    return True if match.group(2) else (None if match.end() == len(rest) else False)


class _Pythonic(_Format):
    """`[get_weather(city="Paris"), ...]`: held whole while it may be a call list, parsed at the end with ast."""

    def __init__(self, tool_names: Collection[str]) -> None:
        self.tool_names = tool_names
        self.buf = ""
        self.maybe_calls: bool | None = None

    def feed(self, text: str) -> list[Event]:
        if self.maybe_calls is False:
            return _content(text)
        self.buf += text
        if self.maybe_calls is None:
            self.maybe_calls = _pythonic_head(self.buf)
            if self.maybe_calls is False:
                text, self.buf = self.buf, ""
                return _content(text)
        return []

    def finish(self) -> list[Event]:
        text, self.buf = self.buf, ""
        calls = self._calls(text)
        return [Call(call) for call in calls] if calls else _content(text)

    def _calls(self, text: str) -> list[ToolCall] | None:
        body = text.strip().removeprefix(PYTHON_START).removesuffix(PYTHON_END).strip()
        try:
            tree = ast.parse(body, mode="eval").body
            calls = [self._call(node) for node in tree.elts] if isinstance(tree, ast.List) else []
        except (SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
            return None
        valid = [call for call in calls if call is not None]
        return valid if valid and len(valid) == len(calls) else None

    def _call(self, node: ast.expr) -> ToolCall | None:
        # Keyword arguments only: a positional one has no parameter name to put it under.
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
            return None
        if any(keyword.arg is None for keyword in node.keywords):  # **kwargs
            return None
        args = {keyword.arg: ast.literal_eval(keyword.value) for keyword in node.keywords}
        return _to_call({"name": node.func.id, "arguments": args}, self.tool_names)


class StreamParser:
    def __init__(self, fmt: str, tool_names: Collection[str]) -> None:
        names = frozenset(tool_names)
        if fmt == "hermes":
            self._format: _Format = _Hermes(names)
        elif fmt in ("llama3_json", "json"):
            self._format = _JsonCalls(names, llama=fmt == "llama3_json")
        elif fmt == "pythonic":
            self._format = _Pythonic(names)
        else:
            raise ValueError(f"unknown tool call format {fmt!r}; expected one of {', '.join(FORMATS)}")

    def feed(self, text: str) -> list[Event]:
        return self._format.feed(text)

    def finish(self) -> list[Event]:
        """Flushes what is held back at the end of the output."""
        return self._format.finish()


def parse(fmt: str, text: str, tool_names: Collection[str]) -> Parsed:
    parser = StreamParser(fmt, tool_names)
    events = parser.feed(text) + parser.finish()
    content = "".join(event.text for event in events if isinstance(event, Content)).strip()
    return Parsed(content or None, [event.call for event in events if isinstance(event, Call)])
