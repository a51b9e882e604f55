"""From a validated request to engine requests, and from engine outputs to OpenAI responses and chunks."""

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
from engine_server.errors import BadRequest
from engine_server.metrics import Metrics
from engine_server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from engine_server.streaming import encode, encode_string

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
    arrival: float = field(default_factory=time.monotonic)


@dataclass
class Choice:
    text: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    num_tokens: int = 0
    finish_reason: str | None = None


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

    # -- preparing -------------------------------------------------------------------------------------------

    def prepare(self, req: Request) -> Prepared:
        if isinstance(req, ChatCompletionRequest):
            if isinstance(req.messages, str):
                kind, prompts = "text", [self._tokenize(req.messages, add_special_tokens=True)]
            else:
                kind, prompts = "chat", [self._chat_prompt(req)]
            prefix = "chatcmpl" if kind == "chat" else "cmpl"
        else:
            kind, prefix = "text", "cmpl"
            prompts = [self._tokenize(p, add_special_tokens=True) for p in req.prompts]
        request_id = f"{prefix}-{uuid.uuid4().hex}"
        requests = [
            GenerateRequest(f"{request_id}-{i}", ids, self._sampling(req, len(ids))) for i, ids in enumerate(prompts)
        ]
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return Prepared(kind, request_id, int(time.time()), self.model_name, requests, req.n, include_usage)

    def _tokenize(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.engine.tokenize(text, add_special_tokens=add_special_tokens)

    def _chat_prompt(self, req: ChatCompletionRequest) -> list[int]:
        assert isinstance(req.messages, list)
        messages = [m.model_dump(exclude_none=True) for m in req.messages]
        for m in messages:
            if isinstance(m.get("content"), list):
                m["content"] = "\n".join(part["text"] for part in m["content"])
        kwargs = dict(req.chat_template_kwargs or {})
        kwargs.setdefault("add_generation_prompt", req.add_generation_prompt)
        text = self.engine.render_chat(messages, req.chat_template or self.default_chat_template, kwargs)
        # The template already carries the special tokens (BOS and turn markers).
        return self._tokenize(text, add_special_tokens=False)

    def _sampling(self, req: Request, num_prompt_tokens: int) -> SamplingOptions:
        limit = self.info.max_model_len
        if num_prompt_tokens >= limit:
            raise BadRequest(
                f"This model's maximum context length is {limit} tokens. However, your prompt has "
                f"{num_prompt_tokens} tokens, which leaves no room for output. Please shorten the prompt.",
                param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
                code="context_length_exceeded",
            )
        room = limit - num_prompt_tokens
        max_tokens = req.max_output_tokens
        if max_tokens is None:
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
            if req.max_output_tokens is None:
                max_tokens = limit_tokens  # unset: as many as the server allows
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
            **_structured(req),
        )

    # -- running ---------------------------------------------------------------------------------------------

    async def steps(self, prepared: Prepared) -> AsyncIterator[tuple[int, StepOutput]]:
        """Engine outputs of all the request's prompts as they come, timed for the latency histograms."""
        last = [0.0] * len(prepared.requests)
        async for i, step in self._merged_steps(prepared):
            now = time.monotonic()
            if any(d.num_tokens for d in step.deltas):
                if last[i]:
                    self.metrics.inter_token_latency.observe(now - last[i])
                else:
                    self.metrics.time_to_first_token.observe(now - prepared.arrival)
                last[i] = now
            yield i, step

    async def _merged_steps(self, prepared: Prepared) -> AsyncIterator[tuple[int, StepOutput]]:
        """Engine outputs of all the request's prompts as they come, tagged with the prompt's position."""
        if len(prepared.requests) == 1:
            async for step in self.engine.generate(prepared.requests[0]):
                yield 0, step
            return
        queue: asyncio.Queue[tuple[int, StepOutput | BaseException | None]] = asyncio.Queue()

        async def pump(i: int, request: GenerateRequest) -> None:
            try:
                async for step in self.engine.generate(request):
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

    async def complete(self, prepared: Prepared) -> dict[str, Any]:
        choices = [Choice() for _ in range(len(prepared.requests) * prepared.n)]
        num_prompt = [0] * len(prepared.requests)
        async for i, step in self.steps(prepared):
            num_prompt[i] = step.num_prompt_tokens
            for d in step.deltas:
                choice = choices[i * prepared.n + d.index]
                choice.text.append(d.text)
                choice.num_tokens += d.num_tokens
                if d.logprobs is not None:
                    choice.logprobs = (choice.logprobs or []) + d.logprobs
                choice.finish_reason = d.finish_reason or choice.finish_reason
        usage = self._usage(sum(num_prompt), sum(c.num_tokens for c in choices))
        if prepared.kind == "chat":
            return {
                "id": prepared.id,
                "object": "chat.completion",
                "created": prepared.created,
                "model": prepared.model,
                "choices": [
                    {
                        "index": idx,
                        "message": {"role": "assistant", "content": "".join(c.text)},
                        "logprobs": _chat_logprobs(c.logprobs),
                        "finish_reason": c.finish_reason,
                    }
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
                    "logprobs": _text_logprobs(c.logprobs, 0),
                    "finish_reason": c.finish_reason,
                }
                for idx, c in enumerate(choices)
            ],
            "usage": usage,
        }

    async def chunks(self, prepared: Prepared) -> AsyncGenerator[str, None]:
        """Streaming chunks, as JSON text. A chat choice's first chunk comes with its first token and carries the
        role, and the token's text if it has any (a token can end inside a character, or be a skipped special
        token): the client sees the first token when it is made, as from OpenAI and vLLM."""
        chat = prepared.kind == "chat"
        head = {
            "id": prepared.id,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "created": prepared.created,
            "model": prepared.model,
        }
        started: set[int] = set()
        text_offsets: dict[int, int] = {}
        # Per choice: its plain text chunk (no role, logprobs or finish reason: all but a few of a stream's chunks)
        # as the JSON before and after the text, so that only the text is encoded per token.
        plain: dict[int, tuple[str, str] | None] = {}
        num_prompt = [0] * len(prepared.requests)
        num_output = 0
        async for i, step in self.steps(prepared):
            num_prompt[i] = step.num_prompt_tokens
            for d in step.deltas:
                index = i * prepared.n + d.index
                num_output += d.num_tokens
                first = chat and index not in started and d.num_tokens > 0
                if not d.text and d.finish_reason is None and not d.logprobs and not first:
                    continue
                if not chat:
                    offset = text_offsets.get(index, 0)
                    text_offsets[index] = offset + len(d.text)
                if d.finish_reason is None and d.logprobs is None and (index in started or not chat):
                    if index not in plain:
                        plain[index] = _plain_chunk(head, index, chat)
                    template = plain[index]
                    if template is not None:
                        yield template[0] + encode_string(d.text) + template[1]
                        continue
                if chat:
                    role = index not in started
                    started.add(index)
                    choice = _choice(True, index, d.text, _chat_logprobs(d.logprobs), d.finish_reason, role)
                else:
                    choice = _choice(False, index, d.text, _text_logprobs(d.logprobs, offset), d.finish_reason)
                yield encode({**head, "choices": [choice]})
        usage = self._usage(sum(num_prompt), num_output)
        if prepared.include_usage:
            yield encode({**head, "choices": [], "usage": usage})

    def _usage(self, num_prompt: int, num_output: int) -> dict[str, int]:
        self.metrics.record_usage(num_prompt, num_output)
        return {"prompt_tokens": num_prompt, "completion_tokens": num_output, "total_tokens": num_prompt + num_output}


