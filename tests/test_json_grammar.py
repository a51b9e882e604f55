"""The compact-JSON grammars made from schemas, checked with xgrammar's own matcher (the library OpenVINO embeds)."""

from __future__ import annotations

import json
import re
from functools import cache
from typing import Any

import jsonschema
import pytest
import xgrammar

from backends.json_grammar import SchemaError, compact_json_grammar, integer, number
from backends.json_regex import pattern_grammar
from tests.test_json_output import SCHEMAS


@cache
def grammar(text: str) -> Any:
    return xgrammar.Grammar.from_ebnf(text)


def accepts(grammar_text: str, text: str) -> bool:
    from xgrammar.testing import _is_grammar_accept_string

    return bool(_is_grammar_accept_string(grammar(grammar_text), text))


def rule(expr: str) -> str:
    return f'root ::= {expr}\nchar ::= [^"\\\\\\x00-\\x1f] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{{4}})'


VALID = {
    "enum": ['{"a":"yes"}', '{"a":"no"}'],
    "nested": ['{"person":{"name":"Ann","age":0},"ok":true}', '{"person":{"name":"","age":120},"ok":false}'],
    "array": ['{"tags":["red","blue"],"points":[]}', '{"tags":["red","red","green","blue"],"points":[{"x":-3}]}'],
    "bounds": ['{"n":-50,"m":6,"x":0.25,"y":-2}', '{"n":250,"m":8,"x":1.000,"y":6.5}'],
    "optional": ['{"id":1}', '{"id":999,"flag":true}', '{"id":2,"note":"abc","flag":false,"tag":null}'],
    "pattern": ['{"code":"ABC-12"}'],
    "refs": ['{"first":"red","second":7}', '{"first":"blue","second":"red"}'],
}
INVALID = {
    "enum": ['{"a":"maybe"}', '{"a":"yes","b":1}', "{}"],
    "nested": [
        '{"person":{"name":"Ann","age":121},"ok":true}',
        '{"person":{"name":"a very long name","age":1},"ok":1}',
    ],
    "array": ['{"tags":["red"],"points":[]}', '{"tags":["red","red","red","red","red"],"points":[]}'],
    "bounds": ['{"n":251,"m":6,"x":0,"y":0}', '{"n":0,"m":5,"x":0,"y":0}', '{"n":0,"m":6,"x":1.5,"y":0}'],
    "optional": ['{"note":"a"}', '{"id":0}', '{"id":1,"tag":"abcde"}', '{"id":1,}'],
    "pattern": ['{"code":"AB-12"}', '{"code":"ABC-123"}'],
    "refs": ['{"first":"green","second":7}', '{"first":"red","second":8}'],
}


@pytest.mark.parametrize("name", SCHEMAS)
def test_schema_grammars_accept_compact_valid_json_only(name: str) -> None:
    text = compact_json_grammar(SCHEMAS[name])
    for valid in VALID[name]:
        jsonschema.validate(json.loads(valid), SCHEMAS[name])  # the example itself is right
        assert accepts(text, valid), valid
        spaced = valid.replace(",", ", ").replace(":", ": ")
        assert spaced == valid or not accepts(text, spaced), spaced
        assert not accepts(text, " " + valid) and not accepts(text, valid + "\n")
    for invalid in INVALID[name]:
        with pytest.raises((jsonschema.ValidationError, json.JSONDecodeError)):
            jsonschema.validate(json.loads(invalid), SCHEMAS[name])
        assert not accepts(text, invalid), invalid


def test_any_object() -> None:
    text = compact_json_grammar(None)
    assert accepts(text, '{"a":[1,-2.5e3,{"b":null}],"c":"x\\n\\u00e9","d":true}')
    assert accepts(text, "{}")
    for bad in ["{ }", '{"a":"\n"}', "[]", '"x"', '{"a":1,}']:
        assert not accepts(text, bad), bad


