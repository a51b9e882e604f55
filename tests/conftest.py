"""Shared fixtures: the tiny test model, and one real server per backend for the whole session."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.models.make_tiny_model import build as build_tiny_model

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT_S = 600


@dataclass
class LiveServer:
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path
    model: str
    first_health_status: int | None = None  # what /health answered first, while the engine was starting
    backend: str = "cpu"

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.base_url}/metrics").text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)


def fake_host(monkeypatch: pytest.MonkeyPatch, *modules: str, cards: int = 0) -> None:
    """What hw_mode auto sees, as if this Python could import only `modules` and the host had `cards` Gaudi cards."""
    import backends
    from backends import hpu

    monkeypatch.setattr(backends, "has_module", lambda name: name in modules)
    monkeypatch.setattr(hpu, "find_devices", lambda dev=hpu.DEV: [dev / f"accel/accel{i}" for i in range(cards)])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# OpenVINO's exporter needs another transformers than vLLM: its server runs in its own venv (scripts/setup).
BACKEND_PYTHON = {"openvino": ROOT / ".venv-openvino" / "bin" / "python"}


def backend_python(backend: str = "cpu") -> str:
    python = BACKEND_PYTHON.get(backend)
    if python is None:
        return sys.executable
    if not python.exists():
        raise RuntimeError(f"{python} is missing: run scripts/setup to make the {backend} backend's venv")
    return str(python)


def engine_server_command(backend: str = "cpu") -> list[str]:
    return [backend_python(backend), "-m", "engine_server.cli"]


def start_server(
    args: list[str], log: Path, env: dict[str, str] | None = None, backend: str = "cpu"
) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [*engine_server_command(backend), "--host", "127.0.0.1", "--port", str(port), *args]
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    return process, f"http://127.0.0.1:{port}"


def wait_healthy(
    process: subprocess.Popen[bytes], base_url: str, log: Path, timeout: float = STARTUP_TIMEOUT_S
) -> int | None:
    """Wait for /health to answer 200; returns the first status it answered."""
    deadline = time.monotonic() + timeout
    first: int | None = None
    # One client for all polls: a new one per call costs ~25 ms of CPU, taken from the server that is starting.
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-4000:]}")
            try:
                status = client.get(f"{base_url}/health").status_code
                first = status if first is None else first
                if status == 200:
                    return first
            except httpx.TransportError:
                pass
            time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"the server was not healthy after {timeout} s:\n{log.read_text()[-4000:]}")


def stop(process: subprocess.Popen[bytes], timeout: float = 60) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    return build_tiny_model()


@pytest.fixture(scope="session")
def gemma_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache holding gemma-3-270m prepared by this venv (its GGUF conversion needs transformers 5; about a minute)."""
    from model_prep import builtin_models

    cache = tmp_path_factory.mktemp("gemma-cache")
    builtin_models.prepare(cache, "gemma-3-270m")
    return cache


# Backends the end-to-end suite runs against, with the flags each needs for the tiny model. The dtype is what users
# get (auto: bfloat16 where the CPU computes it natively, as on AVX512-BF16 and AMX hosts).
BACKENDS = {
    "cpu": ["--hw-mode", "cpu", "--kv-cache-space", "1"],
    "openvino": ["--hw-mode", "openvino", "--kv-cache-space", "1", "--kv-cache-precision", "u8"],
}


@pytest.fixture(scope="session", params=sorted(BACKENDS))
def server(
    request: pytest.FixtureRequest, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("server") / f"{request.param}.log"
    args = [
        *BACKENDS[request.param],
        "--model",
        str(tiny_model),
        "--max-model-len",
        "2048",
        "--served-model-name",
        "tiny",
    ]
    process, base_url = start_server(args, log, backend=request.param)
    try:
        first_status = wait_healthy(process, base_url, log)
        yield LiveServer(base_url, process, log, "tiny", first_status, request.param)
    finally:
        stop(process)
