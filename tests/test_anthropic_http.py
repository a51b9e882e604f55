"""The Anthropic Messages surface against the fake engine: event order, error shapes, keys, the billing block."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from engine_server import Config, create_app
from engine_server.anthropic.protocol import MessagesRequest
from engine_server.anthropic.translate import BILLING_HEADER, to_chat
from tests.fake_engine import FakeEngine
from tests.test_app import wait_ready

MESSAGES = "/v1/messages"
FIXTURES = Path(__file__).parent / "fixtures"
HELLO = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]}


def make_client(engine: FakeEngine | None = None, **settings: Any) -> TestClient:
    return TestClient(create_app(Config(model="m", **settings), engine=engine or FakeEngine()))


def named_events(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each server-sent event; the name must be the data's type."""
    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"]
        events.append((lines["event"], data))
    return events


def check_block_order(events: list[tuple[str, dict[str, Any]]]) -> None:
    """message_start first, message_stop last, and every delta inside its started, unstopped block."""
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop" and names[-2] == "message_delta"
    open_index = None
    last_delta = None  # the type of the open block's last delta
    seen = []
    for name, data in events:
        if name == "content_block_start":
            assert open_index is None and data["index"] == len(seen)
            open_index = data["index"]
            seen.append(data["content_block"]["type"])
        elif name == "content_block_delta":
            assert data["index"] == open_index
            kinds = {"text": ("text_delta",), "tool_use": ("input_json_delta",)}
            kinds["thinking"] = ("thinking_delta", "signature_delta")  # the signature last, checked below
            assert data["delta"]["type"] in kinds[seen[open_index]]
            assert last_delta != "signature_delta", "a delta after the signature"
            last_delta = data["delta"]["type"]
        elif name == "content_block_stop":
            assert data["index"] == open_index
            assert seen[open_index] != "thinking" or last_delta == "signature_delta", "a thinking block unsigned"
            open_index, last_delta = None, None
    assert open_index is None


def test_message_whole_and_streamed() -> None:
    with make_client() as c:
        wait_ready(c)
        r = c.post(MESSAGES + "?beta=true", json=HELLO, headers={"anthropic-version": "2023-06-01"})
        body = r.json()
        assert r.status_code == 200 and body["type"] == "message" and body["id"].startswith("msg_")
        assert body["content"] == [{"type": "text", "text": "the quick brown fox"}]
        assert body["stop_reason"] == "max_tokens" and body["stop_sequence"] is None
        assert body["usage"]["output_tokens"] == 4 and body["usage"]["input_tokens"] > 0
        r = c.post(MESSAGES, json={**HELLO, "stream": True})
        events = named_events(r.text)
        check_block_order(events)
        assert [n for n, _ in events[:2]] == ["message_start", "ping"]
        start = events[0][1]["message"]
        assert start["usage"]["input_tokens"] == body["usage"]["input_tokens"] and start["content"] == []
        text = "".join(d["delta"]["text"] for n, d in events if n == "content_block_delta")
        assert text == "the quick brown fox"
        final = events[-2][1]
        assert final["delta"]["stop_reason"] == "max_tokens" and final["usage"]["output_tokens"] == 4


def test_a_reply_that_ends_is_an_end_turn() -> None:
    with make_client() as c:
        wait_ready(c)
        body = c.post(MESSAGES, json={**HELLO, "max_tokens": 100}).json()
        assert body["stop_reason"] == "end_turn" and body["usage"]["output_tokens"] == 9


def test_max_tokens_is_a_ceiling_the_context_lowers() -> None:
    # Claude Code sends max_tokens 32000 whatever the model: the room left in the context bounds it instead.
    engine = FakeEngine(max_model_len=64)
    with make_client(engine) as c:
        wait_ready(c)
        assert c.post(MESSAGES, json={**HELLO, "max_tokens": 32000}).status_code == 200
        prompt = len(engine.requests[-1].prompt_token_ids)
        assert engine.requests[-1].sampling.max_tokens == 64 - prompt
        # The OpenAI surface keeps its reading: more than the room is a 400.
        chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32000}
        assert c.post("/v1/chat/completions", json=chat).status_code == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, "max_tokens"),
        ({**HELLO, "unknown": 1}, "unknown"),
        ({**HELLO, "messages": [{"role": "user", "content": [{"type": "video"}]}]}, "messages"),
        ({**HELLO, "tool_choice": {"type": "any"}}, "tool_choice"),
        ({**HELLO, "context_management": {"edits": [{"type": "clear_tool_uses_20250919"}]}}, "context_management"),
        ({**HELLO, "temperature": 1.5}, "temperature"),
    ],
)
def test_bad_requests_get_anthropic_400s(body: dict[str, Any], param: str) -> None:
    with make_client() as c:
        wait_ready(c)
        r = c.post(MESSAGES, json=body)
        assert r.status_code == 400
        error = r.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert param in error["error"]["message"]
        assert c.post(MESSAGES, json=HELLO).status_code == 200  # and the server keeps serving


def test_images_are_refused_naming_the_model() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    with make_client() as c:
        wait_ready(c)
        r = c.post(MESSAGES, json={**HELLO, "messages": [{"role": "user", "content": [image]}]})
        assert r.status_code == 400 and "'m' does not accept images" in r.json()["error"]["message"]


