"""The printed comparison: one block per workload, each contender's figures and each figure's ratio to our server."""

from __future__ import annotations

from pathlib import Path

from bench.bandwidth import weights_bytes
from bench.workloads import METRICS, RunResult, Workload

OURS = "engine-server"
OURS_OPENVINO = "engine-server openvino"
OURS_OPENVINO_ALT = "engine-server openvino alt"  # with serve_compare's --openvino-alt-flags
COLUMNS = {
    "output_throughput": "out tok/s",
    "request_throughput": "req/s",
    "mean_ttft_ms": "TTFT ms",
    "p99_ttft_ms": "p99 TTFT",
    "mean_tpot_ms": "TPOT ms",
}
# Issue 7's targets on output tok/s, as (our server on a backend, contender, minimum of ours / contender, on which
# workloads); each backend against its own raw engine.
TARGETS = (
    (OURS, "raw engine", 0.97, "all"),
    (OURS_OPENVINO, "raw pipeline", 0.97, "all"),
    (OURS_OPENVINO_ALT, "raw pipeline", 0.97, "all"),
    (OURS, "vllm serve", 1.2, "tiny"),
    (OURS, "vllm serve", 1.0, "gemma"),
    (OURS, "two-hop", 2.0, "tiny"),
    # llama.cpp's server on the same model's GGUF, against our default CPU engine (hw_mode auto picks openvino).
    *((OURS_OPENVINO, "llama-server", minimum, f"{model} in128/out128 {c}")
      for model in ("smollm2", "gemma") for c, minimum in (("c1", 2.0), ("c8", 3.0))),
    # Copy-heavy edits at one stream (issue 25), each server with its own speculative decoding.
    (OURS_OPENVINO, "llama-server", 2.0, "edit c1"),
    # The 1B-class model: our int8 / int4 export against GGUF Q8_0 / Q4_0.
    *((OURS_OPENVINO, "llama-server", minimum, f"1b-{weights} in128/out128 {c}")
      for weights in ("int8", "int4") for c, minimum in (("c1", 1.5), ("c8", 3.0))),
)  # fmt: skip
# Mean TTFT, ours / contender, must not exceed 1.
TTFT_TARGETS = ((OURS, "vllm serve"), (OURS_OPENVINO, "llama-server"))
# Batch-1 decode time against the memory-bandwidth bound of the weights a step reads: at least this share of it.
BOUND_SHARE = 0.6
# Each backend's time to ready against its raw engine's.
READY = ((OURS, "raw engine"), (OURS_OPENVINO, "raw pipeline"))
RAW = {**dict(READY), OURS_OPENVINO_ALT: "raw pipeline"}


def _num(value: float | None, width: int, digits: int = 1) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def table(results: list[RunResult], workloads: list[Workload]) -> str:
    lines = [
        "Figures from vLLM's benchmark client (raw engine, raw pipeline: same definitions, measured in-process).",
        "'x' columns: contender / engine-server (throughput: >1 means the contender is faster; latency: >1 means "
        "slower). load: 1-min load average before -> after the run (2 cores). With --repeat: medians of the runs.",
    ]
    header = f"{'contender':<23}{'ready s':>8}"
    for metric in METRICS:
        header += f"{COLUMNS[metric]:>11}{'x':>6}"
    header += f"{'load':>13}  out tok/s range (runs)"
    for workload in workloads:
        rows = [r for r in results if r.workload == workload.name]
        if not rows:
            continue
        lines += ["", f"== {workload.name}  ({workload.num_prompts} prompts) ==", header]
        ours = next((r for r in rows if r.contender == OURS), None)
        for r in rows:
            line = f"{r.contender:<23}{_num(r.ready_s, 8)}"
            for metric in METRICS:
                value = r.metrics.get(metric)
                base = ours.metrics.get(metric) if ours else None
                ratio = value / base if value is not None and base else None
                line += f"{_num(value, 11, 2 if metric == 'request_throughput' else 1)}{_num(ratio, 6, 2)}"
            line += f"{r.load[0]:>6.1f} ->{r.load[1]:>5.1f}"
            if "num_runs" in r.metrics:
                low, high = r.metrics["min_output_throughput"], r.metrics["max_output_throughput"]
                line += f"  {low:.0f}-{high:.0f} ({r.metrics['num_runs']:.0f})"
            lines.append(line)
        lines += cpu_table(rows)
    return "\n".join(lines)


def cpu_table(rows: list[RunResult]) -> list[str]:
    """CPU seconds spent during the measured run: less sensitive to other jobs than the wall-clock figures; and how
    busy the whole machine was (near 100%, a contender's CPU use comes out of its engine's share)."""
    lines = [
        f"  CPU s during the run{'':>9}{'front':>8}{'engine':>8}{'client':>8}{'busy %':>8}"
        "   ms/out tok: front      all  (front: HTTP server process(es) incl. AsyncLLM output processing; "
        "raw engine/pipeline: the driver process; all: front + engine + client; "
        "busy: the machine's cores in use by anything)"
    ]
    for r in rows:
        if not r.extra:
            continue
        tokens = r.metrics.get("total_output_tokens") or 0
        cpu = r.extra
        front = 1000 * cpu["front"] / tokens if tokens else None
        total = 1000 * (cpu["front"] + cpu["engine"] + cpu["client"]) / tokens if tokens else None
        lines.append(
            f"  {r.contender:<27}{cpu['front']:>8.1f}{cpu['engine']:>8.1f}{cpu['client']:>8.1f}"
            f"{100 * cpu['busy']:>8.0f}{_num(front, 19, 3)}{_num(total, 9, 3)}"
        )
    return lines


