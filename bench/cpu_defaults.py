"""The openvino backend's CPU settings against each other on this machine's ISA: the measurements behind a row of
backends/cpu_defaults.py (issue 25, item 3).

Each variant is the raw pipeline (bench/raw_pipeline.py: our server's flags, no HTTP) on the default built-in model,
random 128 in / 128 out at 1 and 8 streams; the variants run in turn, and --repeat times over, interleaved, so that
the machine's drift falls on all of them alike. It prints the ISA (cpu_defaults.isa_of), each variant's output tok/s
(median of the repeats) and its ratio to the variant the current default picks, and the fastest variant at each
concurrency among those whose weights pass the accuracy gate (bench/README.md: int8 and fp16 do on SmolLM2).

.venv/bin/python -m bench.cpu_defaults [--repeat 3] [--variants int8-f32-u8,int8-bf16-u8,...] [--quick]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from backends import cpu_defaults
from backends.cpu_features import cpu_flags
from bench.contenders import EngineSettings, run_raw_pipeline
from bench.workloads import model_workloads

MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class Variant:
    weights: str  # the export's weight format
    precision: str  # OpenVINO's INFERENCE_PRECISION_HINT
    kv: str  # KV_CACHE_PRECISION

    @property
    def name(self) -> str:
        return f"{self.weights}-{self.precision}-{self.kv}"

    def settings(self, max_model_len: int) -> EngineSettings:
        """The server flags that give this variant on a built-in model (model_prep.openvino_export.weight_format:
        --dtype float32 exports fp32, bfloat16 fp16, auto the model's int8; --quantized-weights: int8)."""
        dtype = {"f32": "float32", "bf16": "bfloat16"}[self.precision]
        flags = ["--kv-cache-precision", self.kv]
        if self.weights == "int8":
            flags.append("--quantized-weights")
        elif (self.weights, self.precision) not in (("fp32", "f32"), ("fp16", "bf16")):
            raise ValueError(f"no server flags give {self.weights} weights with {self.precision} compute")
        return EngineSettings(dtype, 2.0, max_model_len, openvino_flags=tuple(flags))


VARIANTS = {
    v.name: v
    for v in (
        Variant("int8", "f32", "u8"),
        Variant("int8", "bf16", "u8"),
        Variant("int8", "f32", "f16"),
        Variant("fp16", "bf16", "u8"),
        Variant("fp32", "f32", "u8"),
    )
}
GATED = {"int8", "fp16", "fp32"}  # weight formats that pass the >= 95% next-token agreement gate on SmolLM2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="fewer prompts per run")
    parser.add_argument("--cache-dir", type=Path, default=None, help="engine-server cache (default: the user's)")
    args = parser.parse_args()
    from engine_server.config import Config
    from model_prep import builtin_models
    from model_prep.builtin_models import prepare

    cache = args.cache_dir or Config().cache_dir
    model = str(prepare(cache, MODEL, progress=print))
    flags = cpu_flags()
    isa = cpu_defaults.isa_of(flags)
    chosen = cpu_defaults.for_isa(isa)
    weights = chosen.openvino_weights or builtin_models.MODELS[MODEL].openvino_weights
    default = f"{weights}-{chosen.openvino_precision or 'bf16'}-{chosen.openvino_kv or 'u8'}"
    print(f"ISA: {isa} ({' '.join(sorted(f for f in flags if f.startswith(('avx', 'amx'))))})", flush=True)
    print(f"today's default here: {default} ({chosen.measured})", flush=True)
    workloads = model_workloads("smollm2", model, args.quick)
    variants = [VARIANTS[name] for name in args.variants.split(",")]
    seeds = itertools.count(int(time.time()) % 100_000)
    figures: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="cpu-defaults-") as tmp:
        for round_no in range(args.repeat):
            order = variants if round_no % 2 == 0 else variants[::-1]
            for variant in order:
                runs = [(w, next(seeds)) for w in workloads]
                runner = functools.partial(run_raw_pipeline, served_as=MODEL, cache_dir=cache)
                result = runner(model, runs, variant.settings(2048), Path(tmp) / f"{variant.name}.log")
                for (workload, _), run in zip(runs, result["runs"], strict=True):
                    tok_s = run["metrics"]["output_throughput"]
                    figures.setdefault((variant.name, workload.concurrency), []).append(tok_s)
                    print(
                        f"  round {round_no + 1} {variant.name:14} c{workload.concurrency}: {tok_s:6.1f} tok/s",
                        flush=True,
                    )
    print(f"\n{'variant':16}{'c1 tok/s':>10}{'x':>7}{'c8 tok/s':>10}{'x':>7}", flush=True)
    medians = {key: statistics.median(values) for key, values in figures.items()}
    for variant in variants:
        row = f"{variant.name:16}"
        for c in (1, 8):
            value, base = medians[(variant.name, c)], medians.get((default, c))
            row += f"{value:10.1f}{(value / base if base else float('nan')):7.2f}"
        print(row, flush=True)
    for c in (1, 8):
        best = max((v for v in variants if v.weights in GATED), key=lambda v: medians[(v.name, c)])
        print(f"fastest at {c} stream(s) among gated weight formats: {best.name}", flush=True)


if __name__ == "__main__":
    main()
