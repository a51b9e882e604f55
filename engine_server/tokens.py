"""POST /tokenize and POST /detokenize, in vLLM's request and response shapes.

The chat form goes through the same prompt building as /v1/chat/completions, so its count is the prompt_tokens that
a completion of those messages reports.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, Field, ValidationError, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine_server.config import Config
from engine_server.errors import BadRequest, NotFound, from_validation_error
from engine_server.protocol import ChatCompletionRequest, ChatMessage, FieldError, Strict
from engine_server.state import State

M = TypeVar("M", bound=BaseModel)
# Strict: a token id sent as a string or a boolean is a client's mistake, not an id.
TokenId = Annotated[int, Field(ge=0, strict=True)]


class TokenizeCompletionRequest(Strict):
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True
    return_token_strs: bool | None = False


class TokenizeChatRequest(Strict):
    model: str | None = None
    messages: list[ChatMessage]
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    add_special_tokens: bool = False
    return_token_strs: bool | None = False
    chat_template: str | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None  # checked as /v1/chat/completions checks them

    @model_validator(mode="after")
    def _check(self) -> TokenizeChatRequest:
        if self.continue_final_message and self.add_generation_prompt:
            raise FieldError(
                "continue_final_message",
                "continue_final_message and add_generation_prompt cannot both be true: to continue the last "
                "message, also send add_generation_prompt false",
            )
        if self.add_special_tokens:
            # The chat template writes the special tokens itself, and /v1/chat/completions adds none on top.
            raise FieldError(
                "add_special_tokens", "add_special_tokens true is not supported with messages: the template adds them"
            )
        return self

    def chat_request(self) -> ChatCompletionRequest:
        """The /v1/chat/completions request with this conversation, whose prompt these tokens are."""
        kwargs = dict(self.chat_template_kwargs or {})
        if self.continue_final_message:
            kwargs.setdefault("continue_final_message", True)
        fields = {
            "messages": self.messages,
            "add_generation_prompt": self.add_generation_prompt,
            "chat_template": self.chat_template,
            "chat_template_kwargs": kwargs,
            "tools": self.tools,
        }
        return _validate(ChatCompletionRequest, {name: value for name, value in fields.items() if value is not None})


class DetokenizeRequest(Strict):
    model: str | None = None
    tokens: list[TokenId]


async def tokenize(request: Request) -> Response:
    data = await _json_object(request)
    # vLLM's two forms: messages make the chat form; anything else is read (and refused) as the prompt form.
    schema: type[TokenizeChatRequest | TokenizeCompletionRequest]
    schema = TokenizeChatRequest if "messages" in data else TokenizeCompletionRequest
    body = _validate(schema, data)
    state: State = request.app.state.server
    serving = state.ready_serving()
    _check_model(state.config, body.model)
    if isinstance(body, TokenizeChatRequest):
        ids, _ = serving.chat_prompt(body.chat_request())
    else:
        ids = serving.engine.tokenize(body.prompt, add_special_tokens=body.add_special_tokens)
    token_strs = serving.engine.token_strs(ids) if body.return_token_strs else None
    return JSONResponse(
        {"count": len(ids), "max_model_len": serving.info.max_model_len, "tokens": ids, "token_strs": token_strs}
    )


async def detokenize(request: Request) -> Response:
    body = _validate(DetokenizeRequest, await _json_object(request))
    state: State = request.app.state.server
    serving = state.ready_serving()
    _check_model(state.config, body.model)
    return JSONResponse({"prompt": serving.engine.detokenize(body.tokens)})


routes = [
    Route("/tokenize", tokenize, methods=["POST"]),
    Route("/detokenize", detokenize, methods=["POST"]),
]


def _check_model(config: Config, model: str | None) -> None:
    if config.strict_model_name and model not in (None, config.model_name):
        raise NotFound(
            f"The model '{model}' does not exist; this server serves '{config.model_name}'.",
            param="model",
            code="model_not_found",
        )


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        data = json.loads(await request.body())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    return data


def _validate(schema: type[M], data: dict[str, Any]) -> M:
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