def targets(results: list[RunResult]) -> str:
    """Issue 7's targets, each as ours / contender on output tok/s, with the verdict."""
    lines = ["", "Targets (ours / contender, output tok/s):"]
    by_key = {(r.contender, r.workload): r for r in results}
    for our_name, contender, minimum, scope in TARGETS:
        for (name, workload), r in sorted(by_key.items()):
            if name != contender or (scope != "all" and not workload.startswith(scope)):
                continue
            ours = by_key.get((our_name, workload))
            if ours is None:
                continue
            ratio = ours.metrics["output_throughput"] / r.metrics["output_throughput"]
            verdict = "ok" if ratio >= minimum else "MISSED"
            pair = f"{our_name} vs {contender}"
            line = f"  {workload:<24} {pair:<38} {ratio:6.3f}x (target >= {minimum:.2f}x)  {verdict}"
            lines.append(line + _ceiling(by_key, our_name, r, minimum))
    ttft_lines = _ttft_checks(results)
    ready_lines = _ready_checks(results)
    return "\n".join(lines + ttft_lines + ready_lines)


def _ceiling(by_key: dict[tuple[str, str], RunResult], our_name: str, contender: RunResult, minimum: float) -> str:
    """What the backend's raw engine (no HTTP at all) reaches against the same contender in this run: a target
    above it asks for a server faster than its own engine without a server."""
    raw = by_key.get((RAW[our_name], contender.workload))
    if raw is None or raw is contender:
        return ""
    ceiling = raw.metrics["output_throughput"] / contender.metrics["output_throughput"]
    return f"   [{RAW[our_name]} reaches {ceiling:.3f}x{'; the target is above it' if ceiling < minimum else ''}]"


def _ttft_checks(results: list[RunResult]) -> list[str]:
    lines = []
    for our_name, contender in TTFT_TARGETS:
        for r in results:
            if r.contender != contender:
                continue
            ours = next((o for o in results if o.contender == our_name and o.workload == r.workload), None)
            if ours is None:
                continue
            ratio = ours.metrics["mean_ttft_ms"] / r.metrics["mean_ttft_ms"]
            verdict = "ok" if ratio <= 1.0 else "MISSED"
            pair = f"{our_name} / {contender}"
            lines.append(f"  {r.workload:<24} mean TTFT {pair} {ratio:6.3f}x (target <= 1.00x)  {verdict}")
    return lines


def _ready_checks(results: list[RunResult]) -> list[str]:
    ready: dict[str, dict[str, float]] = {}
    for r in results:
        if r.ready_s is not None:
            ready.setdefault(r.workload.split()[0], {})[r.contender] = r.ready_s
    lines = []
    for model, by_contender in ready.items():
        for our_name, raw_name in READY:
            ours, raw = by_contender.get(our_name), by_contender.get(raw_name)
            if ours is None or raw is None:
                continue
            verdict = "ok" if ours <= raw + 2.0 else "MISSED"
            lines.append(f"  {model:<24} ready: {our_name} {ours:.1f} s vs {raw_name} {raw:.1f} s + 2 s  {verdict}")
    return lines


def backend_ratios(results: list[RunResult]) -> str:
    """The openvino backend against the vLLM CPU backend (both through our server) and against its raw pipeline."""
    lines = ["", "Backends (output tok/s; TTFT and TPOT in ms):"]
    by_key = {(r.contender, r.workload): r for r in results}
    for workload in dict.fromkeys(r.workload for r in results):
        ov = by_key.get((OURS_OPENVINO, workload))
        if ov is None:
            continue
        for other in (OURS, "raw pipeline", "raw engine"):
            r = by_key.get((other, workload))
            if r is None:
                continue
            parts = [
                f"{label} {ov.metrics[m] / r.metrics[m]:.2f}x"
                for m, label in (("output_throughput", "tok/s"), ("mean_ttft_ms", "TTFT"), ("mean_tpot_ms", "TPOT"))
                if r.metrics.get(m)
            ]
            lines.append(f"  {workload:<24} {OURS_OPENVINO} / {other:<14} " + ", ".join(parts))
    return "\n".join(lines) if len(lines) > 2 else ""


def decode_bound(results: list[RunResult], exports: dict[str, Path], bandwidth_gbs: float) -> str:
    """At one stream, each OpenVINO contender's time per output token against the time to read its weights once."""
    lines = [
        "",
        f"Batch-1 decode against the memory-bandwidth bound (read bandwidth {bandwidth_gbs:.1f} GB/s with all cores, "
        f"bench/bandwidth.py; bound = weights / bandwidth; target: TPOT within 1/{BOUND_SHARE:g} of it):",
    ]
    for r in results:
        group = r.workload.split()[0]
        random = "in128/out128" in r.workload  # not edits: they decode several tokens a step (speculation)
        ours = r.contender in (OURS_OPENVINO, "raw pipeline")
        if not ours or not random or not r.workload.endswith(" c1") or group not in exports:
            continue
        size = weights_bytes(exports[group])
        bound_ms = 1000 * size / (bandwidth_gbs * 1e9)
        tpot = r.metrics["mean_tpot_ms"]
        share = bound_ms / tpot
        lines.append(
            f"  {r.workload:<24} {r.contender:<23} TPOT {tpot:5.1f} ms, weights {size / 1e6:5.0f} MB -> bound "
            f"{bound_ms:4.2f} ms: {100 * share:3.0f}% of it (target >= {100 * BOUND_SHARE:.0f}%)  "
            + ("ok" if share >= BOUND_SHARE else "MISSED")
        )
    return "\n".join(lines) if len(lines) > 2 else ""
