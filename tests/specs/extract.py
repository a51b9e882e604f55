"""Write openai-openapi.json: the component schemas the conformance tests validate against, with every schema they
refer to, copied unchanged from OpenAI's OpenAPI description.

Usage: python tests/specs/extract.py PATH/TO/openapi.json COMMIT   (the file of github.com/openai/openai-openapi)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ErrorResponse",
    "Response",
    "ResponseStreamEvent",
)
OUT = Path(__file__).with_name("openai-openapi.json")
PREFIX = "#/components/schemas/"


def refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"].removeprefix(PREFIX)} if isinstance(node.get("$ref"), str) else set()
        return found.union(*(refs(v) for k, v in node.items() if k != "$ref"))
    if isinstance(node, list):
        return set().union(*(refs(v) for v in node))
    return set()


def extract(spec: dict[str, Any], roots: tuple[str, ...] = ROOTS) -> dict[str, Any]:
    schemas = spec["components"]["schemas"]
    names: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name not in names:
            names.add(name)
            todo += refs(schemas[name])
    # In the spec's own order, so that a later extract diffs cleanly.
    return {name: schema for name, schema in schemas.items() if name in names}


def main(path: str, commit: str) -> None:
    spec = json.loads(Path(path).read_text())
    out = {
        "openapi": spec["openapi"],
        "info": {**spec["info"], "x-source": f"https://github.com/openai/openai-openapi/blob/{commit}/openapi.json"},
        "components": {"schemas": extract(spec)},
    }
    OUT.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
