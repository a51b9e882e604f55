"""A headless node of a model spread over several hosts: this host's share of vLLM's workers, and no HTTP.

With --nnodes N, node 0 runs the engine (scheduler, its own workers, the HTTP server) and nodes 1..N-1 each run
only their workers, which join node 0's torch.distributed group at --master-addr:--master-port and take their
inputs from node 0's message queues. This is what `vllm serve --headless` runs on such a node.
"""

from __future__ import annotations

import logging
import multiprocessing.connection
import os
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

from backends import vllm_nodes
from backends.vllm_args import async_engine_args

logger = logging.getLogger("engine_server.vllm")


def run(resolve_model: Callable[[], str], engine_args: dict[str, Any], env: dict[str, str]) -> int:
    """Run this node's workers until SIGTERM or SIGINT (0), or until one of them exits or node 0 goes away (1)."""
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    # vLLM reads its settings from the environment of this process and of the workers it spawns.
    os.environ.update(env)
    model = resolve_model()
    vllm_config = async_engine_args(model, engine_args).create_engine_config(
        usage_context=UsageContext.OPENAI_API_SERVER, headless=True
    )
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        if not stopping:  # once: the shutdown that follows must not be interrupted by a second signal
            stopping = True
            raise SystemExit

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    parallel = vllm_config.parallel_config
    logger.info(
        "headless node %d of %d: starting %d worker(s) for node 0 at %s:%d",
        parallel.node_rank,
        parallel.nnodes,
        parallel.local_world_size,
        parallel.master_addr,
        parallel.master_port,
    )
    executor = None
    try:
        executor = MultiprocExecutor(vllm_config, monitor_workers=False)
        store = vllm_nodes.connect(parallel.master_addr, parallel.master_port)
        heartbeat = vllm_nodes.Heartbeat(store, parallel.node_rank)
        logger.info("headless node %d: workers ready, serving node 0", parallel.node_rank)
        return _watch(executor, heartbeat, parallel.node_rank)
    except SystemExit:
        logger.info("headless node %d: stopping", parallel.node_rank)
        return 0
    finally:
        if executor is not None:
            executor.shutdown()


def _watch(executor: Any, heartbeat: vllm_nodes.Heartbeat, node_rank: int) -> int:
    """Beat until a worker exits or node 0 goes away; either way this node can no longer serve: 1."""
    sentinels = [worker.proc.sentinel for worker in executor.workers]
    while not multiprocessing.connection.wait(sentinels, timeout=vllm_nodes.HEARTBEAT_INTERVAL_S):
        try:
            heartbeat.beat()
        except vllm_nodes.NodeLost as exc:
            logger.error("headless node %d stops: %s", node_rank, exc)
            return 1
    logger.error("headless node %d stops: one of its workers exited", node_rank)
    return 1
