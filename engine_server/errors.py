"""Typed API errors and their one translation into the OpenAI error envelope."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from backends.base import EngineDeadError, EngineNotReadyError, InvalidRequestError


class APIError(Exception):
    status_code = 500
    type = "internal_server_error"

    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class BadRequest(APIError):
    status_code = 400
    type = "invalid_request_error"


class PromptTooLong(BadRequest):
    """The prompt fills the model's context: each API words it its own way, from both counts."""

    def __init__(self, num_prompt_tokens: int, limit: int, param: str) -> None:
        super().__init__(
            f"This model's maximum context length is {limit} tokens. However, your prompt has "
            f"{num_prompt_tokens} tokens, which leaves no room for output. Please shorten the prompt.",
            param=param,
            code="context_length_exceeded",
        )
        self.num_prompt_tokens = num_prompt_tokens
        self.limit = limit


class NotFound(APIError):
    status_code = 404
    type = "not_found_error"


class ServiceUnavailable(APIError):
    status_code = 503
    type = "service_unavailable"


class PayloadTooLarge(APIError):
    status_code = 413
    type = "invalid_request_error"


class Timeout(APIError):
    status_code = 504
    type = "timeout_error"


def from_validation_error(exc: ValidationError) -> BadRequest:
    """Name the offending field the way OpenAI does: a dotted path and a readable reason."""
    # With unions (messages: str | list) pydantic reports every member; the deepest error is the real one.
    first = max(exc.errors(), key=lambda e: len(e.get("loc", ())))
    cause = (first.get("ctx") or {}).get("error")
    # Union members show up as path parts ("str", "list[...]"); keep the field path only.
    path = [str(p) for p in first.get("loc", ()) if not any(ch in str(p) for ch in "[]") and p not in ("str",)]
    param = getattr(cause, "param", None) or ".".join(path) or None
    message = first.get("msg", "invalid value")
    if first.get("type") == "extra_forbidden":
        message = f"Unsupported parameter: '{param}' is not a field this server accepts"
    elif message.startswith("Value error, "):
        message = message.removeprefix("Value error, ")
    elif param:
        message = f"Invalid value for '{param}': {message}"
    return BadRequest(message, param=param, code="invalid_value")


def from_engine_error(exc: Exception) -> APIError:
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, InvalidRequestError):
        return BadRequest(str(exc), param=exc.param)
    if isinstance(exc, EngineNotReadyError):
        return ServiceUnavailable("The model is still loading; retry shortly.", code="model_loading")
    if isinstance(exc, TimeoutError):
        return Timeout("The request ran longer than the server's request timeout and was stopped.", code="timeout")
    if isinstance(exc, EngineDeadError):
        return ServiceUnavailable(f"The inference engine stopped: {exc}", code="engine_dead")
    return APIError("The server failed to process the request.", code="internal_error")


def error_response(exc: APIError) -> Response:
    return JSONResponse(exc.body(), status_code=exc.status_code)


async def handle_api_error(request: Request, exc: Exception) -> Response:
    return error_response(from_engine_error(exc))


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 500)
    detail = getattr(exc, "detail", "error")
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(status, "invalid_request_error")
    body = {"error": {"message": str(detail), "type": kind, "param": None, "code": None}}
    return JSONResponse(body, status_code=status)
