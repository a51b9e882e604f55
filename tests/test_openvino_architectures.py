"""A model the OpenVINO export cannot handle: auto serves it on vLLM CPU where it can, and says why; an explicit
openvino, or auto without vLLM in the environment, stops at startup with the reason and the way to serve it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import openai
import pytest

from backends import BackendUnavailableError
from engine_server import engines
from engine_server.config import Config
from model_prep import openvino_architectures
from tests.conftest import BACKENDS, fake_host, start_server, stop, wait_healthy

UNSUPPORTED = "olmoe"  # OLMoE: vLLM and transformers know it, optimum-intel 2.2 does not export it


@pytest.fixture(scope="module")
def olmoe(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random OLMoE saved by this venv's transformers 5, with the tiny Llama's tokenizer."""
    import torch
    from transformers import AutoTokenizer, OlmoeConfig, OlmoeForCausalLM

    out = tmp_path_factory.mktemp("olmoe") / "tiny-olmoe"
    torch.manual_seed(0)
    config = OlmoeConfig(
        vocab_size=2048,
        hidden_size=256,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        num_experts=4,
        num_experts_per_tok=2,
        max_position_embeddings=2048,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    OlmoeForCausalLM(config).save_pretrained(out)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(out)
    assert json.loads((out / "config.json").read_text())["model_type"] == UNSUPPORTED
    return out


@pytest.fixture
def listed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_architectures, "_version", lambda: "2.2.0")
    monkeypatch.setattr(openvino_architectures, "supported_model_types", lambda cache: ["llama", "qwen2"])


def checkpoint(tmp_path: Path, model_type: str) -> Path:
    path = tmp_path / model_type
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return path


def test_auto_serves_an_unsupported_architecture_on_vllm_and_says_why(
    tmp_path: Path, listed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_host(monkeypatch, "openvino_genai", "vllm")
    config = Config(model=str(checkpoint(tmp_path, UNSUPPORTED)), cache_dir=tmp_path)
    selection = engines.selection(config)
    assert selection.hw_mode == "cpu"
    assert "optimum-intel 2.2.0 cannot export model_type 'olmoe'" in selection.reason
    assert selection.reason.endswith("so cpu (vLLM CPU) serves it")


def test_auto_without_vllm_names_the_environment_that_serves_it(
    tmp_path: Path, listed: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_host(monkeypatch, "openvino_genai")
    config = Config(model=str(checkpoint(tmp_path, UNSUPPORTED)), cache_dir=tmp_path)
    with pytest.raises(
        BackendUnavailableError, match=r"cannot export.*has no vLLM.*\.venv/bin/engine-server --hw-mode cpu"
    ):
        engines.selection(config)


def test_auto_keeps_openvino_for_what_it_exports(tmp_path: Path, listed: None, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_host(monkeypatch, "openvino_genai")
    for model in (str(checkpoint(tmp_path, "llama")), None, "org/not-downloaded"):
        assert engines.selection(Config(model=model, cache_dir=tmp_path)).hw_mode == "openvino"


def test_the_list_is_optimum_intels_own(tmp_path: Path) -> None:
    if openvino_architectures._version() is None:
        pytest.skip("this venv has no optimum-intel; the openvino venv's list is read in the startup tests")
    types = openvino_architectures.supported_model_types(tmp_path) or []
    assert "llama" in types and UNSUPPORTED not in types


@pytest.mark.parametrize("hw_mode", ["openvino", "auto"])
def test_the_openvino_environment_refuses_it_at_startup(olmoe: Path, tmp_path: Path, hw_mode: str) -> None:
    args = [*BACKENDS["openvino"], "--model", str(olmoe), "--cache-dir", str(tmp_path / "cache")]
    args[args.index("--hw-mode") + 1] = hw_mode
    process, _ = start_server(args, tmp_path / "server.log", backend="openvino")
    try:
        process.wait(300)
    finally:
        stop(process)
    log = (tmp_path / "server.log").read_text()
    assert process.returncode != 0, log
    assert "optimum-intel 2.2.0 cannot export model_type 'olmoe'" in log
    assert ".venv/bin/engine-server --hw-mode cpu" in log
    assert not (tmp_path / "cache" / "openvino" / "tiny-olmoe").exists()  # refused before any export


def test_vllm_cpu_serves_it(olmoe: Path, tmp_path: Path) -> None:
    log = tmp_path / "cpu.log"
    args = [*BACKENDS["cpu"], "--model", str(olmoe), "--max-model-len", "2048", "--served-model-name", "moe"]
    process, base_url = start_server(args, log)
    try:
        wait_healthy(process, base_url, log)
        with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as client:
            reply = client.completions.create(model="moe", prompt="The capital of France is", max_tokens=8)
        assert reply.usage is not None and reply.usage.completion_tokens > 0
    finally:
        stop(process)


def test_a_list_that_cannot_be_read_refuses_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino_architectures, "_version", lambda: "0.0-test")
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the child that lists them fails
    assert openvino_architectures.refusal(checkpoint(tmp_path, UNSUPPORTED), tmp_path / "cache") is None
