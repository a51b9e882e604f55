"""The `1b` workload's model, made here (there is no model hub): random weights in Llama-3.2-1B's shape (16 layers,
hidden 2048, 32 query / 8 KV heads) with SmolLM2's tokenizer, and the forms each server runs: OpenVINO IR with int8
and int4 weights (our exporter), GGUF Q8_0 and Q4_0 (llama.cpp's own converter, then its quantizer).

Random weights decode as fast as trained ones (the same matmuls over the same bytes); the text is noise, so the
workload is random prompts with ignore_eos. Each form is built once into the cache, one builder at a time.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model_prep.atomic import build_once

NAME = "llama-1b-shape"
SHAPE = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "rope_theta": 500000.0,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}
DESCRIBED = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
# (workload name, our export's weight format, its GGUF counterpart in llama-quantize's type names): Q4_0 is symmetric.
FORMATS = (("int8", "int8", "Q8_0"), ("int4", "int4_sym", "Q4_0"))
SEED = 1234
Progress = Callable[[str], None]


def checkpoint(
    work: Path, tokenizer_dir: Path, progress: Progress, shape: dict[str, Any] | None = None, name: str = NAME
) -> Path:
    """The bf16 safetensors checkpoint in work/name (made once): random weights, tokenizer_dir's tokenizer; shape:
    the architecture's sizes (default: Llama-3.2-1B's)."""
    final = work / name

    def fill(build: Path) -> None:
        import torch
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        fields: dict[str, Any] = {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            **(shape or SHAPE),
            "hidden_act": "silu",
            "vocab_size": len(tokenizer),
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "torch_dtype": "bfloat16",
        }
        sizes = ", ".join(f"{k} {v}" for k, v in (shape or SHAPE).items() if k in DESCRIBED)
        progress(f"making {name}: random weights (seed {SEED}), {sizes}, {len(tokenizer)} tokens")
        torch.manual_seed(SEED)
        model: Any = LlamaForCausalLM(LlamaConfig(**fields))
        model = model.to(torch.bfloat16)
        progress(f"{name}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters; saving")
        model.save_pretrained(build)
        # The config as transformers 4 writes it (rope_theta, not rope_parameters): every exporter here reads it.
        (build / "config.json").write_text(json.dumps(fields, indent=2))
        for file in TOKENIZER_FILES:
            if (Path(tokenizer_dir) / file).is_file():
                (build / file).write_bytes((Path(tokenizer_dir) / file).read_bytes())

    took = build_once(final, final.is_dir, fill, progress, f"making {name}")
    if took is not None:
        progress(f"{name} made in {took:.0f} s: {final}")
    return final


def openvino_export(model: Path, cache_dir: Path, weight_format: str, python: Path, progress: Progress) -> Path:
    """The checkpoint exported by our exporter (in python, the openvino venv) with weight_format weights."""
    script = (
        "import sys; from pathlib import Path; from model_prep import openvino_export as e\n"
        "out = e.export(Path(sys.argv[1]), Path(sys.argv[2]), e.ExportSettings(weight_format=sys.argv[3]),"
        " progress=lambda m: print(m, file=sys.stderr, flush=True))\n"
        "print(out)"
    )
    cmd = [str(python), "-c", script, str(model), str(cache_dir), weight_format]
    progress(f"exporting {model.name} to OpenVINO IR with {weight_format} weights (or finding it in the cache)")
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the {weight_format} export of {model} failed ({done.returncode}); its output is above")
    return Path(done.stdout.strip().splitlines()[-1])


def gguf(model: Path, llama_server: str, quant: str, progress: Progress) -> Path:
    """model as a GGUF of type quant: llama.cpp's convert_hf_to_gguf.py to bf16, then llama-quantize. Both come from
    the llama.cpp tree that llama_server was built in (build/bin/llama-server, bench/README.md)."""
    binary = Path(llama_server).resolve()
    tree, quantize = binary.parents[2], binary.with_name("llama-quantize")
    for needed in (tree / "convert_hf_to_gguf.py", quantize):
        if not needed.is_file():
            raise FileNotFoundError(f"{needed} is missing: build llama-quantize beside llama-server (bench/README.md)")
    full = model.parent / f"{model.name}-bf16.gguf"
    out = model.parent / f"{model.name}-{quant}.gguf"
    if not full.is_file():
        progress(f"converting {model.name} to GGUF with llama.cpp's convert_hf_to_gguf.py")
        _run([sys.executable, str(tree / "convert_hf_to_gguf.py"), str(model), "--outtype", "bf16"],
             full, "--outfile")  # fmt: skip
    if not out.is_file():
        progress(f"quantizing {full.name} to {quant} with llama-quantize")
        _run([str(quantize), str(full)], out, None, quant)
    return out


def _run(cmd: list[str], out: Path, out_flag: str | None, *after: str) -> None:
    """Run a converter that writes out, through a temporary name, so that an interrupted run leaves no file behind."""
    partial = out.with_name(f".{out.name}.partial")
    cmd = [*cmd, *((out_flag, str(partial)) if out_flag else (str(partial),)), *after]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        tool = Path(cmd[1] if cmd[0] == sys.executable else cmd[0]).name
        raise RuntimeError(f"{tool} failed:\n{done.stdout[-3000:]}")
    partial.rename(out)


def describe(model: Path) -> str:
    config = json.loads((model / "config.json").read_text())
    return ", ".join(f"{k} {config[k]}" for k in (*DESCRIBED, "vocab_size"))
