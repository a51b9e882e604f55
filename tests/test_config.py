"""Config: flags over environment over defaults, validation messages, secrets kept out of sight."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from engine_server.cli import build_parser, load_config, options_table
from engine_server.config import Config, ConfigError, Secret
from engine_server.config_options import flag_of, option_fields
from tests.conftest import ROOT


def test_defaults_match_the_reference_service() -> None:
    _, config = load_config([], {})
    assert (config.port, config.hw_mode, config.model, config.model_name) == (
        9000,
        "auto",
        None,
        "smollm2-135m-instruct",
    )


def test_environment_is_read_and_flags_win() -> None:
    env = {
        "LLM_MODEL_ID": "org/model",
        "VLLM_CPU_KVCACHE_SPACE": "3",
        "ENFORCE_EAGER": "false",
        "ENGINE_SERVER_PORT": "8000",
    }
    _, config = load_config([], env)
    assert (config.model, config.kv_cache_space, config.enforce_eager, config.port) == ("org/model", 3.0, False, 8000)
    _, config = load_config(["--port", "8001", "--enforce-eager", "--model", "other/model"], env)
    assert (config.port, config.enforce_eager, config.model) == (8001, True, "other/model")


def test_llm_model_takes_precedence_over_llm_model_id() -> None:
    _, config = load_config([], {"LLM_MODEL": "a/b", "LLM_MODEL_ID": "c/d"})
    assert config.model == "a/b" and config.model_name == "a/b"


def test_local_model_is_named_by_its_directory(tmp_path: Path) -> None:
    model = tmp_path / "my-model"
    model.mkdir()
    assert Config(model=str(model)).model_name == "my-model"
    assert Config(model=str(model), served_model_name="x").model_name == "x"


@pytest.mark.parametrize(
    "argv,env,message",
    [
        (["--port", "0"], {}, "port must be between 1 and 65535"),
        (["--port", "abc"], {}, "--port: cannot read 'abc'"),
        ([], {"ENGINE_SERVER_PORT": "x"}, "--port: cannot read 'x'"),
        (["--hw-mode", "tpu"], {}, "hw_mode must be one of auto, cpu, hpu, openvino"),
        (["--dtype", "int3"], {}, "dtype must be one of"),
        (["--block-size", "0"], {}, "block_size must be a positive integer"),
        ([], {"VLLM_CPU_KVCACHE_SPACE": "-1"}, "kv_cache_space must be a positive number"),
        ([], {"ENFORCE_EAGER": "maybe"}, "--enforce-eager: cannot read 'maybe'"),
        (["--model", ""], {}, "model must not be empty"),
        ([], {"ENGINE_SERVER_MAX_PARALLEL_TOOL_CALLS": "0"}, "max_parallel_tool_calls must be a positive integer"),
        (["--num-speculative-tokens", "0"], {}, "num_speculative_tokens must be 1..32"),
        ([], {"ENGINE_SERVER_PROMPT_LOOKUP_MAX_NGRAM": "0"}, "prompt_lookup_max_ngram must be a positive integer"),
    ],
)
def test_invalid_settings_are_refused_with_a_clear_message(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(argv, env)


def test_config_is_frozen() -> None:
    with pytest.raises(AttributeError):
        Config().port = 1  # type: ignore[misc]


def test_tokens_never_show(capsys: pytest.CaptureFixture[str]) -> None:
    _, config = load_config([], {"HUGGINGFACEHUB_API_TOKEN": "hf_secret_value"})
    assert isinstance(config.hf_token, Secret) and config.hf_token.reveal() == "hf_secret_value"
    for shown in (repr(config), str(config), f"{config.hf_token}", f"{config}"):
        assert "hf_secret_value" not in shown


def test_every_config_field_has_a_flag_and_env_var_in_help() -> None:
    help_text = " ".join(build_parser().format_help().split())
    flags = {a.dest for a in build_parser()._actions}
    for f in option_fields():
        assert f.name in flags, f"{f.name} has no CLI flag"
        assert flag_of(f) in help_text
        assert f.metadata["env"], f"{f.name} has no environment variable"
        for env in f.metadata["env"]:
            assert env in help_text, f"{env} is not documented in --help"


def test_readme_configuration_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- config-table -->\n(.*?)<!-- /config-table -->", readme, re.S)
    assert table, "README lost its configuration table"
    assert table.group(1) == options_table(), (
        "regenerate it: python -c 'from engine_server.cli import options_table as t; print(t())'"
    )
