"""Wire schemas: the OpenAI request bodies we accept, with the OPEA aliases. Pure pydantic, no engine imports.

Unknown fields are refused (400 naming the field) rather than silently ignored; OpenAI fields we cannot honor
are declared so that their null/default values pass and anything else is refused with a clear message.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine_server.config import MAX_SPECULATIVE_TOKENS

ROLES = ("system", "user", "assistant", "tool", "developer")
MAX_N = 16
MAX_TOP_LOGPROBS = 20


class FieldError(ValueError):
    """A validation failure that knows which request field it is about."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class CalledFunction(Strict):
    name: str
    arguments: str  # JSON text of an object, as OpenAI sends it back


class MessageToolCall(Strict):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class ChatMessage(Strict):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[MessageToolCall] | None = None
    # What OpenAI's own assistant messages carry, sent back as they came in a conversation: output metadata that
    # says nothing to the model (a refusal's text is the message's text).
    refusal: str | None = None
    annotations: list[Any] | None = None
    audio: None = None
    function_call: None = None
    # An assistant turn's reasoning as this server (vLLM, DeepSeek: reasoning_content; llama-server: reasoning)
    # returned it; templates that render earlier reasoning (Qwen3's) read reasoning_content.
    reasoning_content: str | None = None
    reasoning: str | None = None


class JsonSchemaFormat(Strict):
    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: bool | None = None


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise FieldError("response_format", "response_format of type json_schema needs a 'json_schema' object")
        return self


class FunctionDef(Strict):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(Strict):
    type: Literal["function"]
    function: FunctionDef


class FunctionName(Strict):
    name: str


