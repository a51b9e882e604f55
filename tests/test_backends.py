"""The backend registry: which backend hw_mode auto picks and why, and what every backend declares."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from backends import BackendUnavailableError, registry
from engine_server import engines
from engine_server.config import HW_MODES, Config
from tests.conftest import fake_host

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    "cards,modules,expected",
    [
        (2, {"vllm_gaudi", "openvino_genai", "vllm"}, "hpu"),
        (2, {"openvino_genai", "vllm"}, "openvino"),  # cards without the plugin: not usable, so not picked
        (0, {"vllm_gaudi", "openvino_genai", "vllm"}, "openvino"),
        (0, {"vllm"}, "cpu"),
    ],
)
def test_auto_picks_the_fastest_engine_present(
    cards: int, modules: set[str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_host(monkeypatch, *modules, cards=cards)
    selection = registry.select(Config())
    assert selection.hw_mode == expected
    assert selection.reason.startswith("hw_mode auto: ")
    assert selection.reason.endswith(f"so {expected} ({registry.get(expected).description}) serves it") or (
        expected == "hpu" and selection.reason == "hw_mode auto: hpu (vLLM on Intel Gaudi) serves it"
    )


def test_auto_says_why_each_faster_backend_was_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_host(monkeypatch, "vllm")
    reason = registry.select(Config()).reason
    assert reason == (
        "hw_mode auto: not hpu (no Gaudi card); not openvino (no OpenVINO GenAI in this Python); "
        "so cpu (vLLM CPU) serves it"
    )


def test_auto_with_no_engine_at_all_names_every_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_host(monkeypatch)
    with pytest.raises(BackendUnavailableError, match=r"no Gaudi card.*no OpenVINO GenAI.*has no vLLM"):
        registry.select(Config())


@pytest.mark.parametrize("mode", ["cpu", "hpu", "openvino"])
def test_an_explicit_hw_mode_is_kept(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_host(monkeypatch)
    selection = registry.select(Config(hw_mode=mode))
    assert (selection.hw_mode, selection.reason) == (mode, f"hw_mode {mode} was asked for")


@pytest.mark.parametrize("cards,expected", [(0, "cpu"), (2, "hpu")])
def test_auto_spans_hosts_on_vllm_only(cards: int, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_host(monkeypatch, "vllm_gaudi", "openvino_genai", "vllm", cards=cards)
    selection = registry.select(Config(pipeline_parallel_size=2, nnodes=2))
    assert selection.hw_mode == expected  # OpenVINO does not split a model across hosts
    assert expected == "hpu" or "not openvino (a model across hosts (nnodes > 1) runs on vLLM)" in selection.reason


def test_every_backend_is_an_hw_mode_and_reads_its_settings_from_the_configuration() -> None:
    config_fields = {f.name for f in dataclasses.fields(Config)}
    assert set(registry.names()) == set(HW_MODES) - {"auto"}
    for backend in registry.backends():
        missing = {f.name for f in dataclasses.fields(backend.settings)} - config_fields
        assert not missing, f"{backend.name}'s settings have no configuration field {missing}"
        assert backend.formats, backend.name
        # The configuration's defaults reach every field, whatever the dataclass's own defaults.
        settings = registry.settings_for(backend, Config(max_num_seqs=7, dtype="float32"))
        assert (settings.max_num_seqs, settings.dtype) == (7, "float32")


def test_an_unknown_backend_name_is_refused() -> None:
    with pytest.raises(BackendUnavailableError, match="hw_mode 'tpu' is not available in this build; it has"):
        registry.get("tpu")


def test_only_the_openvino_backend_spans_one_host_only() -> None:
    assert [b.name for b in registry.backends() if b.run_headless is None] == ["openvino"]


def test_an_openvino_export_is_refused_on_vllm_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_host(monkeypatch, "vllm", "openvino_genai")
    (tmp_path / "openvino_model.xml").write_text("<net/>")
    with pytest.raises(BackendUnavailableError, match="hw_mode cpu cannot serve this model: it is an OpenVINO IR"):
        engines.create_engine(Config(hw_mode="cpu", model=str(tmp_path)), "cpu")


def test_backends_never_import_the_server() -> None:
    """Backends take their settings from the registry, never the server's configuration or HTTP layer."""
    imports = re.compile(r"^\s*(from|import)\s+(engine_server|model_prep)\b", re.MULTILINE)
    found = [p.name for p in (ROOT / "backends").glob("*.py") if imports.search(p.read_text())]
    assert found == [], found
