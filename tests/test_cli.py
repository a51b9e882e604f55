"""The real `engine-server` command: help, clear failures, and prepare."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, LiveServer, free_port

CLI = [sys.executable, "-m", "engine_server.cli"]


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_help_documents_options_and_environment() -> None:
    r = run("--help")
    assert r.returncode == 0
    for text in ("--model", "LLM_MODEL_ID", "VLLM_CPU_KVCACHE_SPACE", "--hw-mode", "--block-size", "HF_TOKEN"):
        assert text in r.stdout


def test_bad_setting_exits_2_with_one_clear_line() -> None:
    r = run("--port", "70000")
    assert r.returncode == 2
    assert r.stderr.strip() == "engine-server: error: port must be between 1 and 65535, got 70000"


def test_missing_local_model_fails_fast_with_the_fix(tmp_path: Path) -> None:
    r = run("prepare", "--model", str(tmp_path / "nope"))
    assert r.returncode == 1
    assert "neither an existing local directory nor a hub id" in r.stderr and "Traceback" not in r.stderr


def test_hub_id_without_network_fails_fast_with_cause_and_fix(tmp_path: Path) -> None:
    env_cache = {"HF_HOME": str(tmp_path / "hf")}
    r = subprocess.run(
        [*CLI, "prepare", "--model", "meta-llama/Meta-Llama-3-8B-Instruct", "--hf-token", "hf_do_not_print"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **env_cache},
    )
    assert r.returncode == 1, r.stderr
    assert "Cannot reach the Hugging Face hub" in r.stderr and "Fix:" in r.stderr
    assert "hf_do_not_print" not in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_prepare_prints_a_local_model_dir(tiny_model: Path) -> None:
    r = run("prepare", "--model", str(tiny_model))
    assert r.returncode == 0 and r.stdout.strip() == str(tiny_model)


def test_healthcheck_reports_readiness_of_the_configured_port(server: LiveServer) -> None:
    port = server.base_url.rsplit(":", 1)[1]
    assert run("healthcheck", "--port", port).returncode == 0
    assert run("healthcheck", "--port", str(free_port())).returncode == 1


def test_models_lists_the_built_in_models_with_size_license_and_use() -> None:
    r = run("models")
    assert r.returncode == 0, r.stderr
    assert "smollm2-135m-instruct (default): 135M parameters, 93 MB download, Apache-2.0" in r.stdout
    assert "gemma-3-270m: 270M parameters" in r.stdout and "Gemma Terms of Use" in r.stdout
    for line in r.stdout.splitlines():
        if "license text: " in line:
            assert (ROOT / line.split("license text: ")[1]).is_file(), line  # the licenses are in the repo
    assert "smollm2-135m-instruct (default)" in run("--help").stdout
