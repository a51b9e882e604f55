"""Wire schemas of the Anthropic Messages API, as Claude Code and the anthropic SDKs send them. Pure pydantic.

Unknown fields are refused (400 naming the field). Hints that change no output here (cache_control, metadata,
the anthropic-beta features Claude Code asks for) are accepted; see docs/anthropic.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from engine_server.protocol import PositiveInt


class Open(BaseModel):
    """A part of the request whose extra fields say nothing to a local model (citations, cache scopes)."""

    model_config = ConfigDict(extra="allow")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CacheControl(Open):
    type: Literal["ephemeral"] = "ephemeral"
    ttl: str | None = None


class TextBlock(Strict):
    type: Literal["text"]
    text: str
    cache_control: CacheControl | None = None
    citations: list[Any] | None = None


class MediaBlock(Strict):
    """An image or a document: parsed so that the refusal names what the model cannot read."""

    type: Literal["image", "document"]
    source: dict[str, Any]
    cache_control: CacheControl | None = None
    title: str | None = None
    context: str | None = None
    citations: Any = None


class ToolUseBlock(Strict):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    caller: Any = None


class ToolResultBlock(Strict):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[TextBlock | MediaBlock] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(Strict):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(Strict):
    type: Literal["redacted_thinking"]
    data: str


Block = Annotated[
    TextBlock | MediaBlock | ToolUseBlock | ToolResultBlock | ThinkingBlock | RedactedThinkingBlock,
    Field(discriminator="type"),
]


class Message(Strict):
    # "system" turns inside messages: what Claude Code sends for context that arrives mid-conversation.
    role: Literal["user", "assistant", "system"]
    content: str | list[Block]


class Tool(Strict):
    # A client tool; Anthropic's server tools (web_search_*, code_execution_*, ...) have a dated type and no schema.
    type: Literal["custom"] | None = None
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: str | None = None
    input_schema: dict[str, Any]
    cache_control: CacheControl | None = None
    strict: bool | None = None
    eager_input_streaming: bool | None = None
    defer_loading: bool | None = None
    input_examples: list[Any] | None = None


class ToolChoice(Strict):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class Thinking(Strict):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = None
    display: str | None = None


class OutputFormat(Strict):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Strict):
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class ContextEdit(Open):
    type: str


class ContextManagement(Strict):
    edits: list[ContextEdit] = []


class Metadata(Strict):
    user_id: str | None = None


class CountTokensRequest(Strict):
    model: str | None = None
    messages: Annotated[list[Message], Field(min_length=1)]
    system: str | list[TextBlock] | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    thinking: Thinking | None = None
    output_config: OutputConfig | None = None
    context_management: ContextManagement | None = None
    cache_control: CacheControl | None = None  # automatic prompt caching: the prefix cache does it anyway


class MessagesRequest(CountTokensRequest):
    max_tokens: PositiveInt
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: Annotated[float, Field(ge=0, le=1)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=0)] | None = None
    metadata: Metadata | None = None
    service_tier: Literal["auto", "standard_only"] | None = None