class NamedToolChoice(Strict):
    type: Literal["function"]
    function: FunctionName


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class StreamOptions(Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False


PositiveInt = Annotated[int, Field(ge=1)]


class SamplingFields(Strict):
    """Sampling fields shared by /v1/chat/completions and /v1/completions."""

    model: str | None = None
    max_tokens: PositiveInt | None = None
    max_new_tokens: PositiveInt | None = None  # OPEA / TGI alias of max_tokens
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    typical_p: Annotated[float, Field(gt=0, le=1)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[Annotated[int, Field(ge=0)]] | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0)] = 0
    skip_special_tokens: bool = True
    # Speculative decoding for this request (vLLM-style extra fields; openvino with --prompt-lookup only).
    num_speculative_tokens: Annotated[int, Field(ge=0, le=MAX_SPECULATIVE_TOKENS)] | None = None
    prompt_lookup_max_ngram: PositiveInt | None = None
    response_format: ResponseFormat | None = None
    stream: bool | None = None
    streaming: bool | None = None  # OPEA alias of stream
    stream_options: StreamOptions | None = None
    user: str | None = None
    # OpenAI fields this server cannot honor: accepted only at their null value.
    logit_bias: dict[str, float] | None = None
    best_of: int | None = None
    functions: list[Any] | None = None
    function_call: Any = None

    @model_validator(mode="after")
    def _check_shared(self) -> SamplingFields:
        if self.typical_p is not None and self.typical_p != 1.0:
            raise FieldError("typical_p", "typical_p is not supported by this server's samplers; omit it or send 1.0")
        if self.logit_bias:
            raise FieldError("logit_bias", "logit_bias is not supported by this server")
        if self.functions:
            raise FieldError("functions", "functions (deprecated by OpenAI) is not supported: send 'tools'")
        if self.function_call not in (None, "none"):
            raise FieldError(
                "function_call", "function_call (deprecated by OpenAI) is not supported: send 'tool_choice'"
            )
        if self.n > 1 and self.temperature == 0:
            raise FieldError("n", "n > 1 needs sampling: with temperature 0 every choice would be the same text")
        if self.best_of not in (None, self.n):
            raise FieldError("best_of", "best_of is not supported by this server; use n")
        if self.stop_token_ids and len(self.stop_token_ids) > 64:
            raise FieldError("stop_token_ids", "stop_token_ids takes at most 64 ids")
        stops = [self.stop] if isinstance(self.stop, str) else self.stop or []
        if len(stops) > 64 or any(s == "" for s in stops):
            raise FieldError("stop", "stop takes at most 64 non-empty strings")
        return self

    @property
    def is_stream(self) -> bool:
        return bool(self.stream if self.stream is not None else self.streaming)

    @property
    def stop_list(self) -> tuple[str, ...]:
        if self.stop is None:
            return ()
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class ChatCompletionRequest(SamplingFields):
    # A plain string is the reference service's form: a raw prompt, no chat template, text-completion answer.
    messages: str | list[ChatMessage]
    max_completion_tokens: PositiveInt | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    tools: list[Tool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool = True

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if isinstance(self.messages, str) and not self.messages:
            raise FieldError("messages", "messages must not be empty")
        if isinstance(self.messages, list) and not self.messages:
            raise FieldError("messages", "messages must contain at least one message")
        if self.top_logprobs and not self.logprobs:
            raise FieldError("top_logprobs", "top_logprobs needs logprobs set to true")
        check_tools(self)
        return self

    @property
    def max_output_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens or self.max_new_tokens

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


def check_tools(req: ChatCompletionRequest) -> None:
    """What a tools request must satisfy beyond its field types; every failure names the field at fault."""
    tools = req.tools or []
    names = [t.function.name for t in tools]
    if len(set(names)) < len(names):
        raise FieldError("tools", "tools has two functions of the same name")
    for i, tool in enumerate(tools):
        if tool.function.parameters is not None:
            problem = schema_problem(tool.function.parameters)
            if tool.function.parameters.get("type", "object") != "object":
                problem = "a function's parameters are an object: its schema's type must be 'object'"
            if problem:
                raise FieldError(f"tools[{i}].function.parameters", f"not a valid JSON schema: {problem}")
    choice = req.tool_choice
    if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise FieldError("tool_choice", f"tool_choice names the function '{choice.function.name}', not in tools")
    if choice == "required" and not tools:
        raise FieldError("tool_choice", "tool_choice 'required' needs at least one tool in tools")
    uses_tools = bool(tools) and choice != "none"
    fmt = req.response_format
    if uses_tools and fmt is not None and fmt.type != "text":
        raise FieldError(
            "response_format",
            "response_format constrains the whole output, so the model could not call a tool: send one of "
            "response_format and tools, or tool_choice 'none'",
        )
    if isinstance(req.messages, str):
        if tools:
            raise FieldError("tools", "tools need 'messages' as a list of messages; a string is a raw prompt")
        return
    call_ids: set[str] = set()
    for i, m in enumerate(req.messages):
        if m.tool_calls and m.role != "assistant":
            raise FieldError(f"messages[{i}].tool_calls", "only assistant messages carry tool_calls")
        for call in m.tool_calls or []:
            call_ids.add(call.id)
            if not isinstance(_json_object(call.function.arguments), dict):
                raise FieldError(
                    f"messages[{i}].tool_calls", f"the arguments of call '{call.id}' are not a JSON object"
                )
        if m.role == "tool" and m.tool_call_id not in call_ids:
            raise FieldError(
                f"messages[{i}].tool_call_id",
                f"tool message answers the call id {m.tool_call_id!r}, which no earlier assistant message made",
            )


def schema_problem(schema: dict[str, Any]) -> str | None:
    """Why a JSON schema is not valid (checked against its metaschema), or None."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        return exc.message
    return None


def _json_object(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    echo: bool = False
    suffix: str | None = None

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        if not prompts or any(p == "" for p in prompts):
            raise FieldError("prompt", "prompt must be a non-empty string or a non-empty list of non-empty strings")
        if self.echo:
            raise FieldError("echo", "echo is not supported by this server")
        if self.suffix:
            raise FieldError("suffix", "suffix is not supported by this server")
        return self

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    @property
    def max_output_tokens(self) -> int | None:
        return self.max_tokens or self.max_new_tokens

    @property
    def num_logprobs(self) -> int | None:
        return self.logprobs
