"""Running the app under uvicorn: exit status 0 after a clean stop, non-zero when the engine fails or dies."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator

import uvicorn

from backends.base import Engine
from engine_server.app import create_app
from engine_server.config import Config

logger = logging.getLogger("engine_server")


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises SIGTERM once it has stopped, so the process would die by the signal (status -15);
        # after a graceful stop we exit with 0 instead, which is what orchestrators expect.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def serve(config: Config, engine: Engine | None = None) -> int:
    """Serve until stopped; returns the process exit status."""
    configure_logging(config.log_level)
    failures: list[str] = []

    def on_fatal(message: str) -> None:
        failures.append(message)
        server.should_exit = True

    app = create_app(config, engine=engine, on_fatal=on_fatal)
    server = _Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            timeout_graceful_shutdown=30,
            access_log=False,
        )
    )
    logger.info("listening on http://%s:%d (the model loads in the background)", config.host, config.port)
    server.run()
    if failures:
        logger.error("stopped: %s", failures[0])
        return 1
    return 0
