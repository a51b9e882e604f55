"""Tool calls out of generated text: each format on recorded-style outputs, malformed ones, and stream == whole."""

from __future__ import annotations

import json
import random

import pytest

from engine_server.tool_parsers import (
    FORMATS,
    Call,
    Content,
    Event,
    Parsed,
    StreamParser,
    ToolCall,
    detect_format,
    parse,
)

TOOLS = ("get_weather", "search", "now")


def call(name: str, arguments: str) -> ToolCall:
    return ToolCall(name, arguments)


WEATHER = call("get_weather", '{"city":"Paris","days":2}')

# (format, generated text, expected content, expected calls)
SAMPLES: list[tuple[str, str, str | None, list[ToolCall]]] = [
    # hermes / Qwen
    (
        "hermes",
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n</tool_call>',
        None,
        [WEATHER],
    ),
    (
        "hermes",
        'Let me check both.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}\n'
        '</tool_call>\n<tool_call>{"name": "search", "arguments": {"q": "Paris events"}}</tool_call>\nOne moment.',
        "Let me check both.\n\n\nOne moment.",
        [WEATHER, call("search", '{"q":"Paris events"}')],
    ),
    (
        "hermes",
        '<tool_call>{"name": "search", "arguments": {"q": "a } ] \\" <tool_call>", "opts": {"n": [1, {"k": null}]}}}'
        "</tool_call>",
        None,
        [call("search", '{"q":"a } ] \\" <tool_call>","opts":{"n":[1,{"k":null}]}}')],
    ),
    (
        "hermes",
        '<tool_call>{"name": "search", "arguments": "{\\"q\\": \\"caf\\u00e9 \\u2615\\"}"}</tool_call>',
        None,
        [call("search", '{"q":"café ☕"}')],
    ),
    (
        "hermes",
        '<tool_call>{"name": "search", "parameters": {"q": "日本語"}}</tool_call>',
        None,
        [call("search", '{"q":"日本語"}')],
    ),
    ("hermes", '<tool_call>{"name": "now"}</tool_call>', None, [call("now", "{}")]),
    ("hermes", "Just text, a < and a <tool without a call.", "Just text, a < and a <tool without a call.", []),
    # llama3_json
    (
        "llama3_json",
        '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}',
        None,
        [WEATHER],
    ),
    (
        "llama3_json",
        '  {"name": "get_weather", "parameters": {"city": "Paris", "days": 2}}; '
        '{"name": "search", "arguments": {"q": "x \\" } {", "deep": {"a": {"b": [true, false]}}}}',
        None,
        [WEATHER, call("search", '{"q":"x \\" } {","deep":{"a":{"b":[true,false]}}}')],
    ),
    ("llama3_json", "The weather in Paris is {sunny}.", "The weather in Paris is {sunny}.", []),
    # pythonic
    ("pythonic", '[get_weather(city="Paris", days=2)]', None, [WEATHER]),
    (
        "pythonic",
        '<|python_start|>[get_weather(city="Paris", days=2), search(q="naïve \\"q\\" }", x=[1, 2], '
        'y={"a": None, "b": True, "c": (1.5, -2)})]<|python_end|>',
        None,
        [WEATHER, call("search", '{"q":"naïve \\"q\\" }","x":[1,2],"y":{"a":null,"b":true,"c":[1.5,-2]}}')],
    ),
    ("pythonic", "[1] is the reference.", "[1] is the reference.", []),
    ("pythonic", "Sure: [get_weather(city='Paris')]", "Sure: [get_weather(city='Paris')]", []),
    # json (the constrained "required" output)
    (
        "json",
        '[{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}, '
        '{"name": "search", "parameters": {"q": "[{\\"\\\\}]"}}]',
        None,
        [WEATHER, call("search", '{"q":"[{\\"\\\\}]"}')],
    ),
    ("json", '{"name": "get_weather", "arguments": {"city": "Paris", "days": 2}}', None, [WEATHER]),
    (
        "json",
        '```json\n[{"name": "search", "arguments": {"q": "€ and \\ud83d\\ude00"}}]\n```\n',
        None,
        [call("search", '{"q":"€ and 😀"}')],
    ),
    ("json", "I cannot call a tool for that.", "I cannot call a tool for that.", []),
]

