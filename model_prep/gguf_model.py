"""A user's GGUF file (--model FILE.gguf, or a directory holding one) prepared once into a Hugging Face checkpoint.

The checkpoint goes to cache_dir/models under a name keyed by the file's sha256, with the built-in models' machinery
(model_prep/builtin_models.py): built beside its destination under a lock, checked, marked, published by one rename.
The tokenizer is written from the GGUF's own vocabulary, merges and pre-tokenizer type as the byte-level BPE it is,
with the file's special tokens and chat template; the weights are dequantized with the `gguf` package (llama.cpp
interleaves Llama's q/k rotary halves: put back in Hugging Face's order). Nothing here needs transformers except the
final check, which loads the result as the server will.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

from model_prep import smollm2
from model_prep.atomic import build_once
from model_prep.builtin_models import PrepareError, Progress, Steps, has_marker, write_marker

logger = logging.getLogger("engine_server.gguf_model")

VERSION = 1  # bump when the preparation changes what it writes
ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM"}
CONTROL, USER_DEFINED = 3, 4  # GGUF token types
SHARD_BYTES = 2 << 30
# llama.cpp's pre-tokenizer types (tokenizer.ggml.pre) as the split before the byte-level step; None: GPT-2's own.
GPT2 = None
DIGITS = "digits"  # every digit apart, then GPT-2's split (StarCoder, SmolLM)
QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3 = QWEN2.replace(r"|\p{N}|", r"|\p{N}{1,3}|")
PRE_TOKENIZERS: dict[str, str | None] = {
    "default": GPT2,
    "gpt-2": GPT2,
    "gpt2": GPT2,
    "smollm": DIGITS,
    "starcoder": DIGITS,
    "refact": DIGITS,
    "qwen2": QWEN2,
    "llama-bpe": LLAMA3,
}


def find(model: str) -> Path | None:
    """The GGUF file `model` names: a .gguf file, or a directory holding exactly one (and no checkpoint)."""
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".gguf":
        return path
    if not path.is_dir() or (path / "config.json").exists():
        return None
    files = sorted(path.glob("*.gguf"))
    if len(files) > 1:
        raise PrepareError(
            f"{path} holds {len(files)} GGUF files ({', '.join(f.name for f in files)}). "
            "Fix: pass the one to serve with --model DIR/FILE.gguf."
        )
    return files[0] if files else None


def openvino_weights(gguf: Path) -> str:
    """The OpenVINO export's weight format that keeps the file's spirit: its matrices' most common type decides."""
    from gguf import GGUFReader

    kinds = Counter(t.tensor_type.name for t in GGUFReader(gguf).tensors if len(t.shape) == 2)
    kind = kinds.most_common(1)[0][0] if kinds else "F16"
    if kind == "F32":
        return "fp32"
    if kind in ("F16", "BF16"):
        return "fp16"
    if kind == "Q4_0":
        return "int4_sym"  # no zero points in the file, none in the export
    return "int4" if kind.startswith(("Q2", "Q3", "Q4", "IQ", "TQ")) else "int8"


def prepare(cache_dir: Path, gguf: Path, progress: Progress | None = None) -> Path:
    """The checkpoint directory prepared from gguf, building it first if the cache does not hold it."""
    report = progress or logger.info
    digest = _sha256(gguf, Path(cache_dir), report)
    final = Path(cache_dir) / "models" / f"gguf-{gguf.stem}-{digest[:12]}-v{VERSION}"
    identity = {"gguf_sha256": digest, "version": VERSION}

    def fill(build: Path) -> None:
        report(f"preparing {gguf} (GGUF, sha256 {digest[:12]}) as a checkpoint in {final}")
        step = Steps(report)
        convert(gguf, build, step)
        with step("checking the prepared checkpoint"):
            verify(build)
        write_marker(build, source=str(gguf), **identity)

    took = build_once(final, lambda: has_marker(final, **identity), fill, report, f"preparing {gguf.name}")
    if took is not None:
        report(f"{gguf.name} ready in {took:.1f} s: {final}")
    return final


