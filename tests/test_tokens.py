"""POST /tokenize and /detokenize: shapes and errors against the fake engine, then both real backends over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from engine_server import Config, create_app
from tests.conftest import LiveServer
from tests.fake_engine import BOS, BOS_ID, FakeEngine
from tests.test_app import CHAT, wait_ready

USER = [{"role": "user", "content": "The capital of France is"}]


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(create_app(Config(model="fake-model"), engine=FakeEngine())) as c:
        wait_ready(c)
        yield c


def assert_bad_request(r: httpx.Response, param: str | None) -> dict[str, Any]:
    assert r.status_code == 400, r.text
    error: dict[str, Any] = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    return error


# -- against the fake engine ---------------------------------------------------------------------------------------


def test_tokenize_a_prompt(client: TestClient) -> None:
    r = client.post("/tokenize", json={"model": "fake-model", "prompt": "hi"})
    assert r.status_code == 200
    assert r.json() == {"count": 3, "max_model_len": 64, "tokens": [BOS_ID, ord("h"), ord("i")], "token_strs": None}


def test_tokenize_without_special_tokens(client: TestClient) -> None:
    r = client.post("/tokenize", json={"prompt": "hi", "add_special_tokens": False})
    assert r.json()["tokens"] == [ord("h"), ord("i")] and r.json()["count"] == 2


def test_tokenize_returns_token_strings_when_asked(client: TestClient) -> None:
    r = client.post("/tokenize", json={"prompt": "hi", "return_token_strs": True})
    assert r.json()["token_strs"] == [BOS, "h", "i"]
    r = client.post("/tokenize", json={"messages": [{"role": "user", "content": "a"}], "return_token_strs": True})
    assert "".join(r.json()["token_strs"]) == "<user>a<assistant>"


def test_tokenize_messages_gives_the_chat_completion_prompt(client: TestClient) -> None:
    r = client.post("/tokenize", json={"messages": USER})
    assert r.status_code == 200
    body = r.json()
    assert body["tokens"] == [ord(c) for c in "<user>The capital of France is<assistant>"]
    assert body["count"] == len(body["tokens"]) and body["token_strs"] is None
    usage = client.post(CHAT, json={"messages": USER, "max_tokens": 1}).json()["usage"]
    assert usage["prompt_tokens"] == body["count"]
    parts = [{"role": "user", "content": [{"type": "text", "text": "The capital"}, {"type": "text", "text": "x"}]}]
    assert client.post("/tokenize", json={"messages": parts}).json()["count"] == len("<user>The capital\nx<assistant>")


def test_tokenize_messages_refuses_what_vllm_refuses_or_we_cannot_do(client: TestClient) -> None:
    both = {"messages": USER, "continue_final_message": True}
    assert_bad_request(client.post("/tokenize", json=both), "continue_final_message")
    r = client.post("/tokenize", json={**both, "add_generation_prompt": False})
    assert r.status_code == 200
    r = client.post("/tokenize", json={"messages": USER, "add_special_tokens": True})
    assert_bad_request(r, "add_special_tokens")


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "x", "temperature": 1}, "temperature"),
        ({"prompt": "x", "messages": USER}, "prompt"),  # one form or the other
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
        ({"messages": USER, "return_token_strs": "maybe"}, "return_token_strs"),
    ],
)
def test_tokenize_refuses_bad_bodies(client: TestClient, body: dict[str, Any], param: str) -> None:
    assert_bad_request(client.post("/tokenize", json=body), param)


def test_detokenize_round_trip(client: TestClient) -> None:
    text = "The capital of France is Paris."
    tokens = client.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()["tokens"]
    r = client.post("/detokenize", json={"model": "fake-model", "tokens": tokens})
    assert r.status_code == 200 and r.json() == {"prompt": text}
    tokens = client.post("/tokenize", json={"prompt": text}).json()["tokens"]
    # Special tokens stay: this is the prompt the ids are.
    assert client.post("/detokenize", json={"tokens": tokens}).json() == {"prompt": BOS + text}


def test_detokenize_no_tokens_is_no_text(client: TestClient) -> None:
    r = client.post("/detokenize", json={"tokens": []})
    assert r.status_code == 200 and r.json() == {"prompt": ""}


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tokens": [104, -1]}, "tokens.1"),
        ({"tokens": ["104"]}, "tokens.0"),
        ({"tokens": [1.5]}, "tokens.0"),
        ({"tokens": [True]}, "tokens.0"),
        ({"tokens": [None]}, "tokens.0"),
        ({"tokens": "104"}, "tokens"),
        ({"tokens": 104}, "tokens"),
        ({}, "tokens"),
        ({"tokens": [104], "skip_special_tokens": True}, "skip_special_tokens"),
        ({"tokens": [104, 256]}, "tokens"),  # out of the vocabulary: the engine's refusal
        ({"tokens": [2**70]}, "tokens"),
    ],
)
def test_detokenize_refuses_bad_bodies(client: TestClient, body: dict[str, Any], param: str) -> None:
    error = assert_bad_request(client.post("/detokenize", json=body), param)
    if param == "skip_special_tokens":
        assert error["message"] == "Unsupported parameter: 'skip_special_tokens' is not a field this server accepts"


@pytest.mark.parametrize("path", ["/tokenize", "/detokenize"])
@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff"])
def test_bodies_that_are_not_a_json_object_are_refused(client: TestClient, path: str, content: bytes) -> None:
    r = client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_strict_model_name_refuses_other_names() -> None:
    config = Config(model="m", served_model_name="mine", strict_model_name=True)
    with TestClient(create_app(config, engine=FakeEngine())) as c:
        wait_ready(c)
        for path, body in (("/tokenize", {"prompt": "hi"}), ("/detokenize", {"tokens": [104]})):
            r = c.post(path, json={**body, "model": "other"})
            assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
            assert c.post(path, json={**body, "model": "mine"}).status_code == 200
            assert c.post(path, json=body).status_code == 200


def test_routes_need_the_api_key() -> None:
    with TestClient(create_app(Config(model="m", api_key="key-one"), engine=FakeEngine())) as c:
        wait_ready(c)
        for path, body in (("/tokenize", {"prompt": "hi"}), ("/detokenize", {"tokens": [104]})):
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                r = c.post(path, json=body, headers=headers)
                assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            assert c.post(path, json=body, headers={"Authorization": "Bearer key-one"}).status_code == 200


def test_routes_answer_503_while_the_model_loads() -> None:
    engine = FakeEngine()
    engine.release_start.clear()
    with TestClient(create_app(Config(model="m"), engine=engine)) as c:
        for path, body in (("/tokenize", {"prompt": "hi"}), ("/detokenize", {"tokens": [104]})):
            r = c.post(path, json=body)
            assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading"
        c.portal.call(engine.release_start.set)  # type: ignore[union-attr]


def test_openapi_describes_both_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    tokenize = spec["paths"]["/tokenize"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert len(tokenize["oneOf"]) == 2
    assert "messages" in spec["components"]["schemas"]["TokenizeChatRequest"]["properties"]
    assert "tokens" in spec["components"]["schemas"]["DetokenizeRequest"]["properties"]


# -- against the real engines (cpu and openvino), over HTTP ---------------------------------------------------------


def post(server: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json={"model": server.model, **body}, timeout=60)


def test_real_tokenize_then_detokenize_gives_the_text_back(server: LiveServer) -> None:
    text = 'The capital of France is Paris. {"ok": true}'
    r = post(server, "/tokenize", {"prompt": text, "add_special_tokens": False, "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) == len(body["token_strs"]) > 1
    assert body["max_model_len"] == 2048
    assert post(server, "/detokenize", {"tokens": body["tokens"]}).json() == {"prompt": text}
    with_bos = post(server, "/tokenize", {"prompt": text}).json()
    assert with_bos["tokens"] == [with_bos["tokens"][0], *body["tokens"]]  # the tiny tokenizer adds BOS only
    assert post(server, "/detokenize", {"tokens": with_bos["tokens"]}).json() == {"prompt": "<s>" + text}


def test_real_tokenize_messages_counts_the_chat_prompt(server: LiveServer) -> None:
    r = post(server, "/tokenize", {"messages": USER, "return_token_strs": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 2048
    assert body["token_strs"][0] == "<s>" and "<|assistant|>" in body["token_strs"]
    usage = post(server, CHAT, {"messages": USER, "max_tokens": 1}).json()["usage"]
    assert usage["prompt_tokens"] == body["count"]


def test_real_tokenize_continues_the_final_message(server: LiveServer) -> None:
    messages = [*USER, {"role": "assistant", "content": "Paris, and"}]
    body = {"messages": messages, "add_generation_prompt": False, "continue_final_message": True}
    tokens = post(server, "/tokenize", body).json()["tokens"]
    assert post(server, "/detokenize", {"tokens": tokens}).json()["prompt"].endswith("<|assistant|>\nParis, and")


@pytest.mark.parametrize("tokens", [[1, 2048], [10**12], [-1]])
def test_real_detokenize_refuses_ids_outside_the_vocabulary(server: LiveServer, tokens: list[int]) -> None:
    error = post(server, "/detokenize", {"tokens": tokens}).json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] in ("tokens", "tokens.0")
    assert post(server, "/detokenize", {"tokens": [1]}).status_code == 200
