"""vLLM on CPU: which engine arguments and environment its settings turn into, and its entry in the registry."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any

import backends
from backends import cpu_defaults, cpu_features, kv_sizing
from backends.base import ModelResolver
from backends.registry import Backend
from backends.vllm_args import VllmSettings, shared_engine_args
from backends.vllm_engine import VllmEngine

logger = logging.getLogger("engine_server.vllm")

# Pipeline stages on vLLM CPU run eagerly after one Dynamo trace (compilation mode 2, DYNAMO_TRACE_ONCE, with the
# eager backend: no C++ compiler needed). Plain eager mode skips the warm-up run that sizes the buffers in which a
# stage receives the previous stage's activations, so its first request fails (vLLM 0.32).
PIPELINE_EAGER = {"mode": 2, "backend": "eager"}


@dataclass(frozen=True)
class CpuSettings(VllmSettings):
    kv_cache_space: float | None = None  # GiB; None: backends.kv_sizing's default for the model


def resolve_dtype(dtype: str, native_bf16: bool, amx_refusal: str | None = None) -> str:
    """The dtype vLLM runs. amx_refusal: why this host's AMX tiles cannot be used (None: they can, or no AMX).

    auto picks bfloat16 where this CPU's row in backends.cpu_defaults says so (AVX512-BF16, where it ran 1.3-1.9x
    float32's speed); float32 on AMX, whose attention kernel gave wrong text, and where the CPU emulates bf16 (about
    3x slower than float32). vLLM's bf16 kernels use AMX tiles where the CPU has them, so without the kernel's
    permission bf16 would crash at the first request.
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


def engine_args(s: CpuSettings, native_bf16: bool, amx_refusal: str | None = None) -> dict[str, Any]:
    from backends import BackendUnavailableError

    dtype = resolve_dtype(s.dtype, native_bf16, amx_refusal)
    if s.pipeline_parallel_size == 1:
        return shared_engine_args(s, dtype=dtype, enforce_eager=s.enforce_eager is not False)
    if s.enforce_eager:
        raise BackendUnavailableError(
            "enforce_eager cannot run pipeline parallelism on vLLM CPU: eager mode skips the warm-up that sets up "
            "the hand-over between stages. Leave it unset (stages then run eagerly after one Dynamo trace) or use "
            "--no-enforce-eager (compiled, needs a C++ compiler)."
        )
    if s.enforce_eager is False:
        return shared_engine_args(s, dtype=dtype, enforce_eager=False)
    return shared_engine_args(s, dtype=dtype, enforce_eager=False, compilation_config=PIPELINE_EAGER)


def engine_env(s: CpuSettings, model: str | None = None, dtype: str = "float32") -> dict[str, str]:
    """model: the model's directory, from which the KV cache's default size is counted (None: the floor)."""
    space = s.kv_cache_space
    if space is None:
        space = kv_sizing.default_gib(model, s.max_model_len, dtype) if model else kv_sizing.FLOOR_GIB
    return cpu_features.allow_vllm_plugin({"VLLM_CPU_KVCACHE_SPACE": f"{space:g}"})


def native_bf16() -> bool:
    """Whether dtype auto may pick bfloat16 here (backends.cpu_defaults: where the CPU computes it natively)."""
    return cpu_defaults.for_cpu().vllm_dtype == "bfloat16"


def create_engine(s: CpuSettings, resolve_model: ModelResolver) -> VllmEngine:
    args = engine_args(s, native_bf16(), cpu_features.amx_refusal())
    return VllmEngine(
        backend="cpu",
        resolve_model=partial(resolve_model, "hf"),
        engine_args=args,
        env=lambda model: engine_env(s, model, args["dtype"]),
    )


def run_headless(s: CpuSettings, resolve_model: ModelResolver) -> int:
    from backends import vllm_headless

    args = engine_args(s, native_bf16(), cpu_features.amx_refusal())
    return vllm_headless.run(partial(resolve_model, "hf"), args, engine_env(s, dtype=args["dtype"]))


def unavailable(s: CpuSettings) -> str | None:
    if backends.has_module("vllm"):
        return None
    return (
        f"this Python ({sys.executable}) has no vLLM; the vLLM environment serves it: "
        ".venv/bin/engine-server --hw-mode cpu (the two engines need other transformers versions)"
    )


BACKEND = Backend(
    name="cpu",
    description="vLLM CPU",
    auto_order=30,
    formats=("hf",),
    settings=CpuSettings,
    unavailable=unavailable,
    create=create_engine,
    run_headless=run_headless,
)
