"""What vLLM is given: the settings both vLLM backends (cpu, hpu) take from the configuration, and the engine
arguments they become. Shared by the engine (vllm_engine) and a headless node's workers (vllm_headless), which must
agree."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class VllmSettings:
    """Named as the configuration's fields (backends.registry fills them)."""

    dtype: str = "auto"
    enforce_eager: bool | None = None
    prompt_lookup: bool = False
    enable_prefix_caching: bool = True
    trust_remote_code: bool = False
    parallel_number: int = 1
    pipeline_parallel_size: int = 1
    max_model_len: int | None = None
    block_size: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool | None = None
    distributed_executor_backend: str | None = None
    nnodes: int = 1
    node_rank: int = 0
    master_addr: str | None = None
    master_port: int | None = None


def shared_engine_args(s: VllmSettings, **backend_args: Any) -> dict[str, Any]:
    """The AsyncEngineArgs every vLLM backend takes from the config; backend_args add to or override them.
    Settings left at None are not passed, so that vLLM (or its platform plugin) picks its own default."""
    if s.prompt_lookup:
        from backends import BackendUnavailableError

        raise BackendUnavailableError(
            "prompt_lookup (speculative decoding) runs on hw_mode openvino only: vLLM's CPU backend has no "
            "speculative decoding yet (vllm issue 28384), and this server does not pass it to vLLM on Gaudi. "
            "Use --hw-mode openvino, or drop --prompt-lookup / ENGINE_SERVER_PROMPT_LOOKUP."
        )
    args = {
        "enable_prefix_caching": s.enable_prefix_caching,
        "trust_remote_code": s.trust_remote_code,
        "tensor_parallel_size": s.parallel_number,
        "pipeline_parallel_size": s.pipeline_parallel_size,
        "max_model_len": s.max_model_len,
        "block_size": s.block_size,
        "max_num_seqs": s.max_num_seqs,
        "max_num_batched_tokens": s.max_num_batched_tokens,
        "enable_chunked_prefill": s.enable_chunked_prefill,
        "distributed_executor_backend": s.distributed_executor_backend,
        **node_args(s),
        **backend_args,
    }
    return {name: value for name, value in args.items() if value is not None}


def node_args(s: VllmSettings) -> dict[str, Any]:
    """The arguments that spread one model over several hosts with vLLM's mp executor; none on one host."""
    if s.nnodes == 1:
        return {}
    return {
        "nnodes": s.nnodes,
        "node_rank": s.node_rank,
        "master_addr": s.master_addr,
        "master_port": s.master_port,
        # Unset, vLLM would pick Ray where a Ray cluster runs, and then refuse nnodes > 1.
        "distributed_executor_backend": s.distributed_executor_backend or "mp",
    }


def async_engine_args(model: str, engine_args: dict[str, Any]) -> Any:
    """The same AsyncEngineArgs for the engine and for a headless node's workers, which must agree."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    return AsyncEngineArgs(
        model=model, disable_log_stats=False, structured_outputs_config=compact_json_outputs(), **engine_args
    )


def compact_json_outputs() -> Any:
    """Structured output that writes JSON without whitespace: where the grammar allows whitespace between tokens,
    small models fill it forever (a '{' then whitespace up to max_tokens). llguidance takes vLLM's switch for it
    (xgrammar 0.2.8 still allows a space after commas) and supports more of JSON Schema."""
    from vllm.config import StructuredOutputsConfig

    return StructuredOutputsConfig(backend="guidance", disable_any_whitespace=True)
