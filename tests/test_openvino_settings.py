"""What the configuration turns into for the OpenVINO pipeline: CPU properties chosen from measurements."""

from __future__ import annotations

from backends.openvino_settings import auto_precision, pipeline_settings
from backends.registry import settings_for
from engine_server.config import Config

NO_AMX = frozenset({"avx512f", "avx512_bf16", "avx512_vnni"})
AMX = NO_AMX | {"amx_tile", "amx_bf16", "amx_int8"}


def test_auto_computes_in_f32_on_a_cpu_without_amx() -> None:
    assert auto_precision("CPU", NO_AMX) == "f32"
    assert auto_precision("CPU", AMX) is None  # the device's default: not measured against f32 there
    assert auto_precision("GPU", NO_AMX) is None


def test_an_explicit_dtype_wins_over_auto() -> None:
    assert pipeline_settings(settings_for("openvino", Config(dtype="bfloat16"))).inference_precision == "bf16"
    assert pipeline_settings(settings_for("openvino", Config(dtype="float32"))).inference_precision == "f32"


def test_cpu_threads_are_not_pinned() -> None:
    assert pipeline_settings(settings_for("openvino", Config())).enable_cpu_pinning is False
    assert pipeline_settings(settings_for("openvino", Config(device="GPU"))).enable_cpu_pinning is None
