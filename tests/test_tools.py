"""Tool calls on the real engines (tiny random model) through the openai SDK.

A random model follows no instruction, so whatever it returns under tool_choice "required" or a named function is what
the constrained decoding made of it: every call's arguments must validate against the tool's schema. Its chat template
ignores tools, so these also run the fallback system prompt and the tool turns rendered as text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from tests.conftest import LiveServer

SEEDS = range(3)


def obj(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def tool(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    function = {"name": name, "description": f"The {name} tool.", "parameters": parameters}
    return {"type": "function", "function": function}


TOOLS = {
    "get_weather": tool(
        "get_weather",
        obj(
            {
                "city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
                "unit": {"enum": ["celsius", "fahrenheit"]},
            }
        ),
    ),
    "book": tool(
        "book",
        obj(
            {
                "guest": obj({"name": {"type": "string", "maxLength": 10}, "vip": {"type": "boolean"}}),
                "nights": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 31}, "maxItems": 3},
            }
        ),
    ),
    "now": tool("now", {"type": "object", "properties": {}, "additionalProperties": False}),
}
SCHEMAS = {name: t["function"]["parameters"] for name, t in TOOLS.items()}
MESSAGES = [{"role": "user", "content": "What is the weather in Paris for the next two days?"}]
# What LangChain's bind_tools sends for a pydantic model with one enum field: nothing said of other properties.
PICK = tool(
    "pick_color",
    {
        "properties": {"color": {"description": "The color.", "enum": ["red", "green", "blue"], "type": "string"}},
        "required": ["color"],
        "type": "object",
    },
)
PICK_MESSAGES = [{"role": "user", "content": "Pick colors."}]
MAX_CALLS = 4  # the server's default --max-parallel-tool-calls


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def create(client: openai.OpenAI, stream: bool, **kwargs: Any) -> tuple[str | None, list[dict[str, Any]], str | None]:
    """content, calls (id, name, arguments) and finish reason, from a response or a whole stream."""
    args: dict[str, Any] = {"model": "tiny", "messages": MESSAGES, "max_tokens": 120, **kwargs}
    if not stream:
        choice = client.chat.completions.create(**args).choices[0]
        calls = [
            {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
            for c in choice.message.tool_calls or []
        ]
        return choice.message.content, calls, choice.finish_reason
    content, finish, by_index = "", None, {}
    for chunk in client.chat.completions.create(**args, stream=True):
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        content += delta.content or ""
        finish = chunk.choices[0].finish_reason or finish
        for c in delta.tool_calls or []:
            if c.index not in by_index:  # a call's first delta names it
                assert c.id and c.type == "function" and c.function and c.function.name, c
                by_index[c.index] = {"id": c.id, "name": c.function.name, "arguments": ""}
            else:
                assert c.id is None and (c.function is None or c.function.name is None), "only the first delta names"
            by_index[c.index]["arguments"] += (c.function.arguments if c.function else None) or ""
    assert "<tool_call>" not in content
    return content or None, [by_index[i] for i in sorted(by_index)], finish


def assert_valid(calls: list[dict[str, Any]], names: set[str]) -> None:
    for call in calls:
        assert call["name"] in names, call
        assert call["id"].startswith("call_")
        jsonschema.validate(json.loads(call["arguments"]), SCHEMAS[call["name"]])


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("name", sorted(TOOLS))
def test_named_choice_calls_that_tool_with_valid_arguments(client: openai.OpenAI, name: str, stream: bool) -> None:
    for seed in SEEDS:
        choice = {"type": "function", "function": {"name": name}}
        content, calls, finish = create(client, stream, tools=list(TOOLS.values()), tool_choice=choice, seed=seed)
        assert finish == "tool_calls" and content is None
        assert len(calls) == 1 and calls[0]["name"] == name
        assert_valid(calls, {name})


@pytest.mark.parametrize("stream", [False, True])
def test_required_returns_one_valid_call_when_parallel_calls_are_off(client: openai.OpenAI, stream: bool) -> None:
    seen = set()
    for seed in range(6):
        content, calls, finish = create(
            client, stream, tools=list(TOOLS.values()), tool_choice="required", parallel_tool_calls=False, seed=seed
        )
        assert finish == "tool_calls" and content is None
        assert len(calls) == 1
        assert_valid(calls, set(TOOLS))
        seen.add(calls[0]["name"])
    assert len(seen) >= 2, f"the model always picked {seen}: the choice among tools is not free"


@pytest.mark.parametrize("stream", [False, True])
def test_required_with_parallel_calls_returns_several_valid_calls(client: openai.OpenAI, stream: bool) -> None:
    counts = []
    for seed in range(4):
        tools = [TOOLS["get_weather"], TOOLS["now"]]
        content, calls, finish = create(client, stream, tools=tools, tool_choice="required", seed=seed, max_tokens=200)
        assert content is None and calls and finish in ("tool_calls", "length")
        assert_valid(calls, {"get_weather", "now"})
        assert len({c["id"] for c in calls}) == len(calls)
        counts.append(len(calls))
    assert max(counts) >= 2, counts


def assert_picks(calls: list[dict[str, Any]]) -> None:
    assert 1 <= len(calls) <= MAX_CALLS, calls
    for call in calls:
        assert call["name"] == "pick_color" and call["id"].startswith("call_")
        jsonschema.validate(json.loads(call["arguments"]), PICK["function"]["parameters"])


@pytest.mark.parametrize("stream", [False, True])
def test_required_parallel_calls_end_at_the_configured_number(client: openai.OpenAI, stream: bool) -> None:
    # LangChain's tool_choice "any". Unbounded, the random model made 9 calls (280 tokens) on one of these seeds on
    # vLLM, 6 on OpenVINO.
    for seed in range(16):
        content, calls, finish = create(
            client, stream, messages=PICK_MESSAGES, tools=[PICK], tool_choice="required", seed=seed, max_tokens=300
        )
        assert content is None and finish == "tool_calls", (seed, finish)
        assert_picks(calls)


@pytest.mark.parametrize("stream", [False, True])
def test_forced_calls_cut_by_max_tokens_keep_the_calls_they_completed(client: openai.OpenAI, stream: bool) -> None:
    # A call of pick_color is 30-45 tokens of the tiny model: 50 fits one, and cuts the next one the model begins.
    finishes = []
    for seed in range(6):
        content, calls, finish = create(
            client, stream, messages=PICK_MESSAGES, tools=[PICK], tool_choice="required", seed=seed, max_tokens=50
        )
        assert content is None, (seed, content)
        assert_picks(calls)
        finishes.append(finish)
    assert "length" in finishes, finishes  # some were cut (and say so), and their complete calls came back
    named = {"type": "function", "function": {"name": "pick_color"}}
    for seed in range(3):
        content, calls, finish = create(
            client, stream, messages=PICK_MESSAGES, tools=[PICK], tool_choice=named, seed=seed, max_tokens=50
        )
        assert content is None and finish == "tool_calls" and len(calls) == 1, (seed, content, finish)
        assert_picks(calls)


@pytest.mark.parametrize("stream", [False, True])
def test_none_never_calls(client: openai.OpenAI, stream: bool) -> None:
    for seed in SEEDS:
        content, calls, finish = create(
            client, stream, tools=list(TOOLS.values()), tool_choice="none", seed=seed, max_tokens=40
        )
        assert calls == [] and finish in ("stop", "length")


def test_round_trip_call_result_answer(client: openai.OpenAI, server: LiveServer) -> None:
    tools = [TOOLS["get_weather"]]
    first = client.chat.completions.create(
        model="tiny", messages=MESSAGES, tools=tools, tool_choice="required", parallel_tool_calls=False, seed=0
    )
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    history = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "clear"}'},
    ]
    final = client.chat.completions.create(model="tiny", messages=history, tools=tools, max_tokens=16, seed=0)
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")
    # The call and its result are in the prompt: it is longer than the question's by at least their tokens.
    assert final.usage and first.usage
    assert final.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens
    answer = client.chat.completions.create(model="tiny", messages=history, tools=tools, tool_choice="none", seed=0)
    assert not answer.choices[0].message.tool_calls


def test_tool_errors_are_400s(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            tools=[TOOLS["now"]],
            tool_choice={"type": "function", "function": {"name": "missing"}},
        )
    assert err.value.body["param"] == "tool_choice"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="tiny", messages=[*MESSAGES, {"role": "tool", "tool_call_id": "call_none", "content": "1"}]
        )
    assert "call_none" in err.value.message


# A template in the Hermes style: it renders the tools itself, so no fallback system prompt is added.
HERMES_TEMPLATE = (
    "{% if tools %}<|system|>\nTools:<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>\nCall them as "
    '<tool_call>{"name": ..., "arguments": ...}</tool_call><|end|>\n{% endif %}{% for m in messages %}<|{{ m.role }}|>'
    "\n{{ m.content or '' }}{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>"
    "{% endfor %}<|end|>\n{% endfor %}<|assistant|>\n"
)


def test_a_template_that_renders_tools_gets_them_as_tools(client: openai.OpenAI) -> None:
    def prompt_tokens(**kwargs: Any) -> int:
        r = client.chat.completions.create(
            model="tiny", messages=MESSAGES, max_tokens=1, extra_body={"chat_template": HERMES_TEMPLATE}, **kwargs
        )
        assert r.usage is not None
        return r.usage.prompt_tokens

    plain = prompt_tokens()
    with_tools = prompt_tokens(tools=[TOOLS["get_weather"]], tool_choice="none")
    assert with_tools == plain  # "none": the template gets no tools
    rendered = prompt_tokens(tools=[TOOLS["get_weather"]])
    # The template's own listing of the tool (about 320 tokens of this tokenizer), and not the fallback system prompt,
    # which alone is about 500.
    assert plain + 250 < rendered < plain + 450
    content, calls, finish = create(
        client,
        False,
        tools=[TOOLS["get_weather"]],
        tool_choice="required",
        parallel_tool_calls=False,
        seed=0,
        extra_body={"chat_template": HERMES_TEMPLATE},
    )
    assert finish == "tool_calls" and len(calls) == 1
    assert_valid(calls, {"get_weather"})
