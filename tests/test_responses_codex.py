"""The Responses API as OpenAI's Codex CLI uses it: namespace, custom and hosted tools, reasoning, include, stateless
turns, on the real engines (tiny random model) through the openai SDK and plain httpx; and the pure translations."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from engine_server.errors import APIError
from engine_server.responses import ResponseStore, _input_messages, to_chat
from engine_server.responses_protocol import ResponsesRequest
from engine_server.responses_tools import custom_input
from tests.conftest import LiveServer

WEATHER = {
    "type": "object",
    "properties": {"city": {"enum": ["Paris", "Rome"]}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
    "additionalProperties": False,
}
IDENT = r"[a-z]{1,8}"
NAMESPACE = {
    "type": "namespace",
    "name": "mcp__weather",
    "description": "Weather server.",
    "tools": [
        {"type": "function", "name": "get_weather", "description": "Weather.", "strict": False, "parameters": WEATHER}
    ],
}
APPLY_PATCH = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Edit files.",
    "format": {"type": "grammar", "syntax": "lark", "definition": 'start: "*** Begin Patch" /.+/'},
}
IDENT_TOOL = {
    "type": "custom",
    "name": "ident",
    "description": "A name.",
    "format": {"type": "grammar", "syntax": "regex", "definition": IDENT},
}
# Codex's eight function tools, their descriptions and schemas left out to fit the test model's 2048 tokens.
FUNCTIONS = [
    {"type": "function", "name": name, "strict": False}
    for name in ("shell", "exec_command", "write_stdin", "update_plan", "view_image", "list_mcp_resources",
                 "read_mcp_resource", "request_user_input")
]  # fmt: skip
CODEX_TOOLS = [*FUNCTIONS, NAMESPACE, {"type": "web_search", "external_web_access": False}, APPLY_PATCH, IDENT_TOOL]


def codex_body(input_items: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    """A request as Codex CLI 0.17x sends it (its ~10k-token instructions shortened to fit the test model)."""
    return {
        "model": "tiny",
        "instructions": "You are Codex, a coding agent.",
        "input": input_items,
        "tools": CODEX_TOOLS,
        "tool_choice": "auto",
        "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"},
        "store": False,
        "stream": True,
        "include": ["reasoning.encrypted_content"],
        "prompt_cache_key": "019a-session",
        "client_metadata": {"originator": "codex_cli_rs"},
        "text": {"verbosity": "low"},
        **overrides,
    }


def sdk(body: dict[str, Any]) -> dict[str, Any]:
    """The body as `client.responses.create` arguments: what the SDK has no parameter for goes in extra_body."""
    extra = {"client_metadata": body.pop("client_metadata")} if "client_metadata" in body else {}
    return {**body, "extra_body": extra}


USER = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "List the files."}]}


def stream_events(server: LiveServer, body: dict[str, Any]) -> list[dict[str, Any]]:
    events = []
    with httpx.stream("POST", f"{server.base_url}/v1/responses", json=body, timeout=300) as r:
        assert r.status_code == 200, r.read()
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                event = json.loads(line.removeprefix("data: "))
                assert event["type"] == name
                events.append(event)
    return events


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_codex_request_streams_a_completed_response(server: LiveServer) -> None:
    events = stream_events(server, codex_body([USER]))  # no max_output_tokens, as Codex sends it
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] in ("response.completed", "response.incomplete") and "error" not in kinds
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    final = events[-1]["response"]
    assert final["reasoning"] == {"effort": "medium", "summary": "auto"}  # echoed; no reasoning items
    assert not [item for item in final["output"] if item["type"] == "reasoning"]
    assert final["text"]["verbosity"] == "low" and final["store"] is False
    assert final["prompt_cache_key"] == "019a-session"
    assert "user" not in final and "user" not in events[0]["response"]  # the spec has no null user
    assert final["tools"][-3]["type"] == "web_search" and final["tools"][-4]["type"] == "namespace"
    usage = final["usage"]
    assert usage["input_tokens"] > 200
    assert usage["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    offered = {t["name"] for t in FUNCTIONS} | {"get_weather", "apply_patch", "ident"}
    for item in final["output"]:
        assert item["type"] in ("message", "function_call", "custom_tool_call")
        if item["type"] != "message":
            assert item["name"] in offered


def test_stateless_second_turn_sends_the_output_back(server: LiveServer, client: openai.OpenAI) -> None:
    body = codex_body([USER], stream=False, tool_choice={"type": "custom", "name": "ident"}, max_output_tokens=30)
    first = client.responses.create(**sdk(body))
    assert [item.type for item in first.output] == ["custom_tool_call"]
    call = first.output[0]
    # What Codex sends back: the first input, a reasoning item (as OpenAI's models return them), the output, the
    # tool's result, and the next user message; nothing stored on the server.
    reasoning = {
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "I should look."}],
        "content": None,
        "encrypted_content": "gAAAAB-opaque",
    }
    items = [
        USER,
        reasoning,
        *(item.model_dump(exclude_none=True) for item in first.output),
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "ok"},  # type: ignore[union-attr]
        {"type": "function_call", "call_id": "call_7", "name": "shell", "arguments": '{"cmd":"ls"}'},
        {"type": "function_call_output", "call_id": "call_7", "output": [{"type": "input_text", "text": "a.txt"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Thanks."}]},
    ]
    events = stream_events(server, codex_body(items, max_output_tokens=8))
    final = events[-1]["response"]
    assert events[-1]["type"] in ("response.completed", "response.incomplete")
    assert first.usage is not None
    # The call, its result and the shell turn are in the prompt: longer than the first turn's by their tokens.
    assert final["usage"]["input_tokens"] > first.usage.input_tokens + 20
    r = httpx.get(f"{server.base_url}/v1/responses/{final['id']}", timeout=30)
    assert r.status_code == 404  # store: false


@pytest.mark.parametrize("stream", [False, True])
def test_forced_custom_tool_gives_its_raw_input(server: LiveServer, stream: bool) -> None:
    body = codex_body([USER], stream=stream, tool_choice={"type": "custom", "name": "ident"}, max_output_tokens=30)
    if stream:
        events = stream_events(server, body)
        kinds = [e["type"] for e in events]
        assert not [k for k in kinds if k.startswith("response.function_call_arguments")]
        deltas = "".join(e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta")
        done = [e for e in events if e["type"] == "response.custom_tool_call_input.done"]
        added = [e["item"] for e in events if e["type"] == "response.output_item.added"]
        assert [i["type"] for i in added] == ["custom_tool_call"] and added[0]["input"] == ""
        response = events[-1]["response"]
        assert len(done) == 1 and done[0]["input"] == deltas == response["output"][0]["input"]
    else:
        r = httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=300)
        assert r.status_code == 200, r.text
        response = r.json()
    [item] = response["output"]
    assert item["type"] == "custom_tool_call" and item["name"] == "ident" and item["id"].startswith("ctc_")
    assert item["call_id"] and item["status"] == "completed" and response["status"] == "completed"
    assert isinstance(item["input"], str) and re.fullmatch(IDENT, item["input"]), item["input"]  # the regex holds


@pytest.mark.parametrize("stream", [False, True])
def test_forced_namespace_function_validates_and_names_its_namespace(client: openai.OpenAI, stream: bool) -> None:
    kwargs = codex_body([USER], stream=stream, tool_choice={"type": "function", "name": "get_weather"})
    kwargs.update(max_output_tokens=60, temperature=1)
    if stream:
        events = list(client.responses.create(**sdk(kwargs)))
        response = events[-1].response  # type: ignore[union-attr]
        added = [e.item for e in events if e.type == "response.output_item.added"]
        assert [(i.type, getattr(i, "namespace", None)) for i in added] == [("function_call", "mcp__weather")]
    else:
        response = client.responses.create(**sdk(kwargs))
    [call] = response.output
    assert call.type == "function_call" and call.name == "get_weather" and call.namespace == "mcp__weather"
    assert response.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER)


@pytest.mark.parametrize(
    "overrides,param",
    [
        ({"tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"tool_choice": {"type": "function", "name": "ident"}}, "tool_choice"),  # ident is a custom tool
        ({"tool_choice": {"type": "custom", "name": "shell"}}, "tool_choice"),  # shell is a function
        ({"include": ["reasoning.encrypted_content", "file_search_call.everything"]}, "include.1"),
        ({"tools": [{"type": "frobnicator"}]}, "tools.0.type"),
        ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
        ({"text": {"verbosity": "loud"}}, "text.verbosity"),
        ({"input": [{"type": "function_call_output", "call_id": "c", "output": [{"type": "input_image"}]}]},
         "input.0.output.0.type"),
        ({"tools": [{**IDENT_TOOL, "format": {"type": "grammar", "syntax": "regex", "definition": "(a"}}]},
         "tools.0.format.definition"),
        ({"tools": [{**NAMESPACE, "tools": [{"type": "function", "name": "f", "parameters": {"type": 7}}]}]},
         "tools.0.tools.0.parameters"),
    ],
)  # fmt: skip
def test_what_cannot_be_served_is_a_400_naming_it(server: LiveServer, overrides: dict[str, Any], param: str) -> None:
    r = httpx.post(f"{server.base_url}/v1/responses", json=codex_body([USER], **overrides), timeout=30)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error


def test_hosted_tools_are_logged_once_per_type(server: LiveServer) -> None:
    for _ in range(2):
        body = codex_body([USER], stream=False, max_output_tokens=1, tools=[{"type": "web_search_preview"}])
        assert httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=60).status_code == 200
    assert server.log.read_text().count("hosted tool 'web_search_preview'") == 1


def test_user_is_echoed_only_when_given(client: openai.OpenAI, server: LiveServer) -> None:
    r = httpx.post(f"{server.base_url}/v1/responses", json={"input": "Hi", "max_output_tokens": 1}, timeout=60)
    assert "user" not in r.json()
    assert client.responses.create(input="Hi", max_output_tokens=1, user="u1").user == "u1"


# The translations alone, no engine.


def _turn(**body: Any) -> Any:
    return to_chat(ResponsesRequest.model_validate({"input": [USER], **body}), ResponseStore(1, 60), "tiny")


def test_namespace_and_custom_tools_are_offered_as_functions() -> None:
    turn = _turn(tools=CODEX_TOOLS)
    offered = {t.function.name: t.function for t in turn.chat.tools}
    assert sorted(offered) == sorted([str(t["name"]) for t in FUNCTIONS] + ["get_weather", "apply_patch", "ident"])
    assert "web_search" not in offered
    assert offered["ident"].parameters["properties"]["input"]["pattern"] == f"^(?:{IDENT})$"
    assert "Lark grammar" in (offered["apply_patch"].description or "") and offered["apply_patch"].strict
    assert turn.tools["get_weather"].namespace == "mcp__weather" and turn.tools["ident"].kind == "custom"


PATCH_ARGUMENTS = '{"input": "*** Begin Patch"}'


def test_input_items_become_chat_turns() -> None:
    items = ResponsesRequest.model_validate(
        {
            "input": [
                USER,
                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "hmm"}], "encrypted_content": "x"},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Looking."}]},
                {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": "*** Begin Patch"},
                {
                    "type": "function_call",
                    "call_id": "c2",
                    "name": "get_weather",
                    "namespace": "mcp__weather",
                    "arguments": "{}",
                },
                {"type": "custom_tool_call_output", "call_id": "c1", "output": "done"},
                {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "sun"}]},
            ]
        }  # fmt: skip
    ).input
    assert _input_messages(items) == [
        {"role": "user", "content": "List the files."},
        {
            "role": "assistant",
            "content": "Looking.",
            "reasoning_content": "hmm",  # the reasoning item before it, for templates that render it
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "apply_patch", "arguments": PATCH_ARGUMENTS}},
                {"id": "c2", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
        {"role": "tool", "tool_call_id": "c2", "content": "sun"},
    ]  # fmt: skip


def test_chat_errors_name_the_responses_tool() -> None:
    bad = {**NAMESPACE, "tools": [{"type": "function", "name": "f", "parameters": {"type": "object", "required": 3}}]}
    with pytest.raises(APIError) as err:
        _turn(tools=[FUNCTIONS[0], bad])
    assert err.value.param == "tools.1.tools.0.parameters"


def test_custom_input_is_the_string_argument() -> None:
    assert custom_input('{"input": "a\\nb"}') == "a\nb"
    assert custom_input('{"input": "cut sh') == '{"input": "cut sh'  # cut by max_output_tokens: as written
