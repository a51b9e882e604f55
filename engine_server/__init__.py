"""engine-server: an OpenAI-compatible LLM microservice with the inference engine in the same process."""

from __future__ import annotations

__version__ = "0.1.0"

from engine_server.app import create_app  # noqa: E402
from engine_server.config import Config, ConfigError  # noqa: E402
from engine_server.server import serve  # noqa: E402

__all__ = ["Config", "ConfigError", "create_app", "serve", "__version__"]
