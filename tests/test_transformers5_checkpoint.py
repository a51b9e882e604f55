"""A checkpoint saved by transformers 5 (tokenizer_class TokenizersBackend, chat_template.jinja), files unchanged,
served on both backends: the openvino one exports it with the openvino environment's transformers 4."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from model_prep.openvino_tokenizer import MIXED_TEXTS
from tests.conftest import BACKENDS, LiveServer, start_server, stop, wait_healthy

MIXED = " ".join(MIXED_TEXTS) + " <|user|>hi<|end|>"
GREEDY = {"temperature": 0, "max_tokens": 12}
USER = [{"role": "user", "content": "The capital of France is"}]


@pytest.fixture(scope="module")
def checkpoint(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama loaded and saved by this venv's transformers 5, as a user's fine-tune would be."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("saved-by-transformers-5") / "tiny-t5"
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    AutoModelForCausalLM.from_pretrained(tiny_model).save_pretrained(out)
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "TokenizersBackend" and (out / "chat_template.jinja").is_file()
    return out


def serve(model: Path, backend: str, tmp: Path, own_cache: bool = True) -> LiveServer:
    log = tmp / f"{backend}.log"
    args = [*BACKENDS[backend], "--model", str(model), "--max-model-len", "2048", "--served-model-name", "tiny"]
    # A cache of its own: the export this test is about runs, rather than one an earlier session left.
    args += ["--cache-dir", str(tmp / "cache")] if own_cache else []
    process, base_url = start_server(args, log, backend=backend)
    try:
        wait_healthy(process, base_url, log)
    except BaseException:
        stop(process)
        raise
    return LiveServer(base_url, process, log, "tiny", backend=backend)


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def server(
    request: pytest.FixtureRequest, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    live = serve(checkpoint, request.param, tmp_path_factory.mktemp(f"t5-{request.param}"))
    yield live
    stop(live.process)


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_chat_and_completions_answer(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(model="tiny", messages=USER, **GREEDY)  # type: ignore[call-overload]
    assert chat.choices[0].message.content and chat.usage.completion_tokens > 0
    text = client.completions.create(model="tiny", prompt="The capital of France is", **GREEDY)
    assert text.choices[0].text and text.usage.completion_tokens > 0


def test_tokenization_is_tokenizer_json_s(server: LiveServer, checkpoint: Path) -> None:
    from tokenizers import Tokenizer

    expected = Tokenizer.from_file(str(checkpoint / "tokenizer.json")).encode(MIXED).ids
    got = httpx.post(f"{server.base_url}/tokenize", json={"model": "tiny", "prompt": MIXED}).json()["tokens"]
    assert got == expected


def test_the_chat_prompt_is_the_saved_template_s(server: LiveServer) -> None:
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "return_token_strs": True}
    strs = httpx.post(f"{server.base_url}/tokenize", json=body).json()["token_strs"]
    assert "".join(strs).startswith("<s><|user|>") and strs[-2:] == ["<|assistant|>", "Ċ"]


def test_openvino_answers_as_for_the_same_weights_saved_by_transformers_4_files(
    server: LiveServer, client: openai.OpenAI, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Same engine, same weights, only the tokenizer files' format differs: the same greedy tokens."""
    if server.backend != "openvino":
        pytest.skip("compares two openvino exports")
    reference = serve(tiny_model, "openvino", tmp_path_factory.mktemp("t4-openvino"), own_cache=False)
    try:
        with openai.OpenAI(base_url=f"{reference.base_url}/v1", api_key="unused", max_retries=0) as other:
            got = [
                c.chat.completions.create(model="tiny", messages=USER, **GREEDY).choices[0].message.content  # type: ignore[call-overload]
                for c in (client, other)
            ]
    finally:
        stop(reference.process)
    assert got[0] == got[1]
