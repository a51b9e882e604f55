"""The HTTP layer against a fake engine: shapes, streaming, errors, health and disconnects."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from engine_server import Config, create_app
from tests.fake_engine import FakeEngine

CHAT = "/v1/chat/completions"


def wait_ready(client: TestClient, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/health").status_code != 200:
        assert time.monotonic() < deadline, "the app never became ready"
        time.sleep(0.01)


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


@pytest.fixture
def client(engine: FakeEngine) -> Iterator[TestClient]:
    with TestClient(create_app(Config(model="fake-model"), engine=engine)) as c:
        wait_ready(c)
        yield c


def sse_events(text: str) -> list[Any]:
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def test_health_is_503_while_loading_then_200() -> None:
    engine = FakeEngine()
    engine.release_start.clear()
    with TestClient(create_app(Config(model="fake-model"), engine=engine)) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        r = c.get("/v1/health_check")
        assert r.status_code == 503
        assert r.json()["Service Title"] == "opea_service@llm_vllm" and r.json()["Status"] == "starting"
        assert c.post(CHAT, json={"messages": "hi"}).status_code == 503
        c.portal.call(engine.release_start.set)  # type: ignore[union-attr]
        wait_ready(c)
        r = c.get("/v1/health_check")
        assert r.status_code == 200
        assert r.json()["Service Description"] == "OPEA Microservice Infrastructure"
    assert engine.shut_down


def test_chat_completion_shape(client: TestClient) -> None:
    r = client.post(
        CHAT, json={"model": "${model_name}", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    )
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "fake-model"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "the quick brown", "refusal": None}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3


def test_string_messages_are_a_raw_prompt_answered_as_text_completion(client: TestClient, engine: FakeEngine) -> None:
    r = client.post(CHAT, json={"messages": "What is Deep Learning?", "max_tokens": 17})
    body = r.json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["choices"][0]["text"].startswith("the quick")
    # No chat template: BOS + the characters of the prompt.
    assert engine.requests[-1].prompt_token_ids == [1] + [ord(c) for c in "What is Deep Learning?"]


def test_stream_first_chunk_carries_content_and_usage_comes_last(client: TestClient) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    r = client.post(CHAT, json={**body, "stream_options": {"include_usage": True}})
    chunks = sse_events(r.text)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "the"}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    streamed = "".join(c["choices"][0]["delta"]["content"] for c in chunks[:-1])
    plain = client.post(CHAT, json={**body, "stream": False}).json()["choices"][0]["message"]["content"]
    assert streamed == plain == "the quick brown fox"


def test_first_chunk_comes_with_the_first_token_even_without_text() -> None:
    # As OpenAI and vLLM do: the role arrives when the first token is made, so a client's time to first token is the
    # engine's, even when that token's text (a partial character) only comes with the next one.
    engine = FakeEngine(textless_first_token=True)
    with TestClient(create_app(Config(model="m"), engine=engine)) as c:  # type: ignore[arg-type]
        wait_ready(c)
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
        chunks = sse_events(c.post(CHAT, json=body).text)
        assert [ch["choices"][0]["delta"] for ch in chunks] == [
            {"role": "assistant", "content": ""},
            {"content": "the quick"},
            {"content": " brown"},
        ]
        plain = c.post(CHAT, json={**body, "stream": False}).json()["choices"][0]["message"]["content"]
        assert plain == "the quick brown"


def test_streaming_alias_and_text_chunks(client: TestClient) -> None:
    r = client.post(CHAT, json={"messages": "hi", "max_tokens": 2, "streaming": True})
    chunks = sse_events(r.text)
    assert [c["object"] for c in chunks] == ["text_completion", "text_completion"]
    assert "".join(c["choices"][0]["text"] for c in chunks) == "the quick"


def test_completions_list_prompt_with_n(client: TestClient) -> None:
    r = client.post("/v1/completions", json={"prompt": ["a", "b"], "n": 2, "max_tokens": 1, "logprobs": 1})
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert choices[3]["logprobs"]["tokens"] == ["the"]


USER = [{"role": "user", "content": "x"}]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}


@pytest.mark.parametrize(
    "body,param",
    [
        ({"messages": []}, "messages"),
        ({"messages": ""}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages.0.content.0.type",
        ),
        ({"messages": "x", "temperature": "hot"}, "temperature"),
        ({"messages": "x", "temperature": -1}, "temperature"),
        ({"messages": "x", "top_p": 0}, "top_p"),
        ({"messages": "x", "n": 0}, "n"),
        ({"messages": "x", "n": 2, "temperature": 0}, "n"),
        ({"messages": "x", "max_tokens": 0}, "max_tokens"),
        ({"messages": "x", "max_tokens": 1000}, "max_tokens"),
        ({"messages": "x" * 100}, "messages"),
        ({"messages": "x", "typical_p": 0.95}, "typical_p"),
        ({"messages": "x", "tools": [{"type": "function"}]}, "tools.0.function"),
        ({"messages": "x", "tools": [TOOL]}, "tools"),
        (
            {"messages": USER, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        ({"messages": USER, "tool_choice": "required"}, "tool_choice"),
        ({"messages": USER, "tools": [TOOL, TOOL]}, "tools"),
        ({"messages": USER, "tools": [{**TOOL, "function": {"name": "a b"}}]}, "tools.0.function.name"),
        (
            {"messages": USER, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
            "tools[0].function.parameters",
        ),
        ({"messages": USER, "tools": [TOOL], "response_format": {"type": "json_object"}}, "response_format"),
        (
            {
                "messages": USER,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}],
            },
            "tools[0].function.parameters",
        ),
        ({"messages": [*USER, {"role": "tool", "tool_call_id": "call_x", "content": "1"}]}, "messages[1].tool_call_id"),
        (
            {"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}]},
            "messages[0].tool_calls",
        ),
        (
            {
                "messages": [
                    *USER,
                    {"role": "assistant", "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "[1]"}}]},
                ]
            },
            "messages[1].tool_calls",
        ),
        ({"messages": USER, "functions": [{"name": "f"}]}, "functions"),
        ({"messages": "x", "frobnicate": True}, "frobnicate"),
        ({"messages": "x", "stop_token_ids": [999]}, "stop_token_ids"),
        ({"messages": "x", "logprobs": False, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": "x", "response_format": {"type": "json_schema"}}, "response_format"),
        ({"prompt": "x"}, "messages"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_bad_input_gets_400_envelope_and_server_keeps_serving(
    client: TestClient, body: dict[str, Any], param: str, stream: bool
) -> None:
    r = client.post(CHAT, json={**body, "stream": stream})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]
    assert client.post(CHAT, json={"messages": "ok", "max_tokens": 1}).status_code == 200


@pytest.mark.parametrize("raw", [b"{bad json", b"[1, 2]", b"\xff\xfe"])
def test_malformed_body_gets_400(client: TestClient, raw: bytes) -> None:
    r = client.post(CHAT, content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_unknown_route_and_method_use_the_envelope(client: TestClient) -> None:
    r = client.get("/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
    assert client.get(CHAT).status_code == 405


def test_error_after_stream_started_is_an_event_then_done() -> None:
    engine = FakeEngine(fail_after=2)
    with TestClient(create_app(Config(model="m"), engine=engine)) as c:
        wait_ready(c)
        r = c.post(CHAT, json={"messages": "x", "max_tokens": 5, "stream": True})
        assert r.status_code == 200
        events = sse_events(r.text)
        assert [e["choices"][0]["text"] for e in events[:2]] == ["the", " quick"]
        assert events[2]["error"]["code"] == "engine_dead"


def test_strict_model_name_refuses_other_names(engine: FakeEngine) -> None:
    with TestClient(
        create_app(Config(model="m", served_model_name="mine", strict_model_name=True), engine=engine)
    ) as c:
        wait_ready(c)
        r = c.post(CHAT, json={"model": "other", "messages": "x", "max_tokens": 1})
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
        assert c.post(CHAT, json={"model": "mine", "messages": "x", "max_tokens": 1}).status_code == 200
        assert c.get("/v1/models").json()["data"][0]["id"] == "mine"


def test_engine_death_turns_health_503_and_calls_on_fatal(engine: FakeEngine) -> None:
    reasons: list[str] = []
    with TestClient(create_app(Config(model="m"), engine=engine, on_fatal=reasons.append)) as c:
        wait_ready(c)
        engine.dead = True
        deadline = time.monotonic() + 5
        while c.get("/health").status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert c.get("/v1/health_check").status_code == 503
        assert c.post(CHAT, json={"messages": "x"}).json()["error"]["code"] == "dead"
    assert reasons and "killed by the test" in reasons[0]


def test_metrics_count_requests_and_tokens(client: TestClient) -> None:
    for _ in range(3):
        client.post(CHAT, json={"messages": "ab", "max_tokens": 2})
    client.post(CHAT, json={"messages": []})
    text = client.get("/metrics").text
    assert 'engine_server_http_requests_total{route="/v1/chat/completions",status="200"} 3.0' in text
    assert 'engine_server_http_requests_total{route="/v1/chat/completions",status="400"} 1.0' in text
    assert "engine_server_generation_tokens_total 6.0" in text
    assert "engine_server_prompt_tokens_total 9.0" in text


async def _call_then_disconnect(app: Any, body: dict[str, Any], disconnect_after: float) -> list[dict[str, Any]]:
    """Drive the ASGI app directly: send the body, then report the client gone after a delay."""
    sent: list[dict[str, Any]] = []
    messages = [{"type": "http.request", "body": json.dumps(body).encode(), "more_body": False}]

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(disconnect_after)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": CHAT,
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("test", 1),
        "root_path": "",
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=5)
    return sent


@pytest.mark.parametrize("stream", [False, True])
async def test_client_disconnect_cancels_the_engine_request(stream: bool) -> None:
    engine = FakeEngine(step_delay=0.05)
    app = create_app(Config(model="m"), engine=engine)
    async with app.lifespan(app):
        await asyncio.wait_for(engine.started.wait(), 5)
        await asyncio.sleep(0.05)
        body = {"messages": "x", "max_tokens": 9, "stream": stream}
        await _call_then_disconnect(app, body, disconnect_after=0.12)
        assert engine.aborted and not engine.running


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("model", ["m", 'odd "name"\\ \x01text\x01 é', "\x01text\x01"])
def test_plain_chunks_are_the_json_of_the_whole_chunk(chat: bool, model: str) -> None:
    # Most chunks splice their text into JSON rendered once per choice; it must be what encoding the whole chunk gives.
    from engine_server.shapes import plain_chunk
    from engine_server.streaming import encode

    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk" if chat else "text_completion", "created": 1}
    head["model"] = model
    template = plain_chunk(head, 3, chat)
    if model == "\x01text\x01":  # a model named as the split mark: no template, every chunk is encoded whole
        assert template is None
        return
    assert template is not None
    for text in ["", "plain", ' "quoted" \\ back', "line\nbreak\ttab\x00\x1f", "é 中文 🦙", "\ud800"]:
        choice = {"index": 3, "delta": {"content": text}} if chat else {"index": 3, "text": text}
        whole = encode({**head, "choices": [{**choice, "logprobs": None, "finish_reason": None}]})
        spliced = template[0] + json.encoder.encode_basestring(text) + template[1]
        assert spliced == whole
        assert json.loads(spliced)["choices"][0] == json.loads(whole)["choices"][0]
