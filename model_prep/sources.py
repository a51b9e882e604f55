"""Where the weights come from: a built-in model (prepared offline), a GGUF file (prepared once), a local directory,
or the Hugging Face hub."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Protocol

from model_prep import builtin_models, gguf_model

logger = logging.getLogger("engine_server.models")


class ModelSource(Protocol):
    """What a model's preparation reads from the server's configuration (engine_server.config.Config has it all)."""

    @property
    def model(self) -> str | None: ...  # a checkpoint directory, GGUF file or hub id; None: builtin_model
    @property
    def builtin_model(self) -> str | None: ...
    @property
    def cache_dir(self) -> Path: ...
    @property
    def dtype(self) -> str: ...
    @property
    def quantized_weights(self) -> bool: ...
    @property
    def trust_remote_code(self) -> bool: ...
    @property
    def hf_token(self) -> Any: ...  # a secret with reveal(), or None


class ModelUnavailableError(RuntimeError):
    """The configured model cannot be had; the message names the cause and the fix."""


def resolve(config: ModelSource, fmt: str = "hf") -> str:
    """A local directory holding the model in the backend's format (fmt), preparing or downloading it if needed."""
    if fmt == "openvino":
        return _openvino(config)
    if config.builtin_model is not None:
        try:
            return str(builtin_models.prepare(config.cache_dir, config.builtin_model, fmt, progress=logger.info))
        except (ValueError, builtin_models.PrepareError) as exc:
            raise ModelUnavailableError(str(exc)) from exc
    model = str(config.model)  # set: without a model the default built-in one is served
    try:
        gguf = gguf_model.find(model)
        if gguf is not None:
            return str(gguf_model.prepare(config.cache_dir, gguf, progress=logger.info))
    except builtin_models.PrepareError as exc:
        raise ModelUnavailableError(str(exc)) from exc
    path = Path(model).expanduser()
    if path.exists():
        return str(path)
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelUnavailableError(
            f"The model {model!r} is neither an existing local directory nor a hub id (org/name). "
            "Fix: pass --model with a directory that exists or a built-in model's name (engine-server models lists "
            "them), or unset it to serve the default one."
        )
    return _from_hub(model, config.hf_token.reveal() if config.hf_token else None)


def _openvino(config: ModelSource) -> str:
    """A directory already in OpenVINO IR is served as is; a Hugging Face checkpoint is exported once into the cache."""
    from model_prep import openvino_export

    source = Path(resolve(config, "hf"))
    if openvino_export.is_openvino_ir(source):
        return str(source)
    settings = openvino_export.ExportSettings(
        weight_format=openvino_export.weight_format(config.quantized_weights, config.dtype, _preferred_weights(config)),
        trust_remote_code=config.trust_remote_code,
    )
    try:
        return str(openvino_export.export(source, config.cache_dir, settings, progress=logger.info))
    except openvino_export.ExportError as exc:
        raise ModelUnavailableError(str(exc)) from None


def refusal(config: ModelSource, fmt: str) -> str | None:
    """Why the configured model cannot be had in fmt (a backend's format), known before anything is loaded; None when
    it can, or when only the preparation itself can tell."""
    if fmt == "openvino":
        return openvino_refusal(config)
    path = Path(str(config.model)).expanduser() if config.model is not None else None
    if path is not None and path.is_dir() and (path / "openvino_model.xml").is_file():
        return "it is an OpenVINO IR export, which only OpenVINO reads"
    return None


def openvino_refusal(config: ModelSource) -> str | None:
    """Why the openvino backend cannot serve the configured model, known before anything is loaded; None when it can
    (or when only the export itself can tell: a hub id not yet downloaded)."""
    if config.builtin_model is not None or config.model is None:
        return None
    path = Path(str(config.model)).expanduser()
    if not path.is_dir():
        return None
    from model_prep import openvino_architectures

    return openvino_architectures.refusal(path, config.cache_dir)


def _preferred_weights(config: ModelSource) -> str:
    """A built-in model's measured fastest (on this ISA, where backends.cpu_defaults says); a GGUF's own precision
    (4-bit: int4, 8-bit: int8, f16, f32); else fp16."""
    name = config.builtin_model
    if name is not None:
        from backends import cpu_defaults

        return cpu_defaults.for_cpu().openvino_weights or builtin_models.MODELS[name].openvino_weights
    gguf = gguf_model.find(str(config.model))
    return gguf_model.openvino_weights(gguf) if gguf is not None else "fp16"


def _from_hub(repo_id: str, token: str | None) -> str:
    from huggingface_hub import model_info, snapshot_download

    patterns = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
    try:
        return str(snapshot_download(repo_id, token=token, local_files_only=True, allow_patterns=patterns))
    except Exception:
        logger.info("%s is not in the local Hugging Face cache; asking the hub", repo_id)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelUnavailableError(
            f"The model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set. "
            "Fix: download it on a connected machine into the cache, pass a local directory with --model, "
            "or unset --model to serve the built-in default model."
        )
    try:
        model_info(repo_id, token=token, timeout=10)
    except Exception as exc:
        cause = type(exc).__name__
        if "RepositoryNotFound" in cause or "GatedRepo" in cause or "401" in str(exc) or "403" in str(exc):
            raise ModelUnavailableError(
                f"The hub refused {repo_id!r} ({cause}): it does not exist or needs access. "
                "Fix: check the id, accept the model's terms on the hub, and set HF_TOKEN."
            ) from None
        raise ModelUnavailableError(
            f"Cannot reach the Hugging Face hub to download {repo_id!r} ({cause}: {str(exc)[:200]}). "
            "Fix: give this machine network access to huggingface.co, pass a local model directory with "
            "--model, or unset --model to serve the built-in default model."
        ) from None
    logger.info("downloading %s from the Hugging Face hub", repo_id)
    return str(snapshot_download(repo_id, token=token, allow_patterns=patterns))
