"""Errors in Anthropic's shape: {"type": "error", "error": {"type": ..., "message": ...}}, with its status codes."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse, Response

from engine_server.errors import APIError, PromptTooLong, from_engine_error

# Anthropic's error type per status; 503 (the model still loading, the engine gone) is its 529 overloaded_error.
TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    504: "timeout_error",
}
STATUS = {503: 529}


def error_status(status: int) -> int:
    return STATUS.get(status, status)


def error_body(status: int, message: str, request_id: str | None = None) -> dict[str, Any]:
    kind = TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    body: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": message}}
    return body if request_id is None else {**body, "request_id": request_id}


def api_error_body(exc: APIError) -> dict[str, Any]:
    if isinstance(exc, PromptTooLong):
        # Claude Code starts compacting the conversation when it reads "prompt is too long".
        message = f"prompt is too long: {exc.num_prompt_tokens} tokens > {exc.limit - 1} maximum"
    else:
        message = exc.message if exc.param is None else f"{exc.param}: {exc.message}"
    return error_body(exc.status_code, message)


def error_response(exc: BaseException) -> Response:
    error = from_engine_error(exc) if isinstance(exc, Exception) else from_engine_error(RuntimeError())
    return JSONResponse(api_error_body(error), status_code=error_status(error.status_code))
