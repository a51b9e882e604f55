"""How tools reach the chat template and how the output comes back as calls (engine_server/tools.py), on a
scripted engine through the HTTP layer: the model's own format read in "auto", whole and streamed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import jinja2
import pytest
from starlette.testclient import TestClient

from backends.base import CompletionDelta, GenerateRequest, StepOutput
from engine_server.app import create_app
from engine_server.config import Config
from engine_server.protocol import ChatCompletionRequest
from engine_server.tools import ChoiceTools, plan_chat, probe_template
from tests.fake_engine import FakeEngine

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
    "required": ["city"],
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "now"}},
]
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>'
HERMES_TEMPLATE = (
    "{% if tools %}<tools>{% for t in tools %}{{ t | tojson }}{% endfor %}</tools>Call with <tool_call>{}</tool_call>"
    "{% endif %}{% for m in messages %}<|{{ m.role }}|>{{ m.content or '' }}{% for c in m.tool_calls or [] %}"
    "<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}{% endfor %}<|assistant|>"
)
PLAIN_TEMPLATE = "{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}<|assistant|>"


def jinja_render(template: str) -> Any:
    env = jinja2.Environment()

    def render(messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> str:
        return env.from_string(template).render(messages=messages, tools=kwargs.get("tools"))

    return render


def request(**body: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"messages": ASK, **body})


def test_probe_reads_the_format_the_template_teaches_or_none() -> None:
    assert probe_template(jinja_render(HERMES_TEMPLATE)) == "hermes"
    assert probe_template(jinja_render(PLAIN_TEMPLATE)) is None


def test_a_template_that_takes_tools_gets_them_and_the_tool_turns_as_they_are() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Rome"}'}}
    history = [
        *ASK,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "9"},
    ]
    messages, kwargs, plan = plan_chat(request(messages=history, tools=TOOLS), "hermes", "auto", 4)
    assert kwargs["tools"][0]["function"]["name"] == "get_weather"
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Rome"}  # objects, as templates take them
    assert plan is not None and plan.mode == "auto" and plan.fmt == "hermes"
    text = jinja_render(HERMES_TEMPLATE)(messages, kwargs)
    assert '"name": "get_weather"' in text and '<tool_call>{"arguments": {"city": "Rome"}' in text


def test_a_template_that_ignores_tools_gets_them_in_a_system_prompt_and_the_turns_as_text() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": "{}"}}
    history = [
        {"role": "system", "content": "Be kind."},
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "noon"},
    ]
    messages, kwargs, plan = plan_chat(request(messages=history, tools=TOOLS), None, "auto", 4)
    assert kwargs == {} and plan is not None and plan.fmt == "hermes"
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"].startswith("Be kind.\n\nYou can call these functions")
    assert '"name": "get_weather"' in messages[0]["content"] and "<tool_call>" in messages[0]["content"]
    assert messages[2]["content"] == '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'
    assert messages[3]["content"] == "<tool_response>\nnoon\n</tool_response>"


def test_required_and_named_hold_the_engine_to_a_schema() -> None:
    _, _, required = plan_chat(request(tools=TOOLS, tool_choice="required", parallel_tool_calls=False), None, "auto", 4)
    assert required is not None and required.json_schema is not None
    assert required.json_schema["maxItems"] == 1 and required.json_schema["minItems"] == 1
    names = [branch["properties"]["name"]["const"] for branch in required.json_schema["items"]["anyOf"]]
    assert names == ["get_weather", "now"]
    named = {"type": "function", "function": {"name": "get_weather"}}
    _, _, plan = plan_chat(request(tools=TOOLS, tool_choice=named), None, "auto", 4)
    assert plan is not None and plan.mode == "named" and plan.json_schema == {**WEATHER, "additionalProperties": False}
    _, kwargs, none = plan_chat(request(tools=TOOLS, tool_choice="none"), "hermes", "auto", 4)
    assert none is None and kwargs == {}


def test_required_with_parallel_calls_makes_at_most_the_configured_number() -> None:
    _, _, plan = plan_chat(request(tools=TOOLS, tool_choice="required"), None, "auto", 3)
    assert plan is not None and plan.json_schema is not None
    assert plan.json_schema["maxItems"] == 3 and plan.json_schema["minItems"] == 1


def test_forced_arguments_are_held_to_the_properties_the_tool_declares() -> None:
    # JSON Schema lets an object have any other property unless it says not; a small model given that writes a key
    # that never ends, and the call is cut by max_tokens. A schema that allows others explicitly keeps them.
    nested = {"type": "object", "properties": {"at": {"type": "object", "properties": {"x": {"type": "integer"}}}}}
    free = {"type": "object", "properties": {"q": {"type": "string"}}, "additionalProperties": {"type": "string"}}
    tools = [
        {"type": "function", "function": {"name": "nested", "parameters": nested}},
        {"type": "function", "function": {"name": "free", "parameters": free}},
        {"type": "function", "function": {"name": "kwargs", "parameters": {"type": "object"}}},
    ]
    _, _, plan = plan_chat(request(tools=tools, tool_choice="required"), None, "auto", 4)
    assert plan is not None and plan.json_schema is not None
    arguments = {
        b["properties"]["name"]["const"]: b["properties"]["arguments"] for b in plan.json_schema["items"]["anyOf"]
    }
    assert arguments["nested"]["additionalProperties"] is False
    assert arguments["nested"]["properties"]["at"]["additionalProperties"] is False
    assert arguments["free"] == free and arguments["kwargs"] == {"type": "object"}
    assert "additionalProperties" not in nested  # the request's own schema is left as it was
    named = {"type": "function", "function": {"name": "nested"}}
    _, _, plan = plan_chat(request(tools=tools, tool_choice=named), None, "auto", 4)
    assert plan is not None and plan.json_schema == arguments["nested"]


def test_strict_tools_return_only_calls_that_validate() -> None:
    strict = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER, "strict": True}}]
    _, _, plan = plan_chat(request(tools=strict), None, "auto", 4)
    assert plan is not None
    bad = '<tool_call>{"name": "get_weather", "arguments": {"days": 2}}</tool_call>'  # city is required
    message = ChoiceTools(plan).message(bad)
    assert "tool_calls" not in message and "get_weather" in message["content"]
    good = ChoiceTools(plan).message(CALL)
    assert json.loads(good["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris", "days": 2}


class ScriptedEngine(FakeEngine):
    """Says a given text, a few characters per step."""

    def __init__(self, text: str, finish_reason: str = "stop") -> None:
        super().__init__(max_model_len=4096)
        self.text = text
        self.finish_reason = finish_reason

    async def generate(self, request: GenerateRequest) -> AsyncIterator[StepOutput]:
        self.requests.append(request)
        pieces = [self.text[i : i + 3] for i in range(0, len(self.text), 3)]
        for k, piece in enumerate(pieces):
            await asyncio.sleep(0)
            last = k == len(pieces) - 1
            delta = CompletionDelta(0, piece, 1, finish_reason=self.finish_reason if last else None)
            yield StepOutput(num_prompt_tokens=len(request.prompt_token_ids), deltas=[delta], finished=last)


def scripted_client(text: str, finish_reason: str = "stop") -> Iterator[TestClient]:
    app = create_app(Config(model="fake", served_model_name="fake"), engine=ScriptedEngine(text, finish_reason))
    with TestClient(app) as client:
        yield client


def chat(client: TestClient, stream: bool, **body: Any) -> tuple[Any, list[dict[str, Any]], str | None]:
    """content, calls and finish reason, from the whole response or its stream put together."""
    r = client.post("/v1/chat/completions", json={"messages": ASK, "tools": TOOLS, "stream": stream, **body})
    assert r.status_code == 200, r.text
    if not stream:
        choice = r.json()["choices"][0]
        return choice["message"]["content"], choice["message"].get("tool_calls") or [], choice["finish_reason"]
    content, calls, finish = "", [], None
    for line in r.text.splitlines():
        if not line.startswith("data: {"):
            continue
        choice = json.loads(line[6:])["choices"][0]
        content += choice["delta"].get("content") or ""
        finish = choice["finish_reason"] or finish
        for c in choice["delta"].get("tool_calls") or []:
            if "id" in c:
                calls.append({"id": c["id"], "type": c["type"], "function": {**c["function"]}})
            else:
                calls[c["index"]]["function"]["arguments"] += c["function"]["arguments"]
    return content or None, calls, finish


@pytest.mark.parametrize("stream", [False, True])
def test_auto_reads_calls_between_text(stream: bool) -> None:
    text = f"Let me check.\n{CALL}\n{CALL.replace('Paris', 'Rome')}\nDone."
    for client in scripted_client(text):
        content, calls, finish = chat(client, stream)
        assert finish == "tool_calls"
        assert [json.loads(c["function"]["arguments"])["city"] for c in calls] == ["Paris", "Rome"]
        assert all(c["function"]["name"] == "get_weather" and c["id"].startswith("call_") for c in calls)
        assert "<tool_call>" not in content and "Let me check." in content and "Done." in content


@pytest.mark.parametrize("stream", [False, True])
def test_auto_with_parallel_calls_off_returns_the_first_call(stream: bool) -> None:
    for client in scripted_client(CALL + CALL.replace("Paris", "Rome")):
        _, calls, _ = chat(client, stream, parallel_tool_calls=False)
        assert [json.loads(c["function"]["arguments"])["city"] for c in calls] == ["Paris"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_malformed_call_comes_back_as_content(stream: bool) -> None:
    text = '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>'
    for client in scripted_client(text):
        content, calls, finish = chat(client, stream)
        assert calls == [] and finish == "stop" and content == text


@pytest.mark.parametrize("stream", [False, True])
def test_none_reads_no_calls(stream: bool) -> None:
    for client in scripted_client(CALL):
        content, calls, finish = chat(client, stream, tool_choice="none")
        assert calls == [] and finish == "stop" and content == CALL


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "text,cities,content",
    [
        ('{"name": "get_weather", "arguments": {"city": "Oslo"}}', ["Oslo"], None),
        ('[{"name": "get_weather", "arguments": {"city": "Oslo"}}]', ["Oslo"], None),
        ('```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```', ["Oslo"], None),
        ('{"city": "Oslo"} is what I would send.', [], '{"city": "Oslo"} is what I would send.'),
    ],
)
def test_auto_reads_a_bare_json_call_without_tags(stream: bool, text: str, cities: list[str], content: Any) -> None:
    for client in scripted_client(text):
        got, calls, finish = chat(client, stream)
        assert [json.loads(c["function"]["arguments"])["city"] for c in calls] == cities
        assert got == content and finish == ("tool_calls" if cities else "stop")


@pytest.mark.parametrize("stream", [False, True])
def test_copied_tool_response_tags_stay_out_of_the_answer(stream: bool) -> None:
    for client in scripted_client("<tool_response>\nIt is sunny in Paris.\n</tool_response> Enjoy <b>it</b> <tool_"):
        content, calls, finish = chat(client, stream)
        assert calls == [] and finish == "stop"
        assert content == "It is sunny in Paris.\n Enjoy <b>it</b> <tool_"


@pytest.mark.parametrize("stream", [False, True])
def test_required_cut_by_max_tokens_returns_the_calls_it_completed(stream: bool) -> None:
    text = '[{"name":"get_weather","arguments":{"city":"Oslo"}},{"name":"now","arguments":{}},{"name":"get_weather","ar'
    for client in scripted_client(text, finish_reason="length"):
        content, calls, finish = chat(client, stream, tool_choice="required")
        assert finish == "length" and content is None  # cut, as OpenAI says it, but the complete calls are there
        assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
            ("get_weather", '{"city":"Oslo"}'),
            ("now", "{}"),
        ]
