"""A JSON Schema `pattern` (ECMA-262 regular expression) as EBNF over the characters of a JSON string's text.

The grammar describes the string as written in JSON, so a character that JSON must escape is written escaped when
the pattern names it literally, and is left out where a class or `.` would allow it (a subset: still a match).
Supported: literals and escapes, `.`, classes (`\\d \\w \\s`, ranges, negation), groups (plain and `(?:`),
alternation, the quantifiers `* + ? {m} {m,} {m,n}` (greedy or lazy), `^` at the start and `$` at the end.
Lookarounds and backreferences are refused with RegexError.
"""

from __future__ import annotations

import json

SHORTHAND = {"d": "0-9", "w": "a-zA-Z0-9_", "s": " "}  # \s: the space only (JSON escapes the other whitespace)
NOT_IN_STRING = '"\\\\\\x00-\\x1f'  # in a class: what JSON does not allow unescaped in a string


class RegexError(ValueError):
    pass


def pattern_grammar(pattern: str, char_rule: str) -> str:
    """EBNF for the JSON string contents that match pattern; char_rule names the rule of any one JSON character."""
    anchored_start = pattern.startswith("^")
    anchored_end = pattern.endswith("$") and not pattern.endswith("\\$")
    body = pattern[1 if anchored_start else 0 : len(pattern) - 1 if anchored_end else len(pattern)]
    parser = _Parser(body)
    expr = parser.alternation()
    if parser.pos != len(body):
        raise RegexError(f"unbalanced ')' at {parser.pos + anchored_start}")
    # Unanchored, a pattern matches anywhere in the string.
    return " ".join([*([] if anchored_start else [f"{char_rule}*"]), f"({expr})",
                     *([] if anchored_end else [f"{char_rule}*"])])  # fmt: skip


def _literal(char: str) -> str:
    encoded = json.dumps(char, ensure_ascii=False)[1:-1]  # as JSON writes it inside a string
    return '"' + encoded.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _class_char(char: str) -> str:
    if char in "]\\^-[":
        return "\\" + char
    if char == '"' or ord(char) < 0x20:
        raise RegexError(f"a range ending at {char!r}, which JSON escapes, is not supported")
    return char


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def take(self) -> str:
        char = self.peek()
        if not char:
            raise RegexError("the pattern ends too early")
        self.pos += 1
        return char

    def alternation(self) -> str:
        branches = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            branches.append(self.sequence())
        return " | ".join(branch or '""' for branch in branches)

    def sequence(self) -> str:
        items = []
        while self.peek() not in ("", "|", ")"):
            items.append(self.quantified(self.atom()))
        return " ".join(items)

    def atom(self) -> str:
        char = self.take()
        if char == "(":
            if self.text.startswith("?:", self.pos):
                self.pos += 2
            elif self.peek() == "?":
                raise RegexError("lookarounds and named groups are not supported")
            inner = self.alternation()
            if self.take() != ")":
                raise RegexError("a group is not closed")
            return f"({inner})"
        if char == "[":
            return self.char_class()
        if char == ".":
            return f"[^{NOT_IN_STRING}]"
        if char == "\\":
            return self.escape()
        if char in "^$":
            raise RegexError(f"{char!r} is supported only at the pattern's start or end")
        if char in "*+?{":
            raise RegexError(f"nothing to repeat before {char!r} at {self.pos - 1}")
        return _literal(char)

    def escape(self) -> str:
        char = self.take()
        if char in SHORTHAND:
            return f"[{SHORTHAND[char]}]"
        if char in "DWS":
            return f"[^{SHORTHAND[char.lower()]}{NOT_IN_STRING}]"
        if char.isdigit() or char in "bBkpPux":
            raise RegexError(f"\\{char} is not supported")
        return _literal({"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}.get(char, char))

    def char_class(self) -> str:
        negated = self.peek() == "^"
        if negated:
            self.pos += 1
        parts = []
        first = True
        while first or self.peek() != "]":
            first = False
            char = self.take()
            if char == "\\":
                escaped = self.take()
                if escaped in SHORTHAND:
                    parts.append(SHORTHAND[escaped])
                    continue
                if escaped.isalpha() and escaped not in "nrtfv":
                    raise RegexError(f"\\{escaped} in a class is not supported")
                char = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v"}.get(escaped, escaped)
            if self.peek() == "-" and self.text[self.pos + 1 : self.pos + 2] not in ("]", ""):
                self.pos += 1
                high = self.take()
                if high == "\\":
                    high = self.take()
                parts.append(f"{_class_char(char)}-{_class_char(high)}")
            elif char == '"' or char == "\\" or ord(char) < 0x20:
                # JSON escapes it: a plain class cannot offer it; leave it out (negated classes exclude it anyway).
                continue
            else:
                parts.append(_class_char(char))
        self.pos += 1  # the closing ]
        if negated:
            return f"[^{''.join(parts)}{NOT_IN_STRING}]"
        if not parts:
            raise RegexError("a class offers no character that can be written unescaped in JSON")
        return f"[{''.join(parts)}]"

    def quantified(self, atom: str) -> str:
        char = self.peek()
        if char in ("*", "+", "?"):
            self.pos += 1
            quantifier = char
        elif char == "{" and self._bounds() is not None:
            quantifier = self._take_bounds()
        else:
            return atom
        if self.peek() == "?":  # lazy: the same strings
            self.pos += 1
        return f"{atom}{quantifier}"

    def _bounds(self) -> str | None:
        end = self.text.find("}", self.pos)
        inner = self.text[self.pos + 1 : end] if end > 0 else ""
        low, _, high = inner.partition(",")
        return inner if low.isdigit() and (high == "" or high.isdigit()) else None

    def _take_bounds(self) -> str:
        inner = self._bounds()
        assert inner is not None
        self.pos += len(inner) + 2
        low, comma, high = inner.partition(",")
        if high and int(high) < int(low):
            raise RegexError(f"{{{inner}}}: the upper count is below the lower")
        return f"{{{low}{comma}{high}}}"
