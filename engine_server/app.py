"""The Starlette application: thin routes over Serving, the engine started and stopped in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from sse_starlette import EventSourceResponse
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from backends.base import Engine, EngineDeadError, EngineError, ModelInfo
from engine_server import __version__
from engine_server.config import Config
from engine_server.errors import (
    APIError,
    BadRequest,
    NotFound,
    ServiceUnavailable,
    error_response,
    from_engine_error,
    from_validation_error,
    handle_api_error,
    handle_http_exception,
)
from engine_server.metrics import CONTENT_TYPE, Metrics
from engine_server.protocol import ChatCompletionRequest, CompletionRequest
from engine_server.serving import Prepared, Serving

logger = logging.getLogger("engine_server")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
OPEA_SERVICE = {
    "Service Title": "opea_service@llm_vllm",
    "Service Description": "OPEA Microservice Infrastructure",
}
WATCHDOG_INTERVAL_S = 1.0


class ClientDisconnected(Exception):
    pass


class State:
    """What the routes need to know about the engine: whether it is ready, and how to serve from it."""

    def __init__(
        self, config: Config, engine: Engine, metrics: Metrics, on_fatal: Callable[[str], None] | None
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.engine = engine
        self.on_fatal = on_fatal
        self.status = "starting"  # starting -> ready -> (dead | stopping); starting -> failed
        self.error: str | None = None
        self.info: ModelInfo | None = None
        self.serving: Serving | None = None

    async def start_engine(self) -> None:
        started = time.monotonic()
        try:
            self.info = await self.engine.start()
        except Exception as exc:
            logger.exception("the engine failed to start")
            self._fail("failed", f"the engine failed to start: {exc}")
            return
        template = _read_template(self.config.chat_template)
        self.serving = Serving(self.engine, self.info, self.config.model_name, template, self.metrics.record_usage)
        self.status = "ready"
        logger.info(
            "ready in %.1f s: serving %s as '%s' (backend %s, context %d tokens)",
            time.monotonic() - started,
            self.info.name,
            self.config.model_name,
            self.info.backend,
            self.info.max_model_len,
        )

    async def watch_engine(self) -> None:
        """Turn the server unhealthy, and stop it, as soon as the engine dies."""
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            if self.status != "ready":
                continue
            try:
                await self.engine.check_health()
            except EngineDeadError as exc:
                self._fail("dead", f"the engine died: {exc}")
                return

    def _fail(self, status: str, message: str) -> None:
        self.status, self.error = status, message
        logger.error(message)
        if self.on_fatal is not None:
            self.on_fatal(message)

    def ready_serving(self) -> Serving:
        if self.status == "ready" and self.serving is not None:
            return self.serving
        if self.status == "starting":
            raise ServiceUnavailable("The model is still loading; retry shortly.", code="model_loading")
        raise ServiceUnavailable(f"The server cannot serve requests: {self.error or self.status}.", code=self.status)


def _read_template(value: str | None) -> str | None:
    if value is None:
        return None
    from pathlib import Path

    path = Path(value)
    return path.read_text() if "{" not in value and path.is_file() else value


def create_app(
    config: Config, engine: Engine | None = None, on_fatal: Callable[[str], None] | None = None
) -> CountRequests:
    """The service as an ASGI app. Without an engine, the one config.hw_mode names is created."""
    if engine is None:
        from backends import create_engine
        from engine_server import models

        engine = create_engine(config, partial(models.resolve, config))
    metrics = Metrics(engine.stats)
    state = State(config, engine, metrics, on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The engine starts in the background so that the port answers (503) while the model loads.
        tasks = [asyncio.create_task(state.start_engine()), asyncio.create_task(state.watch_engine())]
        try:
            yield
        finally:
            state.status = "stopping"
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await engine.shutdown()

    async def health(request: Request) -> Response:
        try:
            state.ready_serving()
        except APIError as exc:
            return error_response(exc)
        return JSONResponse({"status": "ok"})

    async def health_check(request: Request) -> Response:
        body = {**OPEA_SERVICE, "Version": __version__, "Status": state.status}
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    async def list_models(request: Request) -> Response:
        card: dict[str, Any] = {
            "id": config.model_name,
            "object": "model",
            "created": 0,
            "owned_by": "engine-server",
        }
        if state.info is not None:
            card.update(root=state.info.name, max_model_len=state.info.max_model_len)
        return JSONResponse({"object": "list", "data": [card]})

    async def metrics_route(request: Request) -> Response:
        metrics.ready.set(1 if state.status == "ready" else 0)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def version(request: Request) -> Response:
        info = state.info
        return JSONResponse(
            {
                "version": __version__,
                "backend": config.hw_mode,
                "engine_version": info.engine_version if info else None,
            }
        )

    async def chat_completions(request: Request) -> Response:
        return await _generate(request, ChatCompletionRequest)

    async def completions(request: Request) -> Response:
        return await _generate(request, CompletionRequest)

    async def _generate(request: Request, schema: type[ChatCompletionRequest] | type[CompletionRequest]) -> Response:
        body = await _parse(request, schema)
        serving = state.ready_serving()
        if config.strict_model_name and body.model not in (None, config.model_name):
            raise NotFound(
                f"The model '{body.model}' does not exist; this server serves '{config.model_name}'.",
                param="model",
                code="model_not_found",
            )
        prepared = serving.prepare(body)
        if not body.is_stream:
            try:
                result = await _until_disconnect(request, serving.complete(prepared))
            except ClientDisconnected:
                return Response(status_code=499)
            return JSONResponse(result)
        return await _stream(request, serving, prepared)

    app = Starlette(
        routes=[
            Route("/health", health, methods=["GET"]),
            Route("/v1/health_check", health_check, methods=["GET"]),
            Route("/v1/models", list_models, methods=["GET"]),
            Route("/version", version, methods=["GET"]),
            Route("/metrics", metrics_route, methods=["GET"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
        ],
        lifespan=lifespan,
        exception_handlers={
            APIError: handle_api_error,
            EngineError: handle_api_error,
            HTTPException: handle_http_exception,
            Exception: handle_api_error,  # anything else: a 500 in the envelope (and logged by Starlette)
        },
    )
    app.state.server = state
    return CountRequests(app, metrics)


class CountRequests:
    """Counts every response by route and status (unknown paths share one label)."""

    def __init__(self, app: Starlette, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = {route.path for route in app.routes if isinstance(route, Route)}

    @property
    def state(self) -> Any:
        return self.app.state

    @property
    def lifespan(self) -> Any:
        """The engine's start/stop, for an app that mounts this one (mounted apps get no lifespan of their own)."""
        return self.app.router.lifespan_context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in self.routes else "other"

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


async def _parse(request: Request, schema: type[M]) -> M:
    raw = await request.body()
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"The request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


async def _until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Run work, cancelling it (and so aborting its engine requests) if the client goes away first."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ClientDisconnected()


def _encode(chunk: dict[str, Any]) -> str:
    return json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))


async def _stream(request: Request, serving: Serving, prepared: Prepared) -> Response:
    chunks = serving.chunks(prepared)
    # Wait for the first chunk before answering, so that a request the engine refuses still gets its 4xx status.
    try:
        first = await _until_disconnect(request, anext(chunks, None))
    except ClientDisconnected:
        return Response(status_code=499)

    async def events() -> AsyncIterator[str]:
        try:
            if first is not None:
                yield _encode(first)
            async for chunk in chunks:
                yield _encode(chunk)
        except Exception as exc:
            # The status line is gone: the error travels as an event, then the stream ends as usual.
            logger.warning("stream %s failed: %s", prepared.id, exc)
            yield _encode(from_engine_error(exc).body())
        finally:
            await chunks.aclose()
        yield "[DONE]"

    return EventSourceResponse(events(), sep="\n", ping=15)
