"""The chat template, applied the same way by every backend, so one request gives one prompt everywhere."""

from __future__ import annotations

from typing import Any

from backends.base import InvalidRequestError


def render_chat(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    chat_template: str | None,
    template_kwargs: dict[str, Any] | None,
) -> str:
    """Apply a Hugging Face chat template; template errors are the request's fault."""
    kwargs = dict(template_kwargs or {})
    add_generation_prompt = kwargs.pop("add_generation_prompt", True)
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        raise InvalidRequestError(
            "This model has no chat template: send 'messages' as a string (raw prompt), use /v1/completions, "
            "or pass 'chat_template'.",
            param="messages",
        )
    try:
        text = tokenizer.apply_chat_template(
            messages,
            chat_template=chat_template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **kwargs,
        )
    except Exception as exc:  # a Jinja template is user code: any failure is the request's
        raise InvalidRequestError(f"The chat template failed on these messages: {exc}", param="messages") from exc
    return str(text)
