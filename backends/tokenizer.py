"""The Engine protocol's tokenizer side, for backends that keep a Hugging Face tokenizer (vLLM's and OpenVINO's):
one implementation, so that a text or a conversation gives the same token ids whichever backend serves it."""

from __future__ import annotations

from typing import Any

from backends.base import InvalidRequestError
from backends.chat import render_chat


class HfTokenizerMixin:
    _tokenizer: Any  # set by the backend once the model is loaded

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        chat_template: str | None = None,
        template_kwargs: dict[str, Any] | None = None,
    ) -> str:
        return render_chat(self._tokenizer, messages, chat_template, template_kwargs)

    def detokenize(self, token_ids: list[int]) -> str:
        self._check_vocabulary(token_ids)
        # Special tokens stay in the text: it is the prompt these ids are, not a reply to show.
        return str(self._tokenizer.decode(token_ids, skip_special_tokens=False))

    def token_strs(self, token_ids: list[int]) -> list[str]:
        self._check_vocabulary(token_ids)
        return [str(token) for token in self._tokenizer.convert_ids_to_tokens(token_ids)]

    def _check_vocabulary(self, token_ids: list[int]) -> None:
        # The tokenizer itself decodes an unknown id as nothing, and a negative or huge one fails in its Rust core.
        size = len(self._tokenizer)
        bad = next((t for t in token_ids if not 0 <= t < size), None)
        if bad is not None:
            raise InvalidRequestError(
                f"Token id {bad} is not in the model's vocabulary (ids 0 to {size - 1}).", param="tokens"
            )
