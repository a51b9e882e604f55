"""From a validated request to engine requests, and from engine outputs to whole OpenAI responses."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from backends.base import (
    Engine,
    GenerateRequest,
    ModelInfo,
    SamplingOptions,
    StepOutput,
    TokenLogprob,
)
from engine_server.config import Config
from engine_server.errors import BadRequest, PromptTooLong
from engine_server.metrics import Metrics
from engine_server.prefix_share import PrefixShare
from engine_server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from engine_server.reasoning import (
    opened_in_prompt,
    split,
    uses_think,
    with_reasoning,
)
from engine_server.shapes import chat_logprobs, chat_message, text_logprobs
from engine_server.tools import ToolPlan, plan_chat, probe_template

Request = ChatCompletionRequest | CompletionRequest


@dataclass
class Prepared:
    """A request turned into engine requests: one per prompt, each with n sequences."""

    kind: str  # "chat" (chat.completion shapes) or "text" (text_completion shapes)
    id: str
    created: int
    model: str
    requests: list[GenerateRequest]
    n: int
    include_usage: bool
    tools: ToolPlan | None = None  # chat with tools: how each choice's output is read for calls
    # chat whose reasoning is read apart: whether the output starts inside it (the prompt opened <think>); None: no
    # reasoning split
    think: bool | None = None
    arrival: float = field(default_factory=time.monotonic)


@dataclass
class Collected:
    """A whole (non-streamed) result: every choice, and the prompt's token counts."""

    choices: list[Choice]
    num_prompt_tokens: int
    num_cached_tokens: int | None


@dataclass
class Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    num_tokens: int = 0
    finish_reason: str | None = None
    stop_sequence: str | None = None


