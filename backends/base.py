"""The vocabulary shared by the HTTP layer and every engine backend.

Backends turn these plain dataclasses into their engine's own types; the HTTP layer never sees an engine type.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "abort"]
# Given a weights format ("hf", "openvino"), returns a local directory holding the configured model in it.
ModelResolver = Callable[[str], str]


class EngineError(Exception):
    """The engine refused or failed a request."""


class InvalidRequestError(EngineError):
    """The request cannot be served as asked (the client's fault): becomes a 400."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class EngineDeadError(EngineError):
    """The engine stopped working; the server cannot serve any more requests."""


class EngineNotReadyError(EngineError):
    """The engine is still starting."""


@dataclass(frozen=True)
class SamplingOptions:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    n: int = 1
    logprobs: int | None = None  # number of top alternatives per token; None: no logprobs
    ignore_eos: bool = False
    min_tokens: int = 0
    skip_special_tokens: bool = True
    json_object: bool = False
    json_schema: dict[str, Any] | None = None
    # Speculative decoding asked by this request (vLLM-style extra fields); None: the server's setting, 0: none.
    num_speculative_tokens: int | None = None
    prompt_lookup_max_ngram: int | None = None


@dataclass(frozen=True)
class GenerateRequest:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingOptions


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass
class CompletionDelta:
    """New output of one of a request's n sequences since the previous step."""

    index: int
    text: str
    num_tokens: int
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_sequence: str | None = None  # the stop string that ended the sequence, when one did


@dataclass
class StepOutput:
    num_prompt_tokens: int
    deltas: list[CompletionDelta] = field(default_factory=list)
    finished: bool = False
    num_cached_tokens: int | None = None  # prompt tokens found in the prefix cache; None: not reported by the engine


@dataclass(frozen=True)
class ModelInfo:
    name: str  # what the engine loaded (path or hub id)
    max_model_len: int
    backend: str
    engine_version: str = ""
    # Whether a prompt sent while another with the same prefix is still in prefill finds that prefix in the cache
    # (vLLM's does); where not, the server holds it back until that prefill ends (engine_server.prefix_share).
    shares_prefill: bool = False


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float = 0.0  # fraction of the KV cache in use, 0..1
    # The KV cache's layout, once the engine knows it (0 until then): tokens per block, and blocks in the cache.
    block_size: int = 0
    num_blocks: int = 0
    # Prompt tokens looked up in the prefix cache since start, and those found there; None: not counted by the engine.
    prefix_cache_queries: int | None = None
    prefix_cache_hits: int | None = None
    spec_decode: SpecDecodeStats | None = None  # None: the engine does not speculate


@dataclass(frozen=True)
class SpecDecodeStats:
    """Speculative decoding since start, as vLLM counts it: steps of a sequence that had draft tokens to check, the
    draft tokens, those the model accepted, and the accepted ones by their position in the draft (0: the first)."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: tuple[int, ...] = ()


class Engine(Protocol):
    """What the HTTP layer needs from an inference engine."""

    async def start(self) -> ModelInfo: ...

    def generate(self, request: GenerateRequest) -> AsyncIterator[StepOutput]:
        """Stream a request's outputs; closing the iterator early aborts the request in the engine."""
        ...

    async def abort(self, request_id: str) -> None: ...

    async def check_health(self) -> None:
        """Raise EngineDeadError when the engine no longer works."""
        ...

    def stats(self) -> EngineStats: ...

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        chat_template: str | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        """Apply the model's chat template (or the given one) and return the prompt text."""
        ...

    def detokenize(self, token_ids: list[int]) -> str:
        """The text of these ids, special tokens included; an id outside the vocabulary raises InvalidRequestError
        (param "tokens")."""
        ...

    def token_strs(self, token_ids: list[int]) -> list[str]:
        """Each id's own entry in the vocabulary (such as 'Ġthe'), as vLLM's /tokenize reports them; an id outside
        the vocabulary raises InvalidRequestError (param "tokens")."""
        ...

    async def shutdown(self) -> None: ...
