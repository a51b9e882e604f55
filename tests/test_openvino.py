"""The openvino backend beyond the shared end-to-end suite: its settings as the pipeline reports them, freeing on
cancel, the same chat prompt as vLLM's, and clear refusals where it cannot run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, LiveServer, backend_python, start_server, stop, wait_healthy
from tests.models.make_tiny_model import HEAD_DIM, NUM_KV_HEADS, NUM_LAYERS

GIB = 1 << 30
# The seed's environment variables, one server each: (KV-cache GiB, KV-cache precision).
KV_SETTINGS = {"u8": ("1", "u8"), "f16": ("2", "f16")}
REPORT = re.compile(r"KV cache as the pipeline reports it: size_bytes=(\d+) num_blocks=(\d+) block_bytes=(\d+)")
MESSAGES = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "The capital of France is"},
    {"role": "assistant", "content": "Paris."},
    {"role": "developer", "content": "Ünïcödé → 日本語"},
    {"role": "user", "content": "And of Italy?"},
]


@pytest.fixture(scope="module")
def servers(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LiveServer]]:
    started = {}
    try:
        for name, (space, precision) in KV_SETTINGS.items():
            log = tmp_path_factory.mktemp("openvino") / f"{name}.log"
            env = {"VLLM_OPENVINO_KVCACHE_SPACE": space, "VLLM_OPENVINO_CPU_KV_CACHE_PRECISION": precision}
            args = ["--hw-mode", "openvino", "--model", str(tiny_model), "--max-model-len", "2048"]
            process, url = start_server(args, log, env=env, backend="openvino")
            started[name] = LiveServer(url, process, log, "tiny", backend="openvino")
        for s in started.values():
            wait_healthy(s.process, s.base_url, s.log)
        yield started
    finally:
        for s in started.values():
            stop(s.process)


@pytest.fixture(scope="module")
def gemma_server(gemma_cache: Path) -> Iterator[LiveServer]:
    """The built-in gemma-3-270m on openvino: prepared by the cpu venv (whose transformers 5 converts its GGUF
    tokenizer right, see model_prep/gemma.py), then exported and served by the openvino venv."""
    log = gemma_cache / "server.log"
    args = ["--model", "gemma-3-270m", "--hw-mode", "openvino", "--max-model-len", "2048", "--kv-cache-space", "2"]
    env = {"ENGINE_SERVER_CACHE_DIR": str(gemma_cache)}
    process, url = start_server([*args, "--log-format", "text"], log, env=env, backend="openvino")
    try:
        wait_healthy(process, url, log)
        yield LiveServer(url, process, log, "gemma-3-270m", backend="openvino")
    finally:
        stop(process)


def kv_report(server: LiveServer) -> tuple[int, int, int]:
    match = REPORT.search(server.log.read_text())
    assert match, "the server did not log what the pipeline reports about its KV cache"
    size, blocks, block_bytes = (int(g) for g in match.groups())
    return size, blocks, block_bytes


def test_kv_cache_size_and_precision_reach_the_pipeline(servers: dict[str, LiveServer]) -> None:
    u8_size, u8_blocks, u8_block = kv_report(servers["u8"])
    f16_size, f16_blocks, f16_block = kv_report(servers["f16"])
    # The pipeline allocates whole blocks: the size asked for, less at most one block.
    assert GIB - u8_block < u8_size <= GIB and 2 * GIB - f16_block < f16_size <= 2 * GIB
    assert u8_size == u8_blocks * u8_block and f16_size == f16_blocks * f16_block
    # f16 blocks hold whole tokens of K and V in every layer at 2 bytes an element; u8 blocks take 1 byte an
    # element plus the quantization scales: more than half of f16's, less than all of it.
    f16_token_bytes = 2 * NUM_LAYERS * NUM_KV_HEADS * HEAD_DIM * 2
    assert f16_block % f16_token_bytes == 0
    assert f16_block / 2 < u8_block < f16_block


def test_a_cancelled_stream_frees_its_kv_blocks(servers: dict[str, LiveServer]) -> None:
    server = servers["u8"]
    # The longest the context allows: about 1.5 s of decoding, so the request is still running when checked.
    body = {"messages": "story", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()  # kept: a dropped line iterator would close the connection
        assert next(line for line in lines if line.startswith("data:"))
        assert server.metric("engine_server_requests_running") == 1
        assert server.metric("engine_server_kv_cache_usage_ratio") > 0
    # How soon it is freed is the end-to-end suite's check; this one is that everything it held is given back.
    deadline = time.monotonic() + 5
    while server.metric("engine_server_requests_running") + server.metric("engine_server_requests_waiting") > 0:
        assert time.monotonic() < deadline, "the pipeline still runs the cancelled request"
        time.sleep(0.02)
    assert server.metric("engine_server_kv_cache_usage_ratio") == 0


def test_the_chat_template_gives_the_same_prompt_on_both_backends(tiny_model: Path) -> None:
    """Each backend's own tokenizer (vLLM's from the checkpoint, the OpenVINO export's in its venv) renders the
    messages through backends.chat.render_chat: same text, same token ids."""
    from vllm.tokenizers.registry import get_tokenizer

    from backends.chat import render_chat

    openvino_python = backend_python("openvino")
    prepare = [openvino_python, "-m", "engine_server.cli", "prepare", "--hw-mode", "openvino", "--model"]
    exported = subprocess.run([*prepare, str(tiny_model)], capture_output=True, text=True, cwd=ROOT, check=True)
    script = (
        "import json, sys\n"
        "from backends.chat import render_chat\n"
        "from backends.openvino import load_tokenizer\n"
        "t = load_tokenizer(sys.argv[1])\n"
        "text = render_chat(t, json.loads(sys.argv[2]), None, {})\n"
        "print(json.dumps({'text': text, 'ids': t.encode(text, add_special_tokens=False)}))\n"
    )
    rendered = subprocess.run(
        [openvino_python, "-c", script, exported.stdout.strip().splitlines()[-1], json.dumps(MESSAGES)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    openvino = json.loads(rendered.stdout)
    vllm_tokenizer = get_tokenizer(str(tiny_model))
    text = render_chat(vllm_tokenizer, MESSAGES, None, {})
    assert openvino["text"] == text and "<|assistant|>\n" in text
    assert openvino["ids"] == vllm_tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize(
    "python,args,message",
    [
        (sys.executable, [], "hw_mode openvino needs OpenVINO GenAI"),
        ("openvino", ["--device", "gpu"], "device GPU needs an Intel GPU"),
    ],
)
def test_where_it_cannot_run_it_says_why_and_exits_2(
    tiny_model: Path, python: str, args: list[str], message: str
) -> None:
    cmd = [backend_python(python) if python == "openvino" else python, "-m", "engine_server.cli"]
    if python == "openvino" and Path("/dev/dri").exists():
        pytest.skip("this machine has a GPU render node")
    r = subprocess.run(
        [*cmd, "--hw-mode", "openvino", "--model", str(tiny_model), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize(
    "prompt",
    ["Question: What is the capital of France?\nAnswer:", "The capital of Italy is Rome. The capital of France is"],
)
def test_gemma_knows_paris_on_openvino(gemma_server: LiveServer, prompt: str) -> None:
    assert "exporting" in gemma_server.log.read_text()  # a Hugging Face checkpoint, exported at start
    body = {"prompt": prompt, "max_tokens": 8, "temperature": 0}
    r = httpx.post(f"{gemma_server.base_url}/v1/completions", json=body, timeout=120)
    assert r.status_code == 200 and "Paris" in r.json()["choices"][0]["text"], r.text
