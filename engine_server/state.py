"""The engine's lifecycle as the routes see it: starting, ready, failed or dead; and admission of requests."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from backends.base import Engine, EngineDeadError, ModelInfo
from engine_server.config import Config
from engine_server.errors import APIError, ServiceUnavailable
from engine_server.metrics import Metrics
from engine_server.serving import Serving

logger = logging.getLogger("engine_server")
WATCHDOG_INTERVAL_S = 1.0


class TooManyRequests(APIError):
    status_code = 429
    type = "rate_limit_error"


class Admission:
    """A slot among max_concurrent_requests; released once, whichever way the request ends."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._state.num_admitted -= 1


class State:
    def __init__(
        self, config: Config, engine: Engine, metrics: Metrics, on_fatal: Callable[[str], None] | None
    ) -> None:
        self.config = config
        self.engine = engine
        self.metrics = metrics
        self.on_fatal = on_fatal
        self.status = "starting"  # starting -> ready -> (dead | stopping); starting -> failed
        self.error: str | None = None
        self.info: ModelInfo | None = None
        self.serving: Serving | None = None
        self.num_admitted = 0

    async def start_engine(self) -> None:
        started = time.monotonic()
        try:
            self.info = await self.engine.start()
        except Exception as exc:
            logger.exception("the engine failed to start")
            self._fail("failed", f"the engine failed to start: {exc}")
            return
        template = _read_template(self.config.chat_template)
        self.serving = Serving(self.engine, self.info, self.config, template, self.metrics)
        # A streamed response runs in an anyio task group, and anyio imports its asyncio backend on first use:
        # 0.3-1 s, measured, that would otherwise land in the first streamed request's time to first token.
        async with anyio.create_task_group():
            pass
        # What starting left behind (a tokenizer's vocabulary alone is hundreds of thousands of objects) lives as
        # long as the server: out of the collector's sight, a full collection no longer walks it mid-stream.
        gc.collect()
        gc.freeze()
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

    def admit(self) -> Admission:
        if self.num_admitted >= self.config.max_concurrent_requests:
            raise TooManyRequests(
                f"The server is at its limit of {self.config.max_concurrent_requests} concurrent requests; "
                "retry after the delay in the Retry-After header.",
                code="too_many_requests",
            )
        self.num_admitted += 1
        return Admission(self)


def _read_template(value: str | None) -> str | None:
    """--chat-template takes Jinja text or a file path."""
    if value is None:
        return None
    path = Path(value)
    return path.read_text() if "{" not in value and path.is_file() else value
