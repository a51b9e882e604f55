"""Liveness between the nodes of one model spread over hosts (--nnodes), which vLLM leaves unwatched.

vLLM's workers notice that another node is gone only when a step sends it activations. An idle node 0 answers
healthy after a headless node died, and its next request then hangs for the step timeout
(VLLM_EXECUTE_MODEL_TIMEOUT_SECONDS, 300 s by default); a headless node outlives node 0 for good. So every headless
node counts heartbeats in the TCPStore that node 0's first worker serves for torch.distributed at
--master-addr:--master-port, the one address all nodes already reach: node 0 reads the counts, and a headless node
that can no longer reach the store knows that node 0 went away.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Protocol

HEARTBEAT_INTERVAL_S = 1.0
SILENCE_LIMIT_S = 5.0  # a node not heard from for this long is taken for gone


class Store(Protocol):
    def add(self, key: str, amount: int) -> int: ...


class NodeLost(RuntimeError):
    """Another node of the model stopped answering; the message names it."""


def _key(node_rank: int) -> str:
    return f"engine-server/heartbeats/{node_rank}"


def connect(master_addr: str, master_port: int) -> Any:
    """A client of the TCPStore on node 0; its calls fail after SILENCE_LIMIT_S without an answer."""
    from torch.distributed import TCPStore

    return TCPStore(
        master_addr, master_port, is_master=False, timeout=timedelta(seconds=SILENCE_LIMIT_S), wait_for_workers=False
    )


class Heartbeat:
    """A headless node's side: beat() once every HEARTBEAT_INTERVAL_S."""

    def __init__(self, store: Store, node_rank: int) -> None:
        self._store = store
        self._key = _key(node_rank)

    def beat(self) -> None:
        """Count one heartbeat; raises NodeLost when node 0's store is gone."""
        try:
            self._store.add(self._key, 1)
        except RuntimeError as exc:  # torch's DistError and its network and store errors
            raise NodeLost(f"node 0 went away: its store at --master-addr:--master-port failed ({exc})") from exc


class NodeWatch:
    """Node 0's side: check() raises NodeLost once a headless node has not counted a heartbeat for SILENCE_LIMIT_S."""

    def __init__(self, store: Store, nnodes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        started = clock()
        # rank -> (the count last read, when it last changed); the silence is counted from the start
        self._seen = {rank: (-1, started) for rank in range(1, nnodes)}

    def check(self) -> None:
        now = self._clock()
        for rank, (count, since) in self._seen.items():
            try:
                current = self._store.add(_key(rank), 0)
            except RuntimeError as exc:
                raise NodeLost(f"this node's own store for the other nodes failed ({exc})") from exc
            if current != count:
                self._seen[rank] = (current, now)
            elif now - since > SILENCE_LIMIT_S:
                raise NodeLost(f"node {rank} has not been heard from for {now - since:.0f} s")
