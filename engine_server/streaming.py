"""Responses that watch the client: cancellation on disconnect, and server-sent events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from sse_starlette import EventSourceResponse
from starlette.requests import Request
from starlette.responses import Response

from engine_server.errors import from_engine_error

logger = logging.getLogger("engine_server")
T = TypeVar("T")


class ClientDisconnected(Exception):
    pass


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
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


def encode(chunk: dict[str, Any]) -> str:
    return json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))


async def event_stream(
    request: Request,
    chunks: AsyncGenerator[dict[str, Any], None],
    on_close: Callable[[], None],
    timeout: float | None,
) -> Response:
    """SSE of the chunks, then [DONE]. The first chunk is awaited before the status line, so that a request the
    engine refuses still gets its 4xx; after that, errors travel as an error event."""
    try:
        first = await until_disconnect(request, asyncio.wait_for(anext(chunks, None), timeout))
    except ClientDisconnected:
        on_close()
        return Response(status_code=499)
    except BaseException:
        on_close()
        await chunks.aclose()
        raise
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout

    async def events() -> AsyncIterator[str]:
        try:
            if first is not None:
                yield encode(first)
            async with asyncio.timeout_at(deadline):
                async for chunk in chunks:
                    yield encode(chunk)
        except Exception as exc:
            logger.warning("stream ended by an error: %s", exc)
            yield encode(from_engine_error(exc).body())
        finally:
            await chunks.aclose()
            on_close()
        yield "[DONE]"

    return EventSourceResponse(events(), sep="\n", ping=15)
