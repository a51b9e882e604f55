"""SamplingOptions into OpenVINO GenAI's GenerationConfig, and a clear 400 for what OpenVINO cannot do.

check_supported() imports nothing from OpenVINO, so the refusals are testable anywhere.
"""

from __future__ import annotations

import secrets
from collections.abc import Set
from typing import Any

from backends.base import InvalidRequestError, SamplingOptions
from backends.json_grammar import SchemaError, compact_json_grammar
from backends.openvino_speculation import PromptLookup

GREEDY_BELOW = 1e-5  # vLLM's threshold: a lower temperature means greedy decoding


def is_greedy(s: SamplingOptions) -> bool:
    return s.temperature < GREEDY_BELOW


def check_supported(s: SamplingOptions, vocab_size: int, lookup: PromptLookup | None = None) -> None:
    """Raise InvalidRequestError for a request OpenVINO would answer differently from what it asks. lookup: the
    pipeline's prompt lookup (None: started without)."""
    check_speculation(s, lookup)
    if s.logprobs is not None and s.logprobs > 1:
        raise InvalidRequestError(
            f"The openvino backend returns the chosen token's log-probability and no alternatives: top_logprobs "
            f"(chat) or logprobs (completions) can be 0 or 1 here, not {s.logprobs}."
        )
    if s.logprobs == 1 and not _top_token_is_chosen(s):
        raise InvalidRequestError(
            "The openvino backend cannot list the most likely token beside the chosen one: with 1 top logprob, "
            "use greedy decoding (temperature 0) without penalties, min_tokens or response_format; "
            "or ask for 0 top logprobs."
        )
    if s.ignore_eos and s.stop_token_ids:
        # OpenVINO's ignore_eos disables every stop token id, not only EOS.
        raise InvalidRequestError(
            "The openvino backend cannot combine ignore_eos with stop_token_ids: it would ignore both.",
            param="stop_token_ids",
        )
    bad = [t for t in s.stop_token_ids if t >= vocab_size]
    if bad:
        raise InvalidRequestError(
            f"stop_token_ids {bad} are outside the model's vocabulary (ids 0..{vocab_size - 1}).",
            param="stop_token_ids",
        )


def check_speculation(s: SamplingOptions, lookup: PromptLookup | None) -> None:
    # A prompt-lookup pipeline refuses requests without drafts, and a plain one ignores a request's draft settings.
    if lookup is None:
        if s.num_speculative_tokens or s.prompt_lookup_max_ngram is not None:
            raise InvalidRequestError(
                "This server runs without speculative decoding: start it with --prompt-lookup "
                "(ENGINE_SERVER_PROMPT_LOOKUP=1) for num_speculative_tokens or prompt_lookup_max_ngram.",
                param="num_speculative_tokens" if s.num_speculative_tokens else "prompt_lookup_max_ngram",
            )
        return
    if s.num_speculative_tokens == 0:
        raise InvalidRequestError(
            "This server runs every request with prompt lookup (--prompt-lookup): OpenVINO's prompt-lookup pipeline "
            "cannot run a request without drafts. Ask for 1 or more num_speculative_tokens, or omit the field.",
            param="num_speculative_tokens",
        )
    if s.n > 1:
        raise InvalidRequestError(
            "With prompt lookup on (--prompt-lookup), OpenVINO runs one sequence per request: n must be 1.", param="n"
        )


def _top_token_is_chosen(s: SamplingOptions) -> bool:
    # OpenVINO's log-probabilities are the raw model's (as vLLM's are): under plain greedy decoding the chosen token
    # is the raw distribution's most likely one, so it is its own top-1 alternative. Anything that reshapes the
    # logits before the choice breaks that.
    reshaped = (
        s.repetition_penalty != 1.0
        or s.frequency_penalty != 0.0
        or s.presence_penalty != 0.0
        or s.min_tokens > 0
        or s.json_object
        or s.json_schema is not None
    )
    return is_greedy(s) and not reshaped


def generation_config(
    s: SamplingOptions, eos_token_id: int, stop_token_ids: Set[int], lookup: PromptLookup | None = None
) -> Any:
    """The GenerationConfig for one request; raises InvalidRequestError where OpenVINO's validation refuses it.
    lookup: the pipeline's prompt lookup, which every request on it must carry (the request's own figures first)."""
    import openvino_genai

    c = openvino_genai.GenerationConfig()
    if lookup is not None:
        request_lookup = request_prompt_lookup(s, lookup)
        c.num_assistant_tokens = request_lookup.num_speculative_tokens
        c.max_ngram_size = request_lookup.max_ngram
    c.max_new_tokens = s.max_tokens
    c.min_new_tokens = s.min_tokens
    c.ignore_eos = s.ignore_eos
    c.eos_token_id = eos_token_id
    c.stop_token_ids = set(stop_token_ids) | set(s.stop_token_ids)
    if s.stop:
        c.stop_strings = set(s.stop)
        # The text is cut at the stop string by our detokenizer; OpenVINO only has to end the sequence there.
        c.include_stop_str_in_output = True
    c.num_return_sequences = s.n
    c.repetition_penalty = s.repetition_penalty
    c.frequency_penalty = s.frequency_penalty
    c.presence_penalty = s.presence_penalty
    # Without a seed each request gets its own: OpenVINO seeds every request with rng_seed, 0 by default.
    c.rng_seed = s.seed if s.seed is not None else secrets.randbits(32)
    c.logprobs = 1 if s.logprobs is not None else 0  # 0 reports 0.0 for greedy tokens: ask for the real value
    if is_greedy(s):
        if s.n > 1:
            # OpenVINO runs n sequences only when sampling; sampling from the top-1 token is greedy decoding.
            c.do_sample, c.temperature, c.top_k = True, 1.0, 1
    else:
        c.do_sample = True
        c.temperature = s.temperature
        c.top_p = s.top_p
        if s.top_k > 0:
            c.top_k = s.top_k
        if s.min_p >= 1.0:
            # OpenVINO takes min_p < 1 only; min_p=1 keeps just the most likely token, which is what top_k=1 keeps.
            c.top_k = 1
        elif s.min_p > 0:
            c.min_p = s.min_p
    if s.json_schema is not None or s.json_object:
        c.structured_output_config = openvino_genai.StructuredOutputConfig(grammar=json_grammar(s.json_schema))
    try:
        c.validate()
    except RuntimeError as exc:
        raise InvalidRequestError(f"OpenVINO refused these sampling parameters: {openvino_message(exc)}") from None
    return c


def request_prompt_lookup(s: SamplingOptions, lookup: PromptLookup) -> PromptLookup:
    return PromptLookup(
        s.num_speculative_tokens or lookup.num_speculative_tokens, s.prompt_lookup_max_ngram or lookup.max_ngram
    )


def json_grammar(schema: dict[str, Any] | None) -> str:
    """Compact JSON for the schema (None: any object). OpenVINO's own json_schema mode lets whitespace run between
    tokens, which a small model fills until max_tokens."""
    try:
        return compact_json_grammar(schema)
    except SchemaError as exc:
        raise InvalidRequestError(f"response_format: {exc}", param="response_format") from None


def openvino_message(exc: BaseException) -> str:
    """OpenVINO's own sentence, without the 'Exception from file:line' and 'Check ... failed at' lines around it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return " ".join(text or lines[-1:])
