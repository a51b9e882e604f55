"""transformers 5's tokenizer files shown to the exporter as transformers 4 reads them, and the converted tokenizer
held to tokenizer.json: real openvino-tokenizers models, converted in the openvino venv."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from model_prep import openvino_export
from model_prep.openvino_export import ExportError
from model_prep.openvino_tokenizer import CONFIG, compatible_config, staged_source
from tests.conftest import backend_python

V5_CONFIG = {
    "backend": "tokenizers",
    "tokenizer_class": "TokenizersBackend",
    "bos_token": "<s>",
    "extra_special_tokens": ["<|foo|>"],
    "is_local": True,
    "model_max_length": 2048,
}
# In the openvino venv: the tokenizer as transformers 4 loads it, converted and saved as optimum would.
CONVERT = """
import sys, openvino, openvino_tokenizers
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
models = openvino_tokenizers.convert_tokenizer(tokenizer, with_detokenizer=True)
for model, name in zip(models, ("openvino_tokenizer.xml", "openvino_detokenizer.xml")):
    openvino.save_model(model, f"{sys.argv[2]}/{name}")
tokenizer.save_pretrained(sys.argv[2])
"""


def test_transformers_5_config_is_read_as_the_fast_tokenizer() -> None:
    fixed = compatible_config(V5_CONFIG)
    assert fixed == {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<s>",
        "additional_special_tokens": ["<|foo|>"],
        "model_max_length": 2048,
    }
    assert compatible_config({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>"}) is None
    assert compatible_config({"tokenizer_class": "GemmaTokenizer", "extra_special_tokens": {"image": "<img>"}}) is None


def test_the_checkpoint_is_never_modified(tmp_path: Path) -> None:
    source = tmp_path / "model"
    source.mkdir()
    (source / CONFIG).write_text(json.dumps(V5_CONFIG))
    (source / "tokenizer.json").write_text("{}")
    staged = staged_source(source, tmp_path / "work")
    assert json.loads((source / CONFIG).read_text()) == V5_CONFIG
    assert (staged / "tokenizer.json").resolve() == (source / "tokenizer.json").resolve()
    assert json.loads((staged / CONFIG).read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"
    (source / CONFIG).write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    assert staged_source(source, tmp_path / "other") == source


@pytest.fixture(scope="module")
def export(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tokenizer-export")
    subprocess.run([backend_python("openvino"), "-c", CONVERT, str(tiny_model), str(out)], check=True)
    return out


@pytest.fixture
def openvino_python(monkeypatch: pytest.MonkeyPatch) -> None:
    # The check runs in a child process of the server's Python: the openvino venv's.
    monkeypatch.setattr(sys, "executable", backend_python("openvino"))


def test_a_faithful_conversion_passes(export: Path, tiny_model: Path, openvino_python: None) -> None:
    lines: list[str] = []
    openvino_export._check_tokenizer(export, tiny_model, lines.append)
    assert lines[-1].startswith("the converted tokenizers give tokenizer.json's ids on 8 mixed texts")


def test_a_tokenizer_whose_converted_ids_differ_is_refused(
    export: Path, tiny_model: Path, tmp_path: Path, openvino_python: None
) -> None:
    # The checkpoint's own tokenizer.json adds no BOS (as some GGUF conversions do); the export was made with one.
    source = tmp_path / "no-bos"
    shutil.copytree(tiny_model, source)
    tokenizer = json.loads((source / "tokenizer.json").read_text())
    tokenizer["post_processor"] = tokenizer["post_processor"]["processors"][0]
    (source / "tokenizer.json").write_text(json.dumps(tokenizer))
    with pytest.raises(ExportError) as refused:
        openvino_export._check_tokenizer(export, source, lambda line: None)
    message = str(refused.value)
    assert message.startswith("OpenVINO's tokenizer (openvino_tokenizer.xml) does not split text as")
    assert "tokenizer.json gives [" in message and "first difference at position 0" in message
    assert ".venv/bin/engine-server --hw-mode cpu" in message
