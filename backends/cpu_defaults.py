"""What `--dtype auto` means on each kind of CPU: one row per instruction set, from measurements on it.

The rows are filled by `bench/cpu_defaults.py` (the openvino settings against each other on the raw pipeline) and
the vLLM dtype races in bench/README.md, each on the ISA it names; a CPU is matched to the best ISA it has. An ISA
not measured yet keeps the choice made before the table (its `measured` says so), and an explicit --dtype,
--kv-cache-precision or --quantized-weights always wins over the table.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CpuDefaults:
    isa: str
    vllm_dtype: str  # vLLM CPU's dtype under auto
    openvino_precision: str | None  # INFERENCE_PRECISION_HINT under auto; None: OpenVINO's own (bf16 where native)
    openvino_kv: str | None  # KV_CACHE_PRECISION; None: OpenVINO's own (u8 on CPU)
    openvino_weights: str | None  # the built-in models' export; None: each model's own (int8 on both built-ins)
    measured: str  # where the row comes from


# Best first: a CPU gets the first row whose ISA it has.
ROWS = (
    CpuDefaults(
        "amx",
        "float32",
        None,
        None,
        None,
        "Intel Xeon with AMX, 2026-12: vLLM bf16 ran 1.4-1.9x float32's tok/s, but its AMX attention kernel gave "
        "the built-in SmolLM2 wrong text (greedy 'What is the capital of France?' answered in looping French, "
        "2026-12-07), so vLLM serves float32 here (--dtype bfloat16 still runs); openvino's own bf16 compute "
        "kept (f32 not compared there); before the fused export fp16 weights ran 1.07-1.18x int8's at 8 streams "
        "and level at 1: int8 kept until bench.cpu_defaults runs there",
    ),
    CpuDefaults(
        "avx512_bf16",
        "bfloat16",
        "f32",
        None,
        None,
        "AMD EPYC with AVX512-BF16/VNNI, 2026-12-02 and 12-07 (bench.cpu_defaults, bench/README.md): int8 weights "
        "with f32 compute; vLLM computes bf16 natively here",
    ),
    CpuDefaults(
        "avx512_vnni",
        "float32",
        "f32",
        None,
        None,
        "Intel Xeon Ice Lake (AVX512-VNNI, no BF16), 2026-12-06: int8 weights with f32 compute (VNNI) served; the "
        "variants not compared yet; bf16 is emulated, so vLLM runs float32",
    ),
    CpuDefaults(
        "avx2",
        "float32",
        "f32",
        None,
        None,
        "AMD EPYC with AVX2 only, 2026-12-06: int8 weights with f32 compute served (0.77x llama-server at 1 stream, "
        "1.21x at 8); the variants not compared yet",
    ),
    CpuDefaults("other", "float32", "f32", None, None, "not measured: the choice made before the table"),
)
ISA_FLAGS = {"amx": "amx_tile", "avx512_bf16": "avx512_bf16", "avx512_vnni": "avx512_vnni", "avx2": "avx2"}


def isa_of(flags: frozenset[str]) -> str:
    """The best ISA of the table that a CPU with these /proc/cpuinfo flags has."""
    return next((row.isa for row in ROWS if ISA_FLAGS.get(row.isa, "") in flags), "other")


def for_isa(isa: str) -> CpuDefaults:
    return next(row for row in ROWS if row.isa == isa)


def for_cpu(flags: frozenset[str] | None = None) -> CpuDefaults:
    """This host's row (flags: /proc/cpuinfo's, read when not given)."""
    from backends.cpu_features import cpu_flags

    return for_isa(isa_of(cpu_flags() if flags is None else flags))
