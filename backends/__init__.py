"""Inference engines behind one protocol (backends.base.Engine); one module per engine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from backends.base import Engine, ModelResolver

if TYPE_CHECKING:
    from engine_server.config import Config


class BackendUnavailableError(RuntimeError):
    """The backend hw_mode names cannot run on this machine; the message says why and what to do."""


def create_engine(config: Config, resolve_model: ModelResolver) -> Engine:
    """The engine for config.hw_mode. Checks that it can run here before anything heavy is loaded."""
    if config.hw_mode == "cpu":
        from backends import vllm_cpu

        return vllm_cpu.create_engine(config, resolve_model)
    if config.hw_mode == "hpu":
        from backends import hpu

        hpu.check_available(config)
        return hpu.create_engine(config, resolve_model)
    if config.hw_mode == "openvino":
        from backends import openvino, openvino_settings

        openvino_settings.check_available(config)
        return openvino.create_engine(config, resolve_model)
    raise BackendUnavailableError(f"hw_mode {config.hw_mode!r} is not available in this build")
