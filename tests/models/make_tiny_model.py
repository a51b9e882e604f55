"""Build a tiny, deterministic, random-weight Llama checkpoint (with a byte-level BPE tokenizer) for tests.

Usage: python tests/models/make_tiny_model.py [OUT_DIR]   (prints the model directory)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch takes ~1 s to import; keep default_path() and the cached build() cheap
    import torch
    from tokenizers import Tokenizer

# Bump whenever anything below changes what gets written: cached copies with another version are rebuilt.
VERSION = "tiny-llama-v1"
VOCAB_SIZE = 2048
HIDDEN, NUM_LAYERS, NUM_HEADS, NUM_KV_HEADS, INTERMEDIATE = 256, 2, 4, 2, 512
HEAD_DIM = HIDDEN // NUM_HEADS  # 64: vLLM's CPU attention rejects small head sizes such as 16
MAX_POSITIONS = 2048
MARKER = ".complete"

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
CHAT_MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>"]
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, *CHAT_MARKERS]  # ids 0..8, in this order

# "developer" is OpenAI's newer name for "system"; content may be a string, a list of text parts, or null.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'system' if message['role'] == 'developer' else message['role'] %}"
    "{% if message['content'] is string %}{% set content = message['content'] %}"
    "{% elif message['content'] is none %}{% set content = '' %}"
    "{% else %}{% set content = message['content'] | selectattr('text', 'defined') | map(attribute='text')"
    " | join('') %}{% endif %}"
    "<|{{ role }}|>\n{{ content }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo",
    "Poland": "Warsaw", "Greece": "Athens", "India": "New Delhi", "China": "Beijing", "Brazil": "Brasilia",
}  # fmt: skip
SUBJECTS = ["The cat", "A dog", "My friend", "The teacher", "Our team", "The model", "This server", "She"]
VERBS = ["likes", "reads", "writes", "answers", "builds", "sees", "finds", "tests", "sends", "returns"]
OBJECTS = ["a book", "the letter", "some code", "the answer", "a story", "the request", "many tokens", "json"]
ADVERBS = ["quickly", "slowly", "today", "again", "carefully", "every day", "at night", "well"]
QUESTIONS = ["What is", "Who wrote", "Where is", "How many", "Why does", "When did", "Can you list"]
KEYS = ["name", "city", "country", "age", "id", "items", "value", "ok", "score", "tags"]


def default_path(version: str = VERSION) -> Path:
    base = os.environ.get("ENGINE_SERVER_CACHE_DIR")
    if base:
        return Path(base) / "test-models" / version
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "engine-server" / "test-models" / version


def _corpus(num_lines: int = 20000) -> list[str]:
    # Plain English, capitals, numbers, punctuation and JSON, so JSON-constrained output has cheap tokens;
    # varied enough for the trainer to fill all 2048 vocabulary entries.
    rng = random.Random(1234)
    lines = [f"The capital of {country} is {city}." for country, city in CAPITALS.items()]
    for _ in range(num_lines):
        kind = rng.randrange(4)
        if kind == 0:
            line = f"{rng.choice(SUBJECTS)} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(ADVERBS)}."
        elif kind == 1:
            country = rng.choice(list(CAPITALS))
            line = f"{rng.choice(QUESTIONS)} {country}? The capital of {country} is {CAPITALS[country]}!"
        elif kind == 2:
            line = f"{rng.randrange(10 ** rng.randrange(1, 7))} + {rng.randrange(999)} = {rng.random():.4f};"
        else:
            values = [rng.randrange(100), rng.choice(list(CAPITALS.values())), True, None, [1, 2]]
            obj = {k: rng.choice(values) for k in rng.sample(KEYS, rng.randrange(1, 4))}
            line = json.dumps(obj) if rng.random() < 0.5 else json.dumps(obj, indent=2)
        lines.append(line)
    return lines


def _tokenizer() -> Tokenizer:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # BOS is added by tokenizer.json itself, so every loader (transformers 4 or 5, vLLM) agrees on it.
    add_bos = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tok.post_processor = processors.Sequence([processors.ByteLevel(trim_offsets=False), add_bos])
    return tok


def _weights(vocab_size: int) -> dict[str, torch.Tensor]:
    import torch

    gen = torch.Generator().manual_seed(0)

    def normal(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float32) * 0.02).contiguous()

    state = {"model.embed_tokens.weight": normal(vocab_size, HIDDEN), "model.norm.weight": torch.ones(HIDDEN)}
    for i in range(NUM_LAYERS):
        p = f"model.layers.{i}."
        state |= {
            p + "self_attn.q_proj.weight": normal(NUM_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": normal(NUM_KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": normal(NUM_KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": normal(HIDDEN, NUM_HEADS * HEAD_DIM),
            p + "mlp.gate_proj.weight": normal(INTERMEDIATE, HIDDEN),
            p + "mlp.up_proj.weight": normal(INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": normal(HIDDEN, INTERMEDIATE),
            p + "input_layernorm.weight": torch.ones(HIDDEN),
            p + "post_attention_layernorm.weight": torch.ones(HIDDEN),
        }
    return state


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _write_model(out: Path, max_positions: int = MAX_POSITIONS) -> dict[str, int | None]:
    """Tokenizer and config files of the tiny Llama and its random weights; returns the special token ids."""
    from safetensors.torch import save_file

    tok = _tokenizer()
    vocab_size = tok.get_vocab_size()
    if vocab_size != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer vocab is {vocab_size}, expected {VOCAB_SIZE}: the corpus is too small")
    ids = {name: tok.token_to_id(t) for name, t in [("bos", BOS), ("eos", EOS), ("pad", PAD)]}
    tok.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD,
        "add_bos_token": True, "add_eos_token": False,
        "model_max_length": max_positions, "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    })  # fmt: skip
    _write_json(out / "config.json", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE, "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS, "num_key_value_heads": NUM_KV_HEADS, "head_dim": HEAD_DIM,
        "vocab_size": vocab_size, "max_position_embeddings": max_positions, "hidden_act": "silu",
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True,
        "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
        "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"],
        "dtype": "float32", "torch_dtype": "float32",
    })  # fmt: skip
    _write_json(out / "generation_config.json", {
        "bos_token_id": ids["bos"], "eos_token_id": ids["eos"], "pad_token_id": ids["pad"],
    })  # fmt: skip
    save_file(_weights(vocab_size), str(out / "model.safetensors"), metadata={"format": "pt"})
    return ids


def _is_complete(path: Path, version: str) -> bool:
    marker = path / MARKER
    return marker.is_file() and marker.read_text().strip() == version


def build(out_dir: Path | None = None, version: str = VERSION, write: Callable[[Path], object] = _write_model) -> Path:
    """Build a model with `write` into out_dir (default: default_path(version)) unless a complete copy of that
    version is already there."""
    out = Path(out_dir) if out_dir is not None else default_path(version)
    if _is_complete(out, version):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename, so concurrent test sessions never see a half-written model.
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        write(tmp)
        (tmp / MARKER).write_text(version + "\n")
        if _is_complete(out, version):  # another process finished first
            return out
        if out.exists():
            shutil.rmtree(out)  # stale version or interrupted copy
        try:
            os.replace(tmp, out)
        except OSError:
            if not _is_complete(out, version):  # not a lost race with another builder: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
