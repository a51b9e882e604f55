"""The tokenizer side of an OpenVINO export: transformers 5's files made readable by the exporting transformers, and
the converted tokenizer held to tokenizer.json's ids.

Since transformers 5, save_pretrained writes tokenizer_class "TokenizersBackend" and extra_special_tokens as a list;
transformers 4 (optimum-intel's) knows neither, so optimum skipped openvino-tokenizers and the export had no tokenizer.
Both mean the plain fast tokenizer over tokenizer.json, which transformers 4 calls PreTrainedTokenizerFast: optimum is
shown a copy of the checkpoint (links to its files, tokenizer_config.json rewritten), never the checkpoint itself.

check() runs in a child process (`python -m model_prep.openvino_tokenizer EXPORT SOURCE`): it loads transformers
and OpenVINO's tokenizer models, which a serving process should not keep.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CONFIG = "tokenizer_config.json"
# What transformers 5 calls the fast tokenizer over tokenizer.json, and what transformers 4 calls it.
RENAMED_CLASSES = {"TokenizersBackend": "PreTrainedTokenizerFast"}
# Keys transformers 5 writes that mean nothing to transformers 4's tokenizer (they would become init arguments).
V5_ONLY_KEYS = ("backend", "is_local", "local_files_only")
# Mixed text the converted tokenizers must split as tokenizer.json does; the checkpoint's special tokens are added.
MIXED_TEXTS = [
    "Hello, world! What is Deep Learning?",
    "café naïve résumé Ærø",
    "日本語のテキストと中文",
    "emoji 🎉👍🏽 and ☕",
    "def f(x):\n    return x ** 2  # squared\n",
    "  two  spaces,\n\n\ttabs and 12345 digits 3.14159",
    '{"name": "Oslo", "ok": true, "tags": [1, 2]}',
]
NUM_SPECIAL_CHECKED = 32  # enough to cover chat markers, few enough to stay fast on a large added vocabulary


class TokenizerMismatchError(RuntimeError):
    """The export's tokenizer does not give the checkpoint's token ids; the message shows where."""


def compatible_config(config: dict[str, Any]) -> dict[str, Any] | None:
    """config rewritten for transformers 4 when transformers 5 wrote it; None when it needs no change."""
    tokenizer_class = config.get("tokenizer_class")
    extra = config.get("extra_special_tokens")
    if tokenizer_class not in RENAMED_CLASSES and not isinstance(extra, list):
        return None
    fixed = {k: v for k, v in config.items() if k not in V5_ONLY_KEYS}
    if tokenizer_class in RENAMED_CLASSES:
        fixed["tokenizer_class"] = RENAMED_CLASSES[tokenizer_class]
    if isinstance(extra, list):  # transformers 4 reads extra_special_tokens as named tokens (a dict)
        del fixed["extra_special_tokens"]
        known = list(fixed.get("additional_special_tokens") or [])
        fixed["additional_special_tokens"] = known + [t for t in extra if t not in known]
    return fixed


def staged_source(source: Path, work: Path) -> Path:
    """source itself when its tokenizer_config.json needs no change; else a directory in work that links to source's
    files, with tokenizer_config.json rewritten (see compatible_config)."""
    try:
        config = json.loads((source / CONFIG).read_text())
    except (OSError, ValueError):
        return source  # no tokenizer config (or not ours to judge): optimum reports what it cannot load
    fixed = compatible_config(config) if isinstance(config, dict) else None
    if fixed is None:
        return source
    staged = work / source.name
    staged.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name != CONFIG:
            (staged / entry.name).symlink_to(entry.resolve())
    (staged / CONFIG).write_text(json.dumps(fixed, indent=2, ensure_ascii=False))
    return staged


def check_texts(tokenizer_json: dict[str, Any]) -> list[str]:
    """The mixed texts, plus one that holds the checkpoint's special tokens between words."""
    special = [t["content"] for t in tokenizer_json.get("added_tokens", []) if t.get("special")]
    texts = list(MIXED_TEXTS)
    if special:
        texts.append(" and ".join(f"x{token}y" for token in special[:NUM_SPECIAL_CHECKED]))
    return texts


def check(export: Path, source: Path) -> str:
    """Refuse (TokenizerMismatchError) an export whose tokenizers (OpenVINO's, and transformers' as the server loads
    it) split the mixed texts otherwise than the tokenizers library on source's tokenizer.json; returns a summary."""
    if not (source / "tokenizer.json").is_file():
        return f"{source} has no tokenizer.json to check the converted tokenizer against; not checked"
    import openvino
    import openvino_tokenizers  # noqa: F401  (registers the tokenizer operations with OpenVINO)
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    original = Tokenizer.from_file(str(source / "tokenizer.json"))
    texts = check_texts(json.loads((source / "tokenizer.json").read_text()))
    core = openvino.Core()
    converted = core.compile_model(str(export / "openvino_tokenizer.xml"), "CPU")
    served: Any = AutoTokenizer.from_pretrained(export)
    for text in texts:
        expected = list(original.encode(text).ids)
        got = {
            "OpenVINO's tokenizer (openvino_tokenizer.xml)": [int(i) for i in converted([text])["input_ids"][0]],
            "transformers' tokenizer saved with the export": list(served(text)["input_ids"]),
        }
        for which, ids in got.items():
            if ids != expected:
                raise TokenizerMismatchError(_mismatch(which, text, expected, ids, source))
    return f"the converted tokenizers give tokenizer.json's ids on {len(texts)} mixed texts"


def _mismatch(which: str, text: str, expected: list[int], got: list[int], source: Path) -> str:
    at = next((i for i, (a, b) in enumerate(zip(expected, got, strict=False)) if a != b), min(len(expected), len(got)))
    return (
        f"{which} does not split text as {source}/tokenizer.json does, so the openvino backend would not serve "
        f"this model as it was trained. Text {text!r}: tokenizer.json gives {expected}, the export gives {got} "
        f"(first difference at position {at}). Fix: serve it with vLLM CPU (.venv/bin/engine-server --hw-mode cpu "
        "--model ...), or export it yourself with a tokenizer openvino-tokenizers converts and pass that directory."
    )


def main(argv: list[str]) -> int:
    try:
        print(check(Path(argv[0]), Path(argv[1])))
    except TokenizerMismatchError as exc:
        print(exc)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
