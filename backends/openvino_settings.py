"""OpenVINO: which pipeline settings its settings turn into, whether the backend can run here, and its entry in the
registry. The engine itself (backends.openvino) is imported only when one is created."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from pathlib import Path

import backends
from backends import cpu_defaults, kv_sizing
from backends.base import Engine, ModelResolver
from backends.openvino_speculation import PromptLookup
from backends.registry import Backend

INFERENCE_PRECISIONS = {"float32": "f32", "bfloat16": "bf16", "float16": "f16"}  # dtype "auto": auto_precision()


@dataclass(frozen=True)
class PipelineSettings:
    device: str = "CPU"
    kv_cache_gib: int | None = None  # None: backends.kv_sizing's default for the model (whole GiB)
    kv_cache_precision: str | None = None  # None: the device's default (u8 on CPU)
    inference_precision: str | None = None  # None: the device's default
    # None: the device's default (on CPU: pinned). Off, the OS may move an inference thread off a core that the HTTP
    # layer or another process needs for a moment, instead of that work waiting for the step to end.
    enable_cpu_pinning: bool | None = None
    enable_prefix_caching: bool = True
    dynamic_split_fuse: bool | None = None  # chunked prefill; None: OpenVINO's default (on)
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    trust_remote_code: bool = False
    prompt_lookup: PromptLookup | None = None  # None: no speculative decoding
    engine_process: bool = False  # the pipeline in a process of its own (backends.openvino_process)


@dataclass(frozen=True)
class OpenVinoSettings:
    """Named as the configuration's fields (backends.registry fills them)."""

    device: str = "CPU"
    kv_cache_space: float | None = None  # GiB, whole; None: backends.kv_sizing's default for the model
    kv_cache_precision: str | None = None
    dtype: str = "auto"
    enable_prefix_caching: bool = True
    enable_chunked_prefill: bool | None = None
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    trust_remote_code: bool = False
    prompt_lookup: bool = False
    num_speculative_tokens: int = 5  # OpenVINO GenAI's prompt-lookup sample
    prompt_lookup_max_ngram: int = 3
    engine_process: bool = True
    nnodes: int = 1


def pipeline_settings(config: OpenVinoSettings) -> PipelineSettings:
    return PipelineSettings(
        device=config.device,
        kv_cache_gib=int(config.kv_cache_space) if config.kv_cache_space is not None else None,
        kv_cache_precision=config.kv_cache_precision
        or (cpu_defaults.for_cpu().openvino_kv if config.device == "CPU" else None),
        inference_precision=INFERENCE_PRECISIONS.get(config.dtype) or auto_precision(config.device),
        enable_cpu_pinning=False if config.device == "CPU" else None,
        enable_prefix_caching=config.enable_prefix_caching,
        dynamic_split_fuse=config.enable_chunked_prefill,
        max_num_batched_tokens=config.max_num_batched_tokens,
        max_num_seqs=config.max_num_seqs,
        max_model_len=config.max_model_len,
        trust_remote_code=config.trust_remote_code,
        prompt_lookup=(
            PromptLookup(config.num_speculative_tokens, config.prompt_lookup_max_ngram)
            if config.prompt_lookup
            else None
        ),
        engine_process=config.engine_process,
    )


def kv_cache_gib(s: PipelineSettings, model: str, max_model_len: int) -> int:
    """The KV cache's size: as set, or room for kv_sizing's sessions at the cache's precision (on CPU by default u8;
    on GPUs f16), in the whole GiB OpenVINO takes."""
    if s.kv_cache_gib is not None:
        return s.kv_cache_gib
    precision = s.kv_cache_precision or ("u8" if s.device == "CPU" else "f16")
    return math.ceil(kv_sizing.default_gib(model, max_model_len, precision))


def auto_precision(device: str, flags: frozenset[str] | None = None) -> str | None:
    """dtype auto: on CPU, the precision backends.cpu_defaults gives this ISA. Without AMX that is f32, where
    OpenVINO otherwise picks bf16 (AVX512-BF16): with f32 activations it quantizes them per group on the fly and
    multiplies int8 weights with VNNI; with bf16 it decompresses the weights instead (bench/README.md). On AMX, and
    on other devices, the device's default stays."""
    if device != "CPU":
        return None
    return cpu_defaults.for_cpu(flags).openvino_precision


def check_available(config: OpenVinoSettings, dri: Path = Path("/dev/dri")) -> None:
    """Raise BackendUnavailableError naming what is missing, before anything heavy is imported."""
    from backends import BackendUnavailableError

    if not backends.has_module("openvino_genai"):
        raise BackendUnavailableError(
            f"hw_mode openvino needs OpenVINO GenAI, which this Python ({sys.executable}) does not have. "
            "Fix: run scripts/setup and start .venv-openvino/bin/engine-server, or use the openvino image."
        )
    if config.kv_cache_space is not None and not float(config.kv_cache_space).is_integer():
        # OpenVINO's scheduler takes the KV-cache size in whole GiB.
        raise BackendUnavailableError(
            f"kv_cache_space must be a whole number of GiB on openvino, got {config.kv_cache_space}"
        )
    if config.device.startswith("GPU") and not any(dri.glob("renderD*")):
        raise BackendUnavailableError(
            f"device {config.device} needs an Intel GPU, and {dri} has no render node. Fix: install the GPU driver; "
            "in a container pass --device /dev/dri --group-add render (docs/openvino.md)."
        )


def unavailable(config: OpenVinoSettings) -> str | None:
    """hw_mode auto's check."""
    if config.nnodes > 1:
        return "a model across hosts (nnodes > 1) runs on vLLM"
    if not backends.has_module("openvino_genai"):
        return "no OpenVINO GenAI in this Python"
    return None


def create_engine(config: OpenVinoSettings, resolve_model: ModelResolver) -> Engine:
    check_available(config)
    from backends import openvino

    return openvino.create_engine(pipeline_settings(config), resolve_model)


BACKEND = Backend(
    name="openvino",
    description="OpenVINO GenAI, the fastest engine on CPUs here",
    auto_order=20,
    formats=("openvino",),
    settings=OpenVinoSettings,
    unavailable=unavailable,
    create=create_engine,
)
