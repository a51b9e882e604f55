"""The Responses API on the real engines (tiny random model) through the openai SDK's `client.responses`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import LiveServer

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Rome"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOL = {"type": "function", "name": "get_weather", "description": "Weather for a city.", "parameters": WEATHER}


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_text_input_gives_a_message_and_usage(client: openai.OpenAI) -> None:
    r = client.responses.create(model="tiny", input="Say hello.", max_output_tokens=8, temperature=0)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == "tiny"
    assert [item.type for item in r.output] == ["message"]
    assert r.usage is not None and r.usage.input_tokens > 3 and 1 <= r.usage.output_tokens <= 8
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.status == ("incomplete" if r.usage.output_tokens == 8 else "completed")
    same = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0
    )
    assert r.output_text == same.choices[0].message.content  # the same serving path, greedy
    with_instructions = client.responses.create(
        model="tiny", input="Say hello.", instructions="Be brief.", max_output_tokens=1
    )
    assert with_instructions.usage and with_instructions.usage.input_tokens > r.usage.input_tokens


def test_required_tool_then_its_result_through_previous_response_id(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model="tiny",
        input="Weather in Rome?",
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=60,
        temperature=1,
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and first.status == "completed"
    assert calls[0].name == "get_weather" and calls[0].call_id.startswith("call_")
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER)
    second = client.responses.create(
        model="tiny",
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"temp": 21}'}],
        tools=[TOOL],  # type: ignore[list-item]
        tool_choice="none",
        max_output_tokens=4,
    )
    assert second.previous_response_id == first.id
    assert not [item for item in second.output if item.type == "function_call"]
    # The earlier turn (question, call) and the result are in the prompt: longer than the question's alone by the
    # call (the 20-odd tokens of its name and arguments at least) and the result.
    alone = client.responses.create(
        model="tiny",
        input="Weather in Rome?",
        tools=[TOOL],
        tool_choice="none",
        max_output_tokens=1,  # type: ignore[list-item]
    )
    assert alone.usage and second.usage
    assert second.usage.input_tokens > alone.usage.input_tokens + 20


def test_stateless_turn_with_the_call_in_the_input(client: openai.OpenAI) -> None:
    items: list[Any] = [
        {"role": "user", "content": "Weather in Rome?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city":"Rome","days":1}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"},
    ]
    r = client.responses.create(model="tiny", input=items, tools=[TOOL], store=False, max_output_tokens=4)  # type: ignore[list-item]
    assert r.store is False and r.output
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)


@pytest.mark.parametrize("tool_choice", ["auto", "required"])
def test_stream_events_follow_the_documented_sequence(client: openai.OpenAI, tool_choice: str) -> None:
    events = list(
        client.responses.create(
            model="tiny",
            input="Weather in Paris?",
            tools=[TOOL],  # type: ignore[list-item]
            tool_choice=tool_choice,  # type: ignore[arg-type]
            parallel_tool_calls=False,
            max_output_tokens=60,
            stream=True,
        )
    )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert [e.sequence_number for e in events] == list(range(len(events)))
    final = events[-1].response  # type: ignore[union-attr]
    texts: dict[str, str] = {}
    args: dict[str, str] = {}
    for e in events:
        if e.type == "response.output_text.delta":
            texts[e.item_id] = texts.get(e.item_id, "") + e.delta
        elif e.type == "response.function_call_arguments.delta":
            args[e.item_id] = args.get(e.item_id, "") + e.delta
    added = [e.item.id for e in events if e.type == "response.output_item.added"]
    done = [e.item.id for e in events if e.type == "response.output_item.done"]
    assert added == done == [item.id for item in final.output]
    for item in final.output:
        if item.type == "message":
            assert texts.get(item.id, "") == item.content[0].text  # type: ignore[union-attr]
        else:
            assert item.type == "function_call" and args[item.id] == item.arguments
            jsonschema.validate(json.loads(item.arguments), WEATHER)
    if tool_choice == "required":
        assert [item.type for item in final.output] == ["function_call"] and final.status == "completed"
    stored = client.responses.retrieve(final.id)
    assert stored.output == final.output


def test_stored_response_get_and_delete(client: openai.OpenAI, server: LiveServer) -> None:
    r = client.responses.create(model="tiny", input="Hi", max_output_tokens=2)
    assert client.responses.retrieve(r.id).id == r.id
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as err:
        client.responses.create(model="tiny", input="Hi", previous_response_id=r.id)
    assert err.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_json_schema_text_format_validates(client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "name": "weather", "schema": WEATHER, "strict": True}
    finished = 0
    for seed_temperature in (1.0, 0.7, 0.3):
        r = client.responses.create(
            model="tiny", input="Weather?", text={"format": fmt}, temperature=seed_temperature, max_output_tokens=60
        )  # type: ignore[call-overload]
        if r.status == "completed":
            jsonschema.validate(json.loads(r.output_text), WEATHER)
            finished += 1
    assert finished >= 1


@pytest.mark.parametrize(
    "body,param",
    [
        ({"input": "x", "tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"input": "x", "reasoning": {"effort": "high", "mode": "pro"}}, "reasoning.mode"),
        ({"input": "x", "tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"input": [{"type": "function_call_output", "call_id": "call_9", "output": "1"}]}, "messages[0].tool_call_id"),
        ({"input": "x", "frobnicate": 1}, "frobnicate"),
    ],
)
def test_bad_requests_get_400_envelopes(server: LiveServer, body: dict[str, Any], param: str) -> None:
    r = httpx.post(f"{server.base_url}/v1/responses", json={"model": "tiny", **body}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
