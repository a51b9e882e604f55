"""JSON Schema to a grammar of compact JSON (no whitespace between tokens), in the EBNF that xgrammar reads.

OpenVINO GenAI compiles a json_schema with whitespace allowed between every token, and small models fill it: '{'
then whitespace until max_tokens. Its `grammar` option takes any EBNF, so the schema is turned into one here.

What a schema asks is kept exactly, or refused with SchemaError (never loosened): every text the grammar produces
validates. Where a keyword asks for more than a grammar can express directly, the grammar produces a subset of the
valid values: only the declared properties of an object, in declared order; numbers in plain decimal notation;
non-integer number bounds rounded inward; a pattern's characters that JSON must escape are left out of its classes.
"""

from __future__ import annotations

import json
import math
from typing import Any

from backends.json_regex import RegexError, pattern_grammar

ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated", "readOnly",
               "writeOnly", "$defs", "definitions", "discriminator"}  # fmt: skip
KEYWORDS = {"type", "enum", "const", "$ref", "anyOf", "allOf", "properties", "required", "additionalProperties",
            "items", "minItems", "maxItems", "minLength", "maxLength", "pattern", "minimum", "maximum",
            "exclusiveMinimum", "exclusiveMaximum"}  # fmt: skip
# The JSON values that no schema keyword narrows, as rules shared by every grammar.
GENERIC = {
    "value": 'object | array | string | number | "true" | "false" | "null"',
    "object": '"{" (string ":" value ("," string ":" value)*)? "}"',
    "array": '"[" (value ("," value)*)? "]"',
    "string": '"\\"" char* "\\""',
    "char": '[^"\\\\\\x00-\\x1f] | "\\\\" (["\\\\/bfnrt] | "u" [0-9a-fA-F]{4})',
    "number": '"-"? ("0" | [1-9] [0-9]*) ("." [0-9]+)? ([eE] [-+]? [0-9]+)?',
}
GENERIC_DEPENDS = {"value": ["object", "array", "string", "number"], "object": ["string", "value"],
                   "array": ["value"], "string": ["char"]}  # fmt: skip


class SchemaError(ValueError):
    """The schema is invalid, or asks for something this grammar cannot guarantee."""


def compact_json_grammar(schema: dict[str, Any] | None) -> str:
    """The grammar of compact JSON texts that validate against schema; None: any JSON object."""
    return _Grammar(schema if schema is not None else {"type": "object"}).text()


