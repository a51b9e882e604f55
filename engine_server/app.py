"""The Starlette application: thin routes over Serving; the engine started and stopped in the lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from functools import partial
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from backends.base import Engine, EngineError
from engine_server import __version__, anthropic, responses
from engine_server.chat_stream import chat_chunks
from engine_server.config import Config
from engine_server.deltas import pieces
from engine_server.errors import (
    APIError,
    BadRequest,
    NotFound,
    error_response,
    from_validation_error,
    handle_api_error,
    handle_http_exception,
)
from engine_server.metrics import CONTENT_TYPE, Metrics
from engine_server.middleware import ANTHROPIC_PREFIX, Guard
from engine_server.openapi import openapi_schema
from engine_server.protocol import ChatCompletionRequest, CompletionRequest
from engine_server.responses import ResponsesRequest, Turn
from engine_server.responses_stream import named_frame, response_events
from engine_server.serving import Prepared, Serving
from engine_server.state import State, TooManyRequests
from engine_server.streaming import ClientDisconnected, event_stream, until_disconnect
from engine_server.surface import Surface
from engine_server.tokens import routes as token_routes

M = TypeVar("M", bound=BaseModel)
logger = logging.getLogger("engine_server")
OPEA_SERVICE = {
    "Service Title": "opea_service@llm_vllm",
    "Service Description": "OPEA Microservice Infrastructure",
}
RETRY_AFTER_S = "1"


def create_app(config: Config, engine: Engine | None = None, on_fatal: Callable[[str], None] | None = None) -> Service:
    """The service as an ASGI app. Without an engine, the one config.hw_mode selects is created."""
    from backends.registry import Selection

    if engine is None:
        from engine_server import engines

        selection = engines.selection(config)
        engine = engines.create_engine(config, selection.hw_mode)
        logger.info("engine: %s (%s)", selection.hw_mode, selection.reason)
    else:
        selection = Selection(config.hw_mode, "the engine was passed in")
    store = responses.ResponseStore(config.responses_store_size, config.responses_store_ttl)
    metrics = Metrics(engine.stats, config.model_name)
    state = State(config, engine, metrics, on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The engine starts in the background so that the port answers (503) while the model loads.
        tasks = [asyncio.create_task(state.start_engine()), asyncio.create_task(state.watch_engine())]
        try:
            yield
        finally:
            state.status = "stopping" if state.status == "ready" else state.status
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
        body = {
            **OPEA_SERVICE,
            "Version": __version__,
            "Status": state.status,
            "Engine": backend(),
            "Engine Selection": selection.reason,
        }
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    async def list_models(request: Request) -> Response:
        card: dict[str, Any] = {"id": config.model_name, "object": "model", "created": 0, "owned_by": "engine-server"}
        if state.info is not None:
            card.update(root=state.info.name, max_model_len=state.info.max_model_len)
        return JSONResponse({"object": "list", "data": [card]})

    async def version(request: Request) -> Response:
        engine_version = state.info.engine_version if state.info else None
        body = {"version": __version__, "backend": backend(), "backend_reason": selection.reason}
        return JSONResponse({**body, "engine_version": engine_version})

    def backend() -> str:
        # What the engine says it is once started (an engine passed in has no hw_mode of its own).
        return state.info.backend if state.info is not None else selection.hw_mode

    async def metrics_route(request: Request) -> Response:
        metrics.ready.set(1 if state.status == "ready" else 0)
        metrics.admitted.set(state.num_admitted)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_schema(__version__))

    async def chat_completions(request: Request) -> Response:
        return await generate(request, ChatCompletionRequest)

    async def completions(request: Request) -> Response:
        return await generate(request, CompletionRequest)

    async def generate(request: Request, schema: type[ChatCompletionRequest] | type[CompletionRequest]) -> Response:
        body = await _parse(request, schema)
        serving = state.ready_serving()
        check_model(body.model)
        return await run(request, serving, body, openai_surface(serving))

    async def create_response(request: Request) -> Response:
        body = await _parse(request, ResponsesRequest)
        serving = state.ready_serving()
        check_model(body.model)
        turn = responses.to_chat(body, store, config.model_name)
        return await run(request, serving, turn.chat, openai_surface(serving, turn))

    def check_model(model: str | None) -> None:
        if config.strict_model_name and model not in (None, config.model_name):
            raise NotFound(
                f"The model '{model}' does not exist; this server serves '{config.model_name}'.",
                param="model",
                code="model_not_found",
            )

    async def run(
        request: Request,
        serving: Serving,
        chat: ChatCompletionRequest | CompletionRequest,
        surface: Surface,
    ) -> Response:
        """Admit and serve a generation request on the chat path, answered in its API's shape."""
        try:
            admission = state.admit()
        except TooManyRequests as exc:
            response = surface.error(exc)
            response.headers["Retry-After"] = RETRY_AFTER_S
            return response
        try:
            prepared = serving.prepare(chat, fit_max_tokens=surface.fit_max_tokens)
        except BaseException:
            admission.release()
            raise
        if chat.is_stream:
            # The stream releases the admission when it ends, however it ends.
            events = surface.events(prepared)
            timeout = config.request_timeout
            return await event_stream(
                request, events, admission.release, timeout, surface.framer, surface.done, surface.error_body
            )
        try:
            work = asyncio.wait_for(surface.complete(prepared), config.request_timeout)
            return JSONResponse(await until_disconnect(request, work))
        except ClientDisconnected:
            return Response(status_code=499)
        finally:
            admission.release()

    def openai_surface(serving: Serving, turn: Turn | None = None) -> Surface:
        if turn is None:
            return Surface(partial(chat_chunks, serving), serving.complete, error_response)

        async def complete(prepared: Prepared) -> dict[str, Any]:
            return responses.from_completion(turn, await serving.complete(prepared), store)

        def events(prepared: Prepared) -> AsyncGenerator[str, None]:
            return response_events(turn, pieces(serving, prepared), store)

        return Surface(events, complete, error_response, named_frame, b"")

    async def messages(request: Request) -> Response:
        try:
            body = await _parse(request, anthropic.MessagesRequest)
            serving = state.ready_serving()
            check_model(body.model)
            chat = anthropic.to_chat(body, config.model_name)
            surface = Surface(
                partial(anthropic.message_events, serving),
                partial(anthropic.complete_message, serving),
                anthropic.error_response,
                named_frame,
                b"",
                anthropic.api_error_body,
                fit_max_tokens=True,
            )
            return await run(request, serving, chat, surface)
        except Exception as exc:
            return anthropic.error_response(exc)

    async def count_tokens(request: Request) -> Response:
        try:
            body = await _parse(request, anthropic.CountTokensRequest)
            serving = state.ready_serving()
            check_model(body.model)
            ids, _ = serving.chat_prompt(anthropic.to_chat(body, config.model_name))
            return JSONResponse({"input_tokens": len(ids)})
        except Exception as exc:
            return anthropic.error_response(exc)

    async def stored_response(request: Request) -> Response:
        state.ready_serving()
        response_id = request.path_params["response_id"]
        if request.method == "DELETE":
            store.delete(response_id)
            return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})
        return JSONResponse(store.get(response_id).response)

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/health_check", health_check, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/version", version, methods=["GET"]),
        Route("/metrics", metrics_route, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/v1/messages", messages, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/v1/responses/{response_id}", stored_response, methods=["GET", "DELETE"]),
        *token_routes,
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            APIError: handle_api_error,
            EngineError: handle_api_error,
            TimeoutError: handle_api_error,  # request_timeout
            HTTPException: http_error,
            Exception: handle_api_error,  # anything else: a 500 in the envelope (and logged by Starlette)
        },
    )
    app.state.server = state
    return Service(app, metrics, config)


async def http_error(request: Request, exc: Exception) -> Response:
    """A routing error (404, 405) in the shape of the API whose path was asked for."""
    if request.url.path.startswith(ANTHROPIC_PREFIX):
        status = getattr(exc, "status_code", 500)
        return JSONResponse(anthropic.error_body(status, str(getattr(exc, "detail", "error"))), status_code=status)
    return await handle_http_exception(request, exc)


class Service:
    """The app behind its guard (request ids, API keys, head and body limits, request counts)."""

    def __init__(self, app: Starlette, metrics: Metrics, config: Config) -> None:
        self.app = app
        paths = {route.path for route in app.routes if isinstance(route, Route)}
        self.guarded = Guard(
            app, metrics, paths, config.api_key, config.max_request_body_bytes, config.max_header_bytes
        )

    @property
    def state(self) -> Any:
        return self.app.state

    @property
    def lifespan(self) -> Any:
        """The engine's start/stop, for an app that mounts this one (mounted apps get no lifespan of their own)."""
        return self.app.router.lifespan_context

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            return await self.app(scope, receive, send)
        await self.guarded(scope, receive, send)


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
