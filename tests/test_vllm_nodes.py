"""Liveness between the nodes of a model across hosts: heartbeats counted in node 0's TCPStore."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from typing import Any

import pytest
from torch.distributed import TCPStore

from backends import vllm_headless, vllm_nodes
from backends.vllm_nodes import SILENCE_LIMIT_S, Heartbeat, NodeLost, NodeWatch
from tests.conftest import free_port


class FakeStore:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.broken = False

    def add(self, key: str, amount: int) -> int:
        if self.broken:
            raise RuntimeError("Connection reset by peer")
        self.counts[key] = self.counts.get(key, 0) + amount
        return self.counts[key]


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_node_0_hears_every_headless_node_and_names_the_silent_one() -> None:
    store, clock = FakeStore(), Clock()
    watch = NodeWatch(store, nnodes=3, clock=clock)
    beats = [Heartbeat(store, 1), Heartbeat(store, 2)]
    for _ in range(10):
        for beat in beats:
            beat.beat()
        clock.now += 1
        watch.check()
    # Node 2 falls silent: tolerated up to the limit, then named.
    for _ in range(int(SILENCE_LIMIT_S)):
        beats[0].beat()
        clock.now += 1
        watch.check()
    beats[0].beat()
    clock.now += 1
    with pytest.raises(NodeLost, match=f"node 2 has not been heard from for {SILENCE_LIMIT_S + 1:.0f} s"):
        watch.check()


def test_a_node_never_heard_from_is_lost_after_the_limit() -> None:
    store, clock = FakeStore(), Clock()
    watch = NodeWatch(store, nnodes=2, clock=clock)
    watch.check()
    clock.now += SILENCE_LIMIT_S + 1
    with pytest.raises(NodeLost, match="node 1 has not been heard from"):
        watch.check()


def test_store_failures_are_lost_nodes() -> None:
    store = FakeStore()
    watch, heartbeat = NodeWatch(store, nnodes=2), Heartbeat(store, 1)
    store.broken = True
    with pytest.raises(NodeLost, match="node 0 went away"):
        heartbeat.beat()
    with pytest.raises(NodeLost, match="own store"):
        watch.check()


def test_heartbeats_through_a_real_store_and_node_0_going_away() -> None:
    port = free_port()
    server = TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=5), wait_for_workers=False)
    heartbeat = Heartbeat(vllm_nodes.connect("127.0.0.1", port), 1)
    watch = NodeWatch(vllm_nodes.connect("127.0.0.1", port), nnodes=2)
    heartbeat.beat()
    watch.check()
    assert server.add("engine-server/heartbeats/1", 0) == 1
    del server  # node 0's first worker ends, and its store with it
    started = time.monotonic()
    with pytest.raises(NodeLost, match="node 0 went away"):
        heartbeat.beat()
    assert time.monotonic() - started < SILENCE_LIMIT_S + 1


class Worker:
    def __init__(self, sentinel: int) -> None:
        self.proc = self
        self.sentinel = sentinel


class Executor:
    """A worker's sentinel is the read end of a pipe: readable once the write end closes, as when a worker exits."""

    def __init__(self) -> None:
        self.read, self.write = os.pipe()
        self.workers: list[Any] = [Worker(self.read)]


def test_a_headless_node_stops_with_1_when_a_worker_exits() -> None:
    executor, store = Executor(), FakeStore()
    os.close(executor.write)
    assert vllm_headless._watch(executor, Heartbeat(store, 1), 1) == 1
    os.close(executor.read)


def test_a_headless_node_beats_until_node_0_goes_away(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vllm_nodes, "HEARTBEAT_INTERVAL_S", 0.01)
    executor, store = Executor(), FakeStore()

    class Failing(Heartbeat):
        def beat(self) -> None:
            super().beat()
            store.broken = store.counts["engine-server/heartbeats/1"] >= 3

    assert vllm_headless._watch(executor, Failing(store, 1), 1) == 1
    assert store.counts["engine-server/heartbeats/1"] == 3
    os.close(executor.read)
    os.close(executor.write)
