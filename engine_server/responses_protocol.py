"""Wire schemas of the Responses API (POST /v1/responses): the request, its input items and its tools.

Pure pydantic. Input items and tools are validated one by one by their `type`, so a bad one gets a 400 naming its
own path (`input.3.call_id`, `tools.4.type`) rather than every member of a union.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator

from engine_server.protocol import FieldError, PositiveInt, Strict

# Tools OpenAI runs on its side (or whose calls only its models write): a local server cannot run them, so they are
# accepted, echoed in the response's `tools`, and not offered to the model.
HOSTED_TOOLS = (
    "web_search",
    "web_search_2025_08_26",
    "web_search_preview",
    "web_search_preview_2025_03_11",
    "file_search",
    "code_interpreter",
    "computer",
    "computer_use",
    "computer_use_preview",
    "image_generation",
    "mcp",
    "local_shell",
    "shell",
    "apply_patch",
    "tool_search",
    "programmatic_tool_calling",
)
# Every documented `include` value: each asks for data of an item this server never produces (hosted tool calls,
# reasoning items, images) or, for logprobs, for what output_text already carries (an empty list).
INCLUDABLE = (
    "file_search_call.results",
    "web_search_call.results",
    "web_search_call.action.sources",
    "message.input_image.image_url",
    "computer_call_output.output.image_url",
    "code_interpreter_call.outputs",
    "reasoning.encrypted_content",
    "message.output_text.logprobs",
)


class InputText(Strict):
    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class MessageItem(Strict):
    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[InputText]
    phase: Literal["commentary", "final_answer"] | None = None  # a label of assistant messages; the text is the same
    id: str | None = None
    status: str | None = None


class FunctionCallItem(Strict):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    namespace: str | None = None
    id: str | None = None
    status: str | None = None


class CustomToolCallItem(Strict):
    type: Literal["custom_tool_call"]
    call_id: str
    name: str
    input: str
    namespace: str | None = None
    id: str | None = None
    status: str | None = None


class OutputText(Strict):
    type: Literal["input_text", "output_text"]
    text: str


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output", "custom_tool_call_output"]
    call_id: str
    output: str | list[OutputText]
    name: str | None = None
    namespace: str | None = None
    id: str | None = None
    status: str | None = None

    @property
    def text(self) -> str:
        return self.output if isinstance(self.output, str) else "".join(p.text for p in self.output)


class ReasoningText(Strict):
    type: Literal["summary_text", "reasoning_text", "text"]
    text: str


class ReasoningItem(Strict):
    type: Literal["reasoning"]
    summary: list[ReasoningText] = []
    content: list[ReasoningText] | None = None
    encrypted_content: str | None = None
    id: str | None = None
    status: str | None = None


InputItem = MessageItem | FunctionCallItem | CustomToolCallItem | FunctionCallOutputItem | ReasoningItem
INPUT_ITEMS: dict[str, type[Strict]] = {
    "message": MessageItem,
    "function_call": FunctionCallItem,
    "custom_tool_call": CustomToolCallItem,
    "function_call_output": FunctionCallOutputItem,
    "custom_tool_call_output": FunctionCallOutputItem,
    "reasoning": ReasoningItem,
}


class FunctionTool(Strict):
    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None
    defer_loading: bool | None = None  # a tool_search hint: with no tool search here, every tool is offered


class GrammarFormat(Strict):
    type: Literal["grammar"]
    syntax: Literal["lark", "regex"]
    definition: str


class FreeTextFormat(Strict):
    type: Literal["text"]


class CustomTool(Strict):
    type: Literal["custom"]
    name: str
    description: str | None = None
    format: GrammarFormat | FreeTextFormat | None = None
    defer_loading: bool | None = None


class NamespaceTool(Strict):
    type: Literal["namespace"]
    name: str
    description: str | None = None
    tools: Annotated[list[FunctionTool | CustomTool], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _by_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("tools"), list):
            kinds: dict[str, type[Strict]] = {"function": FunctionTool, "custom": CustomTool}
            data = {**data, "tools": [_typed(t, f"tools.{i}", kinds, None) for i, t in enumerate(data["tools"])]}
        return data


class HostedTool(Strict):
    model_config = ConfigDict(extra="allow")  # its settings are echoed back as sent
    type: Literal[HOSTED_TOOLS]  # type: ignore[valid-type]


Tool = FunctionTool | NamespaceTool | CustomTool | HostedTool
TOOLS: dict[str, type[Strict]] = {
    "function": FunctionTool,
    "namespace": NamespaceTool,
    "custom": CustomTool,
    **{kind: HostedTool for kind in HOSTED_TOOLS},
}


class NamedChoice(Strict):
    type: Literal["function", "custom"]
    name: str


class HostedChoice(Strict):
    model_config = ConfigDict(extra="allow")
    type: Literal[HOSTED_TOOLS]  # type: ignore[valid-type]


class TextFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(Strict):
    format: TextFormat | None = None
    # The model has no verbosity control: any of the three is accepted, echoed, and changes nothing.
    verbosity: Literal["low", "medium", "high"] | None = None


Summary = Literal["auto", "concise", "detailed"]


class Reasoning(Strict):
    # For a model without reasoning these change nothing: echoed in the response, no reasoning items produced.
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"] | None = None
    summary: Summary | None = None
    generate_summary: Summary | None = None  # OpenAI's deprecated name of summary
    context: Literal["auto", "current_turn", "all_turns"] | None = None


class ResponsesStreamOptions(Strict):
    include_obfuscation: bool | None = None  # no obfuscation padding is added either way


class ResponsesRequest(Strict):
    model: str | None = None
    input: str | list[InputItem]
    instructions: str | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedChoice | HostedChoice | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    reasoning: Reasoning | None = None
    include: list[Literal[INCLUDABLE]] | None = None  # type: ignore[valid-type]
    max_output_tokens: PositiveInt | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stream: bool = False
    stream_options: ResponsesStreamOptions | None = None
    store: bool = True
    previous_response_id: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    # Hints that change no output here: a cache routing key, the caller's own labels, an abuse-tracking id.
    prompt_cache_key: str | None = None
    client_metadata: dict[str, str] | None = None
    safety_identifier: str | None = None
    # One service tier here; every documented one is answered by it.
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    # Accepted only at the value that asks for nothing this server lacks.
    truncation: Literal["disabled"] | None = None
    background: Literal[False] | None = None

    @model_validator(mode="before")
    @classmethod
    def _by_type(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if isinstance(data.get("input"), list):
            data["input"] = [_typed(item, f"input.{i}", INPUT_ITEMS, "message") for i, item in enumerate(data["input"])]
        if isinstance(data.get("tools"), list):
            data["tools"] = [_typed(tool, f"tools.{i}", TOOLS, None) for i, tool in enumerate(data["tools"])]
        return data


def _typed(raw: Any, path: str, kinds: dict[str, type[Strict]], default: str | None) -> Any:
    """One input item or tool, validated as the model its `type` names; errors name its own path."""
    if not isinstance(raw, dict):
        return raw  # the field's own validation names it
    kind = raw.get("type", default)
    model = kinds.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(sorted(kinds))
        raise FieldError(f"{path}.type", f"Invalid value for '{path}.type': {kind!r} is not one of {known}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        # With unions pydantic reports every member; the deepest error is the real one. Member names (a class,
        # "str", "list[...]") are left out of the path.
        error = max(exc.errors(), key=lambda e: len(e["loc"]))
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):
            param = f"{path}.{cause.param}"
            raise FieldError(param, str(cause).replace(f"'{cause.param}'", f"'{param}'")) from None
        parts = [str(p) for p in error["loc"] if not (str(p) == "str" or "[" in str(p) or str(p)[:1].isupper())]
        where = ".".join([path, *parts])
        reason = "is not a field this server accepts" if error["type"] == "extra_forbidden" else error["msg"]
        raise FieldError(where, f"Invalid value for '{where}': {reason}") from None