class Serving:
    def __init__(
        self, engine: Engine, info: ModelInfo, config: Config, default_chat_template: str | None, metrics: Metrics
    ) -> None:
        self.engine = engine
        self.info = info
        self.config = config
        self.model_name = config.model_name
        self.default_chat_template = default_chat_template
        self.metrics = metrics
        self._template_formats: dict[str | None, str | None] = {}  # per chat template: its tool-call format
        self._template_thinks: dict[str | None, bool] = {}  # per chat template: whether its output is split
        self.prefixes = PrefixShare(
            0 if info.shares_prefill or not config.enable_prefix_caching else config.prefix_share_min_tokens,
            metrics.prefix_share_waits.inc,
        )

    # -- preparing -------------------------------------------------------------------------------------------

    def prepare(self, req: Request, fit_max_tokens: bool = False) -> Prepared:
        """fit_max_tokens: the request's max_tokens is a ceiling that the room left in the context (and the server's
        limit) may lower, as on the Anthropic API, where clients send one ceiling for every model."""
        plan = think = None
        if isinstance(req, ChatCompletionRequest):
            if isinstance(req.messages, str):
                kind, prompts = "text", [self._tokenize(req.messages, add_special_tokens=True)]
            else:
                thinks = self._thinks(req.chat_template or self.default_chat_template)
                text, plan = self._chat_text(req)
                think = opened_in_prompt(text) if thinks else None
                # The template already carries the special tokens (BOS and turn markers).
                kind, prompts = "chat", [self._tokenize(text, add_special_tokens=False)]
            prefix = "chatcmpl" if kind == "chat" else "cmpl"
        else:
            kind, prefix = "text", "cmpl"
            prompts = [self._tokenize(p, add_special_tokens=True) for p in req.prompts]
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        structured = _structured(req, plan)
        requests = [
            GenerateRequest(f"{request_id}-{i}", ids, self._sampling(req, len(ids), structured, fit_max_tokens))
            for i, ids in enumerate(prompts)
        ]
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Prepared(
            kind, request_id, int(time.time()), self.model_name, requests, req.n, include_usage, plan, think
        )

    def _tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.engine.tokenize(text, add_special_tokens=add_special_tokens)

    def chat_prompt(self, req: ChatCompletionRequest) -> tuple[list[int], ToolPlan | None]:
        """A chat request's prompt tokens, and how its output is read for tool calls (None: plain text)."""
        text, plan = self._chat_text(req)
        return self._tokenize(text, add_special_tokens=False), plan

    def _thinks(self, template: str | None) -> bool:
        """Whether outputs of this chat template have their reasoning read apart (probed once per template)."""
        thinks = self._template_thinks.get(template)
        if thinks is None:
            if len(self._template_thinks) > 64:  # per-request templates: keep the memo bounded
                self._template_thinks.clear()
            probe = lambda messages, kwargs: self.engine.render_chat(messages, template, kwargs)  # noqa: E731
            thinks = self._template_thinks[template] = uses_think(self.config.reasoning_parser, probe)
        return thinks

    def _chat_text(self, req: ChatCompletionRequest) -> tuple[str, ToolPlan | None]:
        assert isinstance(req.messages, list)
        template = req.chat_template or self.default_chat_template
        kwargs = dict(req.chat_template_kwargs or {})
        kwargs.setdefault("add_generation_prompt", req.add_generation_prompt)

        def render(messages: list[dict[str, Any]], extra: dict[str, Any]) -> str:
            return self.engine.render_chat(messages, template, {**kwargs, **extra})

        fmt = self._template_formats.get(template, "")  # "": not probed yet; None: the template ignores tools
        if fmt == "" and (req.tools or any(m.role == "tool" or m.tool_calls for m in req.messages)):
            if len(self._template_formats) > 64:  # per-request templates: keep the memo bounded
                self._template_formats.clear()
            fmt = self._template_formats.setdefault(template, probe_template(render))
        messages, extra, plan = plan_chat(
            req, fmt or None, self.config.tool_call_parser, self.config.max_parallel_tool_calls
        )
        return render(messages, extra), plan

    def _sampling(
        self, req: Request, num_prompt_tokens: int, structured: dict[str, Any], fit_max_tokens: bool
    ) -> SamplingOptions:
        limit = self.info.max_model_len
        if num_prompt_tokens >= limit:
            raise PromptTooLong(
                num_prompt_tokens, limit, param="messages" if isinstance(req, ChatCompletionRequest) else "prompt"
            )
        room = limit - num_prompt_tokens
        max_tokens = req.max_output_tokens
        if max_tokens is None or (fit_max_tokens and max_tokens > room):
            max_tokens = room
        elif max_tokens > room:
            raise BadRequest(
                f"This model's maximum context length is {limit} tokens. However, you requested "
                f"{num_prompt_tokens + max_tokens} tokens ({num_prompt_tokens} in the prompt, {max_tokens} for "
                f"the output). Please reduce the prompt or the maximum output tokens.",
                param="max_tokens",
                code="context_length_exceeded",
            )
        limit_tokens = self.config.max_tokens_limit
        if limit_tokens is not None and max_tokens > limit_tokens:
            if req.max_output_tokens is None or fit_max_tokens:
                max_tokens = limit_tokens  # unset (or a ceiling): as many as the server allows
            else:
                raise BadRequest(
                    f"max_tokens is {max_tokens}; this server allows at most {limit_tokens}.", param="max_tokens"
                )
        if req.n > self.config.max_n:
            raise BadRequest(f"n is {req.n}; this server allows at most {self.config.max_n}.", param="n")
        if req.min_tokens > max_tokens:
            raise BadRequest(f"min_tokens ({req.min_tokens}) exceeds max_tokens ({max_tokens})", param="min_tokens")
        return SamplingOptions(
            max_tokens=max_tokens,
            temperature=_or(req.temperature, 1.0),
            top_p=_or(req.top_p, 1.0),
            top_k=max(_or(req.top_k, 0), 0),
            min_p=_or(req.min_p, 0.0),
            repetition_penalty=_or(req.repetition_penalty, 1.0),
            frequency_penalty=_or(req.frequency_penalty, 0.0),
            presence_penalty=_or(req.presence_penalty, 0.0),
            seed=req.seed,
            stop=req.stop_list,
            stop_token_ids=tuple(req.stop_token_ids or ()),
            n=req.n,
            logprobs=req.num_logprobs,
            ignore_eos=req.ignore_eos,
            min_tokens=req.min_tokens,
            skip_special_tokens=req.skip_special_tokens,
            num_speculative_tokens=req.num_speculative_tokens,
            prompt_lookup_max_ngram=req.prompt_lookup_max_ngram,
            **structured,
        )

    # -- running ---------------------------------------------------------------------------------------------

    async def steps(self, prepared: Prepared) -> AsyncGenerator[tuple[int, StepOutput], None]:
        """Engine outputs of all the request's prompts as they come, timed for the latency histograms and counted
        by finish reason when they end."""
        last = [0.0] * len(prepared.requests)
        async for i, step in self._merged_steps(prepared):
            now = time.monotonic()
            if any(d.num_tokens for d in step.deltas):
                if last[i]:
                    self.metrics.inter_token_latency.observe(now - last[i])
                else:
                    self.metrics.time_to_first_token.observe(now - prepared.arrival)
                last[i] = now
            for d in step.deltas:  # each sequence ends once, with its reason (a client gone first: none)
                if d.finish_reason is not None:
                    self.metrics.record_finish(d.finish_reason, now - prepared.arrival)
            yield i, step

    async def _merged_steps(self, prepared: Prepared) -> AsyncIterator[tuple[int, StepOutput]]:
        """Engine outputs of all the request's prompts as they come, tagged with the prompt's position."""
        if len(prepared.requests) == 1:
            async for step in self.prefixes.generate(self.engine.generate, prepared.requests[0]):
                yield 0, step
            return
        queue: asyncio.Queue[tuple[int, StepOutput | BaseException | None]] = asyncio.Queue()

        async def pump(i: int, request: GenerateRequest) -> None:
            try:
                async for step in self.prefixes.generate(self.engine.generate, request):
                    queue.put_nowait((i, step))
                queue.put_nowait((i, None))
            except BaseException as exc:  # handed to the consumer, which re-raises it
                queue.put_nowait((i, exc))

        tasks = [asyncio.create_task(pump(i, r)) for i, r in enumerate(prepared.requests)]
        try:
            remaining = len(tasks)
            while remaining:
                i, item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield i, item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def collect(self, prepared: Prepared) -> Collected:
        """Run the request to its end: every choice's text, counts, logprobs and finish."""
        choices = [Choice() for _ in range(len(prepared.requests) * prepared.n)]
        num_prompt = [0] * len(prepared.requests)
        cached: list[int | None] = [None] * len(prepared.requests)
        async for i, step in self.steps(prepared):
            num_prompt[i] = step.num_prompt_tokens
            cached[i] = step.num_cached_tokens if step.num_cached_tokens is not None else cached[i]
            for d in step.deltas:
                choice = choices[i * prepared.n + d.index]
                choice.text.append(d.text)
                choice.num_tokens += d.num_tokens
                if d.logprobs is not None:
                    choice.logprobs = (choice.logprobs or []) + d.logprobs
                choice.finish_reason = d.finish_reason or choice.finish_reason
                choice.stop_sequence = d.stop_sequence or choice.stop_sequence
        return Collected(choices, sum(num_prompt), total(cached))

    async def complete(self, prepared: Prepared) -> dict[str, Any]:
        collected = await self.collect(prepared)
        choices = collected.choices
        num_output = sum(c.num_tokens for c in choices)
        usage = self.usage(collected.num_prompt_tokens, num_output, collected.num_cached_tokens)
        if prepared.kind == "chat":
            return {
                "id": prepared.id,
                "object": "chat.completion",
                "created": prepared.created,
                "model": prepared.model,
                "choices": [
                    {"index": idx, **self.chat_choice(prepared, c), "logprobs": chat_logprobs(c.logprobs)}
                    for idx, c in enumerate(choices)
                ],
                "usage": usage,
            }
        return {
            "id": prepared.id,
            "object": "text_completion",
            "created": prepared.created,
            "model": prepared.model,
            "choices": [
                {
                    "index": idx,
                    "text": "".join(c.text),
                    "logprobs": text_logprobs(c.logprobs, 0),
                    "finish_reason": c.finish_reason,
                }
                for idx, c in enumerate(choices)
            ],
            "usage": usage,
        }

    def chat_choice(self, prepared: Prepared, choice: Choice) -> dict[str, Any]:
        """A whole chat choice's message (its reasoning apart, tool calls read from the content only) and finish."""
        text = "".join(choice.text)
        if prepared.think is None:
            return chat_message(prepared.tools, text, choice.finish_reason)
        reasoning, content = split(text, prepared.think)
        return with_reasoning(chat_message(prepared.tools, content, choice.finish_reason), reasoning)

    def usage(self, num_prompt: int, num_output: int, num_cached: int | None = None) -> dict[str, Any]:
        """The usage of a finished request, counted in the metrics; with the prompt tokens the prefix cache served
        where the engine reports them."""
        self.metrics.record_usage(num_prompt, num_output)
        usage: dict[str, Any] = {
            "prompt_tokens": num_prompt,
            "completion_tokens": num_output,
            "total_tokens": num_prompt + num_output,
        }
        if num_cached is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": num_cached}
        return usage


def total(counts: list[int | None]) -> int | None:
    """The sum of the counts the engine reported; None when it reported none."""
    known = [c for c in counts if c is not None]
    return sum(known) if known else None


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _structured(req: SamplingFields, plan: ToolPlan | None) -> dict[str, Any]:
    if plan is not None and plan.json_schema is not None:
        return {"json_schema": plan.json_schema}
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return {}
    if fmt.type == "json_object":
        return {"json_object": True}
    assert fmt.json_schema is not None
    return {"json_schema": fmt.json_schema.schema_}
