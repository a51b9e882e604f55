"""Our server against `vllm serve`, the raw engine and a two-hop proxy setup, in one run, one contender at a time.

python -m bench.serve_compare --quick              # tiny model only, fewer prompts: a few minutes on 2 cores
python -m bench.serve_compare                      # tiny, then gemma-3-270m at concurrency 1 and 8
python -m bench.serve_compare --contenders engine-server,vllm-serve --workloads tiny   # issue 2's comparison
python -m bench.serve_compare --workloads edit --contenders engine-server-openvino,llama-server --dtype auto \
    --llama-server PATH          # copy-heavy edits, each server with its speculative decoding (EDIT_*_FLAGS)
python -m bench.serve_compare --workloads 1b --contenders engine-server-openvino,raw-pipeline,llama-server \
    --dtype auto --llama-server PATH   # a 1B-class model: our int8 / int4 exports against GGUF Q8_0 / Q4_0
python -m bench.serve_compare --workloads all --contenders engine-server-openvino,raw-pipeline,llama-server \
    --dtype auto --llama-server PATH   # every workload, agent sessions (bench.agent_sessions) last
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from bench.bandwidth import read_bandwidth_gbs
from bench.client import run_client
from bench.contenders import (
    EngineSettings,
    Running,
    llama_server,
    our_server,
    proxy,
    run_raw_engine,
    run_raw_pipeline,
    vllm_serve,
    warm_caches,
)
from bench.report import OURS, OURS_OPENVINO, OURS_OPENVINO_ALT, backend_ratios, decode_bound, table, targets
from bench.workloads import (
    RunResult,
    Workload,
    combine,
    edit_dataset,
    edit_workloads,
    load_average,
    model_workloads,
    tiny_workload,
)

CONTENDERS = (
    "engine-server",
    "vllm-serve",
    "two-hop",
    "raw-engine",
    "engine-server-openvino",
    "engine-server-openvino-alt",
    "raw-pipeline",
    "llama-server",
)
# The openvino pair needs .venv-openvino (scripts/setup makes it); `--contenders all` adds it to the default four.
DEFAULT_CONTENDERS = CONTENDERS[:4]
GROUPS = ("tiny", "gemma", "smollm2", "edit", "1b", "agent")
# Groups on a built-in model.
BUILTIN = {"gemma": "gemma-3-270m", "smollm2": "smollm2-135m-instruct", "edit": "smollm2-135m-instruct"}
# Each server's own best for copy-heavy edits: prompt lookup (5 draft tokens from 3-grams of the prompt); llama.cpp's
# n-gram drafts from the context (its default draft length, 16).
EDIT_OPENVINO_FLAGS, EDIT_LLAMA_FLAGS = ("--prompt-lookup",), ("--spec-type", "ngram-simple")
RawRunner = Callable[[str, list[tuple[Workload, int]], EngineSettings, Path], dict[str, Any]]


class Bench:
    """Runs contenders on groups of workloads that share a model, collecting results and printing as it goes."""

    def __init__(self, settings: EngineSettings, log_dir: Path, first_seed: int, repeat: int) -> None:
        self.settings = settings
        self.repeat = repeat
        self.log_dir = log_dir
        self.seeds: Iterator[int] = itertools.count(first_seed)
        self.results: list[RunResult] = []
        self.workloads: list[Workload] = []
        self.exports: dict[str, Path] = {}  # group -> the OpenVINO IR our server ran
        self.alt_flags: tuple[str, ...] = ()  # engine-server-openvino-alt's flags beyond the others'

    def http(self, contender: str, running: Running, workloads: list[Workload], served_name: str) -> None:
        for workload in workloads:
            runs = []
            for _ in range(self.repeat):
                seed = next(self.seeds)
                log = self.log_dir / f"client-{_slug(contender)}-{_slug(workload.name)}.log"
                before = load_average()
                started = time.monotonic()
                metrics = run_client(workload, running.base_url, served_name, seed, log, running.pgids)
                took = time.monotonic() - started
                load = (before, load_average())
                cpu = {part: metrics[f"cpu_{part}_s"] for part in ("front", "engine", "client")}
                cpu["busy"] = metrics["cpu_busy"]
                runs.append(RunResult(contender, workload.name, running.ready_s, metrics, seed, load, cpu))
                _say(f"{contender} on {workload.name}: {metrics['output_throughput']:.1f} out tok/s ({took:.0f} s)")
            self.add(combine(runs))

    def raw(self, contender: str, runner: RawRunner, model: str, workloads: list[Workload]) -> None:
        runs = [(w, next(self.seeds)) for w in workloads for _ in range(self.repeat)]
        before = load_average()
        log = self.log_dir / f"{_slug(contender)}-{_slug(workloads[0].name.split()[0])}.log"
        result = runner(model, runs, self.settings, log)
        after = load_average()
        by_workload: dict[str, list[RunResult]] = {}
        for (workload, seed), run in zip(runs, result["runs"], strict=True):
            one = RunResult(
                contender, workload.name, result["ready_s"], run["metrics"], seed, (before, after), run["cpu"]
            )
            by_workload.setdefault(workload.name, []).append(one)
            _say(f"{contender} on {workload.name}: {run['metrics']['output_throughput']:.1f} out tok/s")
        for repeated in by_workload.values():
            self.add(combine(repeated))
        _say(f"{contender} ready in {result['ready_s']:.1f} s")

    def add(self, result: RunResult) -> None:
        self.results.append(result)

    def print_table(self, title: str) -> None:
        print(f"\n######## {title} ########\n{table(self.results, self.workloads)}", flush=True)


def run_group(
    bench: Bench,
    model: str,
    served_name: str,
    workloads: list[Workload],
    contenders: list[str],
    group: str,
    llama: str | None = None,
    gguf: str | None = None,
) -> None:
    """llama: the llama-server binary; gguf: the file it serves (default: the built-in model's package's)."""
    bench.workloads += workloads
    settings, logs = bench.settings, bench.log_dir
    warm_caches(model, openvino=any("openvino" in c or "pipeline" in c for c in contenders))
    if "engine-server" in contenders:
        _say(f"starting engine-server on {group}")
        with our_server(model, served_name, settings, logs / f"ours-{group}.log") as ours:
            bench.http(OURS, ours, workloads, served_name)
    if "vllm-serve" in contenders or "two-hop" in contenders:
        _say(f"starting vllm serve on {group}")
        with vllm_serve(model, served_name, settings, logs / f"vllm-{group}.log") as upstream:
            if "vllm-serve" in contenders:
                bench.http("vllm serve", upstream, workloads, served_name)
                bench.print_table(f"{group}: engine-server vs vllm serve")
            if "two-hop" in contenders:
                # The same vllm serve stays up behind the proxy: a second 50-80 s engine start would buy nothing,
                # and the fresh seed keeps its prefix cache from helping. In a deployment both start together,
                # so the pair is ready when the slower of the two is.
                with proxy(upstream.base_url, logs / f"proxy-{group}.log") as front:
                    _say(f"proxy ready in {front.ready_s:.1f} s")
                    pair = Running(front.base_url, max(upstream.ready_s, front.ready_s), front.pgids + upstream.pgids)
                    bench.http("two-hop", pair, workloads, served_name)
    random_only = [w for w in workloads if w.dataset is None]  # the raw drivers sample random prompts only
    if "raw-engine" in contenders and random_only:
        _say(f"starting the raw engine on {group}")
        bench.raw("raw engine", run_raw_engine, model, random_only)
    # A built-in model by its name, so that our server and the raw pipeline apply its defaults for it (int8 weights
    # under auto) and run the same export.
    ov_model, cache = _as_builtin(model, group)
    if "engine-server-openvino" in contenders:
        # Our server on the openvino backend, exported from the same checkpoint in the same dtype (the first start
        # exports into the engine-server cache; the raw pipeline then finds the export there).
        _say(f"starting engine-server (openvino) on {group}")
        with our_server(ov_model, served_name, settings, logs / f"ours-openvino-{group}.log", "openvino", cache) as ov:
            bench.http(OURS_OPENVINO, ov, workloads, served_name)
            if ov.export is not None:
                bench.exports[group] = ov.export
    if "engine-server-openvino-alt" in contenders:
        # The same server with other flags (--openvino-alt-flags), e.g. the pipeline in a thread of the server.
        alt = replace(bench.settings, openvino_flags=bench.settings.openvino_flags + bench.alt_flags)
        _say(f"starting engine-server (openvino, {' '.join(bench.alt_flags)}) on {group}")
        log = logs / f"ours-openvino-alt-{group}.log"
        with our_server(ov_model, served_name, alt, log, "openvino", cache) as ov:
            bench.http(OURS_OPENVINO_ALT, ov, workloads, served_name)
    if "raw-pipeline" in contenders and random_only:
        _say(f"starting the raw OpenVINO pipeline on {group}")
        runner = functools.partial(run_raw_pipeline, served_as=ov_model, cache_dir=cache)
        bench.raw("raw pipeline", runner, model, random_only)
    if "llama-server" in contenders and llama is not None and (gguf is not None or group in BUILTIN):
        # The GGUF the built-in model's package ships: what llama.cpp users would serve. The client samples its
        # prompts with our checkpoint's tokenizer, the same vocabulary.
        gguf = gguf or _package_gguf(group, logs / "gguf")
        _say(f"starting llama-server on {group} ({gguf})")
        with llama_server(llama, gguf, settings, logs / f"llama-server-{group}.log") as peer:
            bench.http("llama-server", peer, workloads, served_name)
    bench.print_table(f"{group}: all contenders so far")


def front_cpu(model: str, log_dir: Path) -> str:
    """bench.http_overhead on the model's tokenizer, in the workloads' shape (8 streams of 128 tokens): our HTTP
    layer's CPU per streamed token over an engine that costs nothing, and the floor any Python server pays."""
    cmd = [sys.executable, "-m", "bench.http_overhead", "--variants", "as-is,floor", "--tokenizer", model]
    cmd += ["--concurrency", "8", "--num-requests", "64", "--output-len", "128"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    (log_dir / "http-overhead.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        return f"\nbench.http_overhead failed ({done.returncode}): see {log_dir / 'http-overhead.log'}"
    head = "\nThe front's CPU per streamed token (bench.http_overhead, this model's tokenizer, 8 x 128 tokens):"
    return "\n".join([head, *("  " + line for line in done.stdout.splitlines())])


def _say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {load_average():.1f}] {message}", flush=True)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-")


