"""The backends this build knows, and how hw_mode picks one.

Each backend module declares itself with a `Backend` named BACKEND: its name (the hw_mode value), its place in auto's
order, the model formats it reads, the settings dataclass it takes, a cheap check that it can run here, and how to
create its engine. A new engine is one module and one line in MODULES. The registry fills each backend's settings
from the server's configuration by field name, so backends never see the configuration itself.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from backends import BackendUnavailableError
from backends.base import Engine, ModelResolver

# Every backend's module, in no particular order: auto's order is each one's auto_order.
MODULES = ("backends.hpu", "backends.openvino_settings", "backends.vllm_cpu")

T = TypeVar("T")


@dataclass(frozen=True)
class Backend:
    name: str  # its hw_mode
    description: str  # a few words for logs: "vLLM CPU"
    # Lower runs first under hw_mode auto, where it can run; None: only when asked for by name.
    auto_order: int | None
    formats: tuple[str, ...]  # the model formats its engine reads (ModelResolver's argument), the one it asks for first
    settings: type  # a dataclass whose fields are named as the configuration's, filled by the registry
    # Why it cannot run here with these settings, in a few words; None: it can. Cheap: nothing heavy is imported.
    unavailable: Callable[[Any], str | None]
    create: Callable[[Any, ModelResolver], Engine]  # checks in detail, then builds the engine (not started)
    # Runs this host's share of a model spread over several hosts until stopped; None: one host only.
    run_headless: Callable[[Any, ModelResolver], int] | None = None


@dataclass(frozen=True)
class Selection:
    hw_mode: str  # the backend that runs
    reason: str  # why, in a sentence for the startup log, /version and /v1/health_check


def backends() -> list[Backend]:
    return [importlib.import_module(module).BACKEND for module in MODULES]


def names() -> tuple[str, ...]:
    return tuple(backend.name for backend in backends())


def get(name: str) -> Backend:
    for backend in backends():
        if backend.name == name:
            return backend
    raise BackendUnavailableError(f"hw_mode {name!r} is not available in this build; it has {', '.join(names())}")


def settings_from(cls: type[T], source: object) -> T:
    """cls (a dataclass) with each field taken from the attribute of source that has its name."""
    return cls(**{f.name: getattr(source, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


def settings_for(backend: Backend | str, config: object) -> Any:
    backend = get(backend) if isinstance(backend, str) else backend
    return settings_from(backend.settings, config)


def select(
    config: Any,
    model_refusal: Callable[[str], str | None] = lambda fmt: None,
) -> Selection:
    """The backend config.hw_mode names; for auto, the first in auto's order that can run here and read the model.
    model_refusal(fmt): why the configured model cannot be had in that format, known before anything is loaded."""
    if config.hw_mode != "auto":
        return Selection(config.hw_mode, f"hw_mode {config.hw_mode} was asked for")
    skipped: list[str] = []
    for backend in ranked(backends()):
        why = backend.unavailable(settings_for(backend, config)) or model_refusal(backend.formats[0])
        if why is None:
            passed = f"{'; '.join(skipped)}; so " if skipped else ""
            return Selection(backend.name, f"hw_mode auto: {passed}{backend.name} ({backend.description}) serves it")
        skipped.append(f"not {backend.name} ({why})")
    raise BackendUnavailableError(f"hw_mode auto: no backend can serve this model here: {'; '.join(skipped)}")


def ranked(candidates: Sequence[Backend]) -> list[Backend]:
    return sorted((b for b in candidates if b.auto_order is not None), key=lambda b: b.auto_order or 0)


def create_engine(config: Any, resolve_model: ModelResolver, hw_mode: str) -> Engine:
    """hw_mode's engine, not started. Checks that it can run here before anything heavy is loaded."""
    backend = get(hw_mode)
    return backend.create(settings_for(backend, config), resolve_model)


def run_headless(config: Any, resolve_model: ModelResolver, hw_mode: str) -> int:
    """This host's workers for the engine on node 0 until stopped; returns the exit status."""
    backend = get(hw_mode)
    if backend.run_headless is None:
        raise BackendUnavailableError(f"hw_mode {hw_mode} runs on one host only: it has no headless mode")
    return backend.run_headless(settings_for(backend, config), resolve_model)
