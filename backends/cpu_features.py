"""What the host CPU offers, and the AMX tile permission that vLLM's CPU kernels need.

On Linux, a process must ask the kernel for AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)
before its first tile instruction; without it that instruction dies of SIGILL. vLLM's bf16 attention uses AMX tiles
on CPUs that have them but does not ask. The permission is per process and vLLM runs its kernels in processes it
spawns (engine core, workers), so it is asked for by a `vllm.general_plugins` entry point, which vLLM calls in every
process it starts. Nothing here imports more than ctypes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys
from collections.abc import Mapping
from functools import cache
from pathlib import Path

logger = logging.getLogger("engine_server.cpu")

SYS_ARCH_PRCTL = 158  # x86_64
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18
PLUGIN_NAME = "engine_server_amx"  # the entry point's name in pyproject.toml


@cache
def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    return frozenset(
        next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    )


def has_native_bf16(flags: frozenset[str]) -> bool:
    return "avx512_bf16" in flags or "amx_bf16" in flags


def has_amx(flags: frozenset[str]) -> bool:
    return "amx_tile" in flags


def request_amx_tiles() -> str | None:
    """Ask the kernel for AMX tile state in this process. None when granted; otherwise why not.

    Asking again after a grant is harmless: the kernel answers 0 again.
    """
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return "not a Linux x86_64 host"
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0:
        return None
    errno = ctypes.get_errno()
    return f"the kernel refused AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: {os.strerror(errno)})"


@cache
def amx_refusal() -> str | None:
    """On a CPU with AMX: None when this process may use the tiles, otherwise why not. None without AMX."""
    if not has_amx(cpu_flags()):
        return None
    return request_amx_tiles()


def vllm_plugin() -> None:
    """vLLM calls this in each process it starts, before any model code runs there."""
    refusal = amx_refusal()
    if refusal is not None:
        logger.warning("AMX tiles are not available in process %d: %s", os.getpid(), refusal)


def allow_vllm_plugin(env: dict[str, str], environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    """env (what the engine adds to environ), with VLLM_PLUGINS naming our plugin too if the user set an allow-list."""
    allowed = environ.get("VLLM_PLUGINS")
    if allowed is None or PLUGIN_NAME in allowed.split(","):
        return env
    return {**env, "VLLM_PLUGINS": ",".join(p for p in (allowed, PLUGIN_NAME) if p)}
