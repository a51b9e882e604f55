"""How each contender is started with the same model and engine settings, and how long it takes to be ready.

Every contender runs in its own process group and is stopped before the next one starts: on a 2-core machine two
engines at once would measure each other, not the servers.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procs import Child, StartupError, free_port, launch, stop, wait_healthy
from bench.workloads import Workload


@dataclass(frozen=True)
class EngineSettings:
    """What every contender's engine gets; the rest is left to vLLM's defaults, which all of them share."""

    dtype: str = "float32"
    kv_cache_space_gib: float = 2.0
    max_model_len: int = 2048
    # Each server's own best settings for a workload beyond the shared ones (edit: speculative decoding).
    openvino_flags: tuple[str, ...] = ()
    llama_flags: tuple[str, ...] = ()

    def env(self) -> dict[str, str]:
        # vllm serve and the raw engine read the KV-cache size only from the environment; our server takes the flag.
        return {"VLLM_CPU_KVCACHE_SPACE": f"{self.kv_cache_space_gib:g}"}


@dataclass(frozen=True)
class Running:
    base_url: str
    ready_s: float
    # Process groups whose CPU time is the contender's; each leader is an HTTP front end, the rest engine processes.
    pgids: tuple[int, ...]
    export: Path | None = None  # the OpenVINO IR the server runs (openvino backend)


ROOT = Path(__file__).resolve().parent.parent
# The openvino backend runs from its own venv (its exporter needs another transformers than vLLM).
OPENVINO_PYTHON = ROOT / ".venv-openvino" / "bin" / "python"


def _served_flags(model: str, port: int, served_name: str) -> list[str]:
    """The flags both servers spell the same way: what to serve, under which name, where."""
    return ["--model", model, "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port)]


def our_server_cmd(
    model: str, port: int, served_name: str, settings: EngineSettings, hw_mode: str = "cpu"
) -> list[str]:
    python = str(OPENVINO_PYTHON) if hw_mode == "openvino" else sys.executable
    eager = ["--enforce-eager"] if hw_mode == "cpu" else []
    return [
        python,
        "-m",
        "engine_server.cli",
        *_served_flags(model, port, served_name),
        "--hw-mode",
        hw_mode,
        "--dtype",
        settings.dtype,
        "--kv-cache-space",
        f"{settings.kv_cache_space_gib:g}",
        "--max-model-len",
        str(settings.max_model_len),
        *eager,
        "--enable-prefix-caching",
        *(settings.openvino_flags if hw_mode == "openvino" else ()),
    ]


def vllm_serve_cmd(model: str, port: int, served_name: str, settings: EngineSettings) -> list[str]:
    # `vllm serve` itself: the `vllm` console script fails with the vllm-cpu distribution name.
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        *_served_flags(model, port, served_name),
        "--dtype",
        settings.dtype,
        "--max-model-len",
        str(settings.max_model_len),
        "--enforce-eager",
        "--enable-prefix-caching",
        # Logging stays at each server's default: both write one access-log line per request.
    ]


def warm_caches(model: str, openvino: bool) -> None:
    """Read the model's files, and import the engines once in throwaway processes, before any contender is timed:
    the first contender to start would otherwise also pay for reading them from disk, and its time to ready would
    measure the page cache rather than the server."""
    for path in sorted(Path(model).rglob("*")):
        if path.is_file():
            with path.open("rb") as f:
                while f.read(1 << 24):
                    pass
    imports = [[sys.executable, "-c", "import vllm.v1.engine.async_llm, vllm.entrypoints.openai.api_server"]]
    if openvino and OPENVINO_PYTHON.exists():
        imports.append([str(OPENVINO_PYTHON), "-c", "import openvino_genai, transformers"])
    for cmd in imports:
        subprocess.run(cmd, capture_output=True, check=False)


@contextlib.contextmanager
def started(name: str, cmd: list[str], log: Path, env: dict[str, str]) -> Iterator[tuple[Child, str, float]]:
    port = int(cmd[cmd.index("--port") + 1])
    base_url = f"http://127.0.0.1:{port}"
    child = launch(name, cmd, log, env)
    try:
        ready_s = wait_healthy(child, f"{base_url}/health")
        yield child, base_url, ready_s
    finally:
        stop(child)


@contextlib.contextmanager
def our_server(
    model: str,
    served_name: str,
    settings: EngineSettings,
    log: Path,
    hw_mode: str = "cpu",
    cache_dir: Path | None = None,
) -> Iterator[Running]:
    """cache_dir: the engine-server cache that holds model, when model is a built-in model's name."""
    cmd = our_server_cmd(model, free_port(), served_name, settings, hw_mode)
    env = {**settings.env(), **({"ENGINE_SERVER_CACHE_DIR": str(cache_dir)} if cache_dir else {})}
    export = prepare_openvino(cmd, log.with_suffix(".prepare.log"), env) if hw_mode == "openvino" else None
    with started(f"engine-server ({hw_mode})", cmd, log, env) as (child, url, ready_s):
        yield Running(url, ready_s, (child.process.pid,), export)


