"""A Hugging Face checkpoint exported once to OpenVINO IR with optimum-intel, into a cache keyed by source and settings.

optimum-cli runs in a child process: its peak memory (the whole model in fp32 while tracing) must not stay with the
server. Its output is forwarded as progress. The export is written into a temp dir beside the destination, checked,
marked complete last and published by one rename, so an interrupted export is never served.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from model_prep import openvino_tokenizer
from model_prep.atomic import build_once

logger = logging.getLogger("engine_server.openvino_export")

Progress = Callable[[str], None]

# Bump when the export changes what it writes, so caches made by older code are rebuilt, not served.
# 2: projections that read the same input are fused into one matmul (model_prep/openvino_fuse.py).
# 3: int4 exports are fused too.
VERSION = 3
MARKER = "engine-server-export.json"
IR_FILE = "openvino_model.xml"
# ContinuousBatchingPipeline needs the tokenizer as OpenVINO models too: for stop strings and structured output.
REQUIRED = (IR_FILE, "openvino_model.bin", "openvino_tokenizer.xml", "openvino_detokenizer.xml", "config.json")
# int4 is asymmetric (a zero point per group of 128, as GGUF's Q4_1 and Q4_K); int4_sym has no zero points (as Q4_0):
# the same bytes less the zero points, and a few percent less time per decode step on CPU (bench/README.md).
WEIGHT_FORMATS = ("fp32", "fp16", "int8", "int4", "int4_sym")


class ExportError(RuntimeError):
    """The checkpoint cannot be exported here; the message names the cause and the fix."""


@dataclass(frozen=True)
class ExportSettings:
    # fp32, fp16, int8 (the seed's VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS=ON), int4 or int4_sym (a 4-bit GGUF's)
    weight_format: str = "fp16"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if self.weight_format not in WEIGHT_FORMATS:
            raise ValueError(f"weight_format must be one of {', '.join(WEIGHT_FORMATS)}; got {self.weight_format!r}")


def is_openvino_ir(path: Path) -> bool:
    return (Path(path) / IR_FILE).is_file()


def weight_format(quantized_weights: bool, dtype: str, preferred: str = "fp16") -> str:
    """int8 when asked for; fp32 when float32 was asked for; with dtype auto, the model's preferred format (a built-in
    model's measured fastest); else fp16: it halves the file, and the device still computes in its own precision."""
    if quantized_weights:
        return "int8"
    if dtype == "float32":
        return "fp32"
    return preferred if dtype == "auto" else "fp16"


def export_dir(source: Path, cache_dir: Path, settings: ExportSettings) -> Path:
    return Path(cache_dir) / "openvino" / f"{Path(source).name}-{settings.weight_format}-{_key(source, settings)}"


