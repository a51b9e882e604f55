"""Whether optimum-intel can export a checkpoint's architecture, known before the server commits to openvino.

The list is optimum-intel's own (its TasksManager, for text-generation-with-past), read in a child process (it imports
torch and transformers: seconds, and memory the server need not keep) once per optimum-intel version and kept in the
cache. Only a local checkpoint directory is judged: a built-in model is a Llama, an OpenVINO IR needs no export, and a
hub id not yet downloaded is left to the export, which still fails at startup.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

from model_prep.atomic import build_once

logger = logging.getLogger("engine_server.openvino_architectures")

# The export's task (openvino_export.py); the env makes transformers import torch, which optimum's registry needs.
LIST = """
import json
from optimum.exporters.tasks import TasksManager
import optimum.exporters.openvino.model_configs  # registers optimum-intel's architectures
print(json.dumps(sorted(TasksManager.get_supported_model_type_for_task("text-generation-with-past", "openvino"))))
"""


def refusal(source: Path, cache_dir: Path) -> str | None:
    """Why the openvino export cannot handle the checkpoint in source, or None when it can (or cannot be told)."""
    try:
        config = json.loads((Path(source) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    model_type = config.get("model_type") if isinstance(config, dict) else None
    if not isinstance(model_type, str) or (Path(source) / "openvino_model.xml").is_file():
        return None
    supported = supported_model_types(cache_dir)
    if supported is None or model_type.replace("-", "_") in {t.replace("-", "_") for t in supported}:
        return None
    version = _version()
    return (
        f"optimum-intel {version} cannot export model_type {model_type!r} ({source}) to OpenVINO: it is not among "
        f"the {len(supported)} architectures it exports for text generation"
    )


def supported_model_types(cache_dir: Path) -> list[str] | None:
    """optimum-intel's architectures, read once per version into the cache; None without optimum-intel."""
    version = _version()
    if version is None:
        return None
    final = Path(cache_dir) / "openvino" / f"architectures-optimum-intel-{version}"
    listed = final / "model_types.json"

    def fill(build: Path) -> None:
        env = {**os.environ, "USE_TORCH": "1"}
        done = subprocess.run([sys.executable, "-c", LIST], capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"cannot list optimum-intel's architectures: {done.stderr.strip()[-2000:]}")
        (build / listed.name).write_text(done.stdout.strip().splitlines()[-1])

    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        build_once(final, listed.is_file, fill, logger.info, "listing optimum-intel's architectures")
        types: list[str] = json.loads(listed.read_text())
    except (RuntimeError, OSError, ValueError) as exc:
        # Not knowing is no reason to refuse: the export itself then says what it cannot do.
        logger.warning("%s; the export will tell whether it can handle this model", exc)
        return None
    return types


def _version() -> str | None:
    try:
        return importlib.metadata.version("optimum-intel")
    except importlib.metadata.PackageNotFoundError:
        return None
