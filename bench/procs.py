"""Child processes for the benchmark: start one with its output in a log file, wait until it serves, stop it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

READY_TIMEOUT_S = 900.0


class StartupError(RuntimeError):
    """A contender exited or never became ready; the message carries the end of its log."""


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    started: float  # time.monotonic() just before the process was created

    def tail(self, num_chars: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-num_chars:]
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def launch(name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Child:
    started = time.monotonic()
    with log.open("wb") as out:
        # A new session, so that stopping the contender also stops the engine-core child it spawned.
        process = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return Child(name, process, log, started)


def wait_healthy(child: Child, url: str, timeout: float = READY_TIMEOUT_S) -> float:
    """Poll url until it answers 200; returns the seconds since the child was launched."""
    deadline = child.started + timeout
    # One client for all polls: httpx.get() builds a new client, SSL context included, each time, which costs
    # ~10 ms of CPU per poll that the starting contender would be short of.
    with httpx.Client(timeout=2) as client:
        while time.monotonic() < deadline:
            if child.process.poll() is not None:
                raise StartupError(f"{child.name} exited with {child.process.returncode}:\n{child.tail()}")
            try:
                if client.get(url).status_code == 200:
                    return time.monotonic() - child.started
            except httpx.TransportError:
                pass
            # 0.1 s polling keeps the time-to-ready error small.
            time.sleep(0.1)
    stop(child)
    raise StartupError(f"{child.name} was not ready after {timeout:.0f} s:\n{child.tail()}")


def stop(child: Child, timeout: float = 60.0) -> None:
    """SIGTERM the contender for a clean shutdown, then kill whatever is left of its process group."""
    if child.process.poll() is None:
        child.process.send_signal(signal.SIGTERM)
        try:
            child.process.wait(timeout)
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
    # An engine-core child left behind would take a core from the next contender.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(child.process.pid, signal.SIGKILL)