_TEXT_MARK = "\x01text\x01"


def _plain_chunk(head: dict[str, Any], index: int, chat: bool) -> tuple[str, str] | None:
    """The JSON of a choice's plain text chunk, split where its text goes; None if the split is ambiguous (a
    model named as the mark). Splicing in the encoded text gives what encoding the whole chunk would, for
    less: the HTTP layer's CPU per streamed token fell from 19.2 to 15.8 us (bench/http_overhead.py)."""
    parts = encode({**head, "choices": [_choice(chat, index, _TEXT_MARK, None, None)]}).split(encode_string(_TEXT_MARK))
    return (parts[0], parts[1]) if len(parts) == 2 else None


def _choice(
    chat: bool, index: int, text: str, logprobs: dict[str, Any] | None, finish_reason: str | None, role: bool = False
) -> dict[str, Any]:
    """One choice of a streamed chunk: a chat delta (with the role on a choice's first chunk) or a text piece."""
    if chat:
        delta = {"role": "assistant", "content": text} if role else {"content": text}
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


def _structured(req: SamplingFields) -> dict[str, Any]:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return {}
    if fmt.type == "json_object":
        return {"json_object": True}
    assert fmt.json_schema is not None
    return {"json_schema": fmt.json_schema.schema_}


def _chat_logprobs(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": list(lp.token.encode()),
                "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in lp.top],
            }
            for lp in logprobs
        ]
    }


def _text_logprobs(logprobs: list[TokenLogprob] | None, offset: int) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [dict(lp.top) for lp in logprobs],
        "text_offset": offsets,
    }