MALFORMED: list[tuple[str, str]] = [
    ("hermes", '<tool_call>{"name": "search", "arguments": {"q": "x"}</tool_call>'),  # bad JSON
    ("hermes", '<tool_call>{"name": "delete_all", "arguments": {}}</tool_call>'),  # unknown tool
    ("hermes", 'Checking.\n<tool_call>{"name": "search", "arguments": {"q": "x"}}'),  # unclosed tag
    ("hermes", '<tool_call>{"name": "search", "arguments": ["x"]}</tool_call>'),  # arguments a list
    ("hermes", '<tool_call>{"name": "search", "arguments": "[1]"}</tool_call>'),  # string holding a list
    ("hermes", '<tool_call>{"name": "search", "arguments": {"q": NaN}}</tool_call>'),  # not JSON
    ("hermes", '<tool_call>{"name": "search", "arguments": {"q": "trunc'),  # hit max_tokens
    ("llama3_json", '{"name": "search", "parameters": {"q": "trunc'),
    ("llama3_json", '<|python_tag|>{"name": "nope", "parameters": {}}'),
    ("llama3_json", '{"name": "search", "parameters": [1, 2]}'),
    ("pythonic", '[search("positional")]'),
    ("pythonic", "[search(q=some_variable)]"),
    ("pythonic", "[search(**opts)]"),
    ("pythonic", '[nope(q="x")]'),
    ("pythonic", '[search(q="trunc'),
    ("pythonic", "[search(q={1, 2})]"),  # a set has no JSON form
    ("json", '[{"name": "search", "arguments": {"q": "trunc'),
    ("json", '[{"name": "search", "arguments": "not json"}]'),
    ("json", "[]"),
    ("json", '{"name": "search"'),
]


def run_stream(fmt: str, pieces: list[str]) -> tuple[str, list[ToolCall]]:
    parser = StreamParser(fmt, TOOLS)
    events: list[Event] = []
    for piece in pieces:
        events += parser.feed(piece)
    events += parser.finish()
    content = "".join(event.text for event in events if isinstance(event, Content))
    return content, [event.call for event in events if isinstance(event, Call)]


def assert_stream_matches(fmt: str, text: str) -> None:
    """Every split of text gives what parse() gives, down to the unstripped content."""
    parsed = parse(fmt, text, TOOLS)
    whole = run_stream(fmt, [text])
    assert (whole[0].strip() or None, whole[1]) == (parsed.content, parsed.calls)
    assert run_stream(fmt, list(text)) == whole
    for i in range(len(text) + 1):
        assert run_stream(fmt, [text[:i], text[i:]]) == whole, (fmt, text, i)


def assert_arguments_are_objects(calls: list[ToolCall]) -> None:
    for tool_call in calls:
        assert isinstance(json.loads(tool_call.arguments), dict)


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), SAMPLES)
def test_recorded_outputs(fmt: str, text: str, content: str | None, calls: list[ToolCall]) -> None:
    assert parse(fmt, text, TOOLS) == Parsed(content, calls)
    assert_arguments_are_objects(calls)


@pytest.mark.parametrize(("fmt", "text", "content", "calls"), SAMPLES)
def test_stream_matches_parse_at_every_split(fmt: str, text: str, content: str | None, calls: list[ToolCall]) -> None:
    assert_stream_matches(fmt, text)


@pytest.mark.parametrize(("fmt", "text"), MALFORMED)
def test_malformed_is_content_verbatim(fmt: str, text: str) -> None:
    assert parse(fmt, text, TOOLS) == Parsed(text.strip(), [])
    assert_stream_matches(fmt, text)


def test_no_markup_reaches_content_around_good_calls() -> None:
    text = 'Hi <tool_call>{"name": "now", "arguments": {}}</tool_call> bye'
    assert parse("hermes", text, TOOLS) == Parsed("Hi  bye", [call("now", "{}")])
    assert parse("llama3_json", '<|python_tag|>{"name": "now", "parameters": {}}', TOOLS) == Parsed(
        None, [call("now", "{}")]
    )


