"""End to end: the real engine on real (tiny) weights, through the openai SDK and plain HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import LiveServer

SEED_CURL_BODIES = [  # the reference service's README lines, sent verbatim
    '{"model": "${model_name}", "messages": "What is Deep Learning?", "max_tokens":17}',
    '{"model": "${model_name}", "messages": [{"role": "user", "content": "What is Deep Learning?"}], "max_tokens":17}',
    '{"model": "${model_name}", "messages": "What is Deep Learning?", "max_tokens":17, "stream":false}',
]
USER = [{"role": "user", "content": "The capital of France is"}]
GREEDY = {"temperature": 0, "max_tokens": 12}
LONG = 2000  # output tokens of the requests the disconnect tests abandon


def assert_engine_idle_within(server: LiveServer, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while server.metric("engine_server_requests_running") + server.metric("engine_server_requests_waiting") > 0:
        assert time.monotonic() < deadline, "the engine still runs the abandoned request"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def chat_text(client: openai.OpenAI, **kwargs: object) -> str:
    r = client.chat.completions.create(model="tiny", messages=USER, **kwargs)  # type: ignore[call-overload]
    return str(r.choices[0].message.content)


def test_models_lists_the_served_model(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["tiny"]


def test_port_answered_503_while_the_engine_started(server: LiveServer) -> None:
    assert server.first_health_status == 503


def test_health_routes(server: LiveServer) -> None:
    assert httpx.get(f"{server.base_url}/health").status_code == 200
    r = httpx.get(f"{server.base_url}/v1/health_check")
    assert r.status_code == 200
    assert r.json()["Service Title"] == "opea_service@llm_vllm"
    assert httpx.get(f"{server.base_url}/version").json()["engine_version"]


@pytest.mark.parametrize("body", SEED_CURL_BODIES)
def test_seed_curl_lines(server: LiveServer, body: str) -> None:
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert r.status_code == 200, r.text
    data = r.json()
    assert data["model"] == "tiny"  # the name is ignored; the response says which model answered
    choice = data["choices"][0]
    text = choice["text"] if isinstance(json.loads(body)["messages"], str) else choice["message"]["content"]
    assert data["object"] == ("text_completion" if "text" in choice else "chat.completion")
    assert data["usage"]["completion_tokens"] <= 17
    # The seed's lines sample (no temperature, no seed): the tiny model ends its answer at once about 1 time in 400
    # (its end-of-sequence token drawn first). Any other answer has text.
    assert text or choice["finish_reason"] == "stop", choice


def test_chat_sync_stream_equals_non_stream_greedy(client: openai.OpenAI) -> None:
    plain = chat_text(client, **GREEDY)
    stream = client.chat.completions.create(model="tiny", messages=USER, stream=True, **GREEDY)  # type: ignore[call-overload]
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == plain
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_completions_sync_stream_equals_non_stream_greedy(client: openai.OpenAI) -> None:
    plain = client.completions.create(model="tiny", prompt="The capital of France is", **GREEDY)
    stream = client.completions.create(model="tiny", prompt="The capital of France is", stream=True, **GREEDY)
    assert "".join(c.choices[0].text for c in stream) == plain.choices[0].text
    assert plain.usage is not None and plain.usage.completion_tokens <= 12


async def test_async_client_streams_concurrently(server: LiveServer) -> None:
    aclient = openai.AsyncOpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)

    async def one(i: int) -> str:
        stream = await aclient.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"count {i}"}], stream=True, max_tokens=8, temperature=0
        )
        return "".join([c.choices[0].delta.content or "" async for c in stream])

    async with aclient:
        texts = await asyncio.gather(*(one(i) for i in range(8)))
    assert all(texts)


def test_usage_counts_with_ignore_eos(client: openai.OpenAI) -> None:
    r = client.completions.create(model="tiny", prompt="hello", max_tokens=9, extra_body={"ignore_eos": True})
    assert r.usage is not None and r.usage.completion_tokens == 9 and r.choices[0].finish_reason == "length"
    s = client.completions.create(
        model="tiny",
        prompt="hello",
        max_tokens=5,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    last = list(s)[-1]
    assert last.usage is not None and last.usage.completion_tokens == 5
    assert last.usage.prompt_tokens == r.usage.prompt_tokens >= 2  # BOS + the prompt


def test_n_and_seed_are_reproducible(client: openai.OpenAI) -> None:
    def sample(seed: int) -> list[str]:
        r = client.chat.completions.create(model="tiny", messages=USER, n=3, seed=seed, temperature=1.0, max_tokens=8)
        return [str(c.message.content) for c in sorted(r.choices, key=lambda c: c.index)]

    first, again, other = sample(7), sample(7), sample(8)
    assert len(first) == 3 and first == again and first != other


def test_stop_string_cuts_the_output(client: openai.OpenAI) -> None:
    full = client.completions.create(model="tiny", prompt="The capital", temperature=0, max_tokens=16).choices[0].text
    stop = full.strip()[3:6]
    assert stop.strip(), full
    cut = client.completions.create(model="tiny", prompt="The capital", temperature=0, max_tokens=16, stop=[stop])
    assert cut.choices[0].finish_reason == "stop"
    assert stop not in cut.choices[0].text and full.startswith(cut.choices[0].text)


def test_sampling_parameters_are_honored(client: openai.OpenAI) -> None:
    greedy = chat_text(client, temperature=0, max_tokens=16)
    # top_k=1 and min_p=1 keep only the most likely token: sampling at temperature 1 then equals greedy.
    assert chat_text(client, temperature=1.0, max_tokens=16, seed=3, extra_body={"top_k": 1}) == greedy
    assert chat_text(client, temperature=1.0, max_tokens=16, seed=3, extra_body={"min_p": 1.0}) == greedy
    # Penalties change what greedy decoding of a random model repeats.
    assert chat_text(client, temperature=0, max_tokens=16, extra_body={"repetition_penalty": 1.8}) != greedy
    assert chat_text(client, temperature=0, max_tokens=16, frequency_penalty=2.0) != greedy
    assert chat_text(client, temperature=0, max_tokens=16, presence_penalty=2.0) != greedy
    # The OPEA alias of max_tokens.
    r = client.chat.completions.create(
        model="tiny", messages=USER, extra_body={"max_new_tokens": 3, "ignore_eos": True}
    )
    assert r.usage is not None and r.usage.completion_tokens == 3


def test_logprobs(client: openai.OpenAI, server: LiveServer) -> None:
    top = 3
    if server.backend == "openvino":
        # OpenVINO reports the chosen token's log-probability only: more alternatives are refused, never faked.
        with pytest.raises(openai.BadRequestError, match="can be 0 or 1 here, not 3"):
            client.chat.completions.create(model="tiny", messages=USER, logprobs=True, top_logprobs=3, max_tokens=5)
        with pytest.raises(openai.BadRequestError, match="can be 0 or 1 here, not 2"):
            client.completions.create(model="tiny", prompt="hi", logprobs=2, max_tokens=4, temperature=0)
        top = 1
    r = client.chat.completions.create(
        model="tiny", messages=USER, logprobs=True, top_logprobs=top, max_tokens=5, temperature=0
    )
    content = r.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == r.usage.completion_tokens  # type: ignore[union-attr]
    for token in content:
        assert len(token.top_logprobs) == top and token.logprob <= 0
        # Greedy picks the most likely token.
        assert token.logprob == pytest.approx(max(t.logprob for t in token.top_logprobs))
    c = client.completions.create(model="tiny", prompt="hi", logprobs=top - 1, max_tokens=4, temperature=0)
    lp = c.choices[0].logprobs
    assert lp is not None and len(lp.tokens or []) == len(lp.token_logprobs or []) == len(lp.top_logprobs or [])


def test_chat_template_override_and_content_parts(client: openai.OpenAI, server: LiveServer) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "The capital of France is"}]}]
    r = client.chat.completions.create(model="tiny", messages=parts, **GREEDY)  # type: ignore[arg-type]
    assert r.choices[0].message.content == chat_text(client, **GREEDY)
    raw = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"messages": USER, "chat_template": "{{ messages[0]['content'] }}", "max_tokens": 4, "temperature": 0},
    ).json()
    assert (
        raw["usage"]["prompt_tokens"]
        == client.completions.create(model="tiny", prompt="The capital of France is", max_tokens=1).usage.prompt_tokens
        - 1
    )  # type: ignore[union-attr]  # the override has no BOS; the raw prompt gets one


@pytest.mark.parametrize(
    "body,param",
    [
        ({"messages": "word " * 2100}, "messages"),
        ({"messages": "hi", "max_tokens": 2100}, "max_tokens"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"messages": []}, "messages"),
        ({"messages": "hi", "top_k": "many"}, "top_k"),
        ({"messages": "hi", "typical_p": 0.5}, "typical_p"),
        ({"messages": "hi", "stop_token_ids": [10**9]}, None),
    ],
)
def test_bad_input_gets_400_and_the_server_still_serves(
    server: LiveServer, client: openai.OpenAI, body: dict[str, object], param: str | None
) -> None:
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    if param:
        assert r.json()["error"]["param"] == param
    # The server still serves. (A sampled token of the random model may decode to no text, so count tokens.)
    after = client.chat.completions.create(model="tiny", messages=USER, max_tokens=2)  # type: ignore[arg-type]
    assert after.usage is not None and after.usage.completion_tokens >= 1
    assert after.choices[0].finish_reason in ("stop", "length")


@pytest.fixture(scope="module")
def long_request_seconds(client: openai.OpenAI) -> float:
    """Seconds a LONG request takes to finish on this machine, now.

    Timing the whole request keeps the disconnect tests meaningful on fast and on loaded machines alike: each test
    abandons its request well before it could finish and gives the engine half of that time to go idle, so a request
    that was not aborted would still be running at the deadline.
    """
    started = time.monotonic()
    r = client.completions.create(model="tiny", prompt="story", max_tokens=LONG, extra_body={"ignore_eos": True})
    assert r.usage is not None and r.usage.completion_tokens == LONG
    return time.monotonic() - started


def freeing_deadline(long_request_seconds: float) -> float:
    """Seconds an abandoned LONG request may still run: half of what finishing it takes."""
    return min(2.0, long_request_seconds / 2)


def test_client_disconnect_mid_stream_frees_the_engine(server: LiveServer, long_request_seconds: float) -> None:
    body = {"messages": "story", "max_tokens": LONG, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        assert server.metric("engine_server_requests_running") == 1
    assert_engine_idle_within(server, freeing_deadline(long_request_seconds))


def test_client_timeout_on_non_streaming_request_frees_the_engine(
    server: LiveServer, long_request_seconds: float
) -> None:
    """The client gives up at a quarter of the time the request needs (0.5 s at most), so it cannot have finished."""
    body = {"messages": "story", "max_tokens": LONG, "ignore_eos": True}
    read_timeout = min(0.5, long_request_seconds / 4)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=httpx.Timeout(30, read=read_timeout))
    assert_engine_idle_within(server, freeing_deadline(long_request_seconds))


def test_cached_prompt_tokens_in_usage(client: openai.OpenAI, server: LiveServer) -> None:
    """A repeated prompt is served from the prefix cache, and usage says how much of it, where the engine reports
    it (vLLM per request; OpenVINO GenAI does not, so there the field is absent rather than a made-up 0)."""
    messages = [{"role": "user", "content": "The capital of Italy is Rome. " * 80}]
    client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)  # type: ignore[arg-type]
    again = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)  # type: ignore[arg-type]
    streamed = client.chat.completions.create(
        model="tiny",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=1,
        stream=True,
        stream_options={"include_usage": True},
    )
    stream_usage = [chunk.usage for chunk in streamed if chunk.usage is not None][-1]
    response = client.responses.create(model="tiny", input=messages[0]["content"], max_output_tokens=1)
    assert again.usage is not None and again.usage.prompt_tokens > 500 and response.usage is not None
    if server.backend == "cpu":
        for usage in (again.usage, stream_usage):
            assert usage.prompt_tokens_details is not None
            assert 256 <= (usage.prompt_tokens_details.cached_tokens or 0) < usage.prompt_tokens
        assert response.usage.input_tokens_details.cached_tokens >= 256
    else:
        assert again.usage.prompt_tokens_details is None and stream_usage.prompt_tokens_details is None
        assert response.usage.input_tokens_details.cached_tokens == 0
