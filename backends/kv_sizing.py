"""The KV cache's default size: room for SESSIONS sequences at the model's full context, and never under FLOOR_GIB.

Agents resend a long prompt turn after turn; the prefix cache serves it again only while its blocks are still in
the KV cache. So the default holds several sessions at the full context the server admits, counted from the model's
config.json (K and V, every layer, every KV head, at the cache's precision; sliding-window layers counted in full,
so the figure is an upper bound). It is capped at half the host's memory: above that, the floor stays and the log
says what the sessions would have needed.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger("engine_server.kv_cache")

SESSIONS = 4
FLOOR_GIB = 4.0
GIB = 2**30
# Bytes per cached value by precision name (vLLM dtypes and OpenVINO's KV_CACHE_PRECISION values).
VALUE_BYTES = {"float32": 4, "f32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "f16": 2, "u8": 1, "i8": 1, "u4": 0.5}


def bytes_per_token(config: dict[str, Any], value_bytes: float) -> int:
    c = config.get("text_config") or config
    heads = int(c["num_attention_heads"])
    kv_heads = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or int(c["hidden_size"]) // heads)
    return math.ceil(2 * int(c["num_hidden_layers"]) * kv_heads * head_dim * value_bytes)


def default_gib(model_dir: str | Path, max_model_len: int | None, precision: str) -> float:
    """The KV cache's size in GiB for the model in model_dir (its config.json), at max_model_len (None: the model's
    own), with values stored at precision."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text())
        length = max_model_len or int((config.get("text_config") or config)["max_position_embeddings"])
        need = SESSIONS * length * bytes_per_token(config, VALUE_BYTES[precision]) / GIB
    except (OSError, ValueError, KeyError, TypeError):
        return FLOOR_GIB  # not a layout this can count: the floor, as before it was counted
    need = math.ceil(need * 10) / 10
    if need <= FLOOR_GIB:
        return FLOOR_GIB
    if need > host_memory_gib() / 2:
        logger.warning(
            "KV cache: %d sessions at %d tokens need %.1f GiB, over half this host's memory; %.0f GiB it is "
            "(--kv-cache-space sets it)",
            SESSIONS,
            length,
            need,
            FLOOR_GIB,
        )
        return FLOOR_GIB
    logger.info(
        "KV cache: %.1f GiB, room for %d sessions at %d tokens (--kv-cache-space sets it)", need, SESSIONS, length
    )
    return need


def host_memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