def is_exported(path: Path) -> bool:
    """True only for a complete export: its marker is there and every file it lists has its size."""
    try:
        marker = json.loads((path / MARKER).read_text())
        files = marker["files"]
        if marker["version"] != VERSION or not set(REQUIRED) <= set(files):
            return False
        return all((path / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def export(source: Path, cache_dir: Path, settings: ExportSettings, progress: Progress | None = None) -> Path:
    """The OpenVINO IR directory for the checkpoint in source, exporting it first if the cache does not hold it."""
    source = Path(source).resolve()
    final = export_dir(source, cache_dir, settings)
    report = progress or logger.info

    def fill(build: Path) -> None:
        report(f"exporting {source} to OpenVINO IR ({settings.weight_format} weights) in {final}")
        staged = openvino_tokenizer.staged_source(source, build / ".source")
        if staged != source:
            report(f"{source} has transformers 5's tokenizer files: exporting from a copy that transformers 4 reads")
        _run_optimum(staged, build, settings, report)
        shutil.rmtree(build / ".source", ignore_errors=True)
        _check(build)
        _check_tokenizer(build, source, report)
        _fuse(build, report)
        _write_marker(build, source, settings)

    took = build_once(final, lambda: is_exported(final), fill, report, "exporting this model")
    if took is not None:
        report(f"OpenVINO export ready in {took:.1f} s: {final}")
    return final


def _key(source: Path, settings: ExportSettings) -> str:
    """Changes when the source's files, the settings or the exporting software change."""
    source = Path(source).resolve()
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in source.iterdir() if p.is_file())
    identity = {
        "source": str(source),
        "files": files,
        "settings": asdict(settings),
        "software": {name: _version(name) for name in ("optimum-intel", "openvino", "openvino-tokenizers")},
        "version": VERSION,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def _run_optimum(source: Path, out: Path, settings: ExportSettings, report: Progress) -> None:
    if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.intel") is None:
        raise ExportError(
            f"{source} is a Hugging Face checkpoint and exporting it to OpenVINO needs optimum-intel, which this "
            f"Python ({sys.executable}) does not have. Fix: run scripts/setup and start the server from "
            ".venv-openvino, or pass --model with a directory already exported to OpenVINO IR."
        )
    cmd = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "openvino", "--model", str(source)]
    fmt, _, symmetric = settings.weight_format.partition("_")
    cmd += ["--task", "text-generation-with-past", "--weight-format", fmt]
    if fmt == "int4":
        # Groups of 128 by default; a dimension they do not divide (SmolLM2's 576) takes the largest that does.
        cmd += ["--group-size-fallback", "adjust", *(["--sym"] if symmetric else [])]
    if settings.trust_remote_code:
        cmd.append("--trust-remote-code")
    cmd.append(str(out))
    tail: deque[str] = deque(maxlen=30)
    # The source is a local directory: nothing to download. The export runs on torch, which a serving process may
    # have switched off for itself (backends/openvino.py: load_tokenizer).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "USE_TORCH": "1"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as process:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            tail.append(line)
            # Tracer warnings (and the source lines they quote) are noise to someone waiting for a server.
            if line and not line[0].isspace() and "Warning" not in line:
                report(f"optimum-cli: {line}")
    if process.returncode != 0:
        details = "\n".join(tail)
        raise ExportError(
            f"optimum-cli could not export {source} to OpenVINO (exit {process.returncode}); its last lines:\n"
            f"{details}\nFix: check that optimum-intel supports this architecture, or export the model yourself "
            "and pass the exported directory with --model."
        )


def _fuse(build: Path, report: Progress) -> None:
    """Fuse the exported model's shared-input matmuls, in a child process (it holds the weights twice meanwhile)."""
    report("fusing the matmuls that read the same input (q/k/v, gate/up)")
    cmd = [sys.executable, "-m", "model_prep.openvino_fuse", str(build)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0:
        details = "\n".join(lines[-30:])
        raise ExportError(f"fusing the exported model's matmuls failed (exit {done.returncode}):\n{details}")
    report(lines[-1] if lines else "fused")


def _check_tokenizer(build: Path, source: Path, report: Progress) -> None:
    """The converted tokenizer must give the checkpoint's ids (model_prep/openvino_tokenizer.py), checked in a
    child process: it loads transformers and the tokenizer models, which the server need not keep."""
    report("checking the converted tokenizer's ids against tokenizer.json on mixed text")
    cmd = [sys.executable, "-m", "model_prep.openvino_tokenizer", str(build), str(source)]
    env = {**os.environ, "USE_TORCH": "0", "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    if done.returncode == 3 and lines:  # the check's own refusal: one line that names the text and the ids
        raise ExportError(lines[-1])
    if done.returncode != 0:
        details = "\n".join(lines[-30:])
        raise ExportError(f"checking the converted tokenizer failed (exit {done.returncode}):\n{details}")
    report(lines[-1] if lines else "tokenizer checked")


def _check(build: Path) -> None:
    missing = [name for name in REQUIRED if not (build / name).is_file()]
    if missing:
        raise ExportError(
            f"the OpenVINO export is missing {', '.join(missing)}. The tokenizer files come from openvino-tokenizers; "
            "a tokenizer it cannot convert cannot be served by the openvino backend."
        )


def _write_marker(build: Path, source: Path, settings: ExportSettings) -> None:
    files = {}
    for path in sorted(p for p in build.rglob("*") if p.is_file()):
        with path.open("rb") as f:
            os.fsync(f.fileno())  # the data must be on disk before the marker claims it is complete
        path.chmod(0o644)
        files[str(path.relative_to(build))] = path.stat().st_size
    marker = {"source": str(source), "settings": asdict(settings), "version": VERSION, "files": files}
    with (build / MARKER).open("w") as f:
        json.dump(marker, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
