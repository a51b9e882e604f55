"""vLLM on CPU: which engine arguments and environment the configuration turns into."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends.base import ModelResolver
from backends.vllm_engine import VllmEngine, shared_engine_args

if TYPE_CHECKING:
    from engine_server.config import Config

DEFAULT_KV_CACHE_GIB = 4.0


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, native_bf16: bool) -> str:
    # Without native bf16 the CPU emulates it and runs about 3x slower than float32.
    if dtype == "auto":
        return "bfloat16" if native_bf16 else "float32"
    return dtype


def engine_args(config: Config, native_bf16: bool) -> dict[str, Any]:
    return shared_engine_args(
        config,
        dtype=resolve_dtype(config.dtype, native_bf16),
        enforce_eager=True if config.enforce_eager is None else config.enforce_eager,
    )


def engine_env(config: Config) -> dict[str, str]:
    space = config.kv_cache_space if config.kv_cache_space is not None else DEFAULT_KV_CACHE_GIB
    return {"VLLM_CPU_KVCACHE_SPACE": f"{space:g}"}


def create_engine(config: Config, resolve_model: ModelResolver) -> VllmEngine:
    return VllmEngine(
        backend="cpu",
        resolve_model=partial(resolve_model, "hf"),
        engine_args=engine_args(config, cpu_has_native_bf16()),
        env=engine_env(config),
    )
