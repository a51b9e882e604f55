"""Running the app under uvicorn, or a headless node without it: exit status 0 after a clean stop, non-zero when
the engine fails or dies."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

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
    stopped_while_starting: Callable[[], bool] = staticmethod(lambda: False)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        if self.stopped_while_starting():
            # The engine is still being built in a thread, which cannot be interrupted, and the event loop would
            # wait for it at exit: minutes for a large model, for ever for one waiting for its other hosts.
            logger.info("stopped while the engine was starting")
            _end_children()
            logging.shutdown()
            os._exit(0)

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


def _end_children(grace: float = 5.0) -> None:
    """Stop the processes this one started (an engine's own processes), SIGKILL for those still there after grace."""
    children = _descendants(os.getpid())
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while children and time.monotonic() < deadline:
        time.sleep(0.1)
        children = [pid for pid in children if _alive(pid)]
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _descendants(root: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{entry}/stat") as f:
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    found, todo = [], [root]
    while todo:
        parent = todo.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found += kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def _configure_logs(config: Config) -> None:
    configure_logging(config.log_level, config.log_format)
    if config.log_format == "json":
        _json_logs_for_vllm(config.log_level)


def run_headless(config: Config) -> int:
    """A headless node (--headless): this host's workers for node 0's engine, no HTTP; returns the exit status."""
    from engine_server import engines

    _configure_logs(config)
    return engines.run_headless(config)


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
    server.stopped_while_starting = lambda: app.state.server.status == "starting"
    server.run()
    if failures:
        logger.error("stopped: %s", failures[0])
        return 1
    return 0
