"""vLLM on CPU: which engine arguments and environment the configuration turns into."""

from __future__ import annotations

import logging
from functools import partial
from typing import TYPE_CHECKING, Any

from backends import cpu_features
from backends.base import ModelResolver
from backends.vllm_engine import VllmEngine, shared_engine_args

if TYPE_CHECKING:
    from engine_server.config import Config

logger = logging.getLogger("engine_server.vllm")

DEFAULT_KV_CACHE_GIB = 4.0
# Pipeline stages on vLLM CPU run eagerly after one Dynamo trace (compilation mode 2, DYNAMO_TRACE_ONCE, with the
# eager backend: no C++ compiler needed). Plain eager mode skips the warm-up run that sizes the buffers in which a
# stage receives the previous stage's activations, so its first request fails (vLLM 0.32).
PIPELINE_EAGER = {"mode": 2, "backend": "eager"}


def resolve_dtype(dtype: str, native_bf16: bool, amx_refusal: str | None = None) -> str:
    """The dtype vLLM runs. amx_refusal: why this host's AMX tiles cannot be used (None: they can, or no AMX).

    auto picks bfloat16 where the CPU computes it natively (AVX512-BF16 or AMX): there it ran 1.3-1.9x float32's
    speed. Elsewhere the CPU emulates bf16 and runs about 3x slower than float32. vLLM's bf16 kernels use AMX
    tiles where the CPU has them, so without the kernel's permission bf16 would crash at the first request.
    """
    from backends import BackendUnavailableError

    if dtype == "auto":
        if not native_bf16:
            return "float32"
        if amx_refusal is not None:
            logger.warning("dtype auto: float32, not bfloat16, because %s", amx_refusal)
            return "float32"
        return "bfloat16"
    if dtype == "bfloat16" and amx_refusal is not None:
        raise BackendUnavailableError(
            f"dtype bfloat16 cannot run here: vLLM's bf16 kernels use AMX tiles and {amx_refusal}. "
            "Use --dtype float32 (or auto, which picks it here)."
        )
    return dtype


def engine_args(config: Config, native_bf16: bool, amx_refusal: str | None = None) -> dict[str, Any]:
    from backends import BackendUnavailableError

    dtype = resolve_dtype(config.dtype, native_bf16, amx_refusal)
    if config.pipeline_parallel_size == 1:
        return shared_engine_args(config, dtype=dtype, enforce_eager=config.enforce_eager is not False)
    if config.enforce_eager:
        raise BackendUnavailableError(
            "enforce_eager cannot run pipeline parallelism on vLLM CPU: eager mode skips the warm-up that sets up "
            "the hand-over between stages. Leave it unset (stages then run eagerly after one Dynamo trace) or use "
            "--no-enforce-eager (compiled, needs a C++ compiler)."
        )
    if config.enforce_eager is False:
        return shared_engine_args(config, dtype=dtype, enforce_eager=False)
    return shared_engine_args(config, dtype=dtype, enforce_eager=False, compilation_config=PIPELINE_EAGER)


def engine_env(config: Config) -> dict[str, str]:
    space = config.kv_cache_space if config.kv_cache_space is not None else DEFAULT_KV_CACHE_GIB
    return cpu_features.allow_vllm_plugin({"VLLM_CPU_KVCACHE_SPACE": f"{space:g}"})


def create_engine(config: Config, resolve_model: ModelResolver) -> VllmEngine:
    flags = cpu_features.cpu_flags()
    return VllmEngine(
        backend="cpu",
        resolve_model=partial(resolve_model, "hf"),
        engine_args=engine_args(config, cpu_features.has_native_bf16(flags), cpu_features.amx_refusal()),
        env=engine_env(config),
    )
