"""vLLM's AsyncLLM in this process, behind the Engine protocol. Shared by the cpu and hpu backends.

The backend modules decide the engine arguments and environment; this module only runs the engine.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

from backends import vllm_nodes
from backends.base import (
    CompletionDelta,
    EngineDeadError,
    EngineNotReadyError,
    EngineStats,
    GenerateRequest,
    InvalidRequestError,
    ModelInfo,
    SamplingOptions,
    StepOutput,
    TokenLogprob,
)
from backends.tokenizer import HfTokenizerMixin
from backends.vllm_args import async_engine_args

logger = logging.getLogger("engine_server.vllm")


class VllmEngine(HfTokenizerMixin):
    def __init__(
        self,
        backend: str,
        resolve_model: Callable[[], str],
        engine_args: dict[str, Any],
        env: dict[str, str] | Callable[[str], dict[str, str]],
    ) -> None:
        """env: the variables vLLM reads, or a function of the resolved model directory that gives them."""
        self.backend = backend
        self._resolve_model = resolve_model
        self._engine_args = engine_args
        self._env = env
        self._llm: Any = None
        self._tokenizer: Any = None
        self._scheduler_stats: Any = None
        self._prefix_cache_queries = 0  # prompt tokens looked up since start, as vLLM's own counters count them
        self._prefix_cache_hits = 0
        self._nodes: vllm_nodes.NodeWatch | None = None  # the other hosts' liveness, with --nnodes > 1
        self._lost: str | None = None  # why another host's node is taken for gone

    async def start(self) -> ModelInfo:
        model = await asyncio.to_thread(self._resolve_model)
        # vLLM reads its settings from the environment of this process and of the engine-core child it spawns.
        os.environ.update(self._env(model) if callable(self._env) else self._env)
        self._llm = await asyncio.to_thread(self._build, model)
        self._tokenizer = self._llm.get_tokenizer()
        parallel = self._llm.vllm_config.parallel_config
        if parallel.nnodes > 1:
            store = await asyncio.to_thread(vllm_nodes.connect, parallel.master_addr, parallel.master_port)
            self._nodes = vllm_nodes.NodeWatch(store, parallel.nnodes)
        import vllm

        config = self._llm.model_config
        return ModelInfo(
            name=model,
            max_model_len=config.max_model_len,
            backend=self.backend,
            engine_version=vllm.__version__,
            shares_prefill=True,
        )

    def _build(self, model: str) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.metrics.loggers import StatLoggerBase

        engine = self

        class SchedulerStatsKeeper(StatLoggerBase):
            """Keeps the engine's latest scheduler figures for /metrics and stats()."""

            def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
                pass

            def record(self, scheduler_stats: Any, iteration_stats: Any, *args: Any, **kwargs: Any) -> None:
                if scheduler_stats is not None:
                    engine._scheduler_stats = scheduler_stats
                    # Each report holds the lookups since the previous one.
                    engine._prefix_cache_queries += scheduler_stats.prefix_cache_stats.queries
                    engine._prefix_cache_hits += scheduler_stats.prefix_cache_stats.hits

            def log_engine_initialized(self) -> None:
                pass

        args = async_engine_args(model, self._engine_args)
        logger.info("starting the vLLM engine: %s", {"model": model, **self._engine_args})
        return AsyncLLM.from_engine_args(args, stat_loggers=[SchedulerStatsKeeper])

    async def generate(self, request: GenerateRequest) -> AsyncIterator[StepOutput]:
        if self._llm is None:
            raise EngineNotReadyError("the engine is still starting")
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import tokens_input
        from vllm.v1.engine.exceptions import EngineDeadError as VllmDeadError

        try:
            params = self._sampling_params(request.sampling)
        except (VLLMClientError, ValueError) as exc:  # e.g. n > 1 with greedy sampling
            raise InvalidRequestError(str(exc)) from exc
        # Already tokenized and length-checked: an engine input skips vLLM's renderer.
        prompt = tokens_input(request.prompt_token_ids)
        try:
            async for out in self._llm.generate(prompt, params, request.request_id):
                yield StepOutput(
                    num_prompt_tokens=len(out.prompt_token_ids or ()),
                    deltas=[self._delta(c) for c in out.outputs],
                    finished=out.finished,
                    num_cached_tokens=out.num_cached_tokens,
                )
        except VllmDeadError as exc:
            raise EngineDeadError(self._lost or str(exc) or "the vLLM engine died") from exc
        except (VLLMClientError, ValueError) as exc:
            raise InvalidRequestError(str(exc)) from exc

    def _sampling_params(self, s: SamplingOptions) -> Any:
        from vllm.sampling_params import RequestOutputKind, SamplingParams, StructuredOutputsParams

        if s.num_speculative_tokens or s.prompt_lookup_max_ngram is not None:
            raise InvalidRequestError(
                "Speculative decoding runs on the openvino backend only (--prompt-lookup): vLLM's CPU backend has "
                "none yet (vllm issue 28384). Omit num_speculative_tokens and prompt_lookup_max_ngram, or send 0.",
                param="num_speculative_tokens" if s.num_speculative_tokens else "prompt_lookup_max_ngram",
            )

        structured = None
        if s.json_schema is not None:
            structured = StructuredOutputsParams(json=s.json_schema)
        elif s.json_object:
            structured = StructuredOutputsParams(json_object=True)
        return SamplingParams(
            n=s.n,
            max_tokens=s.max_tokens,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k,
            min_p=s.min_p,
            repetition_penalty=s.repetition_penalty,
            frequency_penalty=s.frequency_penalty,
            presence_penalty=s.presence_penalty,
            seed=s.seed,
            stop=list(s.stop) or None,
            stop_token_ids=list(s.stop_token_ids) or None,
            logprobs=s.logprobs,
            ignore_eos=s.ignore_eos,
            min_tokens=s.min_tokens,
            skip_special_tokens=s.skip_special_tokens,
            structured_outputs=structured,
            output_kind=RequestOutputKind.DELTA,
        )

    def _delta(self, c: Any) -> CompletionDelta:
        logprobs = None
        if c.logprobs is not None:
            logprobs = [
                self._token_logprob(token_id, position)
                for token_id, position in zip(c.token_ids, c.logprobs, strict=True)
            ]
        finish = c.finish_reason if c.finish_reason in ("stop", "length", "abort") else None
        stop = c.stop_reason if isinstance(c.stop_reason, str) else None  # an int: the stop token id
        return CompletionDelta(c.index, c.text, len(c.token_ids), logprobs, finish, stop)

    def _token_logprob(self, token_id: int, position: dict[int, Any]) -> TokenLogprob:
        chosen = position[token_id]
        ranked = sorted(((lp.rank or 0, tid, lp) for tid, lp in position.items() if lp.rank), key=lambda t: t[0])
        top = tuple((self._token_text(tid, lp), lp.logprob) for rank, tid, lp in ranked if rank >= 1)
        return TokenLogprob(token=self._token_text(token_id, chosen), logprob=chosen.logprob, top=top)

    def _token_text(self, token_id: int, lp: Any) -> str:
        if lp.decoded_token is not None:
            return str(lp.decoded_token)
        return str(self._tokenizer.decode([token_id]))

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def check_health(self) -> None:
        if self._llm is None:
            raise EngineNotReadyError("the engine is still starting")
        if self._llm.errored:
            raise EngineDeadError(str(self._llm.dead_error))
        if self._nodes is not None:
            try:
                await asyncio.to_thread(self._nodes.check)
            except vllm_nodes.NodeLost as exc:
                # Requests in flight would wait on the lost node for the step timeout: end them now, the way vLLM's
                # output handler ends them when its engine dies.
                from vllm.v1.engine.exceptions import EngineDeadError as VllmDeadError

                self._lost = str(exc)
                self._llm.output_processor.propagate_error(VllmDeadError(suppress_context=True))
                raise EngineDeadError(self._lost) from exc

    def stats(self) -> EngineStats:
        if self._llm is None:
            return EngineStats(num_running=0, num_waiting=0)
        s = self._scheduler_stats
        unfinished = self._llm.get_num_unfinished_requests()
        waiting = s.num_waiting_reqs if s is not None else 0
        cache = self._llm.vllm_config.cache_config  # num_gpu_blocks: as the engine core sized it at start
        return EngineStats(
            num_running=max(unfinished - waiting, 0) if unfinished else 0,
            num_waiting=min(waiting, unfinished),
            kv_cache_usage=s.kv_cache_usage if s is not None else 0.0,
            block_size=cache.block_size or 0,
            num_blocks=cache.num_gpu_blocks or 0,
            prefix_cache_queries=self._prefix_cache_queries,
            prefix_cache_hits=self._prefix_cache_hits,
        )

    async def shutdown(self) -> None:
        if self._llm is not None:
            llm, self._llm = self._llm, None
            await asyncio.to_thread(llm.shutdown)
            # AsyncLLM.__del__ shuts down again; run at interpreter exit, that second call fails on modules already
            # torn down and prints a traceback. It is stopped already, so the second call has nothing to do.
            llm.shutdown = lambda *args, **kwargs: None
