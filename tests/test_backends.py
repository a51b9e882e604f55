"""Which backend hw_mode auto picks, and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends import hpu, select_backend
from engine_server.config import Config


@pytest.mark.parametrize(
    "cards,modules,expected",
    [
        (2, {"vllm_gaudi", "openvino_genai"}, "hpu"),
        (2, {"openvino_genai"}, "openvino"),  # cards without the plugin: not usable, so not picked
        (0, {"vllm_gaudi", "openvino_genai"}, "openvino"),
        (0, set(), "cpu"),
    ],
)
def test_auto_picks_the_fastest_engine_present(
    cards: int, modules: set[str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hpu, "find_devices", lambda: [Path(f"/dev/accel/accel{i}") for i in range(cards)])
    selection = select_backend(Config(), has_module=modules.__contains__)
    assert selection.hw_mode == expected
    assert selection.reason.startswith("hw_mode auto: ")


@pytest.mark.parametrize("mode", ["cpu", "hpu", "openvino"])
def test_an_explicit_hw_mode_is_kept(mode: str) -> None:
    selection = select_backend(Config(hw_mode=mode), has_module=lambda name: True)
    assert (selection.hw_mode, selection.reason) == (mode, f"hw_mode {mode} was asked for")


@pytest.mark.parametrize("cards,expected", [(0, "cpu"), (2, "hpu")])
def test_auto_spans_hosts_on_vllm_only(cards: int, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hpu, "find_devices", lambda: [Path(f"/dev/accel/accel{i}") for i in range(cards)])
    config = Config(pipeline_parallel_size=2, nnodes=2)
    selection = select_backend(config, has_module={"vllm_gaudi", "openvino_genai"}.__contains__)
    assert selection.hw_mode == expected  # OpenVINO does not split a model across hosts
