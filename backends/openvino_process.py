"""Where the OpenVINO pipeline runs: in this process (InProcessPipeline) or in a process of its own
(PipelineProcess, --engine-process), so that its steps never hold the server's GIL.

Both offer the stepping thread (backends.openvino) the same few calls: add_request, step, get_metrics, get_config,
has_non_finished_requests and close, and handles with get_status, can_read, read and cancel. A request is added as
token ids and a ConfigRecipe, the arguments of openvino_sampling.generation_config, which either side turns into
OpenVINO's GenerationConfig (the binding's objects do not pickle).

The engine process runs as vLLM's engine core does: it steps for as long as it has work, without waiting for the
server, and sends each step's report (every request's new outputs and status, the pipeline's metrics) over a pipe.
Between steps it takes whatever commands (add, cancel) have come in. On the server's side, step() is reading the next
report: the stepping thread waits for it in recv(), which releases the GIL, so the event loop sends chunks and reads
requests while the engine steps, and the engine computes the next step while the server sends the last one's tokens.
Every command makes the engine process step at least once, and each report says how many commands it had taken, so
the server knows when a report is still to come. Commands go out through a thread of their own: a long prompt that
fills the pipe cannot block the stepping thread, which keeps reading reports.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import signal
import threading
from collections import deque
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from backends.base import EngineDeadError, EngineError, SamplingOptions
from backends.openvino_sampling import openvino_message
from backends.openvino_settings import PipelineSettings, kv_cache_gib
from backends.openvino_speculation import PromptLookup

logger = logging.getLogger("engine_server.openvino")

STOP_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class ConfigRecipe:
    """The arguments of generation_config, with the seed fixed so that both sides build the same config."""

    sampling: SamplingOptions
    eos_token_id: int
    stop_token_ids: frozenset[int]
    lookup: PromptLookup | None

    def build(self) -> Any:
        from backends.openvino_sampling import generation_config

        return generation_config(self.sampling, self.eos_token_id, self.stop_token_ids, self.lookup)


class InProcessPipeline:
    """The ContinuousBatchingPipeline itself, taking requests as token ids and a recipe."""

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self.step = pipe.step
        self.get_metrics = pipe.get_metrics
        self.get_config = pipe.get_config
        self.has_non_finished_requests = pipe.has_non_finished_requests

    def add_request(self, pipeline_id: int, token_ids: list[int], recipe: ConfigRecipe) -> Any:
        import numpy as np
        import openvino

        prompt = openvino.Tensor(np.array([token_ids], dtype=np.int64))
        return self._pipe.add_request(pipeline_id, prompt, recipe.build())

    def dead(self) -> str | None:
        return None

    def close(self) -> None:
        self._pipe = None


class HandleProxy:
    """A request's GenerationHandle as the engine process last reported it."""

    def __init__(self, process: PipelineProcess, pipeline_id: int) -> None:
        self._process = process
        self._id = pipeline_id
        self.status = "RUNNING"  # or FINISHED, IGNORED, CANCEL, STOP; REFUSED: the engine could not add it
        self.refusal = ""  # why, when REFUSED
        self.reads: deque[dict[int, tuple[list[int], list[float], str]]] = deque()

    def get_status(self) -> SimpleNamespace:
        return SimpleNamespace(name=self.status)

    def can_read(self) -> bool:
        return bool(self.reads)

    def read(self) -> dict[int, SimpleNamespace]:
        return {
            index: SimpleNamespace(
                generated_ids=ids, generated_log_probs=log_probs, finish_reason=SimpleNamespace(name=reason)
            )
            for index, (ids, log_probs, reason) in self.reads.popleft().items()
        }

    def cancel(self) -> None:
        self._process.send(("cancel", self._id))  # taken before the engine's next step


