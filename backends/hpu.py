"""vLLM on Intel Gaudi: which engine arguments and environment its settings turn into, whether it can run, and its
entry in the registry.

The Gaudi platform comes from the vLLM Gaudi plugin (Python package vllm_gaudi), which vLLM finds through its
`vllm.platform_plugins` entry point: with the plugin installed the same AsyncLLM runs on Gaudi, so nothing here
selects the platform. This module only decides the arguments and checks up front that the plugin and cards exist.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import backends
from backends.base import ModelResolver
from backends.registry import Backend
from backends.vllm_args import VllmSettings, shared_engine_args
from backends.vllm_engine import VllmEngine

logger = logging.getLogger("engine_server.hpu")

# The reference's Gaudi launch defaults. 128 is also the plugin's own block size: smaller ones work, but slowly.
DEFAULT_BLOCK_SIZE = 128
DEFAULT_MAX_NUM_SEQS = 256
DEV = Path("/dev")
_DEVICE_NAME = re.compile(r"accel/accel\d+|hl\d+")  # the driver's cards; accel_controlD*/hl_controlD* are not cards


@dataclass(frozen=True)
class HpuSettings(VllmSettings):
    max_seq_len_to_capture: int | None = None  # accepted from the reference's scripts; see its notice


def world_size(s: HpuSettings) -> int:
    return s.parallel_number * s.pipeline_parallel_size


def engine_args(s: HpuSettings) -> dict[str, Any]:
    return shared_engine_args(
        s,
        # Gaudi computes in bfloat16; the plugin turns float16/float32 into bfloat16 anyway, with a warning.
        dtype="bfloat16" if s.dtype == "auto" else s.dtype,
        # Not eager by default: graphs gave the reference's Gaudi users about 3x the throughput of --enforce-eager.
        enforce_eager=bool(s.enforce_eager),
        block_size=s.block_size or DEFAULT_BLOCK_SIZE,
        max_num_seqs=s.max_num_seqs or DEFAULT_MAX_NUM_SEQS,
    )


def engine_env(s: HpuSettings, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the reference's Gaudi scripts set; a value already in `environ` wins over ours."""
    env = {
        # The habana container runtime mounts the cards this names.
        "HABANA_VISIBLE_DEVICES": "all",
        # Open MPI's single-copy (CMA) transport fails inside containers; Habana's images turn it off too.
        "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
    }
    if world_size(s) > 1:
        # Collectives inside HPU graphs (lazy mode) need this; without it multi-card graphs hang or fail.
        env["PT_HPU_ENABLE_LAZY_COLLECTIVES"] = "true"
    if s.pipeline_parallel_size > 1 and environ.get("PT_HPU_LAZY_MODE") == "1":
        # The plugin documents this as required for pipeline parallelism in lazy mode.
        env["PT_HPUGRAPH_DISABLE_TENSOR_CACHE"] = "0"
    return {name: environ.get(name) or value for name, value in env.items()}


def max_seq_len_to_capture_notice(s: HpuSettings) -> str | None:
    # vLLM >= 0.11 removed the option, and the plugin captures graphs per warm-up bucket, not up to a length:
    # no setting means the same thing, so it is accepted (the reference's scripts pass it) and explained.
    if s.max_seq_len_to_capture is None:
        return None
    return (
        f"max_seq_len_to_capture={s.max_seq_len_to_capture} has no effect: vLLM >= 0.11 removed it. On Gaudi "
        "the shapes compiled ahead of time are the plugin's warm-up buckets, bounded by --max-model-len and "
        "--max-num-batched-tokens (default exponential bucketing), or by VLLM_PROMPT_QUERY_BUCKET_MAX and "
        "VLLM_DECODE_BLOCK_BUCKET_MAX with VLLM_BUCKETING_STRATEGY=lin; see docs/gaudi.md."
    )


def find_devices(dev: Path = DEV) -> list[Path]:
    candidates = [*dev.glob("accel/accel*"), *dev.glob("hl*")]
    return sorted(p for p in candidates if _DEVICE_NAME.fullmatch(p.relative_to(dev).as_posix()))


def check_available(
    s: HpuSettings | None = None,
    dev: Path = DEV,
    has_module: Callable[[str], bool] = backends.has_module,
) -> None:
    """Raise BackendUnavailableError naming every missing piece, before anything heavy is imported."""
    from backends import BackendUnavailableError

    problems = []
    devices = find_devices(dev)
    # With --nnodes every host runs an equal share of the workers, one card each.
    needed = world_size(s) // s.nnodes if s is not None else 1
    if s is not None and s.distributed_executor_backend == "ray":
        needed = 1  # the other cards may be on other hosts of the Ray cluster
    if not devices:
        problems.append(
            f"no Gaudi card found (no {dev}/accel/accel* device): check the driver with hl-smi, and give a "
            "container the cards with --runtime=habana -e HABANA_VISIBLE_DEVICES=all"
        )
    elif len(devices) < needed:
        problems.append(
            f"{needed} cards are needed on this host (parallel_number x pipeline_parallel_size / nnodes) but it "
            f"has {len(devices)}; to span hosts use --nnodes or --distributed-executor-backend ray (docs/gaudi.md)"
        )
    if not has_module("vllm_gaudi"):
        problems.append(
            "the vLLM Gaudi plugin (Python package vllm_gaudi) is not installed: run the hpu image, built on "
            "Habana's vLLM plugin image (docs/gaudi.md)"
        )
    elif not has_module("habana_frameworks"):
        problems.append("Habana's PyTorch bridge (habana_frameworks) is not installed, which the plugin needs")
    if problems:
        raise BackendUnavailableError("hw_mode 'hpu' cannot run here: " + "; ".join(problems))


def unavailable(s: HpuSettings) -> str | None:
    """hw_mode auto's check: cards and the plugin (check_available says in detail what else is missing)."""
    if not find_devices():
        return "no Gaudi card"
    if not backends.has_module("vllm_gaudi"):
        return "no vLLM Gaudi plugin"
    return None


def create_engine(s: HpuSettings, resolve_model: ModelResolver) -> VllmEngine:
    check_available(s)
    notice = max_seq_len_to_capture_notice(s)
    if notice:
        logger.warning(notice)
    return VllmEngine(
        backend="hpu",
        resolve_model=partial(resolve_model, "hf"),
        engine_args=engine_args(s),
        env=engine_env(s, os.environ),
    )


def run_headless(s: HpuSettings, resolve_model: ModelResolver) -> int:
    from backends import vllm_headless

    check_available(s)
    return vllm_headless.run(partial(resolve_model, "hf"), engine_args(s), engine_env(s, os.environ))


BACKEND = Backend(
    name="hpu",
    description="vLLM on Intel Gaudi",
    auto_order=10,
    formats=("hf",),
    settings=HpuSettings,
    unavailable=unavailable,
    create=create_engine,
    run_headless=run_headless,
)
