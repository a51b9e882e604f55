"""Faults and load against a real server, one line each: what was sent, what came back, what was lost.

.venv/bin/python -m bench.faults [--model DIR]     (default: the tiny test model)
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

CHAT = "/v1/chat/completions"


def start(model: str, log: Path, *flags: str) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "engine_server.cli", "--model", model, "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--kv-cache-space", "1", "--dtype", "float32", "--log-format", "text", *flags]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    while True:
        if process.poll() is not None:
            raise SystemExit(f"server exited: {log}")
        try:
            if httpx.get(f"{base}/health").status_code == 200:
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)


def gauge(base: str, name: str) -> float:
    line = next(x for x in httpx.get(f"{base}/metrics").text.splitlines() if x.startswith(name + " "))
    return float(line.split()[-1])


def seconds_until_idle(base: str, started: float) -> float:
    names = ("engine_server_requests_running", "engine_server_requests_waiting")
    while sum(gauge(base, n) for n in names) > 0:
        time.sleep(0.02)
    return time.monotonic() - started


async def disconnects(base: str) -> str:
    body = {"messages": "story", "max_tokens": 1500, "ignore_eos": True, "stream": True}

    async def leave(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", CHAT, json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data:"):
                    return

    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=100)) as c:
        await asyncio.gather(*(leave(c) for _ in range(100)))
    left = time.monotonic()
    idle = seconds_until_idle(base, left)
    return f"100 streams (1500 tokens each) left after their first token | engine idle {idle:.2f} s later"


async def burst(base: str, bound: int) -> str:
    body = {"messages": "burst", "max_tokens": 32, "ignore_eos": True}

    async def one(c: httpx.AsyncClient) -> tuple[int, float, int]:
        t = time.monotonic()
        r = await c.post(CHAT, json=body)
        tokens = r.json()["usage"]["completion_tokens"] if r.status_code == 200 else 0
        return r.status_code, time.monotonic() - t, tokens

    async with httpx.AsyncClient(base_url=base, timeout=120, limits=httpx.Limits(max_connections=5 * bound)) as c:
        results = await asyncio.gather(*(one(c) for _ in range(5 * bound)))
    counts = collections.Counter(s for s, _, _ in results)
    slowest_429 = max((t for s, t, _ in results if s == 429), default=0)
    full = all(n == 32 for s, _, n in results if s == 200)
    return (
        f"{5 * bound} at once, bound {bound} | {dict(counts)}; slowest 429 in {slowest_429 * 1000:.0f} ms; "
        f"every 200 has all 32 tokens: {full}"
    )


def engine_death(base: str, process: subprocess.Popen[bytes]) -> str:
    body = {"messages": "long", "max_tokens": 1500, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{base}{CHAT}", json=body, timeout=60) as r:
        lines = r.iter_lines()
        next(x for x in lines if x.startswith("data:"))
        killed = time.monotonic()
        for child in psutil.Process(process.pid).children(recursive=True):
            child.kill()
        rest = [x for x in lines if x.startswith("data:")]
    ended = "error event then [DONE]" if rest[-1] == "data: [DONE]" and '"error"' in rest[-2] else repr(rest[-2:])
    first_unhealthy = None
    while process.poll() is None:
        try:
            unhealthy = httpx.get(f"{base}/health").status_code != 200
        except httpx.TransportError:
            unhealthy = True
        if unhealthy and first_unhealthy is None:
            first_unhealthy = time.monotonic() - killed
        time.sleep(0.05)
    return (
        f"engine-core processes SIGKILLed mid-stream | stream: {ended}; /health not 200 after "
        f"{first_unhealthy:.2f} s; exit status {process.returncode} after {time.monotonic() - killed:.1f} s"
    )


def sigterm(base: str, process: subprocess.Popen[bytes]) -> str:
    body = {"messages": "finish", "max_tokens": 300, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{base}{CHAT}", json=body, timeout=60) as r:
        lines = r.iter_lines()
        chunks = [next(x for x in lines if x.startswith("data:"))]
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        chunks += [x for x in lines if x.startswith("data:")]
    code = process.wait(120)
    done = chunks[-1] == "data: [DONE]" and '"finish_reason":"length"' in chunks[-2]
    return (
        f"SIGTERM with a 300-token stream in flight | stream finished ({done}, {len(chunks) - 1} chunks); "
        f"exit status {code} {time.monotonic() - sent:.1f} s after the signal"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    if args.model is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from tests.models.make_tiny_model import build

        args.model = str(build())
    logs = Path(tempfile.mkdtemp(prefix="faults-"))
    rows = []
    process, base = start(args.model, logs / "a.log")
    rows.append(asyncio.run(disconnects(base)))
    process.send_signal(signal.SIGTERM)
    process.wait()
    process, base = start(args.model, logs / "b.log", "--max-concurrent-requests", "8")
    rows.append(asyncio.run(burst(base, 8)))
    rows.append(engine_death(base, process))
    process, base = start(args.model, logs / "c.log", "--shutdown-grace", "60")
    rows.append(sigterm(base, process))
    print(f"logs: {logs}  load: {os.getloadavg()[0]:.1f}")
    print("| fault or load | what came back |\n|---|---|")
    for row in rows:
        print(f"| {row} |")


if __name__ == "__main__":
    main()
