"""Running the app under uvicorn, or a headless node without it: exit status 0 after a clean stop, non-zero when
the engine fails or dies."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import tempfile
import threading
from collections.abc import Iterator

import uvicorn

from backends.base import Engine
from engine_server.app import create_app
from engine_server.config import Config
from engine_server.middleware import JsonFormatter

logger = logging.getLogger("engine_server")


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own loggers carry their own handlers: route them through ours so every line has one format.
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def _json_logs_for_vllm(level: str) -> None:
    """vLLM configures its own loggers, in this process and in its engine-core child: give it our JSON format."""
    if "VLLM_LOGGING_CONFIG_PATH" in os.environ:
        return  # the user's own logging config for vLLM wins
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "engine_server.middleware.JsonFormatter"}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
        "loggers": {"vllm": {"handlers": ["json"], "level": level.upper(), "propagate": False}},
    }
    fd, path = tempfile.mkstemp(prefix="engine-server-vllm-logging-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(config, f)
    os.environ["VLLM_LOGGING_CONFIG_PATH"] = path


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


def _configure_logs(config: Config) -> None:
    configure_logging(config.log_level, config.log_format)
    if config.log_format == "json":
        _json_logs_for_vllm(config.log_level)


def run_headless(config: Config) -> int:
    """A headless node (--headless): this host's workers for node 0's engine, no HTTP; returns the exit status."""
    from functools import partial

    from backends import run_headless
    from engine_server import models

    _configure_logs(config)
    return run_headless(config, partial(models.resolve, config))


def serve(config: Config, engine: Engine | None = None) -> int:
    """Serve until stopped; returns the process exit status."""
    _configure_logs(config)
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
            log_config=None,
            access_log=False,  # the guard logs each request with its id
            timeout_graceful_shutdown=int(config.shutdown_grace) or 1,
            timeout_keep_alive=int(config.keep_alive_timeout) or 1,
            h11_max_incomplete_event_size=config.max_header_bytes,
        )
    )
    logger.info("listening on http://%s:%d (the model loads in the background)", config.host, config.port)
    server.run()
    if failures:
        logger.error("stopped: %s", failures[0])
        return 1
    return 0
