"""The README's library examples, run as written (model path and port substituted) on the real engine."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port, stop, wait_healthy


def readme_example(name: str) -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", readme, re.S)
    assert match, f"README has no '{name}' example"
    return match.group(1)


@pytest.mark.parametrize(
    "name,port_text,prefix",
    [("serve", "port=9000", ""), ("mount", 'host="127.0.0.1", port=8080', "/llm")],
)
def test_readme_library_example_serves_and_stops_cleanly(
    name: str, port_text: str, prefix: str, tiny_model: Path, tmp_path: Path
) -> None:
    port = free_port()
    code = readme_example(name)
    assert "/path/to/model" in code and port_text in code
    code = code.replace("/path/to/model", str(tiny_model)).replace(port_text, f'host="127.0.0.1", port={port}')
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    log = tmp_path / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, str(script)], stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    base = f"http://127.0.0.1:{port}{prefix}"
    try:
        wait_healthy(process, base, log)
        r = httpx.post(f"{base}/v1/chat/completions", json={"messages": "Hello", "max_tokens": 4}, timeout=60)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    finally:
        code_on_exit = stop(process)
    # serve() exits 0 after a graceful stop; plain uvicorn.run (the mount example) re-raises SIGTERM by design.
    assert code_on_exit == (0 if name == "serve" else -15), log.read_text()[-3000:]
    assert "Application shutdown complete" in log.read_text()
