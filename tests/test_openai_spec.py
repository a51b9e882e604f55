"""Our responses against OpenAI's published schemas (tests/specs): recorded from the real engines, each validated
against the component schema of its object, so that a field OpenAI requires (null allowed or not) cannot go missing."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from backends.base import TokenLogprob
from engine_server.shapes import chat_logprobs, text_logprobs
from engine_server.streaming import encode
from tests.conftest import LiveServer
from tests.openapi_spec import assert_conforms, mismatches

ASK = [{"role": "user", "content": "Name a color."}]
PICK = {
    "type": "function",
    "function": {
        "name": "pick_color",
        "description": "Pick a color.",
        "parameters": {"type": "object", "properties": {"color": {"enum": ["red", "blue"]}}, "required": ["color"]},
    },
}
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@pytest.fixture(scope="module")
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def top(server: LiveServer) -> int:
    """top_logprobs to ask for: OpenVINO reports the chosen token's logprob and, sampling, no alternatives."""
    return 0 if server.backend == "openvino" else 2


def strict_json(text: str) -> Any:
    """JSON as the spec has it: NaN and Infinity, which Python's json reads and writes by default, are no numbers."""

    def no_constant(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=no_constant)


def seeded(path: str) -> dict[str, Any]:
    return {} if path.startswith("/v1/responses") else {"seed": 0}  # the Responses API takes no seed


def post(http: httpx.Client, path: str, body: dict[str, Any]) -> Any:
    r = http.post(path, json={"model": "tiny", **seeded(path), **body})
    assert r.status_code == 200, r.text
    return strict_json(r.text)


