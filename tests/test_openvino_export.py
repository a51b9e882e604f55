"""The OpenVINO export cache: keyed by source and settings, published whole or not at all.

optimum-cli is replaced by a stand-in here; the real export runs in the openvino end-to-end suite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine_server.config import Config
from model_prep import openvino_export
from model_prep import sources as models
from model_prep.openvino_export import REQUIRED, ExportError, ExportSettings, export, is_exported


@pytest.fixture
def source(tmp_path: Path) -> Path:
    src = tmp_path / "my-model"
    src.mkdir()
    (src / "config.json").write_text('{"model_type": "llama"}')
    (src / "model.safetensors").write_bytes(b"weights")
    return src


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, ExportSettings]]:
    calls: list[tuple[Path, ExportSettings]] = []

    def fake_optimum(src: Path, out: Path, settings: ExportSettings, report: Any) -> None:
        calls.append((src, settings))
        for name in REQUIRED:
            (out / name).write_text(f"{name} {settings.weight_format}")

    monkeypatch.setattr(openvino_export, "_run_optimum", fake_optimum)
    monkeypatch.setattr(openvino_export, "_fuse", lambda build, report: None)  # its own suite: test_openvino_fuse
    monkeypatch.setattr(openvino_export, "_check_tokenizer", lambda build, src, report: None)  # test_openvino_tokenizer
    return calls


def test_exports_once_then_serves_the_cache(source: Path, tmp_path: Path, runs: list[Any]) -> None:
    out = export(source, tmp_path / "cache", ExportSettings("int8"))
    assert is_exported(out) and out.name.startswith("my-model-int8-")
    assert export(source, tmp_path / "cache", ExportSettings("int8")) == out and len(runs) == 1


def test_other_settings_or_changed_source_get_their_own_export(source: Path, tmp_path: Path, runs: list[Any]) -> None:
    first = export(source, tmp_path, ExportSettings("fp16"))
    assert export(source, tmp_path, ExportSettings("int8")) != first
    (source / "model.safetensors").write_bytes(b"new weights")
    assert export(source, tmp_path, ExportSettings("fp16")) != first and len(runs) == 3


def test_an_interrupted_export_leaves_nothing_to_serve(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def dies_halfway(src: Path, out: Path, settings: ExportSettings, report: Any) -> None:
        (out / "openvino_model.xml").write_text("half")
        raise KeyboardInterrupt

    monkeypatch.setattr(openvino_export, "_run_optimum", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        export(source, tmp_path, ExportSettings())
    assert list((tmp_path / "openvino").iterdir()) == [tmp_path / "openvino" / f".{_name(source, tmp_path)}.lock"]


def test_an_export_missing_the_tokenizer_models_is_refused(
    source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_tokenizer(src: Path, out: Path, settings: ExportSettings, report: Any) -> None:
        for name in REQUIRED:
            if "tokenizer" not in name:
                (out / name).write_text(name)

    monkeypatch.setattr(openvino_export, "_run_optimum", no_tokenizer)
    with pytest.raises(ExportError, match="missing openvino_tokenizer.xml, openvino_detokenizer.xml"):
        export(source, tmp_path, ExportSettings())
    assert not (tmp_path / "openvino" / _name(source, tmp_path)).exists()


def test_without_optimum_the_error_names_the_fix(source: Path, tmp_path: Path) -> None:
    # The test venv is vLLM's, without optimum-intel: exactly the situation the message is for.
    with pytest.raises(ExportError, match="needs optimum-intel.*scripts/setup"):
        export(source, tmp_path, ExportSettings())


def test_resolve_serves_an_openvino_ir_directory_as_is(source: Path, tmp_path: Path, runs: list[Any]) -> None:
    (source / "openvino_model.xml").write_text("<net/>")
    assert models.resolve(Config(model=str(source), cache_dir=tmp_path), "openvino") == str(source)
    assert runs == []


def test_resolve_exports_a_checkpoint_with_the_configured_weights(
    source: Path, tmp_path: Path, runs: list[Any]
) -> None:
    config = Config(model=str(source), cache_dir=tmp_path, hw_mode="openvino", quantized_weights=True)
    out = Path(models.resolve(config, "openvino"))
    assert is_exported(out) and runs == [(source, ExportSettings("int8"))]


@pytest.mark.parametrize("quantized,dtype,expected", [(True, "auto", "int8"), (False, "float32", "fp32")])
def test_weight_format(quantized: bool, dtype: str, expected: str) -> None:
    assert openvino_export.weight_format(quantized, dtype) == expected
    assert openvino_export.weight_format(False, "auto") == "fp16"
    # A built-in model's measured format applies under dtype auto only; an explicit choice wins.
    assert openvino_export.weight_format(False, "auto", "int8") == "int8"
    assert openvino_export.weight_format(False, "float16", "int8") == "fp16"


@pytest.mark.parametrize(
    "model,served,expected",
    [(None, None, "int8"), ("smollm2-135m-instruct", "chat", "int8"), ("/models/llama", None, "fp16")],
)
def test_built_in_models_export_in_their_measured_format(model: str | None, served: str | None, expected: str) -> None:
    assert models._preferred_weights(Config(model=model, served_model_name=served)) == expected


def _name(source: Path, cache: Path) -> str:
    return openvino_export.export_dir(source, cache, ExportSettings()).name


def test_gemma_is_never_converted_with_transformers_4(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, runs: list[Any]
) -> None:
    import importlib.metadata

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "4.57.6")
    with pytest.raises(models.ModelUnavailableError, match="converts its tokenizer wrongly.*cpu environment"):
        models.resolve(Config(cache_dir=tmp_path, model="gemma-3-270m"), "openvino")
    assert [p for p in (tmp_path / "models").iterdir() if p.is_dir()] == [] and runs == []
