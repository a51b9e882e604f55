"""The built-in default model: prepared once per session for real, the cache logic also with fake builders."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from engine_server import default_model
from tests.conftest import LiveServer, start_server, stop, wait_healthy


def _planted_leftover(cache: Path) -> Path:
    # What a SIGKILLed run leaves: a temp build dir with a partial file, and no marker anywhere.
    final = default_model.model_dir(cache)
    final.parent.mkdir(parents=True, exist_ok=True)
    leftover = final.parent / f".{final.name}.tmp-killed"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"partial")
    return leftover


@pytest.fixture(scope="session")
def interrupted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A fresh cache in which one preparation was interrupted mid-conversion and one was killed outright."""
    cache = tmp_path_factory.mktemp("cache")

    def interrupt(gguf: Path, out: Path, step: Any) -> None:
        (out / "model.safetensors").write_bytes(b"half written")
        raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(default_model, "_convert_hf", interrupt)
        with pytest.raises(KeyboardInterrupt):
            default_model.prepare(cache)
    final = default_model.model_dir(cache)
    seen = {
        "is_prepared": default_model.is_prepared(cache),
        "final_exists": final.exists(),
        "temp_dirs": [p.name for p in final.parent.iterdir() if p.is_dir()],
    }
    return {"cache": cache, "seen": seen, "leftover": _planted_leftover(cache)}


@pytest.fixture(scope="session")
def prepared(interrupted: dict[str, Any]) -> dict[str, Any]:
    """The one real conversion of the session (about a minute), in the cache the interrupted run left."""
    messages: list[str] = []
    path = default_model.prepare(interrupted["cache"], progress=messages.append)
    return {"cache": interrupted["cache"], "path": path, "messages": messages}


def test_interrupted_preparation_is_never_served(interrupted: dict[str, Any], prepared: dict[str, Any]) -> None:
    assert interrupted["seen"] == {"is_prepared": False, "final_exists": False, "temp_dirs": []}
    # The next run cleaned up the killed run's temp dir and built a complete cache.
    assert not interrupted["leftover"].exists()
    assert any("removing an incomplete earlier preparation" in m for m in prepared["messages"])
    assert prepared["path"] == default_model.model_dir(interrupted["cache"])
    assert default_model.is_prepared(interrupted["cache"])
    assert [p.name for p in prepared["path"].parent.iterdir() if p.is_dir()] == [prepared["path"].name]