def _tiny_model() -> str:
    from tests.models.make_tiny_model import build

    return str(build())


def _as_builtin(model: str, group: str) -> tuple[str, Path | None]:
    """(the built-in model's name, its cache) when model is the group's prepared built-in model, else (model, None)."""
    from model_prep.builtin_models import model_dir

    path = Path(model)
    if group in BUILTIN and len(path.parents) > 1 and model_dir(path.parents[1], BUILTIN[group]) == path:
        return BUILTIN[group], path.parents[1]
    return model, None


def _package_gguf(group: str, work: Path) -> str:
    from model_prep import gemma, smollm2

    return str((gemma if BUILTIN[group] == "gemma-3-270m" else smollm2).gguf_file(work))


def _builtin_model(name: str, cache_dir: Path | None) -> str:
    from engine_server.config import Config
    from model_prep.builtin_models import prepare

    return str(prepare(cache_dir or Config().cache_dir, name, progress=_say))


def run_1b(
    bench: Bench,
    settings: EngineSettings,
    contenders: list[str],
    args: argparse.Namespace,
    sized: Callable[[list[Workload]], list[Workload]],
) -> None:
    """The 1B-class race: each OpenVINO weight format (our exporter) against its GGUF counterpart (llama.cpp's
    converter and quantizer), on random 128 / 128 at 1 and 8 streams; workloads named 1b-int8, 1b-int4."""
    from bench import llama1b
    from bench.contenders import OPENVINO_PYTHON
    from engine_server.config import Config

    cache = args.cache_dir or Config().cache_dir
    smollm2 = Path(_builtin_model(BUILTIN["smollm2"], cache))
    model = llama1b.checkpoint(cache / "bench", smollm2, _say)
    _say(f"{llama1b.NAME}: {llama1b.describe(model)}")
    for name, weights, quant in llama1b.FORMATS:
        group = f"1b-{name}"
        ir = llama1b.openvino_export(model, cache, weights, OPENVINO_PYTHON, _say)
        gguf = str(llama1b.gguf(model, args.llama_server, quant, _say)) if args.llama_server else None
        bench.settings = settings
        workloads = sized(model_workloads(group, str(model), args.quick))  # the checkpoint's tokenizer samples
        run_group(bench, str(ir), llama1b.NAME, workloads, contenders, group, args.llama_server, gguf)


