"""OpenVINO GenAI's ContinuousBatchingPipeline in this process, behind the Engine protocol.

One thread owns the pipeline: it adds requests, steps, reads each request's new tokens, detokenizes them and
cancels; nothing else calls the pipeline. Outputs reach each request's asyncio queue through
loop.call_soon_threadsafe, so the event loop never waits on the pipeline's Python objects. But the binding's step()
holds the GIL for the whole step (openvino-genai 2026.4: a Python thread sleeping 0.2 ms in a loop beside a pipeline
stepping 8 SmolLM2 streams ran once per 23 ms step), so the event loop runs only between steps: that is when chunks
are sent and new requests are read and tokenized. From WAIT_FOR_LOOP_FROM outputs on, the next step waits until the
loop has sent them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import queue
import secrets
import sys
import threading
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path
from typing import Any

from backends.base import (
    CompletionDelta,
    EngineDeadError,
    EngineError,
    EngineNotReadyError,
    EngineStats,
    GenerateRequest,
    ModelInfo,
    ModelResolver,
    SamplingOptions,
    StepOutput,
)
from backends.openvino_cache import KvCacheReport, engine_stats, kv_cache_report
from backends.openvino_process import ConfigRecipe, InProcessPipeline, PipelineProcess, open_pipeline
from backends.openvino_request import OpenVinoRequest, merge_outputs
from backends.openvino_sampling import check_supported, openvino_message, request_prompt_lookup
from backends.openvino_settings import PipelineSettings
from backends.openvino_speculation import SequenceSpeculation, SpecDecodeCounts
from backends.tokenizer import HfTokenizerMixin

logger = logging.getLogger("engine_server.openvino")

SWITCH_INTERVAL_S = 0.0005
# From this many outputs in one step on, the next step waits (50 ms at most) until the event loop has sent them.
# Without the wait the loop gets the GIL only at switch-interval turns between steps and falls behind. Measured on
# 2 cores (docs/openvino.md): at 32 streams the mean TTFT fell 3x and the TPOT rose by a third; at 8 gemma-3 streams
# TTFT fell by 40% and throughput rose 5-10%; at 8 SmolLM2 streams, never waiting gave 229 tok/s and a 730 ms TTFT
# (waiting after every step: 239 and 404 ms; this default, in a run half an hour later: 269 and 426 ms). A step
# with few outputs leaves the loop little to do, and does not wait: at one stream, runs with and without waiting
# differed by less than their noise.
WAIT_FOR_LOOP_FROM = 4


def create_engine(settings: PipelineSettings, resolve_model: ModelResolver) -> OpenVinoEngine:
    return OpenVinoEngine(settings, partial(resolve_model, "openvino"))


class OpenVinoEngine(HfTokenizerMixin):
    backend = "openvino"

    def __init__(self, settings: PipelineSettings, resolve_model: Callable[[], str]) -> None:
        self.settings = settings
        self._resolve_model = resolve_model
        self._pipe: Any = None
        self._tokenizer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._commands: queue.SimpleQueue[tuple[str, OpenVinoRequest | None]] = queue.SimpleQueue()
        self._active: dict[int, OpenVinoRequest] = {}  # pipeline id -> request; stepping thread only
        self._outbox: list[tuple[OpenVinoRequest, StepOutput | BaseException]] = []  # stepping thread only
        self._by_id: dict[str, OpenVinoRequest] = {}  # request_id -> request; event loop only
        self._ids = itertools.count()
        self._metrics: Any = None
        self._dead: str | None = None
        self.kv_cache: KvCacheReport | None = None
        self._spec_counts = SpecDecodeCounts()  # stepping thread only (read at scrape time)

    # -- starting ------------------------------------------------------------------------------------------------

    async def start(self) -> ModelInfo:
        model = await asyncio.to_thread(self._resolve_model)
        info = await asyncio.to_thread(self._load, model)
        self._loop = asyncio.get_running_loop()
        # step() holds the GIL throughout: between steps the event loop, waiting for it, would get it back only after
        # the default 5 ms switch interval, once per I/O call, and fall behind the engine by many steps.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._thread = threading.Thread(target=self._run, name="openvino-steps", daemon=True)
        self._thread.start()
        return info

    def _load(self, model: str) -> ModelInfo:
        import openvino_genai

        s = self.settings
        config = _model_config(Path(model))
        max_model_len = s.max_model_len or int(config.get("max_position_embeddings") or 0)
        if max_model_len <= 0:
            raise EngineError(f"{model}/config.json gives no context length: pass --max-model-len")
        # The tokenizer (transformers' import and a large vocabulary: 1.9 s for gemma-3) loads while the pipeline
        # compiles, which releases the GIL: ready 0.9 s sooner.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tokenizer") as pool:
            tokenizer = pool.submit(load_tokenizer, model, s.trust_remote_code)
            if s.engine_process:
                self._pipe = PipelineProcess(model, s, max_model_len)
            else:
                self._pipe = InProcessPipeline(open_pipeline(model, s, max_model_len))
            self._tokenizer = tokenizer.result()
        defaults = self._pipe.get_config()
        self._eos_token_id = int(defaults.eos_token_id)
        self._stop_token_ids = {int(t) for t in defaults.stop_token_ids}
        self._vocab_size = int(config.get("vocab_size") or len(self._tokenizer))
        self.kv_cache = self._warm_up()
        logger.info(
            "KV cache as the pipeline reports it: size_bytes=%d num_blocks=%d block_bytes=%d",
            self.kv_cache.size_bytes,
            self.kv_cache.num_blocks,
            self.kv_cache.block_bytes,
        )
        return ModelInfo(model, max_model_len, self.backend, openvino_genai.__version__)

    def _warm_up(self) -> KvCacheReport:
        """One one-token request: compiles the first step's kernels now rather than in a user's request, and
        shows how many blocks the cache has (one block in use reads as 1/num_blocks)."""
        recipe = ConfigRecipe(
            SamplingOptions(max_tokens=1, temperature=0.0, ignore_eos=True, seed=0),
            self._eos_token_id,
            frozenset(self._stop_token_ids),
            self.settings.prompt_lookup,  # a prompt-lookup pipeline takes no request without drafts
        )
        handle = self._pipe.add_request(next(self._ids), [self._eos_token_id], recipe)  # dropping it stops it
        m = None
        while self._pipe.has_non_finished_requests():
            self._pipe.step()
            m = self._pipe.get_metrics()
        del handle
        self._pipe.step()  # a step with no requests resets the metrics to idle
        self._metrics = self._pipe.get_metrics()
        return kv_cache_report(m, self.settings.device)

    # -- the stepping thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                # Idle (nothing to run, metrics already show it): sleep until a command comes.
                idle = not self._pipe.has_non_finished_requests() and self._metrics.requests == 0
                if not self._take_commands(block=idle):
                    return
                self._pipe.step()
                self._metrics = self._pipe.get_metrics()
                for req in list(self._active.values()):
                    try:
                        self._deliver(req)
                    except Exception as exc:  # one request's outputs went wrong, not the pipeline: fail it alone
                        logger.exception("request %s failed", req.request.request_id)
                        req.handle.cancel()
                        self._finish(req, EngineError(f"the request failed: {exc}"))
                # In its own process the pipeline steps while the loop sends: nothing to wait for.
                self._flush(wait=not self.settings.engine_process and len(self._outbox) >= WAIT_FOR_LOOP_FROM)
        except EngineDeadError as exc:
            logger.error("%s", exc)
            self._dead = str(exc)
            self._fail_all(EngineDeadError(self._dead))
        except Exception as exc:
            logger.exception("the OpenVINO pipeline failed")
            self._dead = f"the OpenVINO pipeline failed: {openvino_message(exc)}"
            self._fail_all(EngineDeadError(self._dead))
        finally:
            self._flush()

    def _fail_all(self, error: EngineError) -> None:
        """Answer every request, running or still queued, with error (the pipeline runs no more)."""
        pending = list(self._active.values())
        self._active.clear()
        while True:
            try:
                command, req = self._commands.get(block=False)
            except queue.Empty:
                break
            if command == "add" and req is not None:
                pending.append(req)
        for req in pending:
            self._finish(req, error)

    def _take_commands(self, block: bool) -> bool:
        """Run queued add/cancel commands; False on stop."""
        while True:
            try:
                command, req = self._commands.get(block=block)
            except queue.Empty:
                return True
            block = False
            if command == "stop":
                self._fail_all(EngineError("the server is shutting down"))
                return False
            assert req is not None
            if command == "add":
                self._add(req)
            elif command == "cancel":
                self._cancel(req)

    def _add(self, req: OpenVinoRequest) -> None:
        req.pipeline_id = next(self._ids)
        if self.settings.prompt_lookup is not None:
            lookup = request_prompt_lookup(req.request.sampling, self.settings.prompt_lookup)
            req.speculation = SequenceSpeculation(req.request.prompt_token_ids, lookup, req.request.sampling.max_tokens)
        try:
            req.handle = self._pipe.add_request(req.pipeline_id, req.request.prompt_token_ids, req.recipe)
        except RuntimeError as exc:
            self._finish(req, EngineError(f"OpenVINO refused the request: {openvino_message(exc)}"))
            return
        self._active[req.pipeline_id] = req

    def _cancel(self, req: OpenVinoRequest) -> None:
        # cancel() marks it; the next step() frees its sequences and KV blocks (a step follows every command).
        if req.pipeline_id is not None and self._active.pop(req.pipeline_id, None) is not None:
            req.handle.cancel()

    def _deliver(self, req: OpenVinoRequest) -> None:
        status = req.handle.get_status().name  # read before the outputs: nothing changes until the next step()
        if status == "REFUSED":  # the engine process could not add it (backends.openvino_process)
            self._finish(req, EngineError(f"OpenVINO refused the request: {req.handle.refusal}"))
            return
        if status == "IGNORED":
            self._finish(req, EngineError("the KV cache cannot hold this request: raise --kv-cache-space"))
            return
        deltas = []
        while req.handle.can_read():
            deltas += req.take(req.handle.read())
        if req.speculation is not None:
            req.speculation.end_step(self._spec_counts)
        if status == "FINISHED":
            deltas += req.close()
        elif req.all_done:
            req.handle.cancel()  # our stop-string match ended it before OpenVINO's own did
        if req.all_done:
            self._finish(req, req.step_output(deltas))
        elif deltas:
            self._post(req, req.step_output(deltas))

    def _finish(self, req: OpenVinoRequest, item: StepOutput | BaseException) -> None:
        req.finished = True
        if req.pipeline_id is not None:
            self._active.pop(req.pipeline_id, None)
        self._post(req, item)

    def _post(self, req: OpenVinoRequest, item: StepOutput | BaseException) -> None:
        self._outbox.append((req, item))

    def _flush(self, wait: bool = False) -> None:
        """Hand a step's outputs to the event loop in one wake-up rather than one per request; with wait, return
        once the loop has handed them to their streams (WAIT_FOR_LOOP_FROM)."""
        if not self._outbox or self._loop is None:
            return
        batch, self._outbox = self._outbox, []
        done = threading.Event() if wait else None
        with contextlib.suppress(RuntimeError):  # RuntimeError: the event loop is closed, nobody waits any more
            self._loop.call_soon_threadsafe(_dispatch, batch, done)
            if done is not None:
                done.wait(0.05)

    # -- the event loop's side -----------------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[StepOutput]:
        if self._dead is not None:
            raise EngineDeadError(self._dead)
        if self._thread is None:
            raise EngineNotReadyError("the engine is still starting")
        s = request.sampling
        lookup = self.settings.prompt_lookup
        check_supported(s, self._vocab_size, lookup)
        if s.seed is None:  # each request gets its own seed, fixed here so that the engine process uses the same
            s = dataclasses.replace(s, seed=secrets.randbits(32))
        recipe = ConfigRecipe(s, self._eos_token_id, frozenset(self._stop_token_ids), lookup)
        req = OpenVinoRequest(request, recipe.build(), self._tokenizer)  # build() refuses what OpenVINO refuses
        req.recipe = recipe
        self._by_id[request.request_id] = req
        self._commands.put(("add", req))
        try:
            while True:
                items = [await req.outputs.get()]
                while not req.outputs.empty():
                    items.append(req.outputs.get_nowait())
                # What piled up while the consumer was behind goes out as one output (as vLLM does): fewer, larger
                # chunks, and the event loop serves others instead of a backlog. An error is always the last item.
                outputs = [item for item in items if isinstance(item, StepOutput)]
                if outputs:
                    output = merge_outputs(outputs)
                    yield output
                    if output.finished:
                        return
                if isinstance(items[-1], BaseException):
                    raise items[-1]
        finally:
            # Closed early (client gone, CancelledError) or failed: the pipeline must stop working on it.
            self._by_id.pop(request.request_id, None)
            if not req.finished:
                self._commands.put(("cancel", req))

    async def abort(self, request_id: str) -> None:
        req = self._by_id.get(request_id)
        if req is None or req.finished:
            return
        self._commands.put(("cancel", req))
        deltas = [CompletionDelta(i, "", 0, finish_reason="abort") for i in range(len(req.detoks))]
        req.finished = True
        req.outputs.put_nowait(StepOutput(len(req.request.prompt_token_ids), deltas, finished=True))

    async def check_health(self) -> None:
        if self._dead is not None:
            raise EngineDeadError(self._dead)
        if self._thread is None:
            raise EngineNotReadyError("the engine is still starting")
        if not self._thread.is_alive():
            raise EngineDeadError("the OpenVINO stepping thread stopped")
        ended = self._pipe.dead() if self._pipe is not None else None
        if ended is not None:
            raise EngineDeadError(ended)

    def stats(self) -> EngineStats:
        stats = engine_stats(self._metrics, self.kv_cache)
        if self.settings.prompt_lookup is None:
            return stats
        return dataclasses.replace(stats, spec_decode=self._spec_counts.snapshot())

    async def shutdown(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._commands.put(("stop", None))
            await asyncio.to_thread(thread.join)
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            await asyncio.to_thread(pipe.close)


def _dispatch(batch: list[tuple[OpenVinoRequest, StepOutput | BaseException]], done: threading.Event | None) -> None:
    for req, item in batch:
        req.outputs.put_nowait(item)
    if done is not None:
        # Runs after the consumers woken above have written their chunks (callbacks run in order).
        asyncio.get_running_loop().call_soon(done.set)


def load_tokenizer(model: str, trust_remote_code: bool = False) -> Any:
    """The Hugging Face tokenizer saved with the export: it tokenizes, renders the chat template and detokenizes."""
    if "transformers" not in sys.modules:
        # torch is installed beside OpenVINO for the exporter (a child process, which gets USE_TORCH=1 back), and
        # transformers imports it whenever it finds it: 3 of the 4.4 s a server took to be ready, for nothing a
        # tokenizer uses.
        os.environ.setdefault("USE_TORCH", "0")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")  # else it warns that torch is missing
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model, trust_remote_code=trust_remote_code)


def _model_config(model: Path) -> dict[str, Any]:
    """config.json, with a multimodal model's text settings (text_config) taking precedence."""
    try:
        config: dict[str, Any] = json.loads((model / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot read {model}/config.json: {exc}") from None
    return {**config, **config.get("text_config", {})}
