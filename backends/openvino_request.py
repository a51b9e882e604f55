"""One request in the OpenVINO pipeline: its outputs turned into what the HTTP layer streams.

The pipeline hands back token ids, raw log-probabilities and a finish reason per sequence; this turns them into text
(incrementally, with stop strings cut), token counts, logprobs and OpenAI finish reasons. It reads OpenVINO's
objects by attribute and enum name only, so it runs (and is tested) without OpenVINO installed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from backends.base import CompletionDelta, FinishReason, GenerateRequest, StepOutput, TokenLogprob
from backends.detokenizer import IncrementalDetokenizer
from backends.openvino_speculation import SequenceSpeculation

FINISH_REASONS: dict[str, FinishReason] = {"STOP": "stop", "LENGTH": "length"}  # GenerationFinishReason names


class OpenVinoRequest:
    """Shared by the request's generate() coroutine (reads `outputs`) and the stepping thread (everything else)."""

    def __init__(self, request: GenerateRequest, config: Any, tokenizer: Any) -> None:
        s = request.sampling
        self.request = request
        self.config = config  # the GenerationConfig it is added with
        self.recipe: Any = None  # what the pipeline builds that config from (backends.openvino_process)
        self.tokenizer = tokenizer
        self.stop_token_ids = frozenset(int(t) for t in config.stop_token_ids)
        self.detoks = [
            IncrementalDetokenizer(tokenizer, request.prompt_token_ids, s.skip_special_tokens, s.stop)
            for _ in range(s.n)
        ]
        self.outputs: asyncio.Queue[StepOutput | BaseException] = asyncio.Queue()
        self.handle: Any = None
        self.pipeline_id: int | None = None
        self.done: set[int] = set()  # indexes of the sequences that ended
        self.finished = False  # the last output has been posted
        self.speculation: SequenceSpeculation | None = None  # under prompt lookup (one sequence): its drafts

    @property
    def all_done(self) -> bool:
        return len(self.done) == len(self.detoks)

    def step_output(self, deltas: list[CompletionDelta]) -> StepOutput:
        return StepOutput(len(self.request.prompt_token_ids), deltas, finished=self.all_done)

    def take(self, outputs: dict[int, Any]) -> list[CompletionDelta]:
        """The deltas of one handle.read(): new tokens of each sequence (all of them at the end, when n > 1)."""
        deltas = []
        for index, out in sorted(outputs.items()):
            if index not in self.done and index < len(self.detoks):
                deltas.append(self._delta(index, out))
        return deltas

    def close(self) -> list[CompletionDelta]:
        """The request finished: sequences whose last output was already taken end here, with no new tokens."""
        deltas = []
        no_logprobs: list[TokenLogprob] | None = [] if self.request.sampling.logprobs is not None else None
        for index, detok in enumerate(self.detoks):
            if index not in self.done:
                self.done.add(index)
                reason: FinishReason = "length" if detok.num_tokens >= self.request.sampling.max_tokens else "stop"
                deltas.append(CompletionDelta(index, detok.next_text(True), 0, no_logprobs, reason))
        return deltas

    def _delta(self, index: int, out: Any) -> CompletionDelta:
        ids = [int(t) for t in out.generated_ids]
        if self.speculation is not None:
            self.speculation.pending += ids
        reason = FINISH_REASONS.get(out.finish_reason.name)
        # The EOS or stop token id that ended the sequence is counted but not shown, as in vLLM.
        stop_terminated = reason == "stop" and bool(ids) and ids[-1] in self.stop_token_ids
        detok = self.detoks[index]
        before = detok.num_tokens
        stop = detok.update(ids, stop_terminated)
        if stop is not None:
            reason = "stop"
        num_new = detok.num_tokens - before
        if reason is not None:
            self.done.add(index)
        logprobs = None
        if self.request.sampling.logprobs is not None:
            kept = zip(ids[:num_new], out.generated_log_probs, strict=False)
            logprobs = [self._logprob(token_id, logprob) for token_id, logprob in kept]
        return CompletionDelta(index, detok.next_text(reason is not None), num_new, logprobs, reason, stop)

    def _logprob(self, token_id: int, logprob: float) -> TokenLogprob:
        text = str(self.tokenizer.decode([token_id]))
        # One top logprob is only allowed where the chosen token is the most likely one (openvino_sampling).
        top = ((text, float(logprob)),) if self.request.sampling.logprobs == 1 else ()
        return TokenLogprob(text, float(logprob), top)


def merge_outputs(outputs: list[StepOutput]) -> StepOutput:
    """Several consecutive outputs of one request as one: each sequence's text, counts and logprobs joined."""
    if len(outputs) == 1:
        return outputs[0]
    merged: dict[int, CompletionDelta] = {}
    for output in outputs:
        for d in output.deltas:
            m = merged.setdefault(d.index, CompletionDelta(d.index, "", 0))
            m.text += d.text
            m.num_tokens += d.num_tokens
            if d.logprobs is not None:
                m.logprobs = (m.logprobs or []) + d.logprobs
            m.finish_reason = d.finish_reason or m.finish_reason
            m.stop_sequence = d.stop_sequence or m.stop_sequence
    last = outputs[-1]
    return StepOutput(last.num_prompt_tokens, [merged[i] for i in sorted(merged)], finished=last.finished)