def _sha256(gguf: Path, cache_dir: Path, report: Progress) -> str:
    """The file's sha256, remembered per (path, size, mtime) so a restart does not read gigabytes again."""
    stat = gguf.stat()
    memo = cache_dir / "models" / "gguf-sha256.json"
    key = f"{gguf.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    try:
        known: dict[str, str] = json.loads(memo.read_text())
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    with Steps(report)(f"hashing {gguf.name} ({stat.st_size / 1e6:.0f} MB)"):
        digest = hashlib.sha256()
        with gguf.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    memo.parent.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps({**known, key: digest.hexdigest()}, indent=1))
    return digest.hexdigest()


def convert(gguf: Path, out: Path, step: Steps) -> None:
    from gguf import GGUFReader

    with step("reading the GGUF"):
        reader = GGUFReader(gguf)
        meta = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    arch = meta.get("general.architecture")
    if arch not in ARCHITECTURES:
        raise PrepareError(
            f"{gguf} is a {arch!r} model; GGUF files are served for the architectures {', '.join(ARCHITECTURES)}. "
            "Fix: pass the model's Hugging Face checkpoint directory (or hub id) with --model."
        )
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise PrepareError(
            f"{gguf} scales its rotary frequencies per dimension (Llama 3.1's rope_freqs), not converted yet"
        )
    with step(f"writing the {meta.get('tokenizer.ggml.model')} tokenizer"):
        write_tokenizer(meta, out)
    with step("dequantizing the weights to safetensors"):
        dtype = write_weights(reader, arch, meta, out)
    write_config(reader, arch, meta, dtype, out)


def write_tokenizer(meta: dict[str, Any], out: Path) -> None:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    kind, pre = meta.get("tokenizer.ggml.model"), meta.get("tokenizer.ggml.pre", "default")
    if kind != "gpt2":
        raise PrepareError(
            f"the GGUF's tokenizer is {kind!r}; GGUF files are served with byte-level BPE vocabularies ('gpt2') so "
            "far. Fix: pass the model's Hugging Face checkpoint directory with --model."
        )
    if pre not in PRE_TOKENIZERS:
        raise PrepareError(
            f"the GGUF's pre-tokenizer {pre!r} is not one this server writes ({', '.join(PRE_TOKENIZERS)}). "
            "Fix: pass the model's Hugging Face checkpoint directory with --model."
        )
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ", 1)) for merge in meta["tokenizer.ggml.merges"]]
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    split = PRE_TOKENIZERS[pre]
    if split is GPT2:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif split == DIGITS:
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    else:
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    tokenizer.decoder = decoders.ByteLevel()
    kinds = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    added = [
        AddedToken(t, special=kind == CONTROL, normalized=False)
        for t, kind in zip(tokens, kinds, strict=True)
        if kind in (CONTROL, USER_DEFINED)
    ]
    tokenizer.add_tokens(added)

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[index] if isinstance(index, int) and 0 <= index < len(tokens) else None

    bos, add_bos = token("bos"), bool(meta.get("tokenizer.ggml.add_bos_token", False))
    steps: list[Any] = [processors.ByteLevel(trim_offsets=False)]
    if add_bos and bos is not None:
        bos_id = tokens.index(bos)
        steps.append(
            processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)])
        )
    tokenizer.post_processor = processors.Sequence(steps)
    tokenizer.save(str(out / "tokenizer.json"))
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",  # transformers 4 and 5 both read it
        "bos_token": bos,
        "eos_token": token("eos"),
        "unk_token": token("unknown"),
        "pad_token": token("padding"),
        "add_bos_token": add_bos,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta.get(f"{meta['general.architecture']}.context_length", 2048),
    }
    config = {key: value for key, value in config.items() if value is not None}
    if isinstance(meta.get("tokenizer.chat_template"), str):
        config["chat_template"] = meta["tokenizer.chat_template"]
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    names = ("bos_token", "eos_token", "unk_token", "pad_token")
    (out / "special_tokens_map.json").write_text(json.dumps({k: config[k] for k in names if k in config}, indent=2))


