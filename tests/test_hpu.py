"""The Gaudi backend without Gaudi: the exact engine arguments and environment, and the clear failure here."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backends import BackendUnavailableError, hpu, registry, vllm_cpu
from backends.hpu import HpuSettings
from backends.vllm_cpu import CpuSettings
from engine_server.cli import load_config
from engine_server.config import Config, ConfigError

SEVENTY_B = ["--port", "8008", "--model", "meta-llama/Meta-Llama-3-70b", "--hw-mode", "hpu", "--parallel-number", "8"]
HPU_DEFAULT_ARGS = {
    "dtype": "bfloat16",
    "enforce_eager": False,
    "enable_prefix_caching": True,
    "trust_remote_code": False,
    "tensor_parallel_size": 1,
    "pipeline_parallel_size": 1,
    "block_size": 128,
    "max_num_seqs": 256,
}
HPU_ENV = {"HABANA_VISIBLE_DEVICES": "all", "OMPI_MCA_btl_vader_single_copy_mechanism": "none"}


def config_of(argv: list[str], environ: dict[str, str] | None = None) -> Config:
    return load_config(argv, environ or {})[1]


def hpu_settings(config: Config) -> HpuSettings:
    return registry.settings_for("hpu", config)


def cpu_settings(config: Config) -> CpuSettings:
    return registry.settings_for("cpu", config)


# The reference's three launch examples.


def test_one_card_with_the_default_model() -> None:
    # launch_vllm_service.sh ${port} ${model} hpu 1
    config = config_of(["--hw-mode", "hpu", "--parallel-number", "1"])
    assert (config.port, config.model, config.model_name) == (9000, None, "smollm2-135m-instruct")
    assert hpu.engine_args(hpu_settings(config)) == HPU_DEFAULT_ARGS
    assert hpu.engine_env(hpu_settings(config), {}) == HPU_ENV


def test_llama_3_70b_on_8_cards() -> None:
    # launch_vllm_service.sh 8008 meta-llama/Meta-Llama-3-70b hpu 8
    config = config_of(SEVENTY_B)
    assert (config.port, config.model, config.model_name) == (8008, "meta-llama/Meta-Llama-3-70b", config.model)
    assert hpu.engine_args(hpu_settings(config)) == {**HPU_DEFAULT_ARGS, "tensor_parallel_size": 8}
    assert hpu.engine_env(hpu_settings(config), {}) == {**HPU_ENV, "PT_HPU_ENABLE_LAZY_COLLECTIVES": "true"}


def test_the_same_launch_through_the_environment() -> None:
    environ = {
        "ENGINE_SERVER_PORT": "8008",
        "LLM_MODEL_ID": "meta-llama/Meta-Llama-3-70b",
        "HW_MODE": "hpu",
        "PARALLEL_NUMBER": "8",
    }
    assert config_of([], environ) == config_of(SEVENTY_B)


def test_cpu_default() -> None:
    # launch_vllm_service.sh (no arguments)
    config = config_of([])
    assert config.hw_mode == "auto"  # vLLM CPU where neither Gaudi cards nor OpenVINO are present
    assert vllm_cpu.engine_args(cpu_settings(config), native_bf16=False) == {
        "dtype": "float32",
        "enforce_eager": True,
        "enable_prefix_caching": True,
        "trust_remote_code": False,
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
    }
    assert vllm_cpu.engine_env(cpu_settings(config)) == {"VLLM_CPU_KVCACHE_SPACE": "4"}


# The reference's knobs, and scaling past one card and one host.


def test_block_size_and_max_num_seqs_override_the_gaudi_defaults() -> None:
    config = config_of(["--hw-mode", "hpu"], {"BLOCK_SIZE": "256", "MAX_NUM_SEQS": "64", "ENFORCE_EAGER": "true"})
    args = hpu.engine_args(hpu_settings(config))
    assert (args["block_size"], args["max_num_seqs"], args["enforce_eager"]) == (256, 64, True)


def test_optional_settings_pass_through_only_when_set() -> None:
    config = config_of(
        ["--hw-mode", "hpu", "--max-model-len", "4096", "--max-num-batched-tokens", "8192", "--dtype", "float16"]
    )
    assert hpu.engine_args(hpu_settings(config)) == {
        **HPU_DEFAULT_ARGS,
        "dtype": "float16",
        "max_model_len": 4096,
        "max_num_batched_tokens": 8192,
    }


def test_two_hosts_with_ray_and_pipeline_parallel() -> None:
    environ = {"PIPELINE_PARALLEL_SIZE": "2", "DISTRIBUTED_EXECUTOR_BACKEND": "ray"}
    config = config_of(SEVENTY_B, environ)
    assert hpu.engine_args(hpu_settings(config)) == {
        **HPU_DEFAULT_ARGS,
        "tensor_parallel_size": 8,
        "pipeline_parallel_size": 2,
        "distributed_executor_backend": "ray",
    }
    assert hpu.engine_env(hpu_settings(config), {}) == {**HPU_ENV, "PT_HPU_ENABLE_LAZY_COLLECTIVES": "true"}
    # The plugin documents PT_HPUGRAPH_DISABLE_TENSOR_CACHE=0 as needed for pipeline parallelism in lazy mode.
    assert hpu.engine_env(hpu_settings(config), {"PT_HPU_LAZY_MODE": "1"})["PT_HPUGRAPH_DISABLE_TENSOR_CACHE"] == "0"


def test_pipeline_parallel_and_executor_reach_the_cpu_backend() -> None:
    config = config_of(["--pipeline-parallel-size", "2", "--distributed-executor-backend", "mp"])
    args = vllm_cpu.engine_args(cpu_settings(config), native_bf16=False)
    assert (args["pipeline_parallel_size"], args["distributed_executor_backend"]) == (2, "mp")


# One model across hosts with vLLM's mp executor: node 0 serves, node 1 runs headless.
TWO_NODES = ["--pipeline-parallel-size", "2", "--nnodes", "2", "--master-addr", "10.0.0.1", "--master-port", "29600"]
NODE_1_ENV = {"ENGINE_SERVER_NODE_RANK": "1", "ENGINE_SERVER_HEADLESS": "true"}


def test_two_hosts_with_mp_reach_the_cpu_backend() -> None:
    node0 = config_of(["--hw-mode", "cpu", *TWO_NODES])
    node1 = config_of(["--hw-mode", "cpu", *TWO_NODES], NODE_1_ENV)
    assert (node0.node_rank, node0.headless, node1.node_rank, node1.headless) == (0, False, 1, True)
    nodes = {"nnodes": 2, "master_addr": "10.0.0.1", "master_port": 29600, "distributed_executor_backend": "mp"}
    for rank, config in enumerate((node0, node1)):
        assert vllm_cpu.engine_args(cpu_settings(config), native_bf16=False) == {
            "dtype": "float32",
            # Plain eager mode cannot run pipeline stages on vLLM CPU: eager after one Dynamo trace.
            "enforce_eager": False,
            "compilation_config": {"mode": 2, "backend": "eager"},
            "enable_prefix_caching": True,
            "trust_remote_code": False,
            "tensor_parallel_size": 1,
            "pipeline_parallel_size": 2,
            "node_rank": rank,
            **nodes,
        }


def test_pipeline_stages_refuse_plain_eager_mode_on_cpu() -> None:
    with pytest.raises(BackendUnavailableError, match="enforce_eager cannot run pipeline parallelism on vLLM CPU"):
        vllm_cpu.engine_args(cpu_settings(config_of([*TWO_NODES, "--enforce-eager"])), native_bf16=False)
    compiled = vllm_cpu.engine_args(cpu_settings(config_of([*TWO_NODES, "--no-enforce-eager"])), native_bf16=False)
    assert compiled["enforce_eager"] is False and "compilation_config" not in compiled  # vLLM's own compilation


def test_two_gaudi_hosts_with_8_cards_each_and_mp() -> None:
    node1 = config_of([*SEVENTY_B, *TWO_NODES], NODE_1_ENV)
    assert hpu.engine_args(hpu_settings(node1)) == {
        **HPU_DEFAULT_ARGS,
        "tensor_parallel_size": 8,
        "pipeline_parallel_size": 2,
        "nnodes": 2,
        "node_rank": 1,
        "master_addr": "10.0.0.1",
        "master_port": 29600,
        "distributed_executor_backend": "mp",
    }
    assert hpu.engine_env(hpu_settings(node1), {})["PT_HPU_ENABLE_LAZY_COLLECTIVES"] == "true"


def test_one_host_passes_no_node_arguments() -> None:
    args = vllm_cpu.engine_args(
        cpu_settings(config_of(["--master-addr", "10.0.0.1", "--master-port", "29600"])), native_bf16=False
    )
    assert not {"nnodes", "node_rank", "master_addr", "master_port"} & set(args)


def test_values_the_operator_set_win() -> None:
    config = config_of(SEVENTY_B)
    environ = {"HABANA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "PT_HPU_ENABLE_LAZY_COLLECTIVES": "false"}
    env = hpu.engine_env(hpu_settings(config), environ)
    assert env["HABANA_VISIBLE_DEVICES"] == "0,1,2,3,4,5,6,7"
    assert env["PT_HPU_ENABLE_LAZY_COLLECTIVES"] == "false"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--distributed-executor-backend", "slurm"], "distributed_executor_backend must be one of mp, ray"),
        (["--pipeline-parallel-size", "0"], "pipeline_parallel_size must be at least 1"),
        ([*TWO_NODES, "--node-rank", "2"], "node_rank must be 0..nnodes - 1, got 2"),
        (["--headless"], "headless needs nnodes > 1"),
        ([*TWO_NODES, "--node-rank", "1"], "--headless goes with --node-rank > 0 only"),
        ([*TWO_NODES, "--headless"], "--headless goes with --node-rank > 0 only"),
        (["--nnodes", "2"], r"nnodes \(2\) must divide parallel_number x pipeline_parallel_size \(1\)"),
        ([*TWO_NODES, "--hw-mode", "openvino"], "nnodes > 1 runs on vLLM"),
        ([*TWO_NODES, "--distributed-executor-backend", "ray"], "nnodes > 1 is for vLLM's mp executor"),
        (["--master-port", "0"], "master_port must be 1..65535"),
    ],
)
def test_invalid_parallel_settings_are_refused(argv: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_of(argv)


def test_max_seq_len_to_capture_is_accepted_with_a_notice(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hpu, "check_available", lambda settings: None)  # as on a host with cards and the plugin
    config = config_of(["--hw-mode", "hpu"], {"MAX_SEQ_LEN_TO_CAPTURE": "2048"})
    assert hpu.engine_args(hpu_settings(config)) == HPU_DEFAULT_ARGS  # vLLM >= 0.11 has no such argument
    with caplog.at_level(logging.WARNING, logger="engine_server.hpu"):
        engine = hpu.create_engine(hpu_settings(config), lambda fmt: "/models/x")
    assert engine.backend == "hpu"
    (record,) = caplog.records
    assert "max_seq_len_to_capture=2048 has no effect" in record.message
    assert "VLLM_BUCKETING_STRATEGY" in record.message and "--max-model-len" in record.message
    assert hpu.max_seq_len_to_capture_notice(hpu_settings(config_of(["--hw-mode", "hpu"]))) is None


@pytest.mark.parametrize(
    "argv,environ",
    [
        (SEVENTY_B, {"DISTRIBUTED_EXECUTOR_BACKEND": "ray"}),
        (
            [*SEVENTY_B, "--pipeline-parallel-size", "2", "--max-model-len", "8192"],
            {"DISTRIBUTED_EXECUTOR_BACKEND": "ray"},
        ),
        ([*SEVENTY_B, *TWO_NODES], NODE_1_ENV),
    ],
)
def test_vllm_accepts_the_arguments(argv: list[str], environ: dict[str, str]) -> None:
    # The Gaudi image runs another vLLM release than this venv; these are long-standing engine arguments in both
    # (nnodes, node_rank, master_addr and master_port since vLLM 0.11).
    from vllm.engine.arg_utils import AsyncEngineArgs

    args = hpu.engine_args(hpu_settings(config_of(argv, environ)))
    assert set(args) <= {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    built = AsyncEngineArgs(model="meta-llama/Meta-Llama-3-70b", **args)
    assert (built.tensor_parallel_size, built.block_size, built.enforce_eager) == (8, 128, False)


# Availability: every missing piece named at once, before vLLM is touched.


def make_devices(dev: Path, count: int) -> Path:
    (dev / "accel").mkdir(parents=True)
    for i in range(count):
        (dev / "accel" / f"accel{i}").touch()
        (dev / "accel" / f"accel_controlD{i}").touch()  # control nodes are not cards
    return dev


def test_available_with_cards_and_plugin(tmp_path: Path) -> None:
    dev = make_devices(tmp_path, 8)
    assert len(hpu.find_devices(dev)) == 8
    hpu.check_available(hpu_settings(config_of(SEVENTY_B)), dev=dev, has_module=lambda name: True)


def test_missing_cards_and_plugin_are_both_named(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError) as caught:
        hpu.check_available(hpu_settings(config_of(SEVENTY_B)), dev=tmp_path, has_module=lambda name: False)
    message = str(caught.value)
    assert message.startswith("hw_mode 'hpu' cannot run here: no Gaudi card found")
    assert "hl-smi" in message and "HABANA_VISIBLE_DEVICES=all" in message and "vllm_gaudi" in message


def test_too_few_cards_on_this_host(tmp_path: Path) -> None:
    dev = make_devices(tmp_path, 4)
    with pytest.raises(BackendUnavailableError, match="8 cards are needed on this host .* but it has 4"):
        hpu.check_available(hpu_settings(config_of(SEVENTY_B)), dev=dev, has_module=lambda name: True)
    # With --nnodes every host runs its share: 8 x 2 stages over 2 hosts need 8 cards here.
    with pytest.raises(BackendUnavailableError, match="8 cards are needed on this host"):
        hpu.check_available(hpu_settings(config_of([*SEVENTY_B, *TWO_NODES])), dev=dev, has_module=lambda name: True)
    hpu.check_available(
        hpu_settings(config_of([*SEVENTY_B, *TWO_NODES])),
        dev=make_devices(tmp_path / "eight", 8),
        has_module=lambda name: True,
    )
    # With Ray the other cards may be on other hosts.
    ray = config_of(SEVENTY_B, {"DISTRIBUTED_EXECUTOR_BACKEND": "ray"})
    hpu.check_available(hpu_settings(ray), dev=dev, has_module=lambda name: True)


def test_plugin_without_habana_pytorch(tmp_path: Path) -> None:
    dev = make_devices(tmp_path, 1)
    with pytest.raises(BackendUnavailableError, match="habana_frameworks"):
        hpu.check_available(
            hpu_settings(config_of(["--hw-mode", "hpu"])), dev=dev, has_module=lambda name: name == "vllm_gaudi"
        )


gaudi_here = bool(hpu.find_devices()) and importlib.util.find_spec("vllm_gaudi") is not None


@pytest.mark.skipif(gaudi_here, reason="this machine has Gaudi cards and the plugin")
def test_create_engine_refuses_here() -> None:
    with pytest.raises(BackendUnavailableError, match="cannot run here"):
        registry.create_engine(config_of(["--hw-mode", "hpu"]), lambda fmt: "/models/x", "hpu")


@pytest.mark.skipif(gaudi_here, reason="this machine has Gaudi cards and the plugin")
def test_cli_fails_at_once_with_one_clear_line(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "engine-server"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "engine_server.cli"]
    started = time.monotonic()
    r = subprocess.run(
        [*command, "--hw-mode", "hpu", "--model", str(tmp_path / "x")], capture_output=True, text=True, timeout=60
    )
    assert time.monotonic() - started < 20
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith("engine-server: error: hw_mode 'hpu' cannot run here: ")
    assert "vllm_gaudi" in lines[0] or "no Gaudi card found" in lines[0]
