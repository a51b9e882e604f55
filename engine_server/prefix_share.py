"""One computation of a prompt prefix that several requests wait on.

Agents send long prompts that start alike: one system prompt and tool list, turn after turn, user after user. The
engines' prefix caches serve a prefix that is already computed, but requests that arrive together each compute it
again, side by side, because none of them is done yet: four sessions starting at once cost four prefills and each
waits for all of them. Here a request whose prompt shares a long prefix with a prompt the engine is computing now
waits until that prefill ends (its first output), then goes in and finds the prefix in the engine's cache: the
leader runs alone at full speed and every follower computes only its own tail.

A follower waits only when the shared part is at least `min_tokens` long and at least half its own prompt, so that
short prompts and prompts that merely begin alike never wait. A client that goes away while waiting costs nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from backends.base import GenerateRequest, StepOutput

logger = logging.getLogger("engine_server.prefix_share")


@dataclass(eq=False)
class Prefill:
    prompt: list[int]
    done: asyncio.Event = field(default_factory=asyncio.Event)


def common_prefix(a: list[int], b: list[int]) -> int:
    """The length of the longest common prefix of a and b (list slices compare in C: O(log n) of them)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


class PrefixShare:
    def __init__(self, min_tokens: int, on_wait: Callable[[], None] = lambda: None) -> None:
        self.min_tokens = min_tokens  # 0: off
        self.on_wait = on_wait  # called for each request that waits (a metric)
        self._computing: list[Prefill] = []  # prompts in prefill now, oldest first

    def leader(self, prompt: list[int]) -> tuple[Prefill, int] | None:
        """The prefill in progress that shares the longest prefix with prompt, and that prefix's length, if it is worth
        waiting for."""
        if not self.min_tokens or len(prompt) < self.min_tokens:
            return None
        best, shared = None, 0
        for prefill in self._computing:
            n = common_prefix(prompt, prefill.prompt)
            if n > shared:
                best, shared = prefill, n
        if best is None or shared < self.min_tokens or 2 * shared < len(prompt):
            return None
        return best, shared

    async def generate(
        self, generate: Callable[[GenerateRequest], AsyncIterator[StepOutput]], request: GenerateRequest
    ) -> AsyncIterator[StepOutput]:
        """generate(request)'s outputs, after the prefill of a long prefix it shares has ended."""
        prompt = request.prompt_token_ids
        found = self.leader(prompt)
        if found is not None:
            leader, shared = found
            self.on_wait()
            logger.debug("%s waits for the prefill of the %d tokens it shares", request.request_id, shared)
            await leader.done.wait()
        mine = Prefill(prompt) if self.min_tokens and len(prompt) >= self.min_tokens else None
        if mine is not None:
            self._computing.append(mine)
        try:
            async for step in generate(request):
                if (
                    mine is not None
                    and not mine.done.is_set()
                    and (step.finished or any(d.num_tokens for d in step.deltas))
                ):
                    self._end(mine)  # the prompt is computed: its prefix is in the engine's cache
                yield step
        finally:
            if mine is not None:
                self._end(mine)

    def _end(self, prefill: Prefill) -> None:
        prefill.done.set()
        if prefill in self._computing:
            self._computing.remove(prefill)