class PipelineProcess:
    """The pipeline in a spawned process; used by one thread at a time (the stepping thread, or start and stop)."""

    def __init__(self, model: str, settings: Any, max_model_len: int) -> None:
        ctx = multiprocessing.get_context("spawn")  # a fork would copy the server's threads and event loop
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(
            target=serve, args=(child, model, settings, max_model_len), name="openvino-engine", daemon=True
        )
        self._process.start()
        child.close()
        self._handles: dict[int, HandleProxy] = {}
        self._metrics: Any = None
        self._busy = False  # the engine process had work after its latest reported step
        self._sent = 0  # commands sent
        self._taken = 0  # commands the engine process had taken by its latest reported step
        reply = self._receive()
        if reply[0] == "error":
            self._process.join(STOP_TIMEOUT_S)
            raise EngineError(reply[1])
        _, eos_token_id, stop_token_ids = reply
        self._config = SimpleNamespace(eos_token_id=eos_token_id, stop_token_ids=set(stop_token_ids))
        self._outgoing: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._sender = threading.Thread(target=self._send_all, name="openvino-commands", daemon=True)
        self._sender.start()
        logger.info("the OpenVINO pipeline runs in process %d", self._process.pid)

    def send(self, message: tuple[Any, ...]) -> None:
        self._sent += 1
        self._outgoing.put(message)

    def _send_all(self) -> None:
        while (message := self._outgoing.get()) is not None:
            try:
                self._conn.send(message)
            except (OSError, ValueError):  # the engine process is gone: the stepping thread's recv() says so
                return

    def _receive(self) -> Any:
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            raise EngineDeadError(self._ended()) from None

    def dead(self) -> str | None:
        """Why the engine process is gone, if it is (the watchdog asks every second, idle or not)."""
        return None if self._process.is_alive() else self._ended()

    def _ended(self) -> str:
        self._process.join(1.0)
        return f"the OpenVINO engine process ended (exit code {self._process.exitcode})"

    def add_request(self, pipeline_id: int, token_ids: list[int], recipe: ConfigRecipe) -> HandleProxy:
        handle = self._handles[pipeline_id] = HandleProxy(self, pipeline_id)
        self.send(("add", pipeline_id, token_ids, recipe))
        return handle

    def step(self) -> None:
        """Wait for the engine's next step; ask for one if none is coming (a step with nothing to run resets the
        metrics to idle, as in this process)."""
        if not self.has_non_finished_requests():
            self.send(("step",))
        reports, metrics, busy, taken = self._receive()
        for pipeline_id, (status, reads, refusal) in reports.items():
            handle = self._handles.get(pipeline_id)
            if handle is None:  # cancelled here; the engine process had run it one more step
                continue
            handle.status, handle.refusal = status, refusal
            handle.reads.extend(reads)
            if status != "RUNNING":
                del self._handles[pipeline_id]
        self._metrics = SimpleNamespace(**metrics)
        self._busy, self._taken = busy, taken

    def get_metrics(self) -> Any:
        return self._metrics

    def get_config(self) -> Any:
        return self._config

    def has_non_finished_requests(self) -> bool:
        """Whether a step report is still to come: the engine had work, or has commands it has not taken yet."""
        return self._busy or self._sent > self._taken

    def close(self) -> None:
        self._outgoing.put(("stop",))
        self._outgoing.put(None)
        self._sender.join(STOP_TIMEOUT_S)
        self._process.join(STOP_TIMEOUT_S)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._conn.close()


