"""The KV cache's default size: room for four sessions at the model's full context, never under 4 GiB."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backends import kv_sizing, openvino_settings, vllm_cpu

# The built-in models' shapes, as their config.json files give them.
SMOLLM2 = {
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "hidden_size": 576,
    "max_position_embeddings": 8192,
}
GEMMA3 = {
    "num_hidden_layers": 18,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "hidden_size": 640,
    "max_position_embeddings": 32768,
}


def model_dir(tmp_path: Path, config: dict[str, object]) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


def test_bytes_per_token_counts_k_and_v_of_every_layer_and_kv_head() -> None:
    assert kv_sizing.bytes_per_token(SMOLLM2, 2) == 2 * 30 * 3 * 64 * 2  # head_dim: hidden / heads
    assert kv_sizing.bytes_per_token(GEMMA3, 1) == 2 * 18 * 1 * 256
    assert kv_sizing.bytes_per_token({"text_config": GEMMA3}, 4) == 2 * 18 * 256 * 4  # a multimodal config


@pytest.mark.parametrize("precision", ["u8", "bfloat16", "float32"])
def test_smollm2_fits_four_full_sessions_in_the_floor(tmp_path: Path, precision: str) -> None:
    # 4 x 8192 tokens x 11.25 KiB (bf16: 22.5, f32: 45) = 0.35 / 0.7 / 1.4 GiB
    assert kv_sizing.default_gib(model_dir(tmp_path, SMOLLM2), None, precision) == kv_sizing.FLOOR_GIB


def test_gemma3_in_float32_gets_room_for_four_full_sessions(tmp_path: Path) -> None:
    # vLLM CPU computes in float32 where the CPU has no native bf16 (AVX2): 4 x 32768 x 36 KiB = 4.5 GiB
    path = model_dir(tmp_path, GEMMA3)
    assert kv_sizing.default_gib(path, None, "float32") == 4.5
    assert kv_sizing.default_gib(path, None, "bfloat16") == kv_sizing.FLOOR_GIB  # 2.25 GiB
    assert kv_sizing.default_gib(path, 8192, "float32") == kv_sizing.FLOOR_GIB  # a shorter --max-model-len
    env = vllm_cpu.engine_env(vllm_cpu.CpuSettings(), str(path), "float32")
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "4.5"
    assert (
        vllm_cpu.engine_env(vllm_cpu.CpuSettings(kv_cache_space=2), str(path), "float32")["VLLM_CPU_KVCACHE_SPACE"]
        == "2"
    )  # what the user set wins


def test_openvino_counts_at_its_cache_precision_in_whole_gib(tmp_path: Path) -> None:
    path = str(model_dir(tmp_path, GEMMA3))
    settings = openvino_settings.PipelineSettings
    assert openvino_settings.kv_cache_gib(settings(), path, 32768) == 4  # u8 on CPU: 1.1 GiB
    assert openvino_settings.kv_cache_gib(settings(kv_cache_precision="f32"), path, 32768) == 5  # 4.5 GiB
    assert openvino_settings.kv_cache_gib(settings(kv_cache_gib=2), path, 32768) == 2


def test_more_than_half_the_host_keeps_the_floor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kv_sizing, "host_memory_gib", lambda: 8.0)
    assert kv_sizing.default_gib(model_dir(tmp_path, GEMMA3), None, "float32") == kv_sizing.FLOOR_GIB


def test_a_config_it_cannot_count_keeps_the_floor(tmp_path: Path) -> None:
    assert kv_sizing.default_gib(model_dir(tmp_path, {"model_type": "mamba"}), None, "float32") == kv_sizing.FLOOR_GIB
    assert kv_sizing.default_gib(tmp_path / "missing", None, "float32") == kv_sizing.FLOOR_GIB