def run_agents(llama: str | None) -> None:
    """Agent sessions on the default model (openvino): 4 that start together, then 1, each against llama-server
    when given; bench.agent_sessions prints every turn's TTFT and the targets' verdicts."""
    from bench import agent_sessions

    for sessions in (4, 1):
        _say(f"agent sessions: {sessions} at once (bench.agent_sessions)")
        agent_sessions.main(["--sessions", str(sessions), *(["--llama-server", llama] if llama else [])])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.serve_compare", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny workload only, 64 prompts: under 5 minutes")
    parser.add_argument(
        "--contenders",
        default=",".join(DEFAULT_CONTENDERS),
        help=f"comma list of {', '.join(CONTENDERS)}, or all (default: the first four)",
    )
    parser.add_argument(
        "--workloads",
        default=None,
        help="comma list of tiny, gemma, smollm2, edit, 1b, agent, or all (default: tiny, gemma; --quick: tiny). "
        "agent: bench.agent_sessions with 4 sessions, then 1, on openvino (against llama-server with --llama-server)",
    )
    parser.add_argument("--model", default=None, help="model for the tiny workload (default: the tiny test model)")
    parser.add_argument("--gemma-model", default=None, help="gemma-3-270m checkpoint dir (default: prepare it)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="engine-server cache for the built-in models")
    parser.add_argument("--num-prompts", type=int, default=None, help="override every workload's prompt count")
    parser.add_argument(
        "--repeat", type=int, default=1, help="measured runs per contender and workload; the table shows medians"
    )
    parser.add_argument("--seed", type=int, default=int(time.time()) % 100_000, help="first seed; +1 per run")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16, ... or auto: each server's own default")
    parser.add_argument("--kv-cache-space", type=float, default=2.0, help="GiB (VLLM_CPU_KVCACHE_SPACE)")
    parser.add_argument("--max-model-len", type=int, default=2048)
    parser.add_argument("--log-dir", type=Path, default=None, help="server and client logs (default: a temp dir)")
    parser.add_argument("--llama-server", default=None, help="llama.cpp's llama-server binary (contender llama-server)")
    parser.add_argument(
        "--openvino-flags",
        default="",
        help="more flags for our openvino server and the raw pipeline, e.g. '--kv-cache-precision f16' (the raw "
        "pipeline runs in its own process anyway)",
    )
    parser.add_argument(
        "--openvino-alt-flags",
        default="--no-engine-process",
        help="the flags that contender engine-server-openvino-alt adds (default: %(default)s, the pipeline in a "
        "thread of the server)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    chosen = ",".join(CONTENDERS) if args.contenders == "all" else args.contenders
    contenders = [c.strip() for c in chosen.split(",") if c.strip()]
    chosen_groups = args.workloads or ("tiny" if args.quick else "tiny,gemma")
    groups = list(GROUPS) if chosen_groups == "all" else [g.strip() for g in chosen_groups.split(",")]
    unknown = [c for c in contenders if c not in CONTENDERS] + [g for g in groups if g not in GROUPS]
    if unknown:
        build_parser().error(f"unknown contender or workload: {', '.join(unknown)}")
    if "llama-server" in contenders and not args.llama_server:
        build_parser().error("the llama-server contender needs --llama-server PATH (bench/README.md: building it)")
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="bench-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    extra = tuple(shlex.split(args.openvino_flags))
    settings = EngineSettings(args.dtype, args.kv_cache_space, args.max_model_len, openvino_flags=extra)
    bench = Bench(settings, log_dir, args.seed, args.repeat)
    bench.alt_flags = tuple(shlex.split(args.openvino_alt_flags))
    _say(f"logs in {log_dir}; settings {asdict(settings)}; contenders {contenders}")

    def sized(workloads: list[Workload]) -> list[Workload]:
        if args.num_prompts is None:
            return workloads
        return [Workload(**{**asdict(w), "num_prompts": args.num_prompts}) for w in workloads]

    started = time.monotonic()
    if "tiny" in groups:
        model = args.model or _tiny_model()
        run_group(bench, model, "tiny", sized([tiny_workload(model, args.quick)]), contenders, "tiny")
    for group in (g for g in groups if g in BUILTIN):
        model = (args.gemma_model if group == "gemma" else None) or _builtin_model(BUILTIN[group], args.cache_dir)
        if group == "edit":
            workloads = sized(edit_workloads(model, edit_dataset(model, log_dir / "edit.jsonl")))
            bench.settings = replace(settings, openvino_flags=extra + EDIT_OPENVINO_FLAGS, llama_flags=EDIT_LLAMA_FLAGS)
        else:
            workloads = sized(model_workloads(group, model, args.quick))
            bench.settings = settings
        run_group(bench, model, BUILTIN[group], workloads, contenders, group, args.llama_server)
    if "1b" in groups:
        run_1b(bench, settings, contenders, args, sized)
    bench.print_table(f"final ({time.monotonic() - started:.0f} s, load now {load_average():.1f})")
    print(targets(bench.results), flush=True)
    if "agent" in groups:
        run_agents(args.llama_server)
    print(backend_ratios(bench.results), flush=True)
    if bench.exports:
        print(decode_bound(bench.results, bench.exports, read_bandwidth_gbs()), flush=True)
    if any(g in BUILTIN for g in groups) and any(c.startswith("engine-server") for c in contenders):
        print(front_cpu(model, log_dir), flush=True)  # the last group's model, for its tokenizer
    out = log_dir / "results.json"
    out.write_text(json.dumps([asdict(r) for r in bench.results], indent=2))
    _say(f"results in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
