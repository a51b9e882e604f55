"""vLLM on Intel Gaudi: which engine arguments and environment the configuration turns into, and whether it can run.

The Gaudi platform comes from the vLLM Gaudi plugin (Python package vllm_gaudi), which vLLM finds through its
`vllm.platform_plugins` entry point: with the plugin installed the same AsyncLLM runs on Gaudi, so nothing here
selects the platform. This module only decides the arguments and checks up front that the plugin and cards exist.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backends import has_module
from backends.base import ModelResolver
from backends.vllm_engine import VllmEngine, shared_engine_args

if TYPE_CHECKING:
    from engine_server.config import Config

logger = logging.getLogger("engine_server.hpu")

# The reference's Gaudi launch defaults. 128 is also the plugin's own block size: smaller ones work, but slowly.
DEFAULT_BLOCK_SIZE = 128
DEFAULT_MAX_NUM_SEQS = 256
DEV = Path("/dev")
_DEVICE_NAME = re.compile(r"accel/accel\d+|hl\d+")  # the driver's cards; accel_controlD*/hl_controlD* are not cards


def world_size(config: Config) -> int:
    return config.parallel_number * config.pipeline_parallel_size


def engine_args(config: Config) -> dict[str, Any]:
    return shared_engine_args(
        config,
        # Gaudi computes in bfloat16; the plugin turns float16/float32 into bfloat16 anyway, with a warning.
        dtype="bfloat16" if config.dtype == "auto" else config.dtype,
        # Not eager by default: graphs gave the reference's Gaudi users about 3x the throughput of --enforce-eager.
        enforce_eager=bool(config.enforce_eager),
        block_size=config.block_size or DEFAULT_BLOCK_SIZE,
        max_num_seqs=config.max_num_seqs or DEFAULT_MAX_NUM_SEQS,
    )


def engine_env(config: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the reference's Gaudi scripts set; a value already in `environ` wins over ours."""
    env = {
        # The habana container runtime mounts the cards this names.
        "HABANA_VISIBLE_DEVICES": "all",
        # Open MPI's single-copy (CMA) transport fails inside containers; Habana's images turn it off too.
        "OMPI_MCA_btl_vader_single_copy_mechanism": "none",
    }
    if world_size(config) > 1:
        # Collectives inside HPU graphs (lazy mode) need this; without it multi-card graphs hang or fail.
        env["PT_HPU_ENABLE_LAZY_COLLECTIVES"] = "true"
    if config.pipeline_parallel_size > 1 and environ.get("PT_HPU_LAZY_MODE") == "1":
        # The plugin documents this as required for pipeline parallelism in lazy mode.
        env["PT_HPUGRAPH_DISABLE_TENSOR_CACHE"] = "0"
    return {name: environ.get(name) or value for name, value in env.items()}


def max_seq_len_to_capture_notice(config: Config) -> str | None:
    # vLLM >= 0.11 removed the option, and the plugin captures graphs per warm-up bucket, not up to a length:
    # no setting means the same thing, so it is accepted (the reference's scripts pass it) and explained.
    if config.max_seq_len_to_capture is None:
        return None
    return (
        f"max_seq_len_to_capture={config.max_seq_len_to_capture} has no effect: vLLM >= 0.11 removed it. On Gaudi "
        "the shapes compiled ahead of time are the plugin's warm-up buckets, bounded by --max-model-len and "
        "--max-num-batched-tokens (default exponential bucketing), or by VLLM_PROMPT_QUERY_BUCKET_MAX and "
        "VLLM_DECODE_BLOCK_BUCKET_MAX with VLLM_BUCKETING_STRATEGY=lin; see docs/gaudi.md."
    )


def find_devices(dev: Path = DEV) -> list[Path]:
    candidates = [*dev.glob("accel/accel*"), *dev.glob("hl*")]
    return sorted(p for p in candidates if _DEVICE_NAME.fullmatch(p.relative_to(dev).as_posix()))


def check_available(
    config: Config | None = None,
    dev: Path = DEV,
    has_module: Callable[[str], bool] = has_module,
) -> None:
    """Raise BackendUnavailableError naming every missing piece, before anything heavy is imported."""
    from backends import BackendUnavailableError

    problems = []
    devices = find_devices(dev)
    # With --nnodes every host runs an equal share of the workers, one card each.
    needed = world_size(config) // config.nnodes if config is not None else 1
    if config is not None and config.distributed_executor_backend == "ray":
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


def create_engine(config: Config, resolve_model: ModelResolver) -> VllmEngine:
    notice = max_seq_len_to_capture_notice(config)
    if notice:
        logger.warning(notice)
    return VllmEngine(
        backend="hpu",
        resolve_model=partial(resolve_model, "hf"),
        engine_args=engine_args(config),
        env=engine_env(config, os.environ),
    )
