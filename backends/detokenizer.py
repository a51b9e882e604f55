"""Token ids in, text out, one token at a time, the way vLLM's incremental detokenizer does it.

For engines that hand back token ids only (OpenVINO). A token that ends inside a multi-byte UTF-8 character yields
no text until the character is complete; the prompt's tail primes the decoder, so the first output token keeps its
leading space; stop strings cut the text where they start, and while streaming, the last characters that could be
the start of a stop string are held back.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

PROMPT_CONTEXT = 6  # prompt tokens that prime the decoder (a word rarely spans more)


class IncrementalDetokenizer:
    def __init__(
        self,
        tokenizer: Any,
        prompt_token_ids: Sequence[int],
        skip_special_tokens: bool = True,
        stop: Sequence[str] = (),
    ) -> None:
        self.stop = list(stop)
        # Held back while streaming: a stop string's first len-1 characters may already be in the text.
        self._hold_back = max((len(s) for s in self.stop), default=1) - 1
        self.text = ""
        self.token_ids: list[int] = []
        self._sent = 0
        self._decode = _Decoder(tokenizer, list(prompt_token_ids[-PROMPT_CONTEXT:]), skip_special_tokens)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def update(self, new_token_ids: Sequence[int], stop_terminated: bool = False) -> str | None:
        """Add the engine's new tokens; returns the stop string that ended the text, if one did.

        stop_terminated: the last token is the EOS or a stop token id that ended the sequence; it is counted but,
        as in vLLM, not turned into text.
        """
        ids = list(new_token_ids)
        skipped = ids.pop() if stop_terminated and ids else None
        first_new = len(self.token_ids)
        offsets = [len(self.text)]
        for token_id in ids:
            self.token_ids.append(token_id)
            self.text += self._decode.next(token_id)
            offsets.append(len(self.text))
        if skipped is not None:
            self.token_ids.append(skipped)
            offsets.append(len(self.text))
        match = _find_stop(self.text, len(self.text) - offsets[0], self.stop)
        if match is None:
            return None
        stop, start = match
        # Tokens that only produced the stop string (or text after it) are dropped from the count, as vLLM does.
        del self.token_ids[first_new + bisect_left(offsets, start + len(stop), lo=1) :]
        self.text = self.text[:start]
        return stop

    def next_text(self, finished: bool) -> str:
        """The text not handed out yet; while not finished, minus what may still turn out to be a stop string."""
        end = len(self.text) if finished else len(self.text) - self._hold_back
        if end <= self._sent:
            return ""
        delta, self._sent = self.text[self._sent : end], end
        return delta


def _find_stop(text: str, num_new_chars: int, stop: list[str]) -> tuple[str, int] | None:
    """The stop string that ends earliest among those touching the new characters, and where it starts."""
    best: tuple[str, int] | None = None
    best_end = len(text) + 1
    for s in stop:
        start = text.find(s, max(len(text) - num_new_chars - len(s) + 1, 0))
        if start != -1 and start + len(s) < best_end:
            best, best_end = (s, start), start + len(s)
    return best


class _Decoder:
    """One token's new text, given the tokens before it."""

    def __init__(self, tokenizer: Any, context: list[int], skip_special_tokens: bool) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._stream: Any = None
        if backend is not None:
            # Fast tokenizers stream natively (what vLLM uses): partial UTF-8 stays buffered inside.
            from tokenizers.decoders import DecodeStream

            self._backend = backend
            self._stream = DecodeStream(ids=context, skip_special_tokens=skip_special_tokens)
        else:
            self._ids = context
            self._prefix = len(context)

    def next(self, token_id: int) -> str:
        if self._stream is not None:
            return self._stream.step(self._backend, token_id) or ""
        # Slow tokenizers: decode a window and keep what it adds beyond the window's known part.
        self._ids.append(token_id)
        known = self._decode(self._ids[: self._prefix])
        full = self._decode(self._ids)
        if full.endswith("\ufffd") or len(full) <= len(known):
            return ""  # an incomplete character: wait for the token that completes it
        self._ids = self._ids[-PROMPT_CONTEXT:]
        self._prefix = len(self._ids)
        return full[len(known) :]

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens))
