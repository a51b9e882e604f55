"""ASGI middleware around the app: request ids and logs, API keys, body size, request counting.

Pure ASGI (no BaseHTTPMiddleware): it must not buffer streamed responses or delay disconnect notices.
"""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine_server.anthropic.errors import error_body as anthropic_error_body
from engine_server.config import Secret
from engine_server.errors import PayloadTooLarge
from engine_server.metrics import Metrics

logger = logging.getLogger("engine_server.access")
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
OPEN_PATHS = frozenset({"/health", "/v1/health_check"})
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


ANTHROPIC_PREFIX = "/v1/messages"  # paths answered in Anthropic's error shape


async def send_error(
    send: Send, status: int, message: str, type_: str, code: str, headers: dict[str, str], path: str = ""
) -> None:
    error: dict[str, Any] = {"error": {"message": message, "type": type_, "param": None, "code": code}}
    if path.startswith(ANTHROPIC_PREFIX):
        error = anthropic_error_body(status, message)
    body = json.dumps(error).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _head_bytes(scope: Scope) -> int:
    """The request head's size as sent: request line and header lines, with their separators."""
    line = len(scope["method"]) + len(scope.get("raw_path") or scope["path"].encode()) + len(scope["query_string"]) + 12
    return line + sum(len(key) + len(value) + 4 for key, value in scope["headers"]) + 2


class Guard:
    """Request id, API key check, head and body size limits, request count and access log, in that order."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: Metrics,
        routes: set[str],
        api_key: Secret | None,
        max_body: int,
        max_head: int | None = None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.keys = [k.strip().encode() for k in api_key.reveal().split(",")] if api_key else []
        self.max_body = max_body
        self.max_head = max_head

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = _header(scope, b"x-request-id")
        request_id = given if given and _SAFE_ID.match(given) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        path = scope["path"]
        route = path if path in self.routes else "other"
        started = time.monotonic()
        status = 0

        async def tracked_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                self.metrics.requests.labels(route, str(status)).inc()
            await send(message)

        try:
            # uvicorn's httptools parser, unlike h11, has no limit of its own on the request head.
            if self.max_head is not None and _head_bytes(scope) > self.max_head:
                message = f"The request line and headers exceed the limit of {self.max_head} bytes."
                await send_error(tracked_send, 431, message, "invalid_request_error", "headers_too_large", {}, path)
                return
            if self.keys and scope["path"] not in OPEN_PATHS and not self._authorized(scope):
                message = "Missing or invalid API key."
                await send_error(tracked_send, 401, message, "authentication_error", "invalid_api_key", {}, path)
                return
            length = _header(scope, b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await send_error(
                    tracked_send, 413, self._too_large(), "invalid_request_error", "body_too_large", {}, path
                )
                return
            try:
                await self.app(scope, self._limited(receive), tracked_send)
            except PayloadTooLarge:
                if status == 0:
                    await send_error(
                        tracked_send, 413, self._too_large(), "invalid_request_error", "body_too_large", {}, path
                    )
        finally:
            logger.info(
                "%s %s %d",
                scope["method"],
                scope["path"],
                status,
                extra={"duration_ms": round((time.monotonic() - started) * 1000, 1), "request_id": request_id},
            )
            request_id_var.reset(token)

    def _authorized(self, scope: Scope) -> bool:
        """A key as a bearer token (OpenAI's clients) or in x-api-key (Anthropic's)."""
        auth = _header(scope, b"authorization") or ""
        scheme, _, given = auth.partition(" ")
        if scheme.lower() == "bearer":
            presented = given.strip().encode()
        else:
            presented = (_header(scope, b"x-api-key") or "").strip().encode()
        if not presented:
            return False
        # Compare with every key, in constant time each, so timing tells nothing about which or how much matched.
        results = [hmac.compare_digest(presented, key) for key in self.keys]
        return any(results)

    def _too_large(self) -> str:
        return f"The request body exceeds the limit of {self.max_body} bytes."

    def _limited(self, receive: Receive) -> Receive:
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise PayloadTooLarge(self._too_large(), code="body_too_large")
            return message

        return limited_receive


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and any extra fields."""

    RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or request_id_var.get(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in self.RESERVED})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)
