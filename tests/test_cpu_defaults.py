"""The per-ISA table behind --dtype auto: each CPU kind gets its own row, and the row is what the backends use."""

from __future__ import annotations

import pytest

from backends import cpu_defaults, cpu_features, vllm_cpu
from backends.openvino_settings import auto_precision, pipeline_settings
from backends.registry import settings_for
from engine_server.config import KV_CACHE_PRECISIONS, Config

# /proc/cpuinfo flags (the ISA-relevant part) of the machines the table was measured on.
XEON_AMX = frozenset(["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"])
EPYC_BF16 = frozenset(["avx2", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"])
ICE_LAKE = frozenset(["avx2", "avx512f", "avx512bw", "avx512_vnni"])
EPYC_AVX2 = frozenset(["avx", "avx2", "fma", "f16c"])


@pytest.mark.parametrize(
    "flags,isa",
    [(XEON_AMX, "amx"), (EPYC_BF16, "avx512_bf16"), (ICE_LAKE, "avx512_vnni"), (EPYC_AVX2, "avx2"),
     (frozenset({"sse4_2"}), "other")],
)  # fmt: skip
def test_each_cpu_kind_gets_its_own_row(flags: frozenset[str], isa: str) -> None:
    assert cpu_defaults.isa_of(flags) == isa
    assert cpu_defaults.for_cpu(flags).isa == isa


def test_every_row_is_consistent_with_what_the_cpu_computes() -> None:
    assert [row.isa for row in cpu_defaults.ROWS].count("other") == 1
    for row in cpu_defaults.ROWS:
        flags = frozenset({cpu_defaults.ISA_FLAGS.get(row.isa, "")}) | (
            {"avx512_bf16"} if row.isa == "amx" else set()
        )  # an AMX CPU also has AVX512-BF16
        # bf16 only where the CPU computes it natively: emulated, it ran about 3x slower than float32.
        assert row.vllm_dtype in ("bfloat16", "float32"), row.isa
        assert row.vllm_dtype == "float32" or cpu_features.has_native_bf16(flags), row.isa
        assert row.openvino_precision in (None, "f32", "bf16", "f16")
        assert row.openvino_kv in (None, *KV_CACHE_PRECISIONS)
        assert row.openvino_weights in (None, "fp16", "int8", "int4")
        assert row.measured.strip(), f"{row.isa}: where the row comes from"


def test_the_backends_take_this_hosts_row(monkeypatch: pytest.MonkeyPatch) -> None:
    for flags in (XEON_AMX, EPYC_BF16, ICE_LAKE, EPYC_AVX2):
        row = cpu_defaults.for_cpu(flags)
        monkeypatch.setattr(cpu_features, "cpu_flags", lambda f=flags: f)
        assert auto_precision("CPU") == row.openvino_precision
        assert vllm_cpu.native_bf16() == (row.vllm_dtype == "bfloat16")
        assert vllm_cpu.resolve_dtype("auto", vllm_cpu.native_bf16()) == row.vllm_dtype
        settings = pipeline_settings(settings_for("openvino", Config()))
        assert settings.kv_cache_precision == row.openvino_kv
        # An explicit setting always wins over the table.
        assert pipeline_settings(settings_for("openvino", Config(kv_cache_precision="f16"))).kv_cache_precision == "f16"
        assert pipeline_settings(settings_for("openvino", Config(dtype="bfloat16"))).inference_precision == "bf16"
