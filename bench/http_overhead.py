"""CPU cost of our HTTP layer alone: the app driven in-process (no sockets) over an engine that costs nothing.

On a shared 2-core machine wall-clock comparisons move with every other job; the CPU seconds our app spends per
streamed token do not. Variants switch one suspect off at a time (by patching at run time, nothing is edited), so
each line of the output prices one cause:

    python -m bench.http_overhead                      # all variants, tiny model's tokenizer, 200 x 64 tokens
    python -m bench.http_overhead --variants as-is,no-access-log --num-requests 400

Variants: as-is; no-access-log (the guard's per-request JSON log line off); no-tokenizer (prompt rendering and
tokenizing replaced by a constant); floor (a bare ASGI app doing only the engine loop, json.dumps and send: what any
Python server pays). The figures exclude uvicorn's socket writes and vLLM's output processing, which every
contender pays alike.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from backends.base import CompletionDelta, EngineStats, GenerateRequest, ModelInfo, StepOutput
from backends.chat import render_chat

VARIANTS = ("as-is", "no-access-log", "no-tokenizer", "floor")
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu"]


class NullEngine:
    """Streams max_tokens one-token deltas, yielding to the loop between steps as a real engine's outputs do."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    async def start(self) -> ModelInfo:
        return ModelInfo(name="null", max_model_len=4096, backend="null", engine_version="0")

    async def generate(self, request: GenerateRequest) -> AsyncIterator[StepOutput]:
        num_prompt = len(request.prompt_token_ids)
        for step in range(request.sampling.max_tokens):
            await asyncio.sleep(0)
            last = step == request.sampling.max_tokens - 1
            delta = CompletionDelta(index=0, text=" tok", num_tokens=1, finish_reason="length" if last else None)
            yield StepOutput(num_prompt_tokens=num_prompt, deltas=[delta], finished=last)

    async def abort(self, request_id: str) -> None:
        pass

    async def check_health(self) -> None:
        pass

    def stats(self) -> EngineStats:
        return EngineStats(num_running=0, num_waiting=0)

    def tokenize(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def detokenize(self, token_ids: list[int]) -> str:
        return str(self.tokenizer.decode(token_ids))

    def token_strs(self, token_ids: list[int]) -> list[str]:
        return [str(token) for token in self.tokenizer.convert_ids_to_tokens(token_ids)]

    def render_chat(
        self, messages: list[dict[str, Any]], chat_template: str | None = None, template_kwargs: Any = None
    ) -> str:
        return render_chat(self.tokenizer, messages, chat_template, template_kwargs)

    async def shutdown(self) -> None:
        pass


def request_body(rng: random.Random, output_len: int) -> bytes:
    # What vLLM's benchmark client sends for the openai-chat backend (text parts, usage chunk, ignore_eos).
    prompt = " ".join(rng.choice(WORDS) for _ in range(128))
    body = {
        "model": "bench",
        "messages": [{"role": "user", "content": [{"type": "text", "text": prompt}]}],
        "max_completion_tokens": output_len,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    return json.dumps(body).encode()


async def drive(app: Any, body: bytes) -> int:
    """One streamed request through the ASGI app; returns the number of body chunks received."""
    done = asyncio.Event()
    sent = False
    num_chunks = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()  # the client stays connected until the response ends
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        nonlocal num_chunks
        if message["type"] == "http.response.body":
            num_chunks += 1
            if not message.get("more_body", False):
                done.set()

    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    scope: dict[str, Any] = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.4"}, "http_version": "1.1"}
    scope.update(method="POST", path="/v1/chat/completions", raw_path=b"/v1/chat/completions", query_string=b"")
    scope.update(headers=headers, scheme="http", server=("127.0.0.1", 9000), client=("127.0.0.1", 5000))
    scope.update(root_path="", state={})
    await app(scope, receive, send)
    return num_chunks


async def floor_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The least a Python server can do per token: the engine loop, one json.dumps and one send."""
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    engine = NullEngine(None)
    request = GenerateRequest("floor", [1] * 128, _sampling(64))
    async for _ in engine.generate(request):
        chunk = {"id": "x", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": " tok"}}]}
        await send(
            {"type": "http.response.body", "body": b"data: " + json.dumps(chunk).encode() + b"\n\n", "more_body": True}
        )
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})


def _sampling(max_tokens: int) -> Any:
    from backends.base import SamplingOptions

    return SamplingOptions(max_tokens=max_tokens)


@contextlib.contextmanager
def patched(variant: str) -> Iterator[None]:
    access = logging.getLogger("engine_server.access")
    original_disabled = access.disabled
    if variant == "no-access-log":
        access.disabled = True
    try:
        yield
    finally:
        access.disabled = original_disabled


async def measure(variant: str, tokenizer_dir: str, num_requests: int, concurrency: int, output_len: int) -> float:
    """CPU microseconds per streamed token for one variant."""
    from transformers import AutoTokenizer

    from engine_server.app import create_app
    from engine_server.config import Config

    tokenizer: Any = _ConstantTokenizer() if variant == "no-tokenizer" else AutoTokenizer.from_pretrained(tokenizer_dir)
    config = Config(model=tokenizer_dir, served_model_name="bench")
    service = create_app(config, engine=NullEngine(tokenizer))
    app: Any = floor_app if variant == "floor" else service
    rng = random.Random(0)
    bodies = [request_body(rng, output_len) for _ in range(num_requests)]
    limit = asyncio.Semaphore(concurrency)

    async def one(body: bytes) -> int:
        async with limit:
            return await drive(app, body)

    async with service.lifespan(service.app):
        while service.state.server.status != "ready":
            await asyncio.sleep(0.01)
        with patched(variant):
            await asyncio.gather(*(one(b) for b in bodies[:concurrency]))  # warm-up: imports, caches
            started = time.process_time()
            await asyncio.gather(*(one(b) for b in bodies))
            used = time.process_time() - started
    return used * 1e6 / (num_requests * output_len)


class _ConstantTokenizer:
    chat_template = "x"

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [1] * 140

    def apply_chat_template(self, messages: Any, **kwargs: Any) -> str:
        return "x"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--tokenizer", default=None, help="model dir whose tokenizer to use (default: tiny model)")
    parser.add_argument("--num-requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="runs per variant; the least is reported")
    args = parser.parse_args(argv)
    if args.tokenizer is None:
        from tests.models.make_tiny_model import build

        args.tokenizer = str(build())
    # Logging as the server sets it up (JSON lines), written to /dev/null so the terminal is not the cost.
    from engine_server.server import configure_logging

    configure_logging("info", "json")
    devnull = open(os.devnull, "w")  # noqa: SIM115 (the handler keeps it for the process's life)
    logging.getLogger().handlers[0].setStream(devnull)  # type: ignore[attr-defined]
    results = {}
    for variant in args.variants.split(","):
        # The least of a few runs: other jobs can only add to a CPU figure (cache misses, frequency), never take.
        runs = [
            asyncio.run(measure(variant, args.tokenizer, args.num_requests, args.concurrency, args.output_len))
            for _ in range(args.repeat)
        ]
        results[variant] = min(runs)
        shown = " ".join(f"{r:.1f}" for r in runs)
        print(f"{variant:<14} {results[variant]:7.1f} us CPU per streamed token (runs: {shown})", flush=True)
    if "as-is" in results:
        base = results["as-is"]
        for variant, value in results.items():
            print(f"  {variant:<14} saves {base - value:6.1f} us/token ({100 * (base - value) / base:5.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