def open_pipeline(model: str, s: PipelineSettings, max_model_len: int) -> Any:
    """The ContinuousBatchingPipeline for these settings (the benchmark's raw-pipeline contender uses it too)."""
    import openvino_genai

    scheduler = openvino_genai.SchedulerConfig()
    scheduler.cache_size = kv_cache_gib(s, model, max_model_len)
    scheduler.enable_prefix_caching = s.enable_prefix_caching
    if s.dynamic_split_fuse is not None:
        scheduler.dynamic_split_fuse = s.dynamic_split_fuse
    if s.max_num_seqs is not None:
        scheduler.max_num_seqs = s.max_num_seqs
    if s.max_num_batched_tokens is not None:
        scheduler.max_num_batched_tokens = s.max_num_batched_tokens
    elif not scheduler.dynamic_split_fuse:
        # Unsplit prompts must fit one step, or the scheduler drops them as out of memory.
        scheduler.max_num_batched_tokens = max(scheduler.max_num_batched_tokens, max_model_len)
    properties: dict[str, str | bool] = {}
    if s.kv_cache_precision:
        properties["KV_CACHE_PRECISION"] = s.kv_cache_precision
    if s.inference_precision:
        properties["INFERENCE_PRECISION_HINT"] = s.inference_precision
    if s.enable_cpu_pinning is not None:
        properties["ENABLE_CPU_PINNING"] = s.enable_cpu_pinning
    if s.prompt_lookup is not None:
        properties["prompt_lookup"] = True  # every request then needs num_assistant_tokens and max_ngram_size
    logger.info("starting the OpenVINO pipeline on %s: %s %s", s.device, scheduler.to_string(), properties)
    try:
        return openvino_genai.ContinuousBatchingPipeline(model, scheduler, s.device, properties)
    except RuntimeError as exc:
        raise EngineError(f"OpenVINO could not load {model} on {s.device}: {openvino_message(exc)}") from None


METRICS = ("requests", "scheduled_requests", "cache_usage", "kv_cache_size_in_bytes")


def serve(conn: Any, model: str, settings: Any, max_model_len: int) -> None:
    """The engine process: open the pipeline, then step while there is work, taking commands between steps, until
    the server says stop or goes away."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the server stops this process
    try:
        pipe = InProcessPipeline(open_pipeline(model, settings, max_model_len))
    except EngineError as exc:
        conn.send(("error", str(exc)))
        return
    config = pipe.get_config()
    conn.send(("ready", int(config.eos_token_id), [int(t) for t in config.stop_token_ids]))
    handles: dict[int, Any] = {}
    refused: dict[int, str] = {}
    taken = 0
    idle = True
    while True:
        try:
            if idle or conn.poll(0):
                message = conn.recv()  # idle: sleep until a command comes
                while True:
                    taken += 1
                    if message[0] == "stop":
                        return
                    _take(pipe, message, handles, refused)
                    if not conn.poll(0):
                        break
                    message = conn.recv()
        except EOFError:  # the server is gone
            return
        pipe.step()
        metrics = pipe.get_metrics()
        busy = pipe.has_non_finished_requests()
        reports = _reports(handles)
        reports.update({pipeline_id: ("REFUSED", [], why) for pipeline_id, why in refused.items()})
        refused.clear()
        conn.send((reports, _metrics(metrics), busy, taken))
        idle = not busy  # the server asks for the step that shows the metrics idle


def _take(pipe: InProcessPipeline, message: tuple[Any, ...], handles: dict[int, Any], refused: dict[int, str]) -> None:
    kind = message[0]
    if kind == "add":
        _, pipeline_id, token_ids, recipe = message
        try:
            handles[pipeline_id] = pipe.add_request(pipeline_id, token_ids, recipe)
        except Exception as exc:  # OpenVINO refused it, or its config: the server answers that request alone
            refused[pipeline_id] = openvino_message(exc) or type(exc).__name__
    elif kind == "cancel":
        handle = handles.get(message[1])
        if handle is not None:
            handle.cancel()


def _reports(
    handles: dict[int, Any],
) -> dict[int, tuple[str, list[dict[int, tuple[list[int], list[float], str]]], str]]:
    reports = {}
    for pipeline_id, handle in list(handles.items()):
        status = handle.get_status().name  # read before the outputs, as the stepping thread does
        reads = []
        while handle.can_read():
            reads.append(
                {
                    index: (list(out.generated_ids), list(out.generated_log_probs), out.finish_reason.name)
                    for index, out in handle.read().items()
                }
            )
        reports[pipeline_id] = (status, reads, "")
        if status != "RUNNING":
            del handles[pipeline_id]
    return reports


def _metrics(metrics: Any) -> dict[str, float]:
    return {name: getattr(metrics, name) for name in METRICS}
