"""Keys, limits, admission, request ids, timeouts and logs, against the fake engine."""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from starlette.testclient import TestClient

from engine_server import Config, create_app
from engine_server.middleware import JsonFormatter
from tests.fake_engine import FakeEngine
from tests.test_app import CHAT, sse_events, wait_ready

KEYS = "key-one,key-two"


def make_client(engine: FakeEngine | None = None, **settings: object) -> TestClient:
    return TestClient(create_app(Config(model="m", **settings), engine=engine or FakeEngine()))  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["/v1/models", "/metrics", "/version", "/openapi.json"])
def test_api_key_guards_every_route_but_health(path: str) -> None:
    with make_client(api_key=KEYS) as c:
        wait_ready(c)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "key-one"}):
            r = c.get(path, headers=headers)
            assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        assert c.get(path, headers={"Authorization": "Bearer key-two"}).status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/v1/health_check").status_code == 200
        r = c.post(CHAT, json={"messages": "x"})
        assert r.status_code == 401


def test_secrets_never_appear_in_errors_metrics_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with make_client(api_key=KEYS, hf_token="hf_private_token") as c:
        wait_ready(c)
        auth = {"Authorization": "Bearer key-one"}
        texts = [
            c.get("/metrics", headers=auth).text,
            c.get("/v1/models", headers={"Authorization": "Bearer key-onX"}).text,
            c.post(CHAT, json={"messages": [], "user": "key-one"}, headers=auth).text,
            c.get("/version", headers=auth).text,
        ]
    logged = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    for secret in ("key-one", "key-two", "hf_private_token"):
        assert all(secret not in t for t in texts) and secret not in logged


def test_request_id_is_taken_or_made_and_returned(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="engine_server.access")
    with make_client() as c:
        wait_ready(c)
        assert c.get("/health", headers={"X-Request-Id": "trace-42"}).headers["x-request-id"] == "trace-42"
        made = c.get("/health").headers["x-request-id"]
        assert len(made) == 32
        assert c.get("/health", headers={"X-Request-Id": "bad id\n"}).headers["x-request-id"] != "bad id\n"
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records if r.name == "engine_server.access"]
    assert {"request_id": "trace-42", "message": "GET /health 200"}.items() <= lines[-3].items()


def test_body_size_limit_gives_413() -> None:
    with make_client(max_request_body_bytes=200) as c:
        wait_ready(c)
        r = c.post(CHAT, json={"messages": "x" * 300})
        assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

        def chunks():  # no Content-Length: the limit is enforced while reading
            yield b'{"messages": "'
            yield b"y" * 300
            yield b'"}'

        r = c.post(CHAT, content=chunks(), headers={"content-type": "application/json"})
        assert r.status_code == 413
        assert c.post(CHAT, json={"messages": "ok", "max_tokens": 1}).status_code == 200


def test_request_head_limit_gives_431() -> None:
    with make_client(max_header_bytes=2048) as c:
        wait_ready(c)
        r = c.get("/v1/models", headers={"X-Padding": "p" * 2100})
        assert r.status_code == 431 and r.json()["error"]["code"] == "headers_too_large"
        assert "2048 bytes" in r.json()["error"]["message"]
        assert c.get("/v1/models", headers={"X-Padding": "p" * 1500}).status_code == 200


def test_n_and_max_tokens_limits() -> None:
    with make_client(max_n=2, max_tokens_limit=5) as c:
        wait_ready(c)
        assert c.post(CHAT, json={"messages": "x", "n": 3}).json()["error"]["param"] == "n"
        assert c.post(CHAT, json={"messages": "x", "max_tokens": 6}).json()["error"]["param"] == "max_tokens"
        r = c.post(CHAT, json={"messages": "x"})  # unset: capped at the limit rather than refused
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 5


def test_request_timeout_stops_generation() -> None:
    engine = FakeEngine(step_delay=0.2)
    with make_client(engine, request_timeout=0.3) as c:
        wait_ready(c)
        r = c.post(CHAT, json={"messages": "x", "max_tokens": 9})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        events = sse_events(c.post(CHAT, json={"messages": "x", "max_tokens": 9, "stream": True}).text)
        assert events[-1]["error"]["code"] == "timeout" and len(events) < 9
    assert not engine.running


async def test_burst_beyond_the_bound_gets_only_200_and_429() -> None:
    engine = FakeEngine(step_delay=0.02)
    app = create_app(Config(model="m", max_concurrent_requests=4), engine=engine)
    async with app.lifespan(app):
        await asyncio.wait_for(engine.started.wait(), 5)
        await asyncio.sleep(0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            body = {"messages": "x", "max_tokens": 9}
            responses = await asyncio.gather(*(client.post(CHAT, json=body) for _ in range(20)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429} and statuses.count(200) >= 4
    for r in responses:
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["type"] == "rate_limit_error"
        else:
            assert r.json()["choices"][0]["text"] == "the quick brown fox jumps over the lazy dog"
    assert app.state.server.num_admitted == 0


def test_openapi_describes_the_routes() -> None:
    with make_client() as c:
        spec = c.get("/openapi.json").json()
    assert {"/v1/chat/completions", "/v1/completions", "/health"} <= set(spec["paths"])
    assert "messages" in spec["components"]["schemas"]["ChatCompletionRequest"]["properties"]
