"""A hand-written engine for HTTP-layer unit tests: words of a fixed reply, one per step."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from backends.base import (
    CompletionDelta,
    EngineDeadError,
    EngineStats,
    GenerateRequest,
    InvalidRequestError,
    ModelInfo,
    StepOutput,
    TokenLogprob,
)

# One id per Latin-1 character; id 1 doubles as BOS.
VOCAB_SIZE = 256
BOS_ID, BOS = 1, "<s>"
REPLY = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog"]


class FakeEngine:
    def __init__(
        self,
        max_model_len: int = 64,
        step_delay: float = 0.0,
        fail_after: int | None = None,
        textless_first_token: bool = False,
        reply: list[str] | None = None,
        thinking: str | None = None,
    ) -> None:
        self.max_model_len = max_model_len
        self.reply = reply  # the reply's text pieces, one per step (None: the words of REPLY)
        # How the chat template writes <think>: None, not at all; "prompt", opened in the generation prompt
        # (DeepSeek-R1 distills); "switch", Qwen3's: an empty block when enable_thinking is false, earlier turns'
        # reasoning_content rendered
        self.thinking = thinking
        self.template_kwargs: list[dict[str, Any]] = []  # of each chat prompt rendered
        self.rendered: list[str] = []  # each chat prompt rendered
        # The first token makes no text yet (it ends inside a character); its word comes with the second token.
        self.textless_first_token = textless_first_token
        self.step_delay = step_delay
        self.fail_after = fail_after  # raise mid-stream after this many steps
        self.started = asyncio.Event()
        self.release_start = asyncio.Event()
        self.release_start.set()
        self.dead = False
        self.running: set[str] = set()
        self.aborted: list[str] = []
        self.requests: list[GenerateRequest] = []
        self.shut_down = False

    async def start(self) -> ModelInfo:
        await self.release_start.wait()
        self.started.set()
        return ModelInfo(name="fake", max_model_len=self.max_model_len, backend="fake", engine_version="0")

    async def generate(self, request: GenerateRequest) -> AsyncIterator[StepOutput]:
        if request.sampling.stop_token_ids and 999 in request.sampling.stop_token_ids:
            raise InvalidRequestError("token id 999 is out of vocabulary", param="stop_token_ids")
        self.requests.append(request)
        self.running.add(request.request_id)
        s = request.sampling
        try:
            for step in range(s.max_tokens):
                if self.fail_after is not None and step >= self.fail_after:
                    raise EngineDeadError("fake engine failure")
                await asyncio.sleep(self.step_delay)
                pieces = self.reply or REPLY
                last = step == s.max_tokens - 1 or step == len(pieces) - 1
                word = pieces[step % len(pieces)]
                text = word if self.reply else (" " if step else "") + word
                if self.textless_first_token and step < 2:
                    text = "" if step == 0 else REPLY[0] + text
                deltas = [
                    CompletionDelta(
                        index=i,
                        text=text,
                        num_tokens=1,
                        logprobs=None
                        if s.logprobs is None
                        else [TokenLogprob(word, -0.5, (((word, -0.5),) * s.logprobs))],
                        finish_reason=("length" if step == s.max_tokens - 1 else "stop") if last else None,
                    )
                    for i in range(s.n)
                ]
                yield StepOutput(num_prompt_tokens=len(request.prompt_token_ids), deltas=deltas, finished=last)
                if last:
                    return
        except (asyncio.CancelledError, GeneratorExit):
            self.aborted.append(request.request_id)
            raise
        finally:
            self.running.discard(request.request_id)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def check_health(self) -> None:
        if self.dead:
            raise EngineDeadError("killed by the test")

    def stats(self) -> EngineStats:
        return EngineStats(num_running=len(self.running), num_waiting=0)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return ([BOS_ID] if add_special_tokens else []) + [ord(c) % VOCAB_SIZE for c in text]

    def detokenize(self, token_ids: list[int]) -> str:
        return "".join(self.token_strs(token_ids))

    def token_strs(self, token_ids: list[int]) -> list[str]:
        bad = [t for t in token_ids if not 0 <= t < VOCAB_SIZE]
        if bad:
            raise InvalidRequestError(f"token id {bad[0]} is out of vocabulary", param="tokens")
        return [BOS if t == BOS_ID else chr(t) for t in token_ids]

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        chat_template: str | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        kwargs = template_kwargs or {}
        self.template_kwargs.append(kwargs)
        turns = []
        for m in messages:
            reasoning = m.get("reasoning_content")
            think = f"<think>{reasoning}</think>" if reasoning and self.thinking == "switch" else ""
            turns.append(f"<{m['role']}>{think}{m.get('content') or ''}")
        prompt = "".join(turns)
        if not kwargs.get("add_generation_prompt", True):
            pass
        elif self.thinking == "prompt":
            prompt += "<assistant><think>\n"
        elif self.thinking == "switch" and kwargs.get("enable_thinking") is False:
            prompt += "<assistant><think>\n\n</think>\n\n"
        else:
            prompt += "<assistant>"
        self.rendered.append(prompt)
        return prompt

    async def shutdown(self) -> None:
        self.shut_down = True