def literal(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def alternatives(exprs: list[str]) -> str:
    return exprs[0] if len(exprs) == 1 else "(" + " | ".join(exprs) + ")"


class _Grammar:
    def __init__(self, root: dict[str, Any]) -> None:
        self.root = root
        self.rules: dict[str, str] = {}
        self.refs: dict[str, str] = {}

    def text(self) -> str:
        root = self.value(self.root, "schema")
        return "\n".join([f"root ::= {root}", *(f"{name} ::= {expr}" for name, expr in self.rules.items())])

    def generic(self, name: str) -> str:
        if name not in self.rules:
            self.rules[name] = GENERIC[name]
            for dependency in GENERIC_DEPENDS.get(name, []):
                self.generic(dependency)
        return name

    def rule(self, expr: str) -> str:
        name = f"r{len(self.rules)}"
        self.rules[name] = expr
        return name

    def value(self, schema: Any, path: str) -> str:
        if schema is True or schema == {}:
            return self.generic("value")
        if not isinstance(schema, dict):
            raise SchemaError(f"{path}: a schema must be an object or true, not {compact(schema)}")
        unknown = sorted(set(schema) - KEYWORDS - ANNOTATIONS)
        if unknown:
            raise SchemaError(f"{path}: {', '.join(unknown)} cannot be enforced by this backend's structured output")
        if "$ref" in schema:
            return self.ref(schema["$ref"], path)
        if "const" in schema:
            return literal(compact(schema["const"]))
        if "enum" in schema:
            if not isinstance(schema["enum"], list) or not schema["enum"]:
                raise SchemaError(f"{path}.enum must be a non-empty list")
            return alternatives([literal(compact(v)) for v in schema["enum"]])
        if "anyOf" in schema:
            return alternatives([self.value(s, f"{path}.anyOf[{i}]") for i, s in enumerate(schema["anyOf"])])
        if "allOf" in schema:
            rest = {k: v for k, v in schema.items() if k not in ANNOTATIONS and k != "allOf"}
            if len(schema["allOf"]) != 1 or rest:
                raise SchemaError(f"{path}.allOf: only a single schema (a $ref wrapper) can be enforced")
            return self.value(schema["allOf"][0], f"{path}.allOf[0]")
        types = schema.get("type", self.implied_type(schema))
        if types is None:
            return self.generic("value")
        if isinstance(types, list):
            return alternatives([self.typed(t, schema, path) for t in types])
        return self.typed(types, schema, path)

    @staticmethod
    def implied_type(schema: dict[str, Any]) -> str | None:
        for keyword, implied in (("properties", "object"), ("items", "array"), ("pattern", "string")):
            if keyword in schema:
                return implied
        return None

    def ref(self, ref: str, path: str) -> str:
        if ref not in self.refs:
            parts = ref.split("/")
            target = self.root.get(parts[1], {}).get(parts[2]) if len(parts) == 3 and parts[0] == "#" else None
            if target is None:
                raise SchemaError(f"{path}.$ref: {ref!r} does not name an entry of this schema's $defs")
            name = self.refs[ref] = self.rule("")  # named first, so that a recursive schema refers to itself
            self.rules[name] = self.value(target, ref)
        return self.refs[ref]

    def typed(self, type_: str, schema: dict[str, Any], path: str) -> str:
        if type_ == "null":
            return '"null"'
        if type_ == "boolean":
            return '("true" | "false")'
        if type_ == "string":
            return self.string(schema, path)
        if type_ in ("integer", "number"):
            lo, hi = integer_bounds(schema, path)
            if type_ == "integer":
                return integer(lo, hi)
            return number(lo, hi) if (lo, hi) != (None, None) else self.generic("number")
        if type_ == "array":
            return self.array(schema, path)
        if type_ == "object":
            return self.object(schema, path)
        raise SchemaError(f"{path}.type: unknown type {type_!r}")

    def string(self, schema: dict[str, Any], path: str) -> str:
        if "pattern" in schema:
            if "minLength" in schema or "maxLength" in schema:
                raise SchemaError(f"{path}: a pattern together with minLength or maxLength cannot be enforced")
            try:
                return '"\\"" ' + pattern_grammar(schema["pattern"], self.generic("char")) + ' "\\""'
            except RegexError as exc:
                raise SchemaError(f"{path}.pattern: {exc}") from None
        low, high = count_bounds(schema, "minLength", "maxLength", path)
        return '"\\"" ' + repeat(self.generic("char"), low, high) + ' "\\""'

    def array(self, schema: dict[str, Any], path: str) -> str:
        item = self.value(schema.get("items", True), f"{path}.items")
        low, high = count_bounds(schema, "minItems", "maxItems", path)
        if high == 0:
            return '"[" "]"'
        rest = repeat(f'("," {item})', max(low - 1, 0), None if high is None else high - 1)
        body = f"{item} {rest}"
        return f'"[" {body} "]"' if low > 0 else f'"[" ({body})? "]"'

    def object(self, schema: dict[str, Any], path: str) -> str:
        properties = schema.get("properties", {})
        required = schema.get("required", [])
        extra = schema.get("additionalProperties", True)
        missing = [name for name in required if name not in properties]
        if missing and extra is False:
            raise SchemaError(f"{path}.required names {missing}, which properties does not define")
        if not properties and not required:
            if extra is False:
                return '"{" "}"'
            value = self.value(extra, f"{path}.additionalProperties")
            return f'"{{" ({self.generic("string")} ":" {value} ("," {self.generic("string")} ":" {value})*)? "}}"'
        members = {name: f"{literal(compact(name))} \":\" {self.value(properties.get(name, extra), f'{path}.{name}')}"
                   for name in [*properties, *missing]}  # fmt: skip
        present = [members[name] for name in members if name in required]
        optional = [members[name] for name in members if name not in required]
        # Any subset of the optional members, in order: o_i ::= m_i ("," o_i+1)? | o_i+1
        chain = ""
        for member in reversed(optional):
            chain = self.rule(f'{member} ("," {chain})? | {chain}' if chain else member)
        if not present:
            return f'"{{" ({chain})? "}}"'
        body = ' "," '.join(present) + (f' ("," {chain})?' if chain else "")
        return f'"{{" {body} "}}"'


def count_bounds(schema: dict[str, Any], low_key: str, high_key: str, path: str) -> tuple[int, int | None]:
    low, high = schema.get(low_key, 0), schema.get(high_key)
    for key, value in ((low_key, low), (high_key, high)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise SchemaError(f"{path}.{key} must be a non-negative integer")
    if high is not None and low > high:
        raise SchemaError(f"{path}: {low_key} {low} is above {high_key} {high}")
    return low, high


def repeat(expr: str, low: int, high: int | None) -> str:
    if high is None:
        return f"{expr}*" if low == 0 else f"{expr}{{{low},}}"
    if high == low:
        return f"{expr}{{{low}}}" if low != 1 else expr
    return f"{expr}{{{low},{high}}}"


def integer_bounds(schema: dict[str, Any], path: str) -> tuple[int | None, int | None]:
    """The schema's bounds as whole numbers inside them (inclusive); None: unbounded."""
    lows, highs = [], []
    for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        value = schema.get(key)
        if value is None or isinstance(value, bool):  # a boolean exclusive* is draft 4's flag, read below
            continue
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise SchemaError(f"{path}.{key} must be a finite number")
        exclusive = key.startswith("exclusive") or schema.get("exclusive" + key[0].upper() + key[1:]) is True
        if key.endswith("inimum"):
            lows.append(math.floor(value) + 1 if exclusive else math.ceil(value))
        else:
            highs.append(math.ceil(value) - 1 if exclusive else math.floor(value))
    low, high = max(lows, default=None), min(highs, default=None)
    if low is not None and high is not None and low > high:
        raise SchemaError(f"{path}: no whole number lies between its bounds, which this backend requires")
    return low, high


def integer(low: int | None, high: int | None) -> str:
    exprs = []
    if high is None or high >= 0:
        exprs.append(alternatives(unsigned_range(max(low or 0, 0), high)))
    if low is None or low < 0:
        magnitudes = unsigned_range(max(-high, 1) if high is not None else 1, -low if low is not None else None)
        exprs.append(f'"-" {alternatives(magnitudes)}')
    return alternatives(exprs)


def number(low: int | None, high: int | None) -> str:
    """Decimals in [low, high] (whole-number bounds): a fraction everywhere but at the magnitude's upper end."""

    def magnitudes(a: int, b: int | None) -> str:
        fraction = '("." [0-9]+)?'
        if b is None:
            return f"{alternatives(unsigned_range(a, None))} {fraction}"
        exprs = [f"{alternatives(unsigned_range(a, b - 1))} {fraction}"] if a <= b - 1 else []
        return alternatives([*exprs, f'"{b}" ("." "0"+)?'])

    exprs = []
    if high is None or high >= 0:
        exprs.append(magnitudes(max(low or 0, 0), high))
    if low is None or low < 0:
        exprs.append(f'"-" {magnitudes(max(-high, 0) if high is not None else 0, -low if low is not None else None)}')
    return alternatives(exprs)


def unsigned_range(low: int, high: int | None) -> list[str]:
    """Sequences matching the decimal numbers (no leading zeros) from low to high; high None: no upper end."""
    if high is None:
        digits = len(str(low))
        return [*unsigned_range(low, 10**digits - 1), f"[1-9] [0-9]{{{digits},}}"]
    exprs = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        a = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        b = min(high, 10**digits - 1)
        if a <= b:
            exprs += _same_length(str(a), str(b))
    return exprs


def _same_length(a: str, b: str) -> list[str]:
    if a == b:
        return [literal(a)]
    if a[0] == b[0]:
        return [f"{literal(a[0])} {rest}" for rest in _same_length(a[1:], b[1:])]
    n = len(a) - 1
    tail = f" [0-9]{{{n}}}" if n > 1 else " [0-9]" if n == 1 else ""
    exprs, first, last = [], int(a[0]), int(b[0])
    if a[1:] != "0" * n:
        exprs += [f"{literal(a[0])} {rest}" for rest in _same_length(a[1:], "9" * n)]
        first += 1
    whole_last = b[1:] == "9" * n
    top = last if whole_last else last - 1
    if first <= top:
        exprs.append((f"[{first}-{top}]" if first < top else literal(str(first))) + tail)
    if not whole_last:
        exprs += [f"{literal(b[0])} {rest}" for rest in _same_length("0" * n, b[1:])]
    return exprs
