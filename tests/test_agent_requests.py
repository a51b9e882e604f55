"""The requests Claude Code and Codex CLI sent (tests/fixtures/), replayed: what the chat path makes of them, and the
400 each API gives when they do not fit the model's context (the tiny model's 2048 tokens), in its own shape."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from engine_server.responses import ResponseStore, to_chat
from engine_server.responses_protocol import ResponsesRequest
from tests.conftest import LiveServer

FIXTURES = Path(__file__).parent / "fixtures"


def recorded(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / name).read_text()))


def test_codexs_request_offers_its_functions_and_no_hosted_tool() -> None:
    body = recorded("codex_responses.json")["body"]
    turn = to_chat(ResponsesRequest.model_validate(body), ResponseStore(1, 60), "m")
    offered = [t.function.name for t in turn.chat.tools or []]
    namespaces = [t for t in body["tools"] if t["type"] == "namespace"]
    assert namespaces and all(f["name"] in offered for ns in namespaces for f in ns["tools"])
    assert "web_search" not in offered and any(t["type"] == "web_search" for t in body["tools"])
    plain = [t["name"] for t in body["tools"] if t["type"] == "function"]
    assert set(plain) <= set(offered)
    assert turn.chat.is_stream and turn.chat.max_output_tokens is None
    assert isinstance(turn.chat.messages, list) and turn.chat.messages[0].role in ("developer", "system")


def test_codexs_request_too_long_for_the_model_is_an_openai_400(server: LiveServer) -> None:
    recording = recorded("codex_responses.json")
    body = {**recording["body"], "model": server.model}
    r = httpx.post(f"{server.base_url}/v1/responses", json=body, headers=recording["headers"], timeout=120)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["code"] == "context_length_exceeded" and "maximum context length is 2048 tokens" in error["message"]


def test_claude_codes_request_too_long_for_the_model_is_an_anthropic_400(server: LiveServer) -> None:
    recording = recorded("claude_code_messages.json")
    body = {**recording["body"], "model": server.model}
    r = httpx.post(f"{server.base_url}{recording['path']}", json=body, headers=recording["headers"], timeout=120)
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    message = error["error"]["message"]
    assert message.startswith("prompt is too long: ") and message.endswith(" tokens > 2047 maximum")
    counted = httpx.post(
        f"{server.base_url}/v1/messages/count_tokens",
        json={k: body[k] for k in ("model", "messages", "system", "tools")},
        timeout=120,
    )
    assert int(message.split()[4]) == counted.json()["input_tokens"] > 2048
