"""An API surface: how a request prepared on the one serving path is answered in that API's own shape."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

from engine_server.errors import APIError
from engine_server.serving import Prepared
from engine_server.streaming import DONE, frame


@dataclass(frozen=True)
class Surface:
    events: Callable[[Prepared], AsyncGenerator[str, None]]  # a streamed answer, as JSON events
    complete: Callable[[Prepared], Awaitable[dict[str, Any]]]  # a whole answer
    error: Callable[[APIError], Response]  # an error before the answer starts
    framer: Callable[[str], bytes] = frame  # one event as server-sent events
    done: bytes = DONE  # what ends a stream (b"": nothing)
    error_body: Callable[[APIError], dict[str, Any]] = APIError.body  # an error once the stream has started
    # max_tokens is a ceiling that the context left (and the server's limit) may lower: the Anthropic API's reading.
    fit_max_tokens: bool = False
