"""Running the app under uvicorn: exit status 0 after a clean stop, non-zero when the engine fails or dies."""

from __future__ import annotations

import logging

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


def serve(config: Config, engine: Engine | None = None) -> int:
    """Serve until stopped; returns the process exit status."""
    configure_logging(config.log_level)
    failures: list[str] = []

    def on_fatal(message: str) -> None:
        failures.append(message)
        server.should_exit = True

    app = create_app(config, engine=engine, on_fatal=on_fatal)
    server = uvicorn.Server(
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
