"""A tiny Llama with a long context that answers every prompt with "hello" and stops: the test model for coding
agents (Claude Code, Codex CLI), whose prompts are 30-60k tokens here and which treat an answer cut at its token
limit as a failure.

Its weights are made, not trained: the layers add nothing to the residual stream (o_proj and down_proj are zero),
so each next token depends on the current one alone, and the embeddings and output head are set so that any
token is followed by "he", "he" by "ll", "ll" by "o" and "o" by the EOS token. The engines still run every layer
on the whole prompt.

Usage: python tests/models/make_agent_model.py [OUT_DIR]   (prints the model directory)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.models import make_tiny_model as tiny

VERSION = "agent-hello-v1"
MAX_POSITIONS = 65536
ANSWER = "hello"
SCALE = 2.0  # logit gap of about 30 after the final norm: the same answer when sampling at temperature 1


def _write(out: Path) -> None:
    import torch
    from safetensors.torch import load_file, save_file
    from tokenizers import Tokenizer

    eos = tiny._write_model(out, MAX_POSITIONS)["eos"]
    answer = Tokenizer.from_file(str(out / "tokenizer.json")).encode(ANSWER, add_special_tokens=False).ids
    if eos is None or len(set(answer)) != len(answer) or eos in answer:
        raise RuntimeError(f"the answer's tokens {answer} must be distinct: each one names the next")
    state = load_file(str(out / "model.safetensors"))
    embed = state["model.embed_tokens.weight"]
    vocab, hidden = embed.shape
    # Dimension 0 marks "any other token"; dimension 1 + i marks the answer's i-th token.
    num_marks = len(answer) + 1
    embed[:, :num_marks] = 0.0
    embed[:, 0] = 1.0
    head = torch.zeros(vocab, hidden)
    following = [*answer[1:], eos]
    head[answer[0], 0] = SCALE
    for i, (token, next_token) in enumerate(zip(answer, following, strict=True)):
        embed[token, 0] = 0.0
        embed[token, 1 + i] = 1.0
        head[next_token, 1 + i] = SCALE
    state["lm_head.weight"] = head
    for name in state:
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            state[name] = torch.zeros_like(state[name])
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((out / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def build(out_dir: Path | None = None) -> Path:
    return tiny.build(out_dir, VERSION, _write)


if __name__ == "__main__":
    print(build(Path(sys.argv[1]) if len(sys.argv) > 1 else None))
