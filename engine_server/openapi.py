"""The OpenAPI description of our routes, built from the same pydantic models that validate requests."""

from __future__ import annotations

from functools import cache
from typing import Any

from engine_server.protocol import ChatCompletionRequest, CompletionRequest
from engine_server.responses import ResponsesRequest
from engine_server.tokens import DetokenizeRequest, TokenizeChatRequest, TokenizeCompletionRequest

ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
            },
        }
    },
}


def _error_responses(*statuses: int) -> dict[str, Any]:
    return {
        str(s): {
            "description": "error",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        for s in statuses
    }


def _get(summary: str, *errors: int) -> dict[str, Any]:
    ok = {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}}
    return {"get": {"summary": summary, "responses": {**ok, **_error_responses(*errors)}}}


def _post(summary: str, model: str) -> dict[str, Any]:
    ok = {
        "200": {
            "description": "a completion, or server-sent events when streaming",
            "content": {
                "application/json": {"schema": {"type": "object"}},
                "text/event-stream": {"schema": {"type": "string"}},
            },
        }
    }
    return {
        "post": {
            "summary": summary,
            "requestBody": _body(_ref(model)),
            "responses": {**ok, **_error_responses(400, 401, 404, 413, 429, 503, 504)},
        }
    }


def _post_json(summary: str, body: dict[str, Any]) -> dict[str, Any]:
    """A route answering one JSON object, without admission (no 429) or a timeout (no 504)."""
    ok = {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}}
    return {
        "post": {
            "summary": summary,
            "requestBody": _body(body),
            "responses": {**ok, **_error_responses(400, 401, 404, 413, 503)},
        }
    }


def _stored() -> dict[str, Any]:
    param = {"name": "response_id", "in": "path", "required": True, "schema": {"type": "string"}}
    ok = {"200": {"description": "ok", "content": {"application/json": {"schema": {"type": "object"}}}}}
    responses = {**ok, **_error_responses(401, 404, 503)}
    return {
        "parameters": [param],
        "get": {"summary": "A stored response", "responses": responses},
        "delete": {"summary": "Delete a stored response", "responses": responses},
    }


def _ref(model: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{model}"}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


@cache
def openapi_schema(version: str) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": ERROR}
    models = (
        ChatCompletionRequest,
        CompletionRequest,
        TokenizeCompletionRequest,
        TokenizeChatRequest,
        DetokenizeRequest,
        ResponsesRequest,
    )
    for model in models:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema
    return {
        "openapi": "3.1.0",
        "info": {"title": "engine-server", "version": version},
        "paths": {
            "/health": _get("200 when the engine serves requests", 503),
            "/v1/health_check": _get("The OPEA health check", 503),
            "/v1/models": _get("The served model", 401),
            "/version": _get("Server and engine versions", 401),
            "/v1/chat/completions": _post(
                "Chat completion (messages as a list) or raw prompt (a string)", "ChatCompletionRequest"
            ),
            "/v1/completions": _post("Text completion", "CompletionRequest"),
            "/tokenize": _post_json(
                "Token ids of a prompt, or of messages as the chat template renders them (vLLM's shapes)",
                {"oneOf": [_ref("TokenizeCompletionRequest"), _ref("TokenizeChatRequest")]},
            ),
            "/detokenize": _post_json("The text of token ids (vLLM's shapes)", _ref("DetokenizeRequest")),
            "/v1/responses": _post("A response (the Responses API), stored unless store is false", "ResponsesRequest"),
            "/v1/responses/{response_id}": _stored(),
        },
        "components": {"schemas": schemas},
    }
