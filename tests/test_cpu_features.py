"""CPU flags, the AMX tile permission and the dtype auto picks from them."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backends import BackendUnavailableError, cpu_features, vllm_cpu
from tests.conftest import ROOT

REFUSED = "the kernel refused AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM: Invalid argument)"


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512_bf16 amx_tile amx_bf16\n\nprocessor\t: 1\n")
    flags = cpu_features.cpu_flags(cpuinfo)
    assert cpu_features.has_native_bf16(flags) and cpu_features.has_amx(flags)
    assert not cpu_features.has_amx(cpu_features.cpu_flags(tmp_path / "missing"))


@pytest.mark.parametrize(
    "dtype,native_bf16,refusal,expected",
    [
        ("auto", True, None, "bfloat16"),
        ("auto", False, None, "float32"),
        ("auto", True, REFUSED, "float32"),
        ("float32", True, REFUSED, "float32"),
        ("bfloat16", False, None, "bfloat16"),
    ],
)
def test_dtype(dtype: str, native_bf16: bool, refusal: str | None, expected: str) -> None:
    assert vllm_cpu.resolve_dtype(dtype, native_bf16, refusal) == expected


def test_auto_says_why_it_falls_back_to_float32(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="engine_server.vllm"):
        vllm_cpu.resolve_dtype("auto", True, REFUSED)
    assert "float32, not bfloat16" in caplog.text and "refused AMX tile state" in caplog.text


def test_explicit_bfloat16_without_amx_permission_fails_at_startup() -> None:
    with pytest.raises(BackendUnavailableError, match="bfloat16 cannot run here.*refused AMX tile state"):
        vllm_cpu.resolve_dtype("bfloat16", True, REFUSED)


def test_the_kernel_answers_for_this_cpu() -> None:
    refusal = cpu_features.request_amx_tiles()
    if cpu_features.has_amx(cpu_features.cpu_flags()):
        assert refusal is None, refusal  # an AMX host whose kernel grants the tiles: bf16 runs there
    else:
        assert refusal is not None and "refused" in refusal  # no tile state to grant on this CPU


def test_a_user_plugin_allow_list_keeps_ours() -> None:
    assert cpu_features.allow_vllm_plugin({"A": "1"}, {}) == {"A": "1"}
    env = cpu_features.allow_vllm_plugin({}, {"VLLM_PLUGINS": "lora_filesystem_resolver"})
    assert env == {"VLLM_PLUGINS": "lora_filesystem_resolver,engine_server_amx"}


@pytest.mark.parametrize("allow_list", [None, "lora_filesystem_resolver"])
def test_vllm_runs_the_plugin_in_each_process_it_starts(allow_list: str | None) -> None:
    # What vLLM's engine core and workers do first: load the general plugins. Run that in a fresh process, with the
    # environment the engine gets.
    env = {k: v for k, v in os.environ.items() if k != "VLLM_PLUGINS"}
    if allow_list is not None:
        env["VLLM_PLUGINS"] = allow_list
    env.update(cpu_features.allow_vllm_plugin({}, env))
    code = (
        "import vllm.plugins, backends.cpu_features as c; vllm.plugins.load_general_plugins(); "
        "print(c.amx_refusal.cache_info().misses)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1", out.stdout  # our plugin asked, once
