"""Prompt lookup (n-gram speculative decoding) on the OpenVINO pipeline, and its counts under vLLM's names.

OpenVINO GenAI 2026.4 counts drafts and accepted tokens inside its prompt-lookup pipeline, but the Python binding
does not hand them out: ContinuousBatchingPipeline.get_metrics() returns the scheduler's PipelineMetrics only, and a
GenerationHandle's perf metrics have no draft figures. So the stepping thread counts them from the token ids it reads
anyway. The accepted tokens are exact: a step that yields k tokens for a sequence accepted k - 1 of its drafts (the
model adds one token of its own per step). The drafts are recomputed here by the lookup the pipeline runs before
each step (ContinuousBatchingForPromptLookupImpl::generate_candidates): the longest of the text's last max_ngram..1
tokens that occurs earlier in prompt + output, at its first occurrence, and the tokens after it, at most
num_assistant_tokens and at most max_new_tokens - generated - 1. A step that accepts more than that draft means the
two lookups disagree: it is logged, and the test suite checks that it never happens.
Imports nothing from OpenVINO: testable anywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from backends.base import SpecDecodeStats

logger = logging.getLogger("engine_server.openvino")


@dataclass(frozen=True)
class PromptLookup:
    num_speculative_tokens: int  # OpenVINO's num_assistant_tokens
    max_ngram: int  # OpenVINO's max_ngram_size


class NgramDrafter:
    """One sequence's text (prompt + output ids) indexed by n-gram: where each n-gram first starts."""

    def __init__(self, prompt: list[int], max_ngram: int, max_new_tokens: int) -> None:
        self.max_ngram = max_ngram
        self.max_new_tokens = max_new_tokens
        self.tokens: list[int] = []
        self.num_generated = 0
        self._first: dict[tuple[int, ...], int] = {}
        self._extend(prompt)

    def _extend(self, ids: list[int]) -> None:
        for token in ids:
            self.tokens.append(token)
            end = len(self.tokens)
            for n in range(1, min(self.max_ngram, end) + 1):
                self._first.setdefault(tuple(self.tokens[end - n :]), end - n)

    def add_generated(self, ids: list[int]) -> None:
        self._extend(ids)
        self.num_generated += len(ids)

    def draft(self, num_speculative_tokens: int) -> list[int]:
        """The tokens the pipeline proposes for the next step; none before the first generated token."""
        if self.num_generated == 0:
            return []
        num_pred = min(num_speculative_tokens, self.max_new_tokens - self.num_generated - 1)
        length = len(self.tokens)
        if num_pred <= 0:
            return []
        max_ngram = self.max_ngram if self.max_ngram < length else length // 2
        for n in range(max_ngram, 0, -1):
            start = self._first[tuple(self.tokens[length - n :])]
            if start < length - n:  # an occurrence before the text's own last n tokens
                begin = start + n
                return self.tokens[begin : begin + min(length - begin, num_pred)]
        return []


@dataclass
class SpecDecodeCounts:
    """Counted by the stepping thread, read by /metrics at scrape time (plain ints: a scrape sees a step's worth of
    lag at most)."""

    num_drafts: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_position: list[int] = field(default_factory=list)
    num_mismatches: int = 0  # steps that accepted more than the recomputed draft held

    def record(self, draft: list[int], num_accepted: int) -> None:
        if num_accepted > len(draft):
            self.num_mismatches += 1
            if self.num_mismatches == 1:
                logger.warning(
                    "prompt lookup counts: a step accepted %d tokens of a %d-token draft; the drafts counted in "
                    "/metrics no longer match the pipeline's",
                    num_accepted,
                    len(draft),
                )
            num_accepted = len(draft)
        if not draft:
            return
        self.num_drafts += 1
        self.num_draft_tokens += len(draft)
        self.num_accepted_tokens += num_accepted
        if len(self.accepted_per_position) < len(draft):
            self.accepted_per_position.extend([0] * (len(draft) - len(self.accepted_per_position)))
        for position in range(num_accepted):
            self.accepted_per_position[position] += 1

    def snapshot(self) -> SpecDecodeStats:
        return SpecDecodeStats(
            self.num_drafts, self.num_draft_tokens, self.num_accepted_tokens, tuple(self.accepted_per_position)
        )


class SequenceSpeculation:
    """One request's sequence under prompt lookup: the draft the next step checks, and what the step kept."""

    def __init__(self, prompt: list[int], lookup: PromptLookup, max_new_tokens: int) -> None:
        self.lookup = lookup
        self.drafter = NgramDrafter(prompt, lookup.max_ngram, max_new_tokens)
        self.pending: list[int] = []  # the tokens read since the last step ended
        self.draft: list[int] = []

    def end_step(self, counts: SpecDecodeCounts) -> None:
        if not self.pending:
            return  # not scheduled this step (or still in prefill): the same draft waits for the next one
        counts.record(self.draft, len(self.pending) - 1)
        self.drafter.add_generated(self.pending)
        self.pending = []
        self.draft = self.drafter.draft(self.lookup.num_speculative_tokens)
