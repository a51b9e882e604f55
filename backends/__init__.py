"""Inference engines behind one protocol (backends.base.Engine), one module per engine; backends.registry names them
and picks one."""

from __future__ import annotations

import importlib.util


class BackendUnavailableError(RuntimeError):
    """The backend hw_mode names cannot run on this machine; the message says why and what to do."""


def has_module(name: str) -> bool:
    """Whether this Python can import name, without importing it."""
    return importlib.util.find_spec(name) is not None
