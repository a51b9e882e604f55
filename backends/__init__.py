"""Inference engines behind one protocol (backends.base.Engine); one module per engine."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backends.base import Engine, ModelResolver

if TYPE_CHECKING:
    from engine_server.config import Config


class BackendUnavailableError(RuntimeError):
    """The backend hw_mode names cannot run on this machine; the message says why and what to do."""


@dataclass(frozen=True)
class Selection:
    hw_mode: str  # the backend that runs: cpu, hpu or openvino
    reason: str  # why, in a sentence for the startup log, /version and /v1/health_check


def has_module(name: str) -> bool:
    """Whether this Python can import name, without importing it."""
    return importlib.util.find_spec(name) is not None


def select_backend(config: Config, has_module: Callable[[str], bool] = has_module) -> Selection:
    """The backend config.hw_mode names; for auto, the fastest one this machine and environment can run."""
    if config.hw_mode != "auto":
        return Selection(config.hw_mode, f"hw_mode {config.hw_mode} was asked for")
    from backends import hpu

    cards = hpu.find_devices()
    if cards and has_module("vllm_gaudi"):
        return Selection("hpu", f"hw_mode auto: {len(cards)} Gaudi card(s) and the vLLM Gaudi plugin are present")
    if config.nnodes > 1:
        return Selection("cpu", "hw_mode auto: no Gaudi card, and a model across hosts (nnodes > 1) runs on vLLM CPU")
    if has_module("openvino_genai"):
        refusal = openvino_refusal(config)
        if refusal is None:
            return Selection(
                "openvino",
                "hw_mode auto: no Gaudi card; OpenVINO GenAI is installed, the fastest engine on CPUs here "
                "(cpu, vLLM, is the other)",
            )
        if has_module("vllm"):
            return Selection("cpu", f"hw_mode auto: no Gaudi card; {refusal}, so vLLM CPU serves it")
        raise BackendUnavailableError(
            f"hw_mode auto: {refusal}, and this environment ({sys.executable}) has no vLLM to serve it instead "
            "(the two engines need other transformers versions). Fix: start the server from the vLLM environment: "
            f".venv/bin/engine-server --hw-mode cpu --model {config.model}"
        )
    return Selection("cpu", "hw_mode auto: no Gaudi card and no OpenVINO GenAI in this environment: vLLM CPU")


def openvino_refusal(config: Config) -> str | None:
    """Why the openvino export cannot handle the configured model (engine_server/openvino_architectures.py)."""
    from engine_server import models

    return models.openvino_refusal(config)


def create_engine(config: Config, resolve_model: ModelResolver, hw_mode: str | None = None) -> Engine:
    """The engine for hw_mode (default: select_backend's choice). Checks that it can run here before anything heavy
    is loaded."""
    hw_mode = hw_mode or select_backend(config).hw_mode
    if hw_mode == "cpu":
        from backends import vllm_cpu

        return vllm_cpu.create_engine(config, resolve_model)
    if hw_mode == "hpu":
        from backends import hpu

        hpu.check_available(config)
        return hpu.create_engine(config, resolve_model)
    if hw_mode == "openvino":
        from backends import openvino, openvino_settings

        openvino_settings.check_available(config)
        refusal = openvino_refusal(config)
        if refusal is not None:
            raise BackendUnavailableError(
                f"hw_mode openvino cannot serve this model: {refusal}. Fix: serve it on vLLM CPU "
                f"(.venv/bin/engine-server --hw-mode cpu --model {config.model}), or export it to OpenVINO IR "
                "yourself and pass that directory with --model."
            )
        return openvino.create_engine(config, resolve_model)
    raise BackendUnavailableError(f"hw_mode {hw_mode!r} is not available in this build")


def run_headless(config: Config, resolve_model: ModelResolver) -> int:
    """Run this host's workers for the engine on node 0 (config.headless) until stopped; returns the exit status.
    Only vLLM spans hosts: the configuration refuses openvino with nnodes > 1, and auto picks hpu or cpu there."""
    if select_backend(config).hw_mode == "hpu":
        from backends import hpu

        hpu.check_available(config)
        return hpu.create_engine(config, resolve_model).run_headless()
    from backends import vllm_cpu

    return vllm_cpu.create_engine(config, resolve_model).run_headless()