def test_a_bad_block_between_good_ones_stays_content() -> None:
    good = '<tool_call>{"name": "now", "arguments": {}}</tool_call>'
    bad = '<tool_call>{"name": "rm", "arguments": {}}</tool_call>'
    assert parse("hermes", good + bad + good, TOOLS) == Parsed(bad, [call("now", "{}")] * 2)


def test_calls_before_a_break_are_kept_and_the_rest_is_content() -> None:
    # Calls are streamed as their objects close, so one already sent stays a call; what follows is content.
    text = '[{"name": "now", "arguments": {}}, {"name": "search", "arguments": {"q": "trunc'
    assert parse("json", text, TOOLS) == Parsed(', {"name": "search", "arguments": {"q": "trunc', [call("now", "{}")])
    text = '{"name": "now", "parameters": {}}; and then some prose'
    assert parse("llama3_json", text, TOOLS) == Parsed("; and then some prose", [call("now", "{}")])
    assert_stream_matches("json", text)


def test_an_array_cut_anywhere_keeps_the_calls_it_completed() -> None:
    # tool_choice "required" cut by max_tokens: every element closed before the cut is a call, whole or streamed.
    elements = [
        '{"name":"search","arguments":{"q":"a]}"}}',
        '{"name":"now","arguments":{}}',
        '{"name":"now","arguments":{}}',
    ]
    text = "[" + ",".join(elements) + "]"
    ends = [len("[" + ",".join(elements[: k + 1])) for k in range(len(elements))]
    for cut in range(len(text) + 1):
        expected = [call("search", '{"q":"a]}"}'), call("now", "{}"), call("now", "{}")][: sum(e <= cut for e in ends)]
        assert parse("json", text[:cut], TOOLS).calls == expected, cut
        parser = StreamParser("json", TOOLS)
        streamed = [e.call for char in text[:cut] for e in parser.feed(char) if isinstance(e, Call)]
        assert streamed == expected, cut  # each as its object closes, before the end of the output
        assert [e for e in parser.finish() if isinstance(e, Call)] == []


def test_hermes_emits_text_early_and_holds_only_a_possible_tag() -> None:
    parser = StreamParser("hermes", TOOLS)
    assert parser.feed("Hello <tool_") == [Content("Hello ")]
    assert parser.feed('call>{"name": "now", ') == []
    assert parser.feed('"arguments": {}}</tool_call> x <') == [Call(call("now", "{}")), Content(" x ")]
    assert parser.feed("b>") == [Content("<b>")]
    assert parser.finish() == []


def test_hermes_unclosed_block_is_flushed_at_finish() -> None:
    parser = StreamParser("hermes", TOOLS)
    assert parser.feed('a<tool_call>{"name": "now"') == [Content("a")]
    assert parser.finish() == [Content('<tool_call>{"name": "now"')]


@pytest.mark.parametrize("fmt", ["json", "llama3_json"])
def test_json_calls_are_emitted_as_each_object_closes(fmt: str) -> None:
    parser = StreamParser(fmt, TOOLS)
    opener = "[" if fmt == "json" else ""
    separator = ", " if fmt == "json" else "; "
    assert parser.feed(opener + '{"name": "now", "arguments": {"a": "}"') == []
    assert parser.feed("}}") == [Call(call("now", '{"a":"}"}'))]
    assert parser.feed(separator + '{"name": "search", "arguments": {}}') == [Call(call("search", "{}"))]
    assert parser.finish() == []


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("json", '```json\n[{"name": "now", "arguments": {}}]\n```\n'),
        ("json", '```\n{"name": "now", "arguments": {}}\n'),  # the closing fence cut off by max_tokens
        ("llama3_json", ' <|python_tag|> {"name": "now", "parameters": {}} \n'),
        ("hermes", '<tool_call>\n{"name": "now", "arguments": {}}\n</tool_call>'),
        ("pythonic", " <|python_start|>[now()]<|python_end|>\n"),
    ],
)
def test_a_lone_call_streams_no_content_event(fmt: str, text: str) -> None:
    parser = StreamParser(fmt, TOOLS)
    events = [event for char in text for event in parser.feed(char)] + parser.finish()
    assert events == [Call(call("now", "{}"))]