def write_weights(reader: Any, arch: str, meta: dict[str, Any], out: Path) -> str:
    """Writes the weights (in shards past 2 GB); returns their dtype: float32 when every matrix was F32 or BF16,
    else float16 (a quantized matrix's values carry fewer bits than that)."""
    import numpy as np
    from gguf.quants import dequantize
    from safetensors.numpy import save_file

    matrices = {t.tensor_type.name for t in reader.tensors if len(t.shape) == 2}
    dtype = np.float32 if matrices <= {"F32", "BF16"} else np.float16
    heads = {"attn_q": meta[f"{arch}.attention.head_count"]}
    heads["attn_k"] = meta.get(f"{arch}.attention.head_count_kv", heads["attn_q"])
    shards: list[dict[str, Any]] = [{}]
    size = 0
    for tensor in reader.tensors:
        weights = dequantize(tensor.data, tensor.tensor_type)
        kind = tensor.name.split(".")[-2]
        if arch == "llama" and kind in heads:  # undo llama.cpp's rotary interleaving of q and k
            n, shape = heads[kind], weights.shape
            weights = weights.reshape(n, shape[0] // n // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
        if size > SHARD_BYTES:
            shards.append({})
            size = 0
        shards[-1][smollm2.hf_name(tensor.name)] = np.ascontiguousarray(weights, dtype=dtype)
        size += weights.size * np.dtype(dtype).itemsize
    if len(shards) == 1:
        save_file(shards[0], str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        where: dict[str, str] = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, str(out / name), metadata={"format": "pt"})
            where |= dict.fromkeys(shard, name)
        index = {"metadata": {}, "weight_map": where}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return np.dtype(dtype).name


def write_config(reader: Any, arch: str, meta: dict[str, Any], dtype: str, out: Path) -> None:
    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    names = {t.name: t for t in reader.tensors}
    heads = get("attention.head_count")
    config = {
        "architectures": [ARCHITECTURES[arch]],
        "model_type": arch,
        "hidden_size": get("embedding_length"),
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "head_dim": get("attention.key_length", get("embedding_length") // heads),
        "hidden_act": "silu",
        "max_position_embeddings": get("context_length", 2048),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": get("rope.freq_base", 10000.0),
        "vocab_size": int(names["token_embd.weight"].shape[1]),
        "tie_word_embeddings": "output.weight" not in names,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"),
        "torch_dtype": dtype,
    }
    if arch == "llama":
        config |= {"attention_bias": "blk.0.attn_q.bias" in names, "mlp_bias": False}
    else:
        config |= {"use_sliding_window": False}
    scaling = get("rope.scaling.type")
    if scaling in ("linear", "yarn"):
        config["rope_scaling"] = {"rope_type": scaling, "factor": get("rope.scaling.factor")}
        if scaling == "yarn":
            config["rope_scaling"]["original_max_position_embeddings"] = get("rope.scaling.original_context_length")
    elif scaling not in (None, "none"):
        raise PrepareError(f"the GGUF's rope scaling {scaling!r} is not converted")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    # A chat model's end-of-turn token stops generation as its end-of-text token does.
    stops = sorted({i for i in (config["eos_token_id"], meta.get("tokenizer.ggml.eot_token_id")) if isinstance(i, int)})
    generation = {"bos_token_id": config["bos_token_id"], "pad_token_id": config["pad_token_id"]}
    generation["eos_token_id"] = stops if len(stops) > 1 else stops[0] if stops else None
    generation = {key: value for key, value in generation.items() if value is not None}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))


def verify(out: Path) -> None:
    """Check what the server will load (the tokenizer through transformers), not what convert() meant to write."""
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(out)
    for text in smollm2.ROUND_TRIPS:
        back = tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True)
        if back != text:
            raise PrepareError(f"the prepared tokenizer does not give back {text!r}: {back!r}")
    for special in tokenizer.all_special_tokens:
        if len(tokenizer(special, add_special_tokens=False)["input_ids"]) != 1:
            raise PrepareError(f"the prepared tokenizer splits its special token {special!r}")
    if tokenizer.chat_template:
        tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