@pytest.mark.parametrize(
    "bounds",
    [
        {"minimum": 0, "maximum": 9},
        {"minimum": 7, "maximum": 1234},
        {"minimum": -105, "maximum": -3},
        {"minimum": -20, "maximum": 20},
        {"exclusiveMinimum": 99},
        {"maximum": -8},
        {"minimum": 0.5, "maximum": 30.5},
    ],
)
def test_integer_ranges_are_exact(bounds: dict[str, float]) -> None:
    schema = {"type": "integer", **bounds}
    text = compact_json_grammar(schema)
    for value in range(-1500, 1501):
        valid = jsonschema.Draft202012Validator(schema).is_valid(value)
        assert accepts(text, str(value)) == valid, (value, valid)
    assert not accepts(text, "007") and not accepts(text, "-0")


def test_numbers_stay_within_their_bounds() -> None:
    schema = {"type": "number", "minimum": -2.5, "maximum": 7}
    text = compact_json_grammar(schema)
    for value in ["0", "-2", "-1.999", "6.999", "7", "7.000", "-2.0", "3.14159", "-0.5"]:
        assert accepts(text, value), value
    for value in ["7.001", "-2.001", "8", "-3", "1e2", "01", ".5"]:
        assert not accepts(text, value), value
    # Rounded inward: -2.5 itself is valid but not produced; everything produced is valid.
    assert not accepts(text, "-2.5")


def test_range_helpers_agree_on_their_edges() -> None:
    assert accepts(rule(integer(None, None)), "-123456789") and accepts(rule(number(0, None)), "123.5")
    assert not accepts(rule(number(0, None)), "-1")


@pytest.mark.parametrize(
    "pattern,matching,other",
    [
        ("^[A-Z]{3}-[0-9]{2}$", ["ABC-12"], ["ABC-1", "abc-12"]),
        ("^(?:ab|cd)+x?$", ["ab", "cdabx"], ["abc", "x"]),
        ("^\\d+(\\.\\d{1,2})?$", ["12", "3.14"], ["3.141", "a"]),
        ("^[^a-c]+$", ["xyz", "Q"], ["a", "xa"]),
        ("^a.c$", ["abc", "a-c"], ["ac"]),
        ("b", ["b", "abc"], ["ac"]),
        ('^say "hi"$', ['say \\"hi\\"'], ['say "hi"']),  # JSON's text of the string: the quotes escaped
    ],
)
def test_patterns(pattern: str, matching: list[str], other: list[str]) -> None:
    text = rule('"\\"" ' + pattern_grammar(pattern, "char") + ' "\\""')
    for s in matching:
        assert re.search(pattern, json.loads(f'"{s}"')) and accepts(text, f'"{s}"'), s
    for s in other:
        assert not accepts(text, f'"{s}"'), s


@pytest.mark.parametrize(
    "schema,words",
    [
        ({"oneOf": [{"type": "integer"}, {"type": "number"}]}, "oneOf"),
        ({"type": "number", "multipleOf": 3}, "multipleOf"),
        ({"type": "string", "format": "date-time"}, "format"),
        ({"type": "array", "uniqueItems": True}, "uniqueItems"),
        ({"type": "string", "pattern": "(?=a)a"}, "lookarounds"),
        ({"type": "string", "pattern": "(a)\\1"}, "\\1"),
        ({"type": "string", "pattern": "^a", "maxLength": 3}, "pattern together with"),
        ({"type": "integer", "minimum": 5, "maximum": 1}, "no whole number"),
        ({"type": "number", "minimum": 0.2, "maximum": 0.7}, "no whole number"),
        ({"type": "array", "minItems": 3, "maxItems": 2}, "above maxItems"),
        ({"$ref": "#/$defs/missing"}, "does not name"),
        ({"type": "object", "required": ["a"], "additionalProperties": False}, "does not define"),
        ({"type": "color"}, "unknown type"),
    ],
)
def test_what_cannot_be_enforced_is_refused_by_name(schema: dict[str, Any], words: str) -> None:
    with pytest.raises(SchemaError, match=re.escape(words)):
        compact_json_grammar(schema)


def test_a_recursive_schema() -> None:
    tree = {"$defs": {"node": obj_node()}, "$ref": "#/$defs/node"}
    text = compact_json_grammar(tree)
    assert accepts(text, '{"v":1,"kids":[{"v":2,"kids":[]}]}')
    assert not accepts(text, '{"v":1,"kids":[{"v":2}]}')


def obj_node() -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"v": {"type": "integer"}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}}},
        "required": ["v", "kids"],
    }
