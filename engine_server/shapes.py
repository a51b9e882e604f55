"""OpenAI response shapes: chat messages and deltas (tool calls read out), streamed choices, logprobs."""

from __future__ import annotations

from typing import Any

from backends.base import CompletionDelta, TokenLogprob
from engine_server.streaming import encode, encode_string
from engine_server.tools import ChoiceTools, ToolPlan

_TEXT_MARK = "\x01text\x01"
# What OpenAI (and vLLM) report for a token of probability zero, such as one structured output rules out: -inf is
# no JSON number (a whole response failed to encode, a streamed chunk said -Infinity).
MIN_LOGPROB = -9999.0


def plain_chunk(head: dict[str, Any], index: int, chat: bool) -> tuple[str, str] | None:
    """The JSON of a choice's plain text chunk, split where its text goes; None if the split is ambiguous (a
    model named as the mark). Splicing in the encoded text gives what encoding the whole chunk would, for
    less: the HTTP layer's CPU per streamed token fell from 19.2 to 15.8 us (bench/http_overhead.py)."""
    parts = encode({**head, "choices": [stream_choice(chat, index, _TEXT_MARK, None, None)]}).split(
        encode_string(_TEXT_MARK)
    )
    return (parts[0], parts[1]) if len(parts) == 2 else None


def stream_choice(
    chat: bool, index: int, text: str, logprobs: dict[str, Any] | None, finish_reason: str | None, role: bool = False
) -> dict[str, Any]:
    """One choice of a streamed chunk: a chat delta (with the role on a choice's first chunk) or a text piece."""
    if chat:
        delta = {"role": "assistant", "content": text} if role else {"content": text}
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_message(plan: ToolPlan | None, text: str, finish_reason: str | None) -> dict[str, Any]:
    """A chat choice's message and finish reason, its tool calls read out where the request has tools. `refusal` is
    required (null: no refusal) by OpenAI's schema of the message, and SDK types read it."""
    if plan is None:
        return {"message": {"role": "assistant", "content": text, "refusal": None}, "finish_reason": finish_reason}
    shaper = ChoiceTools(plan)
    return {"message": {**shaper.message(text), "refusal": None}, "finish_reason": shaper.finish_reason(finish_reason)}


def tool_deltas(shaper: ChoiceTools, d: CompletionDelta) -> list[tuple[dict[str, Any], bool]]:
    """The chat deltas of one engine delta, read for tool calls; the last one (flagged) carries the logprobs and
    the finish reason, so one is made if they need a chunk."""
    deltas = shaper.feed(d.text)
    if d.finish_reason is not None:
        deltas += shaper.finish()
    if not deltas and (d.finish_reason is not None or d.logprobs):
        deltas = [{}]
    return [(delta, k == len(deltas) - 1) for k, delta in enumerate(deltas)]


def chat_logprobs(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    """A chat choice's logprobs, whole or of a chunk; `refusal` (the refusal's tokens) is required, null here."""
    if logprobs is None:
        return None
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": _finite(lp.logprob),
                "bytes": list(lp.token.encode()),
                "top_logprobs": [{"token": t, "logprob": _finite(v), "bytes": list(t.encode())} for t, v in lp.top],
            }
            for lp in logprobs
        ],
        "refusal": None,
    }


def text_logprobs(logprobs: list[TokenLogprob] | None, offset: int) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [_finite(lp.logprob) for lp in logprobs],
        "top_logprobs": [{t: _finite(v) for t, v in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


def _finite(logprob: float) -> float:
    return logprob if logprob >= MIN_LOGPROB else MIN_LOGPROB  # NaN too: no comparison holds for it
