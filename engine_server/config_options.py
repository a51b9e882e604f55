"""Config's options as the CLI and the environment give them: flag names, values read from strings, defaults."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from engine_server.config import Config, ConfigError, Secret


def option_fields() -> list[Any]:
    return list(fields(Config))


def flag_of(f: Any) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def parse_value(f: Any, raw: str) -> Any:
    """Turn a CLI or environment string into the field's type, with an error that names the setting."""
    kind = str(f.type)
    try:
        if "bool" in kind:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if "int" in kind:
            return int(raw)
        if "float" in kind:
            return float(raw)
        if "Path" in kind:
            return Path(raw).expanduser()
        if "Secret" in kind:
            return Secret(raw)
    except ValueError:
        raise ConfigError(f"{flag_of(f)}: cannot read {raw!r} as {kind.replace(' | None', '')}") from None
    return raw


def values_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for f in option_fields():
        for name in f.metadata["env"]:
            raw = environ.get(name)
            if raw is not None and raw != "":
                values[f.name] = parse_value(f, raw)
                break
    return values


def default_of(f: Any) -> Any:
    return None if f.default is MISSING else f.default