@pytest.mark.parametrize("opening", ["", "```json\n"])
def test_a_fence_not_opened_is_content(opening: str) -> None:
    parser = StreamParser("json", TOOLS)
    closing = "\n```" if opening else ""
    events = parser.feed(opening + '[{"name": "now", "arguments": {}}]' + closing + "\n```") + parser.finish()
    assert events == [Call(call("now", "{}")), Content("\n```")]


@pytest.mark.parametrize("fmt", ["json", "llama3_json", "pythonic"])
def test_prose_is_emitted_as_soon_as_it_cannot_be_calls(fmt: str) -> None:
    parser = StreamParser(fmt, TOOLS)
    assert parser.feed("  ") == []
    assert parser.feed("Sure") == [Content("  Sure")]
    assert parser.feed(", here.") == [Content(", here.")]
    assert parser.finish() == []


def test_pythonic_holds_a_possible_call_list_until_the_end() -> None:
    parser = StreamParser("pythonic", TOOLS)
    assert parser.feed("[get_weather(") == []
    assert parser.feed('city="Paris", days=2)]') == []
    assert parser.finish() == [Call(WEATHER)]
    parser = StreamParser("pythonic", TOOLS)
    assert parser.feed("[see") == []
    assert parser.feed(" page 2]") == [Content("[see page 2]")]


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown tool call format 'xml'"):
        StreamParser("xml", TOOLS)


FRAGMENTS = [
    "<tool_call>",
    "</tool_call>",
    "<tool_",
    "{",
    "}",
    "[",
    "]",
    '"',
    "\\",
    ",",
    ";",
    ":",
    " ",
    "\n",
    "text",
    '"name"',
    '"now"',
    '"search"',
    '"arguments"',
    '"parameters"',
    "{}",
    "null",
    "<|python_tag|>",
    "<|python_start|>",
    "<|python_end|>",
    "```",
    "json",
    "now(",
    "search(q=",
    "1",
    ")",
    "=",
    '{"name": "now", "arguments": {}}',
    '<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>',
    "now()",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_random_fragments_never_raise_and_stream_equals_parse(fmt: str) -> None:
    rng = random.Random(f"tool-parsers-{fmt}")
    num_with_calls = 0
    for _ in range(400):
        text = "".join(rng.choice(FRAGMENTS) for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.3:  # near misses: a recorded output of this format, cut or with a fragment put in
            sample = rng.choice([sample for sample in SAMPLES if sample[0] == fmt])[1]
            at = rng.randint(0, len(sample))
            text = sample[:at] + rng.choice(["", text]) + sample[at:] if rng.random() < 0.7 else sample[:at]
        parsed = parse(fmt, text, TOOLS)
        num_with_calls += bool(parsed.calls)
        assert_arguments_are_objects(parsed.calls)
        whole = run_stream(fmt, [text])
        assert (whole[0].strip() or None, whole[1]) == (parsed.content, parsed.calls)
        cuts = sorted(rng.sample(range(len(text) + 1), min(3, len(text) + 1)))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        assert run_stream(fmt, pieces) == whole, (fmt, text, cuts)
        assert run_stream(fmt, list(text)) == whole, (fmt, text)
    assert num_with_calls > 0  # the fragments do make calls sometimes, so both paths are exercised


@pytest.mark.parametrize(
    ("template", "fmt"),
    [
        ("{% for t in tools %}<tool_call>{{ t | tojson }}</tool_call>{% endfor %}", "hermes"),
        ("{{- '<|python_tag|>' + tool_call.name }}", "llama3_json"),
        (
            "<|start_header_id|>user<|end_header_id|>Respond in JSON: "
            '{"name": function name, "parameters": dictionary of argument name and its value}',
            "llama3_json",
        ),
        (
            "<|start_header_id|>system<|end_header_id|>Here is a list of functions in JSON format. "
            "[func_name1(params_name1=params_value1, params_name2=params_value2...), func_name2(params)]",
            "pythonic",
        ),
        ("{{ messages[0].content }}", "hermes"),
        (None, "hermes"),
    ],
)
def test_detect_format(template: str | None, fmt: str) -> None:
    assert detect_format(template) == fmt
