"""Structured output on the real engines (tiny random model): every response that stops is JSON that validates.

A random model is the hard case: it takes whatever the grammar allows, so any freedom the grammar leaves (whitespace,
digits) shows up here. Each schema is sampled with several seeds, streamed and not.
"""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.conftest import LiveServer

SEEDS = range(4)
STRING = re.compile(r'"(?:[^"\\]|\\.)*"')  # a JSON string literal
MAX_TOKENS = 200


def obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
    }


SCHEMAS: dict[str, dict[str, Any]] = {
    "enum": obj({"a": {"type": "string", "enum": ["yes", "no"]}}),
    "nested": obj(
        {
            "person": obj(
                {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "minimum": 0, "maximum": 120}}
            ),
            "ok": {"type": "boolean"},
        }
    ),
    "array": obj(
        {
            "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 2, "maxItems": 4},
            "points": {"type": "array", "items": obj({"x": {"type": "integer", "minimum": -3, "maximum": 3}})},
        }
    ),
    "bounds": obj(
        {
            "n": {"type": "integer", "minimum": -50, "maximum": 250},
            "m": {"type": "integer", "exclusiveMinimum": 5, "exclusiveMaximum": 9},
            "x": {"type": "number", "minimum": 0, "maximum": 1},
            "y": {"type": "number", "minimum": -2.5, "maximum": 7},
        }
    ),
    "optional": obj(
        {
            "id": {"type": "integer", "minimum": 1, "maximum": 999},
            "note": {"type": "string", "maxLength": 8},
            "flag": {"type": "boolean"},
            "tag": {"type": ["string", "null"], "maxLength": 4},
        },
        required=["id"],
    ),
    "pattern": obj({"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}}),
    "refs": {
        "$defs": {"colour": {"type": "string", "enum": ["red", "blue"]}},
        **obj({"first": {"$ref": "#/$defs/colour"}, "second": {"anyOf": [{"$ref": "#/$defs/colour"}, {"const": 7}]}}),
    },
}


def request(client: openai.OpenAI, schema: dict[str, Any] | None, seed: int, stream: bool) -> tuple[str, str]:
    """(content, finish_reason) of one sampled chat completion with that response_format."""
    fmt: dict[str, Any] = (
        {"type": "json_object"}
        if schema is None
        else {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}}
    )
    kwargs: dict[str, Any] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Answer in JSON."}],
        "max_tokens": MAX_TOKENS,
        "temperature": 1.0,
        "seed": seed,
        "response_format": fmt,
    }
    if not stream:
        choice = client.chat.completions.create(**kwargs).choices[0]
        return str(choice.message.content), str(choice.finish_reason)
    text, finish = [], ""
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for c in chunk.choices:
            text.append(c.delta.content or "")
            finish = c.finish_reason or finish
    return "".join(text), finish


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("name", SCHEMAS)
def test_every_stopped_response_is_json_that_validates(client: openai.OpenAI, name: str, stream: bool) -> None:
    schema = SCHEMAS[name]
    stopped = 0
    for seed in SEEDS:
        text, finish = request(client, schema, seed, stream)
        assert finish in ("stop", "length"), finish
        if finish == "length":
            continue
        stopped += 1
        value = json.loads(text)
        jsonschema.validate(value, schema)
        # Compact: no whitespace outside string values, where a small model would otherwise pour it.
        assert not re.search(r"\s", STRING.sub('""', text)), text
    # Whitespace can no longer run away; digits still may (a number's fraction has no length limit in JSON Schema),
    # so some samples may end by length, but never all of them.
    assert stopped, f"none of {len(SEEDS)} samples stopped within {MAX_TOKENS} tokens"


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_json_object_is_compact_even_when_cut(client: openai.OpenAI, stream: bool) -> None:
    # Any object: a random model writes strings and numbers until max_tokens, so few samples stop. What must hold
    # for all of them is the structure: an object with no whitespace outside its strings.
    for seed in SEEDS:
        text, finish = request(client, None, seed, stream)
        # Strings become S; a quote left over opens the string max_tokens cut.
        structure = STRING.sub("S", text).split('"')[0]
        assert structure.startswith("{") and not re.search(r"\s", structure), text
        if finish == "stop":
            assert isinstance(json.loads(text), dict)


def test_a_response_cut_by_max_tokens_says_length(client: openai.OpenAI) -> None:
    schema = SCHEMAS["nested"]
    r = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "Answer in JSON."}],
        max_tokens=3,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "t", "schema": schema}},
    )
    assert r.choices[0].finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(str(r.choices[0].message.content))


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Any:
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


@pytest.mark.parametrize("schema", [{"type": "colour"}, {"type": "string", "pattern": "(?<=a)b"}])
def test_a_schema_that_cannot_be_enforced_is_a_400(server: LiveServer, client: openai.OpenAI, schema: Any) -> None:
    body = {
        "messages": [{"role": "user", "content": "Answer in JSON."}],
        "max_tokens": 8,
        "response_format": {"type": "json_schema", "json_schema": {"name": "t", "schema": schema}},
    }
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert request(client, SCHEMAS["enum"], 0, False)[1] in ("stop", "length")  # and the server still serves
