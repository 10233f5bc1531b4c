"""Streaming tool-call extraction and the thinking splitter, fed whole and one character at a time."""

from __future__ import annotations

import itertools
import re

import pytest

from trillama.actors.prompt.toolcalls import ThinkingSplitter, ToolCallParser, new_call_id, prompt_opens_thinking

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}},
    {"type": "function", "function": {"name": "get_time"}},
]


def counter_ids():
    n = itertools.count()
    return lambda: f"call_{next(n):08d}"


def run_parser(text: str, *, tag: str, tools=TOOLS, step: int | None = None):
    """Feed ``text`` whole (step None) or in pieces of ``step`` characters; collect everything."""
    parser = ToolCallParser(tools, tag, id_factory=counter_ids())
    pieces = [text] if step is None else [text[i : i + step] for i in range(0, len(text), step)]
    content = []
    calls = []
    for piece in pieces:
        out = parser.feed(piece)
        content.append(out.content)
        calls.extend(out.calls)
    end = parser.flush()
    content.append(end.content)
    calls.extend(end.calls)
    return "".join(content), [c.as_json() for c in calls]


BOTH_WAYS = pytest.mark.parametrize("step", [None, 1, 3])


@BOTH_WAYS
def test_tagged_call_after_text(step):
    text = 'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    content, calls = run_parser(text, tag="<tool_call>", step=step)
    assert content == "Let me check."
    assert calls == [{"id": "call_00000000", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]


@BOTH_WAYS
def test_several_calls_in_a_row(step):
    text = (
        '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "A"}}, '
        '{"name": "get_time", "arguments": {"tz": "UTC"}}]'
    )
    content, calls = run_parser(text, tag="[TOOL_CALLS]", step=step)
    assert content == ""
    assert [(c["function"]["index"], c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        (0, "get_weather", {"city": "A"}),
        (1, "get_time", {"tz": "UTC"}),
    ]


@BOTH_WAYS
def test_brace_tag_with_parameters_as_a_json_string(step):
    text = '  {"name": "get_weather", "parameters": "{\\"city\\": \\"Oslo\\"}"}'
    content, calls = run_parser(text, tag="{", step=step)
    assert content == "  "
    assert calls[0]["function"]["name"] == "get_weather"
    assert calls[0]["function"]["arguments"] == {"city": "Oslo"}


@BOTH_WAYS
def test_braces_and_escapes_inside_strings_do_not_confuse_the_scanner(step):
    text = '<tool_call>{"name": "get_weather", "arguments": {"code": "if (x) { y(\\"}\\") }", "q": "\\\\"}}</tool_call>'
    content, calls = run_parser(text, tag="<tool_call>", step=step)
    assert content == ""
    assert calls[0]["function"]["arguments"] == {"code": 'if (x) { y("}") }', "q": "\\"}


@BOTH_WAYS
def test_brace_tag_after_text_is_plain_content(step):
    text = 'Sure: {"name": "get_weather", "arguments": {}}'
    content, calls = run_parser(text, tag="{", step=step)
    assert content == text
    assert calls == []


@BOTH_WAYS
def test_json_that_is_not_a_call_passes_through(step):
    text = '{"answer": 42, "note": "get"} and more'
    content, calls = run_parser(text, tag="{", step=step)
    assert content == text
    assert calls == []


@BOTH_WAYS
def test_longest_tool_name_wins(step):
    tools = ["get", "get_weather"]
    content, calls = run_parser('{"name": "get_weather", "arguments": {"a": 1}}', tag="{", tools=tools, step=step)
    assert [c["function"]["name"] for c in calls] == ["get_weather"]


@BOTH_WAYS
def test_arguments_under_a_key_named_after_the_tool(step):
    content, calls = run_parser('<tool_call>{"get_time": {"tz": "CET"}}</tool_call>', tag="<tool_call>", step=step)
    assert calls[0]["function"] == {"index": 0, "name": "get_time", "arguments": {"tz": "CET"}}


@BOTH_WAYS
def test_bare_object_after_the_name_is_the_arguments(step):
    content, calls = run_parser('<tool_call>get_weather {"city": "Rome"}</tool_call>', tag="<tool_call>", step=step)
    assert calls[0]["function"]["arguments"] == {"city": "Rome"}


@BOTH_WAYS
def test_name_without_arguments_is_a_call_with_none(step):
    content, calls = run_parser('{"name": "get_time"}', tag="{", step=step)
    assert calls[0]["function"] == {"index": 0, "name": "get_time", "arguments": {}}


def test_partial_tag_is_held_back_then_released():
    parser = ToolCallParser(TOOLS, "<tool_call>")
    assert parser.feed("abc<tool").content == "abc"
    assert parser.holding
    assert parser.feed("s are fun").content == "<tools are fun"
    assert not parser.holding


def test_partial_tag_at_end_of_stream_is_returned_by_flush():
    parser = ToolCallParser(TOOLS, "<tool_call>")
    assert parser.feed("x <tool_c").content == "x "
    assert parser.flush().content == "<tool_c"


def test_unparsable_call_text_comes_back_at_the_end():
    parser = ToolCallParser(TOOLS, "<tool_call>")
    assert parser.feed("<tool_call>{broken").content == ""
    assert parser.flush().content == "<tool_call>{broken"


def test_text_after_calls_is_dropped_with_a_tag():
    parser = ToolCallParser(TOOLS, "<tool_call>", id_factory=counter_ids())
    out = parser.feed('<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\nDone.')
    assert len(out.calls) == 1 and out.content == ""
    assert parser.flush().content == ""
    assert parser.calls_found == 1


def test_call_ids_look_like_ollamas():
    ids = {new_call_id() for _ in range(50)}
    assert all(re.fullmatch(r"call_[a-z0-9]{8}", i) for i in ids)
    assert len(ids) > 1
    parser = ToolCallParser(TOOLS, "{")
    (call,) = parser.feed('{"name": "get_time", "arguments": {}}').calls
    assert re.fullmatch(r"call_[a-z0-9]{8}", call.id)


# -- thinking ------------------------------------------------------------------------------------------


def split_all(text: str, step: int | None, **kwargs) -> tuple[str, str]:
    splitter = ThinkingSplitter(**kwargs)
    pieces = [text] if step is None else [text[i : i + step] for i in range(0, len(text), step)]
    thinking, content = [], []
    for piece in pieces:
        out = splitter.feed(piece)
        thinking.append(out.thinking)
        content.append(out.content)
    end = splitter.flush()
    return "".join(thinking) + end.thinking, "".join(content) + end.content


@BOTH_WAYS
def test_thinking_block_is_split_off(step):
    assert split_all("<think>\nreasoning here\n</think>\n\nAnswer.", step) == ("reasoning here\n", "Answer.")


@BOTH_WAYS
def test_no_thinking_keeps_content_untouched(step):
    assert split_all("  Hello <think>x</think>", step) == ("", "  Hello <think>x</think>")


@BOTH_WAYS
def test_started_inside_thinking(step):
    assert split_all("abc</think>def", step, started=True) == ("abc", "def")


@BOTH_WAYS
def test_custom_tags(step):
    assert split_all("[T]a[/T]b", step, opening="[T]", closing="[/T]") == ("a", "b")


def test_unfinished_thinking_is_flushed_as_thinking():
    splitter = ThinkingSplitter()
    assert splitter.feed("<think>abc</th").thinking == "abc"
    assert splitter.in_thinking
    assert splitter.flush().thinking == "</th"


def test_prompt_opens_thinking():
    assert prompt_opens_thinking("<|im_start|>assistant\n<think>\n", "<think>")
    assert not prompt_opens_thinking("<|im_start|>assistant\n", "<think>")
