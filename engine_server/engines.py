"""Which backend serves the configured model, and its engine: the registry's backends (backends.registry) joined to
where the weights come from (model_prep.sources)."""

from __future__ import annotations

from functools import partial

from backends import BackendUnavailableError
from backends.base import Engine
from backends.registry import Selection, get, select, settings_for
from backends.registry import create_engine as _create
from backends.registry import run_headless as _run_headless
from engine_server.config import Config
from model_prep import sources

# What to do when a backend asked for by name cannot read the configured model, by the format it reads.
FIXES = {
    "openvino": "serve it on vLLM CPU (.venv/bin/engine-server --hw-mode cpu --model {model}), or export it to "
    "OpenVINO IR yourself and pass that directory with --model.",
    "hf": "serve it with --hw-mode openvino, or pass the checkpoint it was exported from with --model.",
}


def selection(config: Config) -> Selection:
    """config.hw_mode's backend; under auto, the first in the registry's order that runs here and reads the model."""
    return select(config, partial(sources.refusal, config))


def create_engine(config: Config, hw_mode: str) -> Engine:
    """hw_mode's engine for the configured model, not started; refused before anything heavy is loaded when that
    backend cannot run here or cannot read the model."""
    backend = get(hw_mode)
    fmt = backend.formats[0]
    # Where the backend cannot run here at all, its own check (in create) says so in detail first.
    refusal = None if backend.unavailable(settings_for(backend, config)) else sources.refusal(config, fmt)
    if refusal:
        fix = FIXES.get(fmt, "choose another --hw-mode.").format(model=config.model)
        raise BackendUnavailableError(f"hw_mode {hw_mode} cannot serve this model: {refusal}. Fix: {fix}")
    return _create(config, partial(sources.resolve, config), hw_mode)


def run_headless(config: Config) -> int:
    """This host's share of a model spread over --nnodes hosts, until stopped; returns the exit status."""
    return _run_headless(config, partial(sources.resolve, config), selection(config).hw_mode)
