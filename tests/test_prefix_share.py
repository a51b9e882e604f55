"""Requests that share a long prompt prefix with one the engine is computing wait for that prefill, then find the
prefix in the engine's cache: unit tests of the waiting on a scripted engine, and the real engines behind the server."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import httpx
import pytest

from backends.base import CompletionDelta, GenerateRequest, SamplingOptions, StepOutput
from engine_server.prefix_share import PrefixShare, common_prefix
from tests.conftest import LiveServer

SHARED = list(range(1000, 1600))  # a 600-token prefix


def request(request_id: str, prompt: list[int]) -> GenerateRequest:
    return GenerateRequest(request_id, prompt, SamplingOptions(max_tokens=2))


class ScriptedEngine:
    """Each request's prefill ends when the test sets its event; then one token and the end."""

    def __init__(self) -> None:
        self.submitted: list[str] = []
        self.prefilled: dict[str, asyncio.Event] = {}
        self.fail: set[str] = set()

    async def generate(self, req: GenerateRequest) -> AsyncIterator[StepOutput]:
        self.submitted.append(req.request_id)
        await self.prefilled.setdefault(req.request_id, asyncio.Event()).wait()
        if req.request_id in self.fail:
            raise RuntimeError("engine failed")
        yield StepOutput(len(req.prompt_token_ids), [CompletionDelta(0, "x", num_tokens=1)])
        yield StepOutput(
            len(req.prompt_token_ids), [CompletionDelta(0, "", num_tokens=0, finish_reason="length")], finished=True
        )


async def drain(share: PrefixShare, engine: ScriptedEngine, req: GenerateRequest) -> list[StepOutput]:
    return [step async for step in share.generate(engine.generate, req)]


def test_common_prefix_matches_a_plain_loop() -> None:
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.randrange(3) for _ in range(rng.randrange(40))]
        b = a[: rng.randrange(len(a) + 1)] + [rng.randrange(3) for _ in range(rng.randrange(40))]
        expected = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        assert common_prefix(a, b) == expected


def test_a_follower_goes_in_only_after_the_leaders_prefill() -> None:
    async def run() -> None:
        engine, waits = ScriptedEngine(), []
        share = PrefixShare(256, on_wait=lambda: waits.append(1))
        leader = asyncio.create_task(drain(share, engine, request("a", [*SHARED, 1, 2])))
        followers = [asyncio.create_task(drain(share, engine, request(r, [*SHARED, 3, i]))) for i, r in enumerate("bc")]
        await asyncio.sleep(0.01)
        assert engine.submitted == ["a"] and len(waits) == 2  # b and c wait, not computing the prefix beside a
        engine.prefilled["a"].set()
        await asyncio.sleep(0.01)
        assert engine.submitted == ["a", "b", "c"]  # both go in once a's prompt is computed
        for r in "bc":
            engine.prefilled[r].set()
        results = await asyncio.gather(leader, *followers)
        assert [len(steps) for steps in results] == [2, 2, 2]

    asyncio.run(run())


@pytest.mark.parametrize(
    "prompt",
    [
        [*SHARED[:200], 9, 9],  # shares fewer than min_tokens
        [*SHARED, *range(5000, 5700)],  # shares 600 of 1300 tokens: less than half of its own prompt
        list(range(2000, 2600)),  # shares nothing
    ],
)
def test_prompts_that_share_too_little_do_not_wait(prompt: list[int]) -> None:
    async def run() -> None:
        engine = ScriptedEngine()
        share = PrefixShare(256)
        leader = asyncio.create_task(drain(share, engine, request("a", [*SHARED, 1])))
        other = asyncio.create_task(drain(share, engine, request("b", prompt)))
        await asyncio.sleep(0.01)
        assert engine.submitted == ["a", "b"]
        for event in engine.prefilled.values():
            event.set()
        await asyncio.gather(leader, other)

    asyncio.run(run())


def test_off_nothing_waits() -> None:
    async def run() -> None:
        engine = ScriptedEngine()
        share = PrefixShare(0)
        tasks = [asyncio.create_task(drain(share, engine, request(r, [*SHARED, 1]))) for r in "ab"]
        await asyncio.sleep(0.01)
        assert engine.submitted == ["a", "b"]
        for event in engine.prefilled.values():
            event.set()
        await asyncio.gather(*tasks)

    asyncio.run(run())


def test_a_failed_or_abandoned_leader_releases_its_followers() -> None:
    async def run() -> None:
        engine = ScriptedEngine()
        engine.fail.add("a")
        share = PrefixShare(256)
        leader = asyncio.create_task(drain(share, engine, request("a", [*SHARED, 1])))
        follower = asyncio.create_task(drain(share, engine, request("b", [*SHARED, 2])))
        await asyncio.sleep(0.01)
        engine.prefilled["a"].set()
        with pytest.raises(RuntimeError, match="engine failed"):
            await leader
        await asyncio.sleep(0.01)
        assert engine.submitted == ["a", "b"]
        engine.prefilled["b"].set()
        await follower
        # A leader whose client went away while it computed: its follower goes in at once.
        late = asyncio.create_task(drain(share, engine, request("c", [*SHARED, 3])))
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(drain(share, engine, request("d", [*SHARED, 4])))
        await asyncio.sleep(0.01)
        assert "d" not in engine.submitted
        late.cancel()
        await asyncio.sleep(0.01)
        assert engine.submitted[-1] == "d"
        engine.prefilled["d"].set()
        await waiting

    asyncio.run(run())


def test_a_follower_whose_client_left_is_never_submitted() -> None:
    async def run() -> None:
        engine = ScriptedEngine()
        share = PrefixShare(256)
        leader = asyncio.create_task(drain(share, engine, request("a", [*SHARED, 1])))
        follower = asyncio.create_task(drain(share, engine, request("b", [*SHARED, 2])))
        await asyncio.sleep(0.01)
        follower.cancel()
        engine.prefilled["a"].set()
        await leader
        await asyncio.sleep(0.01)
        assert engine.submitted == ["a"]

    asyncio.run(run())


def test_prompts_sent_together_compute_their_shared_prefix_once(server: LiveServer) -> None:
    """Three prompts of one request share a 600-token prefix and go to the engine together. On OpenVINO the second
    and third wait for the first's prefill; vLLM finds a prefix still being computed by itself (usage shows the two
    found it in the cache), so nothing waits there."""
    shared = "Every agent session starts with the same long system prompt and tool list. " * 40
    prompts = [f"{shared}Question {i}: what is {i} plus {i}?" for i in range(3)]
    waits = server.metric("engine_server_prefix_share_waits_total")
    reply = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": "tiny", "prompt": prompts, "max_tokens": 4, "temperature": 0},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert len(body["choices"]) == 3 and all(c["finish_reason"] in ("length", "stop") for c in body["choices"])
    assert server.metric("engine_server_prefix_share_waits_total") - waits == (0 if server.backend == "cpu" else 2)
    prompt_tokens = body["usage"]["prompt_tokens"]
    assert prompt_tokens > 3 * 500
    if server.backend == "cpu":  # OpenVINO GenAI does not report cached tokens per request
        cached = body["usage"]["prompt_tokens_details"]["cached_tokens"]
        assert cached >= 2 * 1500, body["usage"]
