"""Chat completions and completions streamed: engine outputs as OpenAI chunks, for any number of prompts and
choices. A plain text chunk (all but a few of a stream's) is spliced from pre-encoded JSON, so only its text is
encoded per token.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import replace

from engine_server.reasoning import ThinkSplitter, reasoning_chunk, reasoning_delta
from engine_server.serving import Prepared, Serving, total
from engine_server.shapes import chat_logprobs, plain_chunk, stream_choice, text_logprobs, tool_deltas
from engine_server.streaming import encode, encode_string
from engine_server.tools import ChoiceTools


async def chat_chunks(serving: Serving, prepared: Prepared) -> AsyncGenerator[str, None]:
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
    cached: list[int | None] = [None] * len(prepared.requests)
    num_output = 0
    shapers: dict[int, ChoiceTools] | None = {} if chat and prepared.tools is not None else None
    splitters: dict[int, ThinkSplitter] | None = {} if prepared.think is not None else None
    reasoning_chunks: dict[int, list[str] | None] = {}
    async for i, step in serving.steps(prepared):
        num_prompt[i] = step.num_prompt_tokens
        cached[i] = step.num_cached_tokens if step.num_cached_tokens is not None else cached[i]
        for d in step.deltas:
            index = i * prepared.n + d.index
            num_output += d.num_tokens
            if splitters is not None:  # the reasoning goes first, in chunks of its own; the content goes on
                splitter = splitters.setdefault(index, ThinkSplitter(bool(prepared.think)))
                reasoning, text = splitter.feed(d.text, final=d.finish_reason is not None)
                if reasoning:
                    if index not in reasoning_chunks:
                        reasoning_chunks[index] = reasoning_chunk(head, index)
                    parts = reasoning_chunks[index]
                    if index in started and parts is not None:
                        yield encode_string(reasoning).join(parts)
                    else:
                        delta = reasoning_delta(reasoning, role=index not in started)
                        started.add(index)
                        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                        yield encode({**head, "choices": [choice]})
                d = replace(d, text=text)
            if shapers is not None:
                shaper = shapers.setdefault(index, ChoiceTools(prepared.tools))  # type: ignore[arg-type]
                for delta, last in tool_deltas(shaper, d):
                    if index not in started:
                        started.add(index)
                        delta = {"role": "assistant", **delta}
                    reason = shaper.finish_reason(d.finish_reason) if last else None
                    choice = stream_choice(True, index, "", chat_logprobs(d.logprobs) if last else None, reason)
                    yield encode({**head, "choices": [{**choice, "delta": delta}]})
                continue
            first = chat and index not in started and d.num_tokens > 0
            if not d.text and d.finish_reason is None and not d.logprobs and not first:
                continue
            if not chat:
                offset = text_offsets.get(index, 0)
                text_offsets[index] = offset + len(d.text)
            if d.finish_reason is None and d.logprobs is None and (index in started or not chat):
                if index not in plain:
                    plain[index] = plain_chunk(head, index, chat)
                template = plain[index]
                if template is not None:
                    yield template[0] + encode_string(d.text) + template[1]
                    continue
            if chat:
                role = index not in started
                started.add(index)
                choice = stream_choice(True, index, d.text, chat_logprobs(d.logprobs), d.finish_reason, role)
            else:
                choice = stream_choice(False, index, d.text, text_logprobs(d.logprobs, offset), d.finish_reason)
            yield encode({**head, "choices": [choice]})
    usage = serving.usage(sum(num_prompt), num_output, total(cached))
    if prepared.include_usage:
        yield encode({**head, "choices": [], "usage": usage})