def test_prompt_too_long_says_so_in_claude_codes_words() -> None:
    with make_client(FakeEngine(max_model_len=16)) as c:
        wait_ready(c)
        r = c.post(MESSAGES, json={**HELLO, "messages": [{"role": "user", "content": "x" * 40}]})
        assert r.status_code == 400
        message = r.json()["error"]["message"]
        assert message.startswith("prompt is too long: ") and message.endswith(" tokens > 15 maximum")


def test_keys_by_x_api_key_and_errors_in_anthropic_shape() -> None:
    with make_client(api_key="k1") as c:
        wait_ready(c)
        r = c.post(MESSAGES, json=HELLO)
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert r.json()["type"] == "error"
        assert c.post(MESSAGES, json=HELLO, headers={"x-api-key": "wrong"}).status_code == 401
        assert c.post(MESSAGES, json=HELLO, headers={"x-api-key": "k1"}).status_code == 200
        assert c.post(MESSAGES, json=HELLO, headers={"Authorization": "Bearer k1"}).status_code == 200
        r = c.post("/v1/chat/completions", json={"messages": "x"}, headers={"x-api-key": "k1"})
        assert r.status_code == 200


def test_routing_and_size_errors_in_anthropic_shape() -> None:
    with make_client(max_request_body_bytes=1000) as c:
        wait_ready(c)
        r = c.get(MESSAGES)
        assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
        r = c.post(MESSAGES + "/nothing", json=HELLO)
        assert r.status_code == 404 and r.json()["error"]["type"] == "not_found_error"
        r = c.post(MESSAGES, json={**HELLO, "system": "x" * 2000})
        assert r.status_code == 413 and r.json()["error"]["type"] == "request_too_large"


def test_loading_is_overloaded_and_the_limit_is_a_rate_limit() -> None:
    engine = FakeEngine()
    engine.release_start.clear()
    with make_client(engine) as c:
        r = c.post(MESSAGES, json=HELLO)
        assert r.status_code == 529 and r.json()["error"]["type"] == "overloaded_error"
    with make_client(FakeEngine(step_delay=0.05), max_concurrent_requests=1) as c:
        wait_ready(c)
        with c.stream("POST", MESSAGES, json={**HELLO, "stream": True}) as first:
            r = c.post(MESSAGES, json=HELLO)
            assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
            assert r.headers["retry-after"]
            first.read()


def test_an_error_mid_stream_is_an_error_event() -> None:
    with make_client(FakeEngine(fail_after=2)) as c:
        wait_ready(c)
        r = c.post(MESSAGES, json={**HELLO, "stream": True})
        events = named_events(r.text)
        assert events[-1][0] == "error" and events[-1][1]["error"]["type"] == "overloaded_error"
        assert [n for n, _ in events[:3]] == ["message_start", "ping", "content_block_start"]


def test_count_tokens_is_the_prompt_that_is_served() -> None:
    engine = FakeEngine()
    with make_client(engine) as c:
        wait_ready(c)
        body = {**HELLO, "system": "Be brief."}
        counted = c.post(MESSAGES + "/count_tokens", json={k: v for k, v in body.items() if k != "max_tokens"})
        assert counted.status_code == 200
        served = c.post(MESSAGES, json=body).json()
        assert counted.json() == {"input_tokens": served["usage"]["input_tokens"]}
        assert len(engine.requests[-1].prompt_token_ids) == counted.json()["input_tokens"]


def test_claude_codes_request_translates_without_its_billing_block() -> None:
    recorded = json.loads((FIXTURES / "claude_code_messages.json").read_text())
    assert recorded["path"] == "/v1/messages?beta=true"
    req = MessagesRequest.model_validate(recorded["body"])
    chat = to_chat(req, "m")
    assert isinstance(chat.messages, list)
    system = chat.messages[0]
    assert system.role == "system" and isinstance(system.content, str)
    assert BILLING_HEADER not in system.content and system.content.startswith("You are a Claude agent")
    # The system turn Claude Code sends inside messages stays where it was sent.
    assert [m.role for m in chat.messages] == ["system", "user", "system"]
    assert [t.function.name for t in chat.tools or []] == [t["name"] for t in recorded["body"]["tools"]]
    assert chat.max_tokens == 32000 and chat.is_stream


def test_turns_differing_only_in_the_billing_block_render_the_same_prompt() -> None:
    engine = FakeEngine(max_model_len=100_000)
    recorded = json.loads((FIXTURES / "claude_code_messages.json").read_text())["body"]
    with make_client(engine) as c:
        wait_ready(c)
        prompts = []
        for version in ("2.1.197.d03", "2.1.197.a71"):
            body = {**recorded, "stream": False, "max_tokens": 2}
            billing = {"type": "text", "text": f"{BILLING_HEADER} cc_version={version}; cc_entrypoint=sdk-cli;"}
            body["system"] = [billing, *recorded["system"][1:]]
            assert c.post(MESSAGES, json=body).status_code == 200
            prompts.append(engine.requests[-1].prompt_token_ids)
        assert prompts[0] == prompts[1]