def test_second_prepare_skips_conversion(prepared: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(default_model, "_convert_hf", lambda gguf, out, step: calls.append(out))
    messages: list[str] = []
    assert default_model.prepare(prepared["cache"], progress=messages.append) == prepared["path"]
    assert calls == [] and messages == []


def test_progress_reports_each_step_with_seconds(prepared: dict[str, Any]) -> None:
    done = [m for m in prepared["messages"] if ": done in " in m]
    assert len(done) >= 4 and all(m.endswith(" s") for m in done)
    assert any("takes about a minute" in m for m in prepared["messages"])


def test_checkpoint_is_bf16_safetensors_without_gguf_quantization(prepared: dict[str, Any]) -> None:
    path = prepared["path"]
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16" and config["model_type"] == "gemma3_text"
    assert json.loads((path / "generation_config.json").read_text())["eos_token_id"] == [1, 106]
    assert not (path / ".work").exists() and not list(path.glob("*.gguf"))
    marker = json.loads((path / default_model.MARKER).read_text())
    assert marker["version"] == default_model.VERSION and "model.safetensors" in marker["files"]


def test_tokenizer_adds_bos_and_renders_gemma_turns(prepared: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(prepared["path"])
    assert tokenizer("hi")["input_ids"] == [2, 2202]
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Bye"}]},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    )
    # The template brings its own <bos>: tokenizing with the chat template must not double it.
    ids = tokenizer.apply_chat_template(messages[1:2], add_generation_prompt=True, return_dict=True)["input_ids"]
    assert ids[:2] == [2, 105]


def test_prepared_model_knows_paris(prepared: dict[str, Any]) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(prepared["path"])
    model: Any = AutoModelForCausalLM.from_pretrained(prepared["path"], dtype=torch.float32)
    inputs = tokenizer("Question: What is the capital of France?\nAnswer:", return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0][inputs["input_ids"].shape[1] :])


def test_unknown_format_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model format 'gguf'.*known: hf"):
        default_model.prepare(tmp_path, fmt="gguf")
    with pytest.raises(ValueError, match="unknown model format"):
        default_model.is_prepared(tmp_path, fmt="openvino")


def _fake_build(calls: list[int], delay: float = 0.0) -> Any:
    def build(cache_dir: Path, out: Path, step: Any) -> None:
        calls.append(1)
        time.sleep(delay)
        (out / "model.safetensors").write_bytes(b"weights")

    return build


def test_concurrent_prepares_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setitem(default_model._BUILDERS, "hf", _fake_build(calls, delay=0.5))
    results: list[Path] = []
    # flock locks per open file, so two threads contend for it exactly like two processes do.
    threads = [threading.Thread(target=lambda: results.append(default_model.prepare(tmp_path))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1] and results == [default_model.model_dir(tmp_path)] * 2


def test_unmarked_or_damaged_dir_is_not_prepared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setitem(default_model._BUILDERS, "hf", _fake_build(calls))
    final = default_model.model_dir(tmp_path)
    final.mkdir(parents=True)
    (final / "model.safetensors").write_bytes(b"copied without a marker")
    assert not default_model.is_prepared(tmp_path)
    assert default_model.prepare(tmp_path) == final and calls == [1]
    assert (final / "model.safetensors").read_bytes() == b"weights"
    (final / "model.safetensors").write_bytes(b"truncated")
    assert not default_model.is_prepared(tmp_path)


def test_missing_package_is_a_clear_error_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = default_model.importlib.util.find_spec
    monkeypatch.setattr(
        default_model.importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a)
    )
    with pytest.raises(default_model.PrepareError, match="missing: accelerate. Fix: pip install"):
        default_model.prepare(tmp_path)
    assert not default_model.is_prepared(tmp_path)
    assert [p.name for p in default_model.model_dir(tmp_path).parent.iterdir() if p.is_dir()] == []


@pytest.fixture(scope="module")
def default_server(prepared: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The server with no model configured, on the cache this session prepared: it must reuse, not convert."""
    log = tmp_path_factory.mktemp("default-server") / "server.log"
    env = {"ENGINE_SERVER_CACHE_DIR": str(prepared["cache"])}
    args = ["--max-model-len", "2048", "--kv-cache-space", "2", "--log-format", "text"]
    process, base_url = start_server(args, log, env=env)
    try:
        first = wait_healthy(process, base_url, log)
        yield LiveServer(base_url, process, log, "gemma-3-270m", first)
    finally:
        stop(process)


def test_default_model_is_served_with_no_arguments_and_no_conversion(default_server: LiveServer) -> None:
    models = httpx.get(f"{default_server.base_url}/v1/models").json()["data"]
    assert [m["id"] for m in models] == ["gemma-3-270m"]
    log = default_server.log.read_text()
    assert "converting" not in log and "assembling" not in log  # the cached checkpoint was reused


@pytest.mark.parametrize(
    "prompt",
    ["Question: What is the capital of France?\nAnswer:", "The capital of Italy is Rome. The capital of France is"],
)
def test_default_model_knows_paris_through_http(default_server: LiveServer, prompt: str) -> None:
    body = {"model": "gemma-3-270m", "prompt": prompt, "max_tokens": 8, "temperature": 0}
    r = httpx.post(f"{default_server.base_url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["text"], r.text


def test_default_model_answers_chat(default_server: LiveServer) -> None:
    body = {"messages": [{"role": "user", "content": "Tell me about France."}], "max_tokens": 24, "temperature": 0}
    r = httpx.post(f"{default_server.base_url}/v1/chat/completions", json=body, timeout=120)
    answer = r.json()["choices"][0]["message"]["content"]
    assert r.status_code == 200 and answer.strip(), answer
    assert answer.replace("\n", " ").isprintable(), answer
