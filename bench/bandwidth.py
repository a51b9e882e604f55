"""The memory-bandwidth bound of a decode step at one stream: a step reads every weight once, so it cannot take less
than the weights' bytes over the machine's read bandwidth.

Bandwidth: torch summing a 512 MB float32 tensor with all cores' threads (as the engines run), best of 7.
"""

from __future__ import annotations

import time
from pathlib import Path

SIZE_BYTES = 512 << 20


def read_bandwidth_gbs(repeat: int = 7) -> float:
    import torch

    data = torch.ones(SIZE_BYTES // 4)
    data.sum()  # pages touched, threads started
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        data.sum()
        best = min(best, time.perf_counter() - started)
    return SIZE_BYTES / best / 1e9


def weights_bytes(export: Path) -> int:
    """What an OpenVINO export's decode step reads: its weights file (a tied embedding is stored, and read, once)."""
    return (Path(export) / "openvino_model.bin").stat().st_size
