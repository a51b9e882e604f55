"""JSON objects checked against OpenAI's published schemas: the component schemas of OpenAI's OpenAPI description
(tests/specs/openai-openapi.json, see tests/specs/README.md), by name, their $refs resolved."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import jsonschema

SPEC = Path(__file__).parent / "specs" / "openai-openapi.json"


def _nullable(node: Any) -> Any:
    """OpenAPI 3.0's `nullable: true` (a few schemas of the 3.1 description still use it) as JSON Schema says it."""
    if isinstance(node, list):
        return [_nullable(v) for v in node]
    if not isinstance(node, dict):
        return node
    node = {k: _nullable(v) for k, v in node.items()}
    if node.get("nullable") is True:  # a property named "nullable" has a schema here, never True
        del node["nullable"]
        return {"anyOf": [node, {"type": "null"}]}
    return node


@functools.cache
def _components() -> dict[str, Any]:
    return _nullable(json.loads(SPEC.read_text())["components"])  # type: ignore[no-any-return]


@functools.cache
def validator(name: str) -> jsonschema.Draft202012Validator:
    """A validator for the component schema `name`, e.g. CreateChatCompletionResponse."""
    components = _components()
    if name not in components["schemas"]:
        raise KeyError(f"{name} is not among the extracted schemas; add it to tests/specs/extract.py's ROOTS")
    schema = {"$ref": f"#/components/schemas/{name}", "components": components}
    return jsonschema.Draft202012Validator(schema)


def mismatches(obj: Any, name: str) -> list[str]:
    """Where obj departs from the schema: one line per error, at its JSON path."""
    errors = [leaf for error in validator(name).iter_errors(obj) for leaf in _leaves(error)]
    return sorted({f"{e.json_path}: {e.message}" for e in errors})


def _leaves(error: jsonschema.ValidationError) -> list[jsonschema.ValidationError]:
    """An anyOf / oneOf error as the errors of the branch meant: the one whose `type` (the discriminator of OpenAI's
    unions: items, content parts, stream events) matched and that failed least; the error itself if none did."""
    if error.validator not in ("anyOf", "oneOf") or not error.context:
        return [error]
    branches: dict[Any, list[jsonschema.ValidationError]] = {}
    for sub in error.context:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    typed = isinstance(error.instance, dict) and "type" in error.instance
    meant = [
        errs for errs in branches.values() if not typed or not any(list(e.relative_path)[:1] == ["type"] for e in errs)
    ]
    if not meant:
        return [error]
    return [leaf for sub in min(meant, key=len) for leaf in _leaves(sub)]


def assert_conforms(obj: Any, name: str) -> None:
    found = mismatches(obj, name)
    assert not found, f"not a {name}:\n  " + "\n  ".join(found) + f"\n{json.dumps(obj)[:2000]}"
