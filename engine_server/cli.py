"""The `engine-server` command: flags and environment variables into one Config, then serve or prepare."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from backends import BackendUnavailableError
from engine_server.config import Config, ConfigError
from engine_server.config_options import default_of, flag_of, option_fields, parse_value, values_from_env
from model_prep.builtin_models import models_table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="engine-server",
        description="OpenAI-compatible LLM server with the inference engine in the same process. "
        "Every option can also be set by the environment variables shown; a flag wins over the environment.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=models_table(),
    )
    parser.add_argument(
        "command",
        nargs="?",
        choices=("serve", "prepare", "models", "healthcheck"),
        default="serve",
        help="serve (default): start the server. prepare: download or convert the model into the cache and exit. "
        "models: list the built-in models. "
        "healthcheck: exit 0 if the server on this host's configured port is ready (for container health checks).",
    )
    for f in option_fields():
        env = f.metadata["env"]
        default = default_of(f)
        shown = "" if default is None else f" Default: {default}."
        help_text = f"{f.metadata['help']}{shown} [env: {', '.join(env)}]" if env else f.metadata["help"]
        kind = str(f.type)
        if "bool" in kind:
            parser.add_argument(
                flag_of(f), dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            parser.add_argument(flag_of(f), dest=f.name, default=None, metavar=f.name.upper(), help=help_text)
    return parser


def options_table() -> str:
    """The README's configuration table, from the same field metadata as the flags."""
    rows = ["| Flag | Environment | Default | Meaning |", "|---|---|---|---|"]
    for f in option_fields():
        default = default_of(f)
        env = ", ".join(f"`{name}`" for name in f.metadata["env"])
        shown = "" if default is None else f"`{default}`"
        rows.append(f"| `{flag_of(f)}` | {env} | {shown} | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> tuple[str, Config]:
    """Parse flags over environment over defaults; returns the command and the validated Config."""
    args = build_parser().parse_args(argv)
    values: dict[str, Any] = values_from_env(os.environ if environ is None else environ)
    for f in option_fields():
        raw = getattr(args, f.name)
        if raw is None:
            continue
        values[f.name] = raw if isinstance(raw, bool) else parse_value(f, raw)
    return args.command, Config(**values)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        command, config = load_config(argv)
        if command == "prepare":
            return _prepare(config)
        if command == "models":
            print(models_table())
            return 0
        if command == "healthcheck":
            return _healthcheck(config)
        from engine_server.server import run_headless, serve

        return run_headless(config) if config.headless else serve(config)
    except ConfigError as exc:
        print(f"engine-server: error: {exc}", file=sys.stderr)
        return 2
    except BackendUnavailableError as exc:
        print(f"engine-server: error: {exc}", file=sys.stderr)
        return 2


def _healthcheck(config: Config) -> int:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{config.port}/health", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError):
        return 1


def _prepare(config: Config) -> int:
    from backends.registry import get
    from engine_server import engines
    from engine_server.server import configure_logging
    from model_prep import sources

    configure_logging(config.log_level, config.log_format)
    fmt = get(engines.selection(config).hw_mode).formats[0]
    try:
        path = sources.resolve(config, fmt)
    except sources.ModelUnavailableError as exc:
        print(f"engine-server: error: {exc}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