def events(http: httpx.Client, path: str, body: dict[str, Any]) -> list[Any]:
    """The JSON of every server-sent event of a stream (the [DONE] marker left out)."""
    with http.stream("POST", path, json={"model": "tiny", **seeded(path), "stream": True, **body}) as r:
        assert r.status_code == 200, r.read()
        out = [strict_json(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert out
    return out


# -- the helper itself, on objects written here ------------------------------------------------------------------


def test_a_chat_message_without_refusal_is_not_openais() -> None:
    message = {"role": "assistant", "content": "Hi"}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    body = {"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m", "choices": [choice]}
    assert mismatches(body, "CreateChatCompletionResponse") == [
        "$.choices[0].message: 'refusal' is a required property"
    ]
    message["refusal"] = None
    assert_conforms(body, "CreateChatCompletionResponse")


def test_nullable_of_openapi_3_0_reads_as_or_null() -> None:
    # The chunk's choices[].logprobs is `type: object, nullable: true` in the description.
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []}
    chunk["choices"] = [{"index": 0, "delta": {"content": "x"}, "logprobs": None, "finish_reason": None}]
    assert_conforms(chunk, "CreateChatCompletionStreamResponse")
    chunk["choices"][0]["logprobs"] = {"content": [], "refusal": None}
    assert_conforms(chunk, "CreateChatCompletionStreamResponse")
    chunk["choices"][0]["logprobs"] = {"content": []}
    assert mismatches(chunk, "CreateChatCompletionStreamResponse") == [
        "$.choices[0].logprobs: 'refusal' is a required property"
    ]


def test_a_union_reports_the_member_its_type_names() -> None:
    event = {"type": "response.output_text.delta", "sequence_number": 1, "item_id": "msg_1", "output_index": 0}
    found = mismatches(event, "ResponseStreamEvent")
    assert found and all("content_index" in m or "delta" in m or "logprobs" in m for m in found), found


def test_a_token_structured_output_rules_out_has_a_finite_logprob() -> None:
    # vLLM reports -inf for the alternatives a grammar masks: no JSON number (a 500, or -Infinity in a stream).
    lp = TokenLogprob("a", -1.5, (("a", -1.5), ("b", -math.inf), ("c", math.nan)))
    chunk = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m", "choices": []}
    chunk["choices"] = [{"index": 0, "delta": {"content": "a"}, "logprobs": chat_logprobs([lp]), "finish_reason": None}]
    assert_conforms(strict_json(encode(chunk)), "CreateChatCompletionStreamResponse")
    assert [t["logprob"] for t in chunk["choices"][0]["logprobs"]["content"][0]["top_logprobs"]] == [-1.5, -9999, -9999]
    assert text_logprobs([lp], 0)["top_logprobs"] == [{"a": -1.5, "b": -9999, "c": -9999}]  # type: ignore[index]


# -- recorded from the engines ------------------------------------------------------------------------------------


@pytest.mark.parametrize("tools", [None, "auto", "required"])
def test_chat_completions_are_openais(http: httpx.Client, top: int, tools: str | None) -> None:
    extra: dict[str, Any] = {"tools": [PICK], "tool_choice": tools} if tools else {}
    body = post(http, CHAT, {"messages": ASK, "max_tokens": 40, "logprobs": True, "top_logprobs": top, **extra})
    assert_conforms(body, "CreateChatCompletionResponse")
    if tools == "required":
        assert body["choices"][0]["message"]["tool_calls"]
    body = post(http, CHAT, {"messages": ASK, "max_tokens": 8, "n": 2, "temperature": 1, **extra})
    assert_conforms(body, "CreateChatCompletionResponse")


@pytest.mark.parametrize("tools", [None, "auto", "required"])
def test_chat_completion_chunks_are_openais(http: httpx.Client, top: int, tools: str | None) -> None:
    extra: dict[str, Any] = {"tools": [PICK], "tool_choice": tools} if tools else {}
    for logprobs in (False, True):
        body = {"messages": ASK, "max_tokens": 40, "stream_options": {"include_usage": True}, **extra}
        chunks = events(http, CHAT, {**body, "logprobs": logprobs, **({"top_logprobs": top} if logprobs else {})})
        for chunk in chunks:
            assert_conforms(chunk, "CreateChatCompletionStreamResponse")
        assert chunks[-1]["usage"] and chunks[-1]["choices"] == []
        if tools == "required":
            assert any(c["choices"] and c["choices"][0]["delta"].get("tool_calls") for c in chunks)


def test_completions_are_openais(http: httpx.Client, top: int) -> None:
    body = post(http, COMPLETIONS, {"prompt": ["Once", "upon"], "max_tokens": 6, "logprobs": top})
    assert_conforms(body, "CreateCompletionResponse")
    # A string as chat messages is a raw prompt, answered as a completion.
    assert_conforms(post(http, CHAT, {"messages": "Once", "max_tokens": 6}), "CreateCompletionResponse")
    chunks = events(http, COMPLETIONS, {"prompt": "Once", "max_tokens": 6, "stream_options": {"include_usage": True}})
    for chunk in chunks:
        # The description gives streamed completions the whole response's schema, whose finish_reason is a string;
        # OpenAI (and vLLM) send null until the last chunk, as the SDK's types allow.
        for choice in chunk["choices"]:
            if choice["finish_reason"] is None:
                choice["finish_reason"] = "stop"
        assert_conforms(chunk, "CreateCompletionResponse")


def test_errors_are_openais(http: httpx.Client) -> None:
    cases = [
        ("POST", CHAT, {"messages": ASK, "max_tokens": -1}, 400),
        (
            "POST",
            CHAT,
            {"messages": ASK, "tools": [PICK], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            400,
        ),
        ("POST", COMPLETIONS, {"prompt": "x", "max_tokens": 10**9}, 400),
        ("GET", "/v1/nowhere", None, 404),
    ]
    for method, path, body, status in cases:
        r = http.request(method, path, json=body)
        assert r.status_code == status, r.text
        assert_conforms(r.json(), "ErrorResponse")


@pytest.mark.parametrize("tools", [None, "required"])
def test_responses_are_openais(http: httpx.Client, tools: str | None) -> None:
    function = {"type": "function", **PICK["function"]}
    extra: dict[str, Any] = {"tools": [function], "tool_choice": tools} if tools else {}
    body = {"input": "Name a color.", "max_output_tokens": 40, **extra}
    assert_conforms(post(http, "/v1/responses", body), "Response")
    for event in events(http, "/v1/responses", body):
        snapshot = event.get("response")
        if snapshot and snapshot["status"] == "in_progress" and snapshot["usage"] is None:
            # Not yet counted: null, as in the description's own example of response.created, whose schema of
            # usage allows the object only (or no usage at all).
            del snapshot["usage"]
        assert_conforms(event, "ResponseStreamEvent")
