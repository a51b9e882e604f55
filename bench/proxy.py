"""The two-hop contender: a minimal OpenAI-compatible pass-through microservice in front of `vllm serve`.

This is the reference design (an OPEA-style microservice that forwards to a separate vLLM server) reduced to its
cheapest form: the request is read and parsed once, forwarded as is, and the upstream's SSE bytes are relayed without
re-encoding. A real microservice does more per chunk, so this measures a lower bound of the second hop's cost.

    python -m bench.proxy --upstream http://127.0.0.1:8000 --port 9100
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import AsyncIterator

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def create_app(upstream: str) -> Starlette:
    clients: list[httpx.AsyncClient] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # One pooled client for all requests; no read timeout, since a stream may idle while the engine is busy.
        client = httpx.AsyncClient(
            base_url=upstream,
            timeout=httpx.Timeout(None, connect=10.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=512),
        )
        clients.append(client)
        try:
            yield
        finally:
            await client.aclose()

    async def forward(request: Request) -> Response:
        client = clients[0]
        body = await request.body()
        if request.method == "POST":
            try:
                json.loads(body)
            except ValueError as exc:
                error = {
                    "message": f"invalid JSON: {exc}",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": None,
                }
                return JSONResponse({"error": error}, status_code=400)
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        upstream_request = client.build_request(request.method, request.url.path, content=body, headers=headers)
        response = await client.send(upstream_request, stream=True)
        media_type = response.headers.get("content-type")
        if media_type is not None and media_type.startswith("text/event-stream"):
            # Closing the upstream response when the client goes away makes vLLM abort the request.
            return StreamingResponse(
                response.aiter_raw(),
                status_code=response.status_code,
                media_type=media_type,
                background=BackgroundTask(response.aclose),
            )
        content = await response.aread()
        await response.aclose()
        return Response(content, status_code=response.status_code, media_type=media_type)

    return Starlette(
        routes=[
            Route("/v1/chat/completions", forward, methods=["POST"]),
            Route("/v1/completions", forward, methods=["POST"]),
            Route("/v1/models", forward, methods=["GET"]),
            Route("/health", forward, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="base URL of the OpenAI-compatible server behind the proxy")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args(argv)
    # Access logs off, as in our server: both sides of the comparison then do the same per-request logging.
    uvicorn.run(create_app(args.upstream), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