def prepare_openvino(server_cmd: list[str], log: Path, env: dict[str, str]) -> Path:
    """Export the checkpoint to OpenVINO IR into the cache (`engine-server prepare`, once per model and dtype), so
    that time to ready measures a start, not a first-time export. Returns the export (prepare prints it last)."""
    cmd = [*server_cmd[:3], "prepare", *server_cmd[3:]]
    with log.open("wb") as err:
        done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=err, env={**os.environ, **env}, check=False)
    if done.returncode != 0:
        raise StartupError(f"engine-server prepare failed ({done.returncode}), see {log}")
    return Path(done.stdout.decode().strip().splitlines()[-1])


@contextlib.contextmanager
def vllm_serve(model: str, served_name: str, settings: EngineSettings, log: Path) -> Iterator[Running]:
    cmd = vllm_serve_cmd(model, free_port(), served_name, settings)
    with started("vllm serve", cmd, log, settings.env()) as (child, url, ready_s):
        yield Running(url, ready_s, (child.process.pid,))


def llama_server_cmd(binary: str, gguf: str, port: int, settings: EngineSettings) -> list[str]:
    # As llama.cpp's users run it on a small CPU: 8 slots sharing the context (each gets max_model_len), 2 threads,
    # the GGUF's own chat template (--jinja).
    flags = {"-m": gguf, "--host": "127.0.0.1", "--port": str(port), "-c": str(8 * settings.max_model_len)}
    cmd = [binary, *(x for pair in flags.items() for x in pair), "-np", "8", "-t", "2", "--jinja"]
    return cmd + list(settings.llama_flags)


@contextlib.contextmanager
def llama_server(binary: str, gguf: str, settings: EngineSettings, log: Path) -> Iterator[Running]:
    """llama.cpp's llama-server (bench only): build it as bench/README.md says, pass it with --llama-server."""
    cmd = llama_server_cmd(binary, gguf, free_port(), settings)
    with started("llama-server", cmd, log, {}) as (child, url, ready_s):
        yield Running(url, ready_s, (child.process.pid,))


@contextlib.contextmanager
def proxy(upstream: str, log: Path) -> Iterator[Running]:
    """The pass-through proxy in front of an already running upstream; ready_s is the proxy's own start."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.proxy", "--upstream", upstream, "--port", str(port)]
    with started("proxy", cmd, log, {}) as (child, url, ready_s):
        yield Running(url, ready_s, (child.process.pid,))


def run_raw_engine(
    model: str, runs: list[tuple[Workload, int]], settings: EngineSettings, log: Path, timeout: float = 7200
) -> dict[str, Any]:
    """Run the raw-engine driver on each (workload, seed); returns its {"ready_s", "runs": [...]} result."""
    spec = [{"workload": asdict(w), "seed": seed} for w, seed in runs]
    cmd = [sys.executable, "-m", "bench.raw_engine", "--model", model, "--dtype", settings.dtype]
    cmd += ["--max-model-len", str(settings.max_model_len), "--runs", json.dumps(spec)]
    return _run_driver("raw engine", cmd, log, settings.env(), timeout)


def run_raw_pipeline(
    model: str,
    runs: list[tuple[Workload, int]],
    settings: EngineSettings,
    log: Path,
    timeout: float = 7200,
    served_as: str | None = None,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    """The raw OpenVINO pipeline on each (workload, seed), with our openvino server's flags; same result shape.
    served_as, cache_dir: the built-in model's name and cache when our server was started by that name, so that
    the pipeline runs the same export (a built-in model's defaults, such as int8 weights, apply by name).

    The prompts are sampled here, where vLLM's sampler is (the openvino venv has no vLLM), from the same tokenizer
    the export carries."""
    from transformers import AutoTokenizer

    from bench.raw_engine import sample_prompts

    tokenizer = AutoTokenizer.from_pretrained(model)
    spec = [{"workload": asdict(w), "seed": seed, "prompts": sample_prompts(w, seed, tokenizer)} for w, seed in runs]
    prompts = log.with_suffix(".prompts.json")
    prompts.write_text(json.dumps(spec))
    flags = our_server_cmd(served_as or model, 9000, "raw", settings, "openvino")[3:]  # no port is opened
    flags += ["--cache-dir", str(cache_dir)] if cache_dir else []
    cmd = [str(OPENVINO_PYTHON), "-m", "bench.raw_pipeline", "--server-args", json.dumps(flags)]
    cmd += ["--runs", str(prompts)]
    return _run_driver("raw pipeline", cmd, log, {}, timeout)


def _run_driver(name: str, cmd: list[str], log: Path, env: dict[str, str], timeout: float) -> dict[str, Any]:
    """Start a no-HTTP driver, wait for it, and read its JSON result; ready_s counts from this launch."""
    out = log.with_suffix(".json")
    child = launch(name, [*cmd, "--out", str(out), "--t0", str(time.time())], log, env)
    try:
        returncode = child.process.wait(timeout)
    finally:
        stop(child)
    if returncode != 0 or not out.exists():
        raise StartupError(f"the {name} run failed ({returncode}):\n{child.tail()}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result
