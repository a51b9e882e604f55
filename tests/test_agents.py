"""The real coding agents, unchanged, against the server on both engines: Claude Code over the Anthropic Messages
API and Codex CLI over the Responses API, each with its own full prompt (tools and instructions, 30-60k tokens of
the test tokenizer), answered by a test model that says "hello" and stops (tests/models/make_agent_model.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BACKENDS, ROOT, LiveServer, start_server, stop, wait_healthy
from tests.models.make_agent_model import MAX_POSITIONS
from tests.models.make_agent_model import build as build_agent_model

AGENTS = ROOT / ".agents" / "node_modules" / ".bin"
PROMPT = "Reply with one word: hello"
TIMEOUT_S = 600  # a 55k-token prompt on 2 cores, and the program's own start


@pytest.fixture(scope="module", params=sorted(BACKENDS))
def agent_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("agent-server") / f"{request.param}.log"
    args = [*BACKENDS[request.param], "--model", str(build_agent_model()), "--served-model-name", "agent-test"]
    process, base_url = start_server([*args, "--max-model-len", str(MAX_POSITIONS)], log, backend=request.param)
    try:
        wait_healthy(process, base_url, log)
        yield LiveServer(base_url, process, log, "agent-test", backend=request.param)
    finally:
        stop(process)


def run_agent(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    program = AGENTS / command[0]
    if not program.exists():
        raise RuntimeError(f"{program} is missing: run scripts/setup agents")
    return subprocess.run(
        [str(program), *command[1:]],
        env={**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )


def requests_logged(server: LiveServer, path: str) -> int:
    return sum(f'"POST {path} 200"' in line for line in server.log.read_text().splitlines())


def test_claude_code_answers(agent_server: LiveServer, tmp_path: Path) -> None:
    env = {
        "HOME": str(tmp_path),  # its settings and session files
        "ANTHROPIC_BASE_URL": agent_server.base_url,
        "ANTHROPIC_API_KEY": "unused",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    done = run_agent(["claude", "-p", PROMPT, "--model", agent_server.model], env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "hello"
    assert requests_logged(agent_server, "/v1/messages") >= 1


def test_codex_answers(agent_server: LiveServer, tmp_path: Path) -> None:
    home = tmp_path / "codex-home"
    home.mkdir()
    provider = {
        "model_provider": "local",
        "model_providers.local.name": "local",
        "model_providers.local.base_url": f"{agent_server.base_url}/v1",
        "model_providers.local.wire_api": "responses",
    }
    settings = [arg for key, value in provider.items() for arg in ("-c", f'{key}="{value}"')]
    command = ["codex", "exec", "--skip-git-repo-check", *settings, "-m", agent_server.model, PROMPT]
    done = run_agent(command, {"CODEX_HOME": str(home), "HOME": str(tmp_path)}, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "hello", done.stdout + done.stderr
    assert requests_logged(agent_server, "/v1/responses") >= 1
