"""The Anthropic Messages API on the real engines (tiny random model) through the anthropic SDK."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.conftest import LiveServer
from tests.test_responses import WEATHER

TOOL = {"name": "get_weather", "description": "Weather for a city.", "input_schema": WEATHER}
GREEDY = {"temperature": 0}  # the SDK dropped sampling parameters; the API still takes them
HELLO: list[Any] = [{"role": "user", "content": "Say hello."}]


def text_of(message: Any) -> str:
    return "".join(block.text for block in message.content if block.type == "text")


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0) as c:
        yield c


def test_create_is_the_chat_path_greedy(client: anthropic.Anthropic, server: LiveServer) -> None:
    m = client.messages.create(model="tiny", max_tokens=8, messages=HELLO, system="Be brief.", extra_body=GREEDY)
    assert m.id.startswith("msg_") and m.type == "message" and m.role == "assistant" and m.model == "tiny"
    assert [b.type for b in m.content] == ["text"]
    assert m.stop_reason == ("max_tokens" if m.usage.output_tokens == 8 else "end_turn")
    chat = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"messages": [{"role": "system", "content": "Be brief."}, *HELLO], "max_tokens": 8, "temperature": 0},
    ).json()
    assert m.content[0].text == chat["choices"][0]["message"]["content"]  # type: ignore[union-attr]
    assert m.usage.input_tokens + (m.usage.cache_read_input_tokens or 0) == chat["usage"]["prompt_tokens"]
    assert m.usage.output_tokens == chat["usage"]["completion_tokens"]


def test_stream_gives_the_same_message(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(model="tiny", max_tokens=12, messages=HELLO, extra_body=GREEDY)
    with client.messages.stream(model="tiny", max_tokens=12, messages=HELLO, extra_body=GREEDY) as stream:
        kinds = [event.type for event in stream]
        streamed = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert streamed.content[0].text == whole.content[0].text  # type: ignore[union-attr]
    assert streamed.stop_reason == whole.stop_reason and streamed.usage.output_tokens == whole.usage.output_tokens


def test_stop_sequence_is_named(client: anthropic.Anthropic) -> None:
    free = client.messages.create(model="tiny", max_tokens=24, messages=HELLO, extra_body=GREEDY)
    text = free.content[0].text  # type: ignore[union-attr]
    stop = text[len(text) // 2 :][:3]
    assert stop.strip(), f"the greedy text {text!r} gives no stop string"
    cut = client.messages.create(model="tiny", max_tokens=24, messages=HELLO, stop_sequences=[stop], extra_body=GREEDY)
    assert cut.stop_reason == "stop_sequence" and cut.stop_sequence == stop
    assert text_of(cut) == text[: text.index(stop)]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize(
    "choice", [{"type": "tool", "name": "get_weather"}, {"type": "any", "disable_parallel_tool_use": True}]
)
def test_forced_tool_use_validates(client: anthropic.Anthropic, choice: Any, stream: bool) -> None:
    args: dict[str, Any] = {"model": "tiny", "max_tokens": 80, "messages": [{"role": "user", "content": "Weather?"}]}
    args |= {"tools": [TOOL], "tool_choice": choice}
    if stream:
        with client.messages.stream(**args) as s:
            m = s.get_final_message()
    else:
        m = client.messages.create(**args)
    uses = [b for b in m.content if b.type == "tool_use"]
    assert len(uses) == 1 and m.stop_reason == "tool_use", m
    assert uses[0].id.startswith("toolu_") and uses[0].name == "get_weather"
    jsonschema.validate(uses[0].input, WEATHER)


def test_tool_result_round_trip(client: anthropic.Anthropic) -> None:
    ask: list[Any] = [{"role": "user", "content": "Weather in Rome?"}]
    first = client.messages.create(
        model="tiny", max_tokens=80, messages=ask, tools=[TOOL], tool_choice={"type": "tool", "name": "get_weather"}
    )
    use = next(b for b in first.content if b.type == "tool_use")
    result = {"type": "tool_result", "tool_use_id": use.id, "content": [{"type": "text", "text": "Sunny, 24 C"}]}
    turns: list[Any] = [*ask, {"role": "assistant", "content": first.content}, {"role": "user", "content": [result]}]
    second = client.messages.create(model="tiny", max_tokens=8, messages=turns, tools=[TOOL], extra_body=GREEDY)
    assert second.stop_reason in ("end_turn", "max_tokens", "tool_use") and second.content
    without = client.messages.count_tokens(model="tiny", messages=[*ask, turns[1]], tools=[TOOL])
    counted = client.messages.count_tokens(model="tiny", messages=turns, tools=[TOOL])
    assert counted.input_tokens > without.input_tokens  # the result is in the prompt
    assert second.usage.input_tokens + (second.usage.cache_read_input_tokens or 0) == counted.input_tokens


def test_cached_prompt_tokens_are_reported(client: anthropic.Anthropic, server: LiveServer) -> None:
    long = [{"role": "user", "content": "The capital of France is Paris. " * 80}]
    client.messages.create(model="tiny", max_tokens=1, messages=long)
    again = client.messages.create(model="tiny", max_tokens=1, messages=long)
    total = again.usage.input_tokens + (again.usage.cache_read_input_tokens or 0)
    assert total > 500
    if server.backend == "cpu":  # vLLM reports its prefix-cache hits per request; OpenVINO GenAI does not
        assert (again.usage.cache_read_input_tokens or 0) >= 256


def test_errors_are_the_sdks_own(client: anthropic.Anthropic) -> None:
    too_long = [{"role": "user", "content": "Hello there. " * 2000}]
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        client.messages.create(model="tiny", max_tokens=8, messages=too_long)
    with pytest.raises(anthropic.BadRequestError, match="does not accept images"):
        image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
        client.messages.create(model="tiny", max_tokens=8, messages=[{"role": "user", "content": [image]}])
    with pytest.raises(anthropic.BadRequestError) as caught:
        client.messages.create(model="tiny", max_tokens=8, messages=HELLO, extra_body={"top_k": -3})
    assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
