"""Time to first token of turns 1 and 2 of a Claude Code session, with the billing block taken out of the prompt
(what the server does) and kept in it (what a server that renders every system block does).

Claude Code opens each request's system prompt with an `x-anthropic-billing-header` text block whose version field
changes between requests. Turn 1 is the request Claude Code sent (tests/fixtures/claude_code_messages.json); turn 2
is the same conversation with the answer and one more user message, and another billing block, as the next request.
With the block kept, turn 2's prompt differs from turn 1's at its first system tokens, so the prefix cache cannot
serve any of it.

.venv/bin/python -m bench.agent_turns [--backends openvino,cpu] [--model DIR]   (default: the agent test model)
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.procs import free_port, launch, stop, wait_healthy
from engine_server.anthropic.translate import BILLING_HEADER

ROOT = Path(__file__).resolve().parent.parent
RECORDED = ROOT / "tests" / "fixtures" / "claude_code_messages.json"
PYTHON = {"openvino": ROOT / ".venv-openvino" / "bin" / "python", "cpu": ROOT / ".venv" / "bin" / "python"}
KEPT = "x-billing-kept:"  # the same block under a name the server does not take out


def turns(kept: bool) -> list[dict[str, Any]]:
    """The bodies of turns 1 and 2."""
    first = json.loads(RECORDED.read_text())["body"]
    first["max_tokens"] = 16
    second = copy.deepcopy(first)
    second["messages"] += [
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        {"role": "user", "content": [{"type": "text", "text": "Now reply with one word: bye"}]},
    ]
    bodies = []
    for body, version in ((first, "2.1.197.d03"), (second, "2.1.197.5e1")):
        header = (KEPT if kept else BILLING_HEADER) + f" cc_version={version}; cc_entrypoint=sdk-cli;"
        body["system"] = [{"type": "text", "text": header}, *body["system"][1:]]
        bodies.append(body)
    return bodies


def first_token(client: httpx.Client, base: str, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """Seconds to the first content delta, and the usage that message_start reported."""
    started = time.monotonic()
    usage: dict[str, Any] = {}
    ttft = float("nan")
    with client.stream("POST", f"{base}/v1/messages", json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: "):
                continue
            event = json.loads(line[6:])
            if event["type"] == "message_start":
                usage = event["message"]["usage"]
            elif event["type"] == "content_block_delta" and ttft != ttft:
                ttft = time.monotonic() - started
    return ttft, usage


def run(backend: str, model: str, max_model_len: int, workdir: Path) -> list[str]:
    port = free_port()
    cmd = [str(PYTHON[backend]), "-m", "engine_server.cli", "--hw-mode", backend, "--model", model]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--max-model-len", str(max_model_len), "--kv-cache-space", "2"]
    child = launch(backend, cmd, workdir / f"{backend}.log")
    rows = []
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(child, f"{base}/health")
        with httpx.Client(timeout=1800) as client:
            for kept in (True, False):
                (t1, u1), (t2, u2) = (first_token(client, base, body) for body in turns(kept))
                prompt = u2["input_tokens"] + u2.get("cache_read_input_tokens", 0)
                cached = u2.get("cache_read_input_tokens", 0)
                variant = "billing block kept" if kept else "billing block taken out"
                rows.append(f"{backend:9} {variant:24} {t1:8.2f} {t2:8.2f} {t2 / t1:7.3f}  {prompt:>8} {cached:>8}")
                print(rows[-1], flush=True)
    finally:
        stop(child)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="openvino,cpu")
    parser.add_argument("--model", default=None, help="a checkpoint directory (default: the agent test model)")
    parser.add_argument("--max-model-len", type=int, default=65536)
    args = parser.parse_args()
    if args.model is None:
        from tests.models.make_agent_model import build

        args.model = str(build())
    print(f"{'backend':9} {'variant':24} {'turn 1 s':>8} {'turn 2 s':>8} {'2 / 1':>7}  {'prompt 2':>8} {'cached 2':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for backend in args.backends.split(","):
            run(backend, args.model, args.max_model_len, Path(tmp))


if __name__ == "__main__":
    main()
