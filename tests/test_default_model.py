"""The default model (smollm2-135m-instruct) as a new user gets it: no --model, no --hw-mode, greedy chat through
HTTP and the openai SDK, on both CPU engines. In .venv, hw_mode auto runs vLLM CPU; in .venv-openvino, OpenVINO."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from model_prep import builtin_models
from tests.conftest import ROOT, LiveServer, backend_python, start_server, stop, wait_healthy
from tests.test_e2e import SEED_CURL_BODIES
from tests.test_library import readme_example

NAME = "smollm2-135m-instruct"
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 48}


@pytest.fixture(scope="module", params=["cpu", "openvino"])
def default_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A fresh cache each: the first start prepares the model (and on openvino exports it) by itself."""
    cache = tmp_path_factory.mktemp(f"default-{request.param}")
    log = cache / "server.log"
    env = {"ENGINE_SERVER_CACHE_DIR": str(cache)}
    process, url = start_server(["--kv-cache-space", "2", "--log-format", "text"], log, env, backend=request.param)
    try:
        wait_healthy(process, url, log)
        yield LiveServer(url, process, log, NAME, backend=request.param)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def client(default_server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{default_server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def ask(client: openai.OpenAI, messages: list[dict[str, str]]) -> str:
    r = client.chat.completions.create(model=NAME, messages=messages, **GREEDY)  # type: ignore[arg-type]
    return str(r.choices[0].message.content)


def test_auto_picks_the_engine_of_the_environment_and_says_why(default_server: LiveServer) -> None:
    version = httpx.get(f"{default_server.base_url}/version").json()
    assert version["backend"] == default_server.backend
    assert version["backend_reason"].startswith("hw_mode auto:")
    check = httpx.get(f"{default_server.base_url}/v1/health_check").json()
    assert check["Engine"] == default_server.backend and check["Engine Selection"] == version["backend_reason"]
    log = default_server.log.read_text()
    assert f"engine: {default_server.backend} (hw_mode auto" in log
    assert "reading the GGUF" in log and f"{NAME} ready in" in log  # prepared at the first start, with progress


def test_knows_the_capital_of_france(client: openai.OpenAI) -> None:
    assert "Paris" in ask(client, [{"role": "user", "content": "What is the capital of France?"}])


@pytest.mark.parametrize("body", SEED_CURL_BODIES)
def test_seed_curl_lines_get_english_text(default_server: LiveServer, body: str) -> None:
    r = httpx.post(
        f"{default_server.base_url}/v1/chat/completions",
        content=body,
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    raw = isinstance(json.loads(body)["messages"], str)
    text = choice["text"] if raw else choice["message"]["content"]
    # A raw prompt (no chat template) may be ended at once by a chat model's sampled end of turn; a chat must answer.
    assert (raw or text.strip()) and "\ufffd" not in text and choice["finish_reason"] in ("stop", "length"), text
    words = [w for w in text.split() if w.isalpha()]
    assert (raw or words) and all(w.isascii() for w in words), text  # English words, no stray scripts


def test_a_conversation_with_a_system_message_keeps_its_roles(
    client: openai.OpenAI, default_server: LiveServer
) -> None:
    messages = [
        {"role": "system", "content": "You are a geography teacher. Answer in one short sentence."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "And what is the capital of Italy?"},
    ]
    # The model answers the last user turn, not an earlier one, and writes its own turn, not the user's.
    answer = ask(client, messages)
    assert "Rome" in answer and "<|im_start|>" not in answer, answer
    # The roles reach the model as ChatML turns: the prompt is exactly the rendered conversation.
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=1)  # type: ignore[arg-type]
    rendered = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
    rendered += "<|im_start|>assistant\n"
    raw = httpx.post(
        f"{default_server.base_url}/v1/completions", json={"prompt": rendered, "max_tokens": 1}, timeout=60
    ).json()
    assert r.usage is not None and r.usage.prompt_tokens == raw["usage"]["prompt_tokens"]


def run_readme_example(name: str, server: LiveServer, capsys: pytest.CaptureFixture[str]) -> tuple[dict[str, Any], str]:
    """A README example run as written against the server: its variables, and what it printed."""
    code = readme_example(name)
    assert "http://localhost:9000/v1" in code
    namespace: dict[str, Any] = {}
    exec(code.replace("http://localhost:9000/v1", f"{server.base_url}/v1"), namespace)
    return namespace, capsys.readouterr().out


def test_readme_tool_call_example_calls_the_weather_tool(
    default_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    names, printed = run_readme_example("tools", default_server, capsys)
    call = names["call"]
    assert call.function.name == "get_weather" and call.id.startswith("call_")
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, names["weather"]["function"]["parameters"])
    assert arguments["city"] == "Paris", arguments  # greedy: the model fills in the city it was asked about
    assert names["reply"].choices[0].finish_reason == "tool_calls"
    assert printed.startswith(f"get_weather {call.function.arguments}\n")
    assert names["final"].choices[0].message.content  # the tool's result turn is answered


def test_readme_responses_example_continues_the_conversation(
    default_server: LiveServer, capsys: pytest.CaptureFixture[str]
) -> None:
    names, _ = run_readme_example("responses", default_server, capsys)
    assert "Paris" in names["response"].output_text
    assert "Rome" in names["follow_up"].output_text, names["follow_up"].output_text
    assert names["follow_up"].previous_response_id == names["response"].id


@pytest.mark.parametrize("api", ["responses", "chat"])
@pytest.mark.parametrize("streamed", [False, True])
async def test_an_openai_agents_sdk_agent_calls_its_tool(default_server: LiveServer, api: str, streamed: bool) -> None:
    """An agent of the openai Agents SDK, unchanged, on either API: it calls its function tool, then answers."""
    import agents

    calls: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """The current weather in a city."""
        calls.append(city)
        return f"It is sunny and 18 degrees in {city}."

    client = openai.AsyncOpenAI(base_url=f"{default_server.base_url}/v1", api_key="unused", max_retries=0)
    kind = agents.OpenAIResponsesModel if api == "responses" else agents.OpenAIChatCompletionsModel
    agent = agents.Agent(
        name="weather",
        instructions="Answer with the weather tool.",
        tools=[get_weather],
        model=kind(NAME, client),
        model_settings=agents.ModelSettings(tool_choice="required", temperature=0),
        reset_tool_choice=True,  # after the call, the model may answer in text
    )
    agents.set_tracing_disabled(True)
    question = "What is the weather in Paris?"
    if streamed:
        run = agents.Runner.run_streamed(agent, question, max_turns=3)
        async for _ in run.stream_events():
            pass
        final = run.final_output
    else:
        final = (await agents.Runner.run(agent, question, max_turns=3)).final_output
    await client.close()
    assert calls == ["Paris"]  # one call, with arguments the SDK parsed against the tool's signature
    assert isinstance(final, str) and final.strip() and "<tool_" not in final


def test_both_backends_tokenize_alike(tmp_path: Path) -> None:
    """The cpu backend's tokenizer (transformers 5, .venv) and the openvino backend's (transformers 4 and the
    OpenVINO tokenizer its export converts, .venv-openvino) give the same ids for the same text."""
    from transformers import AutoTokenizer

    from tests.test_builtin_models import MIXED_TEXT

    cache = tmp_path / "cache"
    hf_dir = builtin_models.prepare(cache)
    tokenizer: Any = AutoTokenizer.from_pretrained(hf_dir)
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "What is Deep Learning?"}], tokenize=False)
    texts = [*MIXED_TEXT, chat]
    script = (
        "import json, sys, openvino_genai\n"
        "from pathlib import Path\n"
        "from transformers import AutoTokenizer\n"
        "from engine_server.config import Config\n"
        "from model_prep.sources import resolve\n"
        "path = resolve(Config(cache_dir=Path(sys.argv[1])), 'openvino')\n"
        "texts = json.loads(sys.stdin.read())\n"
        "hf, ov = AutoTokenizer.from_pretrained(path), openvino_genai.Tokenizer(path)\n"
        "print(json.dumps([[hf(t)['input_ids'] for t in texts],"
        " [ov.encode(t, add_special_tokens=False).input_ids.data.tolist()[0] for t in texts]]))\n"
    )
    out = subprocess.run(
        [backend_python("openvino"), "-c", script, str(cache)],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    hf_ids, ov_ids = json.loads(out.stdout.splitlines()[-1])
    expected = [tokenizer(t)["input_ids"] for t in texts]
    assert hf_ids == expected and ov_ids == expected
