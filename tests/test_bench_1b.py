"""The benchmark's 1b workload model: random weights in the shape asked for, with the given tokenizer, written as a
checkpoint that transformers (both venvs' majors) and llama.cpp's converter read: the config as transformers 4 writes
it. The full 1B build (1.1 B parameters, minutes) is the benchmark's; here a small shape of the same family."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import llama1b

SMALL = {**llama1b.SHAPE, "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32}  # fmt: skip


def test_the_1b_shape_is_llama_3_2_1b() -> None:
    shape = llama1b.SHAPE
    assert (shape["num_hidden_layers"], shape["hidden_size"], shape["intermediate_size"]) == (16, 2048, 8192)
    assert (shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"]) == (32, 8, 64)


def test_checkpoint_loads_with_its_shape_and_tokenizer(tiny_model: Path, tmp_path: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    said: list[str] = []
    model_dir = llama1b.checkpoint(tmp_path, tiny_model, said.append, SMALL, "small")
    config = json.loads((model_dir / "config.json").read_text())
    assert config["rope_theta"] == 500000.0 and "rope_parameters" not in config
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert config["vocab_size"] == len(tokenizer) and config["eos_token_id"] == tokenizer.eos_token_id
    copied = [name for name in llama1b.TOKENIZER_FILES if (tiny_model / name).is_file()]
    assert "tokenizer.json" in copied
    for name in copied:
        assert (model_dir / name).read_bytes() == (tiny_model / name).read_bytes()
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    assert model.config.num_key_value_heads == 2 and model.config.hidden_size == 128
    assert model.dtype == torch.bfloat16
    weights = model.model.layers[0].mlp.up_proj.weight
    assert weights.shape == (256, 128) and 0 < float(weights.detach().float().std()) < 1  # random, not zeros
    ids = torch.tensor([tokenizer.encode("hello there")])
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer))
    assert any("random weights" in line for line in said)
    # Made once: a second call finds it.
    said.clear()
    assert llama1b.checkpoint(tmp_path, tiny_model, said.append, SMALL, "small") == model_dir and not said


def test_gguf_needs_the_llama_cpp_tree(tmp_path: Path) -> None:
    binary = tmp_path / "llama.cpp" / "build" / "bin" / "llama-server"
    binary.parent.mkdir(parents=True)
    binary.write_text("")
    with pytest.raises(FileNotFoundError, match="convert_hf_to_gguf.py"):
        llama1b.gguf(tmp_path / "model", str(binary), "Q8_0", print)
