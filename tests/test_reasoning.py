"""Reasoning apart from the answer: the splitter on scripted pieces, the three APIs over the fake engine (whole and
streamed), and both real engines on a template that opens <think> in its generation prompt and has a switch."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from engine_server import Config, create_app
from engine_server.reasoning import ThinkSplitter, opened_in_prompt, split, uses_think
from tests.conftest import BACKENDS, LiveServer, start_server, stop, wait_healthy
from tests.fake_engine import FakeEngine
from tests.test_anthropic_http import check_block_order, named_events

# What a Qwen3 writes, cut at awkward places: inside both tags, and between the tag and its newline.
QWEN_PIECES = ["<th", "ink>", "\nLet me", " think.\n</", "think", ">\n\n", "The answer", " is 4."]
# What a DeepSeek-R1 distill writes after its prompt opened <think>: only the closing tag.
R1_PIECES = ["Let me", " think.\n", "</think>\n\nThe", " answer is 4."]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "2+2?"}], "max_tokens": 16}


def feed_all(pieces: list[str], inside: bool) -> tuple[list[str], list[str]]:
    splitter = ThinkSplitter(inside)
    reasoning, content = [], []
    for i, piece in enumerate(pieces):
        r, c = splitter.feed(piece, final=i == len(pieces) - 1)
        reasoning += [r] if r else []
        content += [c] if c else []
    return reasoning, content


@pytest.mark.parametrize("cut", range(1, 40))
def test_tags_split_anywhere_give_the_same_split(cut: int) -> None:
    text = "<think>\nLet me think.\n</think>\n\nThe answer is 4."
    pieces = [text[i : i + cut] for i in range(0, len(text), cut)]
    reasoning, content = feed_all(pieces, inside=False)
    assert ("".join(reasoning), "".join(content)) == ("Let me think.", "The answer is 4.")
    assert not any("<" in piece for piece in reasoning + content)  # no piece of a tag leaks out


def test_reasoning_streams_as_it_comes_and_a_tag_is_held_only_while_it_may_be_one() -> None:
    reasoning, content = feed_all(QWEN_PIECES, inside=False)
    assert reasoning == ["Let me", " think."] and content == ["The answer", " is 4."]
    assert feed_all(R1_PIECES, inside=True) == (["Let me", " think."], ["The", " answer is 4."])


def test_no_closing_tag_is_all_reasoning() -> None:
    assert split("Let me think and think", inside=True) == ("Let me think and think", "")
    assert split("<think>cut short by max_tokens", inside=False) == ("cut short by max_tokens", "")
    assert split("a < b </ c", inside=True) == ("a < b </ c", "")  # tag-like text at the end is given out


def test_think_opens_only_at_the_start_of_the_output_or_in_the_prompt() -> None:
    assert split("Hello <think>x</think>", inside=False) == ("", "Hello <think>x</think>")
    assert split("Plain answer.", inside=False) == ("", "Plain answer.")
    assert split("<b>bold</b>", inside=False) == ("", "<b>bold</b>")
    assert split("<think>\n\n</think>\n\nHi", inside=False) == ("", "Hi")  # an empty block: no reasoning


def test_the_prompt_says_where_the_output_starts() -> None:
    assert opened_in_prompt("<|user|>x<|assistant|><think>\n")  # DeepSeek-R1 distills
    assert not opened_in_prompt("<|user|>x<|assistant|><think>\n\n</think>\n\n")  # Qwen3, thinking off
    assert not opened_in_prompt("<|user|>x<|assistant|>")  # Qwen3, thinking on: the model opens it


def test_auto_reads_reasoning_where_the_template_writes_think() -> None:
    def qwen3(messages: list[dict[str, Any]], kwargs: dict[str, Any]) -> str:
        return "<think>\n\n</think>" if kwargs.get("enable_thinking") is False else "<|assistant|>"

    assert uses_think("auto", qwen3) and uses_think("think", lambda m, k: "x")
    assert not uses_think("auto", lambda m, k: "<|assistant|>") and not uses_think("none", qwen3)


# -- the three APIs over the fake engine ---------------------------------------------------------------------------


def client(engine: FakeEngine, **settings: Any) -> TestClient:
    return TestClient(create_app(Config(model="m", **settings), engine=engine))


def sse(text: str) -> list[dict[str, Any]]:
    lines = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
    return [json.loads(line) for line in lines if line != "[DONE]"]


@pytest.mark.parametrize(
    ("engine", "settings"),
    [
        (FakeEngine(reply=QWEN_PIECES, thinking="switch"), {}),  # auto: the template writes <think>
        (FakeEngine(reply=R1_PIECES, thinking="prompt"), {}),  # auto: the prompt opens it
        (FakeEngine(reply=QWEN_PIECES), {"reasoning_parser": "qwen3"}),  # a template that shows no <think>
    ],
)
def test_chat_reasoning_apart_whole_and_streamed(engine: FakeEngine, settings: dict[str, Any]) -> None:
    with client(engine, **settings) as c:
        message = c.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]
        chunks = sse(c.post("/v1/chat/completions", json={**CHAT, "stream": True}).text)
    assert message["content"] == "The answer is 4."
    assert message["reasoning_content"] == message["reasoning"] == "Let me think."
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert deltas[0]["role"] == "assistant"
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "Let me think."
    assert all(d.get("reasoning_content") == d.get("reasoning") for d in deltas)
    assert "".join(d.get("content") or "" for d in deltas) == "The answer is 4."
    last_reasoning = max(i for i, d in enumerate(deltas) if d.get("reasoning_content"))
    assert not any(d.get("content") for d in deltas[:last_reasoning])  # reasoning first


def test_without_a_reasoning_template_the_think_text_stays_content() -> None:
    with client(FakeEngine(reply=QWEN_PIECES)) as c:
        message = c.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]
        chunks = sse(c.post("/v1/chat/completions", json={**CHAT, "stream": True}).text)
    assert message["content"] == "".join(QWEN_PIECES) and "reasoning_content" not in message
    assert not any("reasoning_content" in chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"])
    with client(FakeEngine(reply=QWEN_PIECES, thinking="switch"), reasoning_parser="none") as c:
        assert c.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]["content"].startswith("<th")


def test_all_reasoning_has_no_content() -> None:
    with client(FakeEngine(reply=["Let me", " think"], thinking="prompt")) as c:
        message = c.post("/v1/chat/completions", json=CHAT).json()["choices"][0]["message"]
    assert message["content"] is None and message["reasoning_content"] == "Let me think"


def test_tool_calls_are_read_from_the_content_only() -> None:
    call = '<tool_call>\n{"name": "add", "arguments": {"a": 2}}\n</tool_call>'
    reply = ["<think>I could write <tool_call>", " but not here</think>", call]
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    with client(FakeEngine(max_model_len=4096, reply=reply, thinking="switch")) as c:
        body = {**CHAT, "tools": tools}
        message = c.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
        chunks = sse(c.post("/v1/chat/completions", json={**body, "stream": True}).text)
    assert message["reasoning_content"] == "I could write <tool_call> but not here"
    assert [t["function"]["name"] for t in message["tool_calls"]] == ["add"]
    streamed = [t for chunk in chunks for t in chunk["choices"][0]["delta"].get("tool_calls") or []]
    assert [t["function"]["name"] for t in streamed if "id" in t] == ["add"]


def test_a_reasoning_message_sent_back_reaches_the_template() -> None:
    engine = FakeEngine(reply=["Hi"], thinking="switch")
    turns = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "reasoning": "r"}]
    with client(engine) as c:
        assert c.post("/v1/chat/completions", json={**CHAT, "messages": turns}).status_code == 200
    assert engine.rendered[-1].startswith("<user>a<assistant><think>r</think>b")


RESPONSE = {"model": "m", "input": "2+2?", "max_output_tokens": 16}


def test_responses_reasoning_item_whole_and_streamed() -> None:
    body = {**RESPONSE, "include": ["reasoning.encrypted_content"]}
    with client(FakeEngine(reply=QWEN_PIECES, thinking="switch")) as c:
        output = c.post("/v1/responses", json=body).json()["output"]
        events = sse(c.post("/v1/responses", json={**body, "stream": True}).text)
    assert [item["type"] for item in output] == ["reasoning", "message"]
    item = output[0]
    assert item["id"].startswith("rs_") and item["encrypted_content"] == "Let me think."
    assert item["summary"] == [{"type": "summary_text", "text": "Let me think."}]
    assert item["content"] == [{"type": "reasoning_text", "text": "Let me think."}]
    assert output[1]["content"][0]["text"] == "The answer is 4."
    names = [e["type"] for e in events]
    assert "".join(e["delta"] for e in events if e["type"] == "response.reasoning_text.delta") == "Let me think."
    summary = "".join(e["delta"] for e in events if e["type"] == "response.reasoning_summary_text.delta")
    assert summary == "Let me think."
    for name in ("reasoning_summary_part.added", "reasoning_text.done", "reasoning_summary_text.done"):
        assert f"response.{name}" in names
    assert names.index("response.reasoning_text.done") < names.index("response.output_text.delta")
    final = events[-1]["response"]
    assert [i["type"] for i in final["output"]] == ["reasoning", "message"]
    assert final["output"][0]["encrypted_content"] == "Let me think."
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    with client(FakeEngine(reply=QWEN_PIECES, thinking="switch")) as c:
        assert "encrypted_content" not in c.post("/v1/responses", json=RESPONSE).json()["output"][0]


@pytest.mark.parametrize(("effort", "thinking"), [("none", False), ("minimal", False), ("low", True), ("high", True)])
def test_responses_effort_switches_the_template(effort: str, thinking: bool) -> None:
    engine = FakeEngine(reply=["Hi"], thinking="switch")
    with client(engine) as c:
        c.post("/v1/responses", json={**RESPONSE, "reasoning": {"effort": effort}})
    assert engine.template_kwargs[-1]["enable_thinking"] is thinking


def test_a_reasoning_item_sent_back_is_the_assistant_turns_reasoning() -> None:
    engine = FakeEngine(max_model_len=4096, reply=["Hi"], thinking="switch")
    reasoning = {"type": "reasoning", "summary": [{"type": "summary_text", "text": "I thought"}]}
    items = [
        {"type": "message", "role": "user", "content": "a"},
        reasoning,
        {"type": "message", "role": "assistant", "content": "b"},
        {"type": "message", "role": "user", "content": "c"},
    ]
    with client(engine) as c:
        assert c.post("/v1/responses", json={**RESPONSE, "input": items, "store": False}).status_code == 200
    prompt = engine.rendered[-1]
    assert "<assistant><think>I thought</think>b" in prompt


THINKING_MESSAGE = {"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "2+2?"}]}


def test_anthropic_thinking_block_whole_and_streamed() -> None:
    with client(FakeEngine(reply=QWEN_PIECES, thinking="switch")) as c:
        content = c.post("/v1/messages", json=THINKING_MESSAGE).json()["content"]
        events = named_events(c.post("/v1/messages", json={**THINKING_MESSAGE, "stream": True}).text)
    assert content == [
        {"type": "thinking", "thinking": "Let me think.", "signature": ""},
        {"type": "text", "text": "The answer is 4."},
    ]
    check_block_order(events)
    starts = [data["content_block"]["type"] for name, data in events if name == "content_block_start"]
    assert starts == ["thinking", "text"]
    deltas = [data["delta"] for name, data in events if name == "content_block_delta"]
    assert "".join(d.get("thinking", "") for d in deltas) == "Let me think."
    kinds = [d["type"] for d in deltas]
    assert kinds.index("signature_delta") == max(i for i, k in enumerate(kinds) if k == "thinking_delta") + 1


@pytest.mark.parametrize(("kind", "thinking"), [("enabled", True), ("adaptive", True), ("disabled", False)])
def test_anthropic_thinking_switches_the_template(kind: str, thinking: bool) -> None:
    engine = FakeEngine(reply=["Hi"], thinking="switch")
    body = {**THINKING_MESSAGE, "thinking": {"type": kind, **({"budget_tokens": 1024} if kind == "enabled" else {})}}
    with client(engine) as c:
        assert c.post("/v1/messages", json=body).status_code == 200
    assert engine.template_kwargs[-1]["enable_thinking"] is thinking


# -- both real engines --------------------------------------------------------------------------------------------

# Opens <think> in the generation prompt (as DeepSeek-R1 distills do), unless enable_thinking is false (as Qwen3's
# template does then: an empty block, so the output is the answer).
THINK_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% else %}<think>\n{% endif %}"
    "{% endif %}"
)


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def think_server(
    request: pytest.FixtureRequest, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("think-server") / f"{request.param}.log"
    args = [*BACKENDS[request.param], "--model", str(tiny_model), "--max-model-len", "512"]
    process, base_url = start_server(
        [*args, "--served-model-name", "tiny", "--chat-template", THINK_TEMPLATE], log, backend=request.param
    )
    try:
        wait_healthy(process, base_url, log)
        yield LiveServer(base_url, process, log, "tiny", backend=request.param)
    finally:
        stop(process)


def test_real_output_in_an_open_think_is_reasoning_and_the_switch_turns_it_off(think_server: LiveServer) -> None:
    base = {"model": "tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, "temperature": 0}
    with httpx.Client(base_url=think_server.base_url, timeout=120) as http:
        on = http.post("/v1/chat/completions", json=base).json()["choices"][0]["message"]
        chunks = sse(http.post("/v1/chat/completions", json={**base, "stream": True}).text)
        off_body = {**base, "chat_template_kwargs": {"enable_thinking": False}}
        off = http.post("/v1/chat/completions", json=off_body).json()["choices"][0]["message"]
        effort = {"model": "tiny", "input": "Hi", "max_output_tokens": 12, "temperature": 0}
        thinking = http.post("/v1/responses", json={**effort, "reasoning": {"effort": "high"}}).json()["output"]
        plain = http.post("/v1/responses", json={**effort, "reasoning": {"effort": "none"}}).json()["output"]
    # The random model never closes the tag: everything it wrote is reasoning.
    assert on["reasoning_content"] and on["reasoning"] == on["reasoning_content"] and on["content"] is None
    streamed = [chunk["choices"][0]["delta"] for chunk in chunks if chunk["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in streamed) == on["reasoning_content"]
    assert not any(d.get("content") for d in streamed)
    assert off["reasoning_content"] is None and off["content"]
    assert [item["type"] for item in thinking] == ["reasoning"]
    assert [item["type"] for item in plain] == ["message"]
