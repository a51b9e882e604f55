"""The OpenVINO pipeline's KV cache as the server reports it: its layout, measured at start, and its use per step."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from backends.base import EngineStats


@dataclass(frozen=True)
class KvCacheReport:
    """The KV cache as the pipeline reports it (not as configured): measured with a one-block request at start."""

    size_bytes: int
    num_blocks: int
    block_bytes: int
    block_size: int  # tokens per block


def block_size(device: str) -> int:
    """Tokens per KV-cache block. OpenVINO GenAI fixes it by device (16 on GPU, 32 on CPU) and does not expose it.
    Checked on CPU with a cache of 100 blocks: prompts of 32 tokens take one block, prompts of 33 take two."""
    return 16 if device.upper().startswith("GPU") else 32


def kv_cache_report(metrics: Any, device: str) -> KvCacheReport:
    """The cache's size and blocks from the metrics of a step that holds one block: one block in use reads as
    1/num_blocks of the cache. metrics is None if no step ran."""
    size = int(metrics.kv_cache_size_in_bytes) if metrics is not None else 0
    num_blocks = round(100 / metrics.cache_usage) if metrics is not None and metrics.cache_usage > 0 else 0
    return KvCacheReport(size, num_blocks, size // num_blocks if num_blocks else 0, block_size(device))


def engine_stats(metrics: Any, kv_cache: KvCacheReport | None) -> EngineStats:
    """The engine's figures from the pipeline's metrics of its latest step (None before the first)."""
    if metrics is None:
        return EngineStats(num_running=0, num_waiting=0)
    return EngineStats(
        num_running=int(metrics.scheduled_requests),
        num_waiting=max(int(metrics.requests) - int(metrics.scheduled_requests), 0),
        kv_cache_usage=float(metrics.cache_usage) / 100,
        block_size=kv_cache.block_size if kv_cache is not None else 0,
        num_blocks=kv_cache.num_blocks if kv_cache is not None else 0,
    )
