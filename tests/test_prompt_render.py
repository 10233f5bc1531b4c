"""Ollama's prompt assembly: Messages templates, legacy turn-by-turn templates, generate, FIM,
images, thinking values, capabilities and truncation.

The templates are written for these tests and every expected prompt was worked out by hand.
"""

from __future__ import annotations

import pytest
import trio

from trillama.actors.prompt.capabilities import (
    chat_template_capabilities,
    template_capabilities,
    thinking_tags,
    tool_call_tag,
)
from trillama.actors.prompt.gotemplate import TemplateError
from trillama.actors.prompt.messages import Message, ToolCall, ToolCallFunction
from trillama.actors.prompt.render import (
    PromptFormat,
    chat_messages,
    collate,
    generate_messages,
    render_chat,
    render_generate,
    truncate_messages,
)

CHATML_TOOLS = """\
{{- if or .System .Tools }}<|im_start|>system
{{ if .System }}{{ .System }}{{ end }}
{{- if .Tools }}
Tools you can use:
{{- range .Tools }}
- {{ .Function.Name }}: {{ .Function.Description }} {{ json .Function.Parameters }}
{{- end }}
Answer a tool request as <tool_call>{"name": ..., "arguments": {...}}</tool_call>.
{{- end }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if eq .Role "system" }}{{ continue }}{{ end }}
{{- if eq .Role "tool" }}<|im_start|>tool
{{ .ToolName }} returned: {{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .ToolCalls }}{{ range .ToolCalls }}<tool_call>{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}</tool_call>
{{ end }}{{ else }}{{ .Content }}
{{ end }}<|im_end|>
{{ else }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {
                "unit": {"type": "string", "enum": ["c", "f"]},
                "city": {"type": "string", "description": "City name, e.g. <Paris>"},
            },
        },
    },
}


def test_chatml_messages_template_with_tools():
    messages = [
        Message("system", "Be brief."),
        Message("user", "Weather in Paris?"),
        Message(
            "assistant",
            tool_calls=[ToolCall(ToolCallFunction("get_weather", {"unit": "c", "city": "Paris"}), id="call_ab12cd34")],
        ),
        Message("tool", "18 degrees", tool_name="get_weather"),
        Message("user", "And in <Rome> & Oslo?"),
    ]
    expected = (
        "<|im_start|>system\n"
        "Be brief.\n"
        "Tools you can use:\n"
        '- get_weather: Current weather {"type":"object","required":["city"],"properties":'
        '{"city":{"type":"string","description":"City name, e.g. \\u003cParis\\u003e"},'
        '"unit":{"type":"string","enum":["c","f"]}}}\n'
        'Answer a tool request as <tool_call>{"name": ..., "arguments": {...}}</tool_call>.<|im_end|>\n'
        "<|im_start|>user\n"
        "Weather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n"
        '<tool_call>{"name": "get_weather", "arguments": {"city":"Paris","unit":"c"}}</tool_call>\n'
        "<|im_end|>\n"
        "<|im_start|>tool\n"
        "get_weather returned: 18 degrees<|im_end|>\n"
        "<|im_start|>user\n"
        "And in <Rome> & Oslo?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_chat(CHATML_TOOLS, messages, tools=[WEATHER_TOOL]) == expected


def test_chatml_without_tools_or_system_skips_the_system_block():
    messages = [Message("user", "Hi"), Message("assistant", "Hello!"), Message("user", "Bye")]
    expected = (
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!\n<|im_end|>\n"
        "<|im_start|>user\nBye<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_chat(CHATML_TOOLS, messages) == expected


def test_chatml_tools_capabilities_and_tool_call_tag():
    assert template_capabilities(CHATML_TOOLS) == {"tools"}
    assert tool_call_tag(CHATML_TOOLS) == "<tool_call>"
    assert thinking_tags(CHATML_TOOLS) == ("", "")


LLAMA3 = """\
{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $m := .Messages }}
{{- if ne $m.Role "system" }}<|start_header_id|>{{ $m.Role }}<|end_header_id|>

{{ $m.Content }}<|eot_id|>
{{- end }}
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""


def test_llama3_style_joins_systems_and_merges_consecutive_roles():
    messages = [
        Message("system", "You are terse."),
        Message("system", "Use metric."),
        Message("user", "Hi"),
        Message("user", "Hello?"),
        Message("assistant", "Hey."),
        Message("user", "Temp?"),
    ]
    expected = (
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.\n\nUse metric.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi\n\nHello?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHey.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTemp?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render_chat(LLAMA3, messages) == expected
    assert template_capabilities(LLAMA3) == set()
    assert tool_call_tag(LLAMA3) == "{"


def test_collate_keeps_tool_results_apart():
    system, merged = collate(
        [Message("system", "a"), Message("tool", "r1"), Message("tool", "r2"), Message("system", "b")]
    )
    assert system == "a\n\nb"
    assert [(m.role, m.content) for m in merged] == [("system", "a"), ("tool", "r1"), ("tool", "r2"), ("system", "b")]


LEGACY = """\
{{ if .System }}### System:
{{ .System }}

{{ end }}### User:
{{ .Prompt }}

### Assistant:
{{ .Response }}

"""


def test_legacy_template_is_rendered_turn_by_turn_and_cut_after_response():
    messages = [
        Message("system", "S1"),
        Message("user", "U1"),
        Message("assistant", "A1"),
        Message("user", "U2"),
        Message("assistant", "A2"),
        Message("system", "S2"),
        Message("user", "U3"),
    ]
    expected = (
        "### System:\nS1\n\n### User:\nU1\n\n### Assistant:\nA1\n\n"
        "### User:\nU2\n\n### Assistant:\nA2\n\n"
        "### System:\nS2\n\n### User:\nU3\n\n### Assistant:\n"
    )
    assert render_chat(LEGACY, messages) == expected


def test_legacy_template_without_response_gets_it_appended():
    messages = [Message("user", "a"), Message("assistant", "b"), Message("user", "c")]
    assert render_chat("{{ .System }} {{ .Prompt }}", messages) == " ab c"


def test_default_template_is_prompt_only():
    assert render_chat(None, [Message("user", "hello")]) == "hello"
    assert render_chat("", [Message("user", "hi"), Message("assistant", "there"), Message("user", "next")]) == "hitherenext"


def test_messages_template_sees_no_prompt_field():
    assert render_chat("{{ range .Messages }}{{ .Content }}{{ end }}|{{ .Prompt }}", [Message("user", "x")]) == "x|<no value>"


def test_think_values():
    t = (
        "{{ if .IsThinkSet }}{{ if .Think }}on:{{ .ThinkLevel }}{{ else }}off{{ end }}{{ else }}unset{{ end }}"
        "{{ range .Messages }}/{{ .Content }}{{ end }}"
    )
    msgs = [Message("user", "q")]
    assert [render_chat(t, msgs, think=v) for v in (True, "high", False, None)] == [
        "on:medium/q", "on:high/q", "off/q", "unset/q",
    ]


def test_tool_call_arguments_are_go_float64():
    t = "{{ range .Messages }}{{ range .ToolCalls }}{{ range $k, $v := .Function.Arguments }}{{ $k }}={{ $v }} {{ end }}{{ json .Function.Arguments }}{{ end }}{{ end }}"
    msgs = [Message("assistant", tool_calls=[ToolCall(ToolCallFunction("f", {"n": 3, "big": 2000000, "ok": True}))])]
    assert render_chat(t, msgs) == 'big=2e+06 n=3 ok=true {"big":2000000,"n":3,"ok":true}'


def test_tool_json_and_tool_call_json_shapes():
    t = "{{ json .Tools }}|{{ range .Messages }}{{ json .ToolCalls }}{{ json .Images }}{{ end }}"
    tool = {"type": "function", "function": {"name": "now", "parameters": {"type": "object"}}}
    msgs = [Message("assistant", tool_calls=[ToolCall(ToolCallFunction("now", {}, index=0), id="call_x")])]
    expected = (
        '[{"type":"function","function":{"name":"now","description":"","parameters":{"type":"object","properties":null}}}]'
        '|[{"ID":"call_x","Function":{"Index":0,"Name":"now","Arguments":{}}}]null'
    )
    assert render_chat(t, msgs, tools=[tool]) == expected
    # {{ . }} on a tool prints its JSON (the type has a String method); the list prints as JSON too.
    t2 = "{{ range .Tools }}{{ . }}{{ end }}{{ range .Messages }}{{ end }}"
    assert render_chat(t2, [Message("user", "x")], tools=[tool]) == (
        '{"type":"function","function":{"name":"now","description":"","parameters":{"type":"object","properties":null}}}'
    )
    # Without .Messages the template is a legacy one, and legacy templates get no .Tools.
    assert render_chat("{{ range .Tools }}{{ . }}{{ end }}", [Message("user", "x")], tools=[tool]) == ""


def test_empty_tools_list_is_false_but_not_nil():
    t = "{{ if .Tools }}T{{ else }}F{{ end }}{{ json .Tools }}{{ range .Messages }}{{ end }}"
    assert render_chat(t, [Message("user", "x")], tools=[]) == "F[]"
    assert render_chat(t, [Message("user", "x")], tools=None) == "Fnull"


# -- images -----------------------------------------------------------------------------------------


def test_images_become_numbered_markers():
    msgs = [
        Message("user", "look", images=[b"1", b"2"]),
        Message("assistant", "ok"),
        Message("user", "and [img] here", images=[b"3", b"4"]),
    ]
    t = "{{ range .Messages }}{{ .Content }}|{{ end }}"
    assert render_chat(t, msgs) == "[img-0][img-1]look|ok|[img-3]and [img-2] here|"


def test_a_jinja_chat_template_sees_the_image_tags_too():
    jinja = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    msgs = [Message("user", "what is this?", images=[b"1"]), Message("assistant", "a cat"),
            Message("user", "and this?", images=[b"2"])]
    assert render_chat(None, msgs, chat_template=jinja) == (
        "<user>[img-0]what is this?<assistant>a cat<user>[img-1]and this?"
    )


# -- generate -----------------------------------------------------------------------------------------


def test_generate_builds_system_history_and_prompt():
    history = [Message("user", "h1"), Message("assistant", "h2")]
    t = "{{ range .Messages }}{{ .Role }}:{{ .Content }};{{ end }}"
    assert render_generate(t, "why?", system="sys", system_default="default", history=history) == (
        "system:sys;user:h1;assistant:h2;user:why?;"
    )
    # No request system: the Modelfile one; a context drops the Modelfile messages.
    assert render_generate(t, "why?", system_default="default", history=history, has_context=True) == (
        "system:default;user:why?;"
    )


def test_generate_with_legacy_template_and_images():
    assert render_generate("{{ .System }}|{{ .Prompt }}", "why?", system="sys") == "sys|why?"
    assert render_generate("{{ .Prompt }}", "describe", images=[b"a", b"b"]) == "[img-0][img-1]describe"


def test_fill_in_middle_uses_prompt_and_suffix_only():
    t = "<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>"
    assert render_generate(t, "def f(", suffix="return 1") == "<PRE> def f( <SUF>return 1 <MID>"
    assert template_capabilities(t) == {"insert"}


def test_fill_in_middle_needs_a_go_template():
    with pytest.raises(TemplateError):
        render_generate(None, "a", suffix="b", chat_template="{{ messages }}")


# -- message assembly ---------------------------------------------------------------------------------


def test_chat_messages_modelfile_system_and_history():
    history = [Message("user", "m1"), Message("assistant", "m2")]
    msgs = chat_messages([Message("user", "q")], system_default="SYS", history=history)
    assert [(m.role, m.content) for m in msgs] == [("system", "SYS"), ("user", "m1"), ("assistant", "m2"), ("user", "q")]
    own = chat_messages([Message("system", "mine"), Message("user", "q")], system_default="SYS")
    assert [(m.role, m.content) for m in own] == [("system", "mine"), ("user", "q")]


def test_chat_messages_filter_think_only_before_last_user():
    msgs = chat_messages(
        [
            Message("user", "a"),
            Message("assistant", "<think>plan</think>\n\nanswer one"),
            Message("user", "b"),
            Message("assistant", "<think>keep</think>two"),
        ],
        filter_think=True,
    )
    assert [m.content for m in msgs] == ["a", "answer one", "b", "<think>keep</think>two"]


def test_generate_messages_shape():
    msgs = generate_messages("p", system="s", images=[b"x"])
    assert [(m.role, m.content, len(m.images)) for m in msgs] == [("system", "s", 0), ("user", "p", 1)]


# -- thinking capability --------------------------------------------------------------------------------

THINKING = """\
{{- range .Messages }}<|im_start|>{{ .Role }}
{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ .Content }}<|im_end|>
{{ end }}<|im_start|>assistant
"""


def test_thinking_tags_are_inferred_from_the_template():
    assert thinking_tags(THINKING) == ("<think>", "</think>")
    assert template_capabilities(THINKING) == {"thinking"}
    msgs = [Message("user", "q"), Message("assistant", "a", thinking="t"), Message("user", "r")]
    assert render_chat(THINKING, msgs) == (
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n<think>t</think>a<|im_end|>\n"
        "<|im_start|>user\nr<|im_end|>\n<|im_start|>assistant\n"
    )


def test_thinking_outside_range_messages_does_not_count():
    assert thinking_tags("<think>{{ .Thinking }}</think>") == ("", "")


def test_jinja_capability_rules():
    assert chat_template_capabilities("{% if tools %}x{% endif %}<think></think>") == {"tools", "thinking"}
    assert chat_template_capabilities("{{ messages }}") == set()


def test_tag_read_from_first_text_of_tool_calls_block():
    t = "{{ range .Messages }}{{ if .ToolCalls }} [TOOL_CALLS] {{ range .ToolCalls }}{{ json .Function }}{{ end }}{{ end }}{{ end }}"
    assert tool_call_tag(t) == "[TOOL_CALLS]"
    # An action before any text means no tag: fall back to "{".
    t2 = "{{ range .Messages }}{{ if .ToolCalls }}{{ .Role }}<x>{{ end }}{{ end }}"
    assert tool_call_tag(t2) == "{"


# -- PromptFormat ----------------------------------------------------------------------------------------


def test_prompt_format_prefers_go_template_over_chat_template():
    pf = PromptFormat(template=CHATML_TOOLS, chat_template="{{ 'jinja' }}", system="SYS")
    assert not pf.uses_jinja
    assert pf.capabilities() == {"tools"}
    msgs = pf.chat_messages([Message("user", "Hi")])
    assert pf.render(msgs) == "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    jinja_only = PromptFormat(chat_template="{% for m in messages %}{{ m.content }}{% endfor %}<think></think>")
    assert jinja_only.uses_jinja
    assert jinja_only.render([Message("user", "Hi")]) == "Hi<think></think>"
    assert jinja_only.thinking_tags() == ("<think>", "</think>")


def test_prompt_format_validate_reports_template_errors():
    with pytest.raises(TemplateError, match="unexpected EOF"):
        PromptFormat(template="{{ if .System }}").validate()


# -- truncation -------------------------------------------------------------------------------------------

WORDS = "{{ range .Messages }}{{ .Content }} {{ end }}"
CONVERSATION = [
    Message("system", "sys"),
    Message("user", "one two three"),
    Message("assistant", "four five"),
    Message("user", "six"),
]


def words(prompt: str) -> int:
    return len(prompt.split())


def render_words(msgs):
    return render_chat(WORDS, msgs)


async def test_truncation_keeps_everything_that_fits():
    result = await truncate_messages(CONVERSATION, words, 7, render=render_words)
    assert result.dropped == 0
    assert result.prompt == "sys one two three four five six "
    assert result.tokens == 7


async def test_truncation_drops_oldest_non_system_messages():
    result = await truncate_messages(CONVERSATION, words, 5, render=render_words)
    assert [m.content for m in result.messages] == ["sys", "four five", "six"]
    assert result.prompt == "sys four five six "
    assert (result.tokens, result.dropped) == (4, 1)


async def test_truncation_always_keeps_the_last_message():
    result = await truncate_messages(CONVERSATION, words, 1, render=render_words)
    assert [m.content for m in result.messages] == ["sys", "six"]
    assert (result.tokens, result.dropped) == (2, 2)


async def test_truncation_accepts_an_async_tokenizer_and_counts_images():
    calls = []

    async def count(prompt: str) -> int:
        calls.append(prompt)
        await trio.sleep(0)
        return words(prompt)

    convo = [Message("user", "a b", images=[b"i"]), Message("user", "c")]
    # With 10 tokens per image the first candidate (3 words + 10) does not fit in 5.
    result = await truncate_messages(
        [convo[0], Message("assistant", "x"), convo[1]], count, 5, render=render_words, image_tokens=10
    )
    assert [m.content for m in result.messages] == ["x", "c"]
    assert len(calls) == result.probes == 3  # everything, the last message, the cut between


def _brute_force_cut(lengths: list[int], limit: int) -> int:
    """The oldest cut whose kept messages (one word of markup each) fit in ``limit`` words."""
    for start in range(len(lengths)):
        if sum(lengths[start:]) + (len(lengths) - start) <= limit:
            return start
    return len(lengths) - 1


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_truncating_a_long_conversation_renders_it_a_few_times_not_once_per_message(seed):
    # Issue 24: every dropped message used to re-render and re-count the whole rest (n² work).
    import random

    rnd = random.Random(seed)
    lengths = [rnd.choice([1, 2, 3, 5, 8, 40, 300]) for _ in range(10_000)]
    convo = [Message("user" if i % 2 == 0 else "assistant", " ".join(["w"] * n)) for i, n in enumerate(lengths)]
    rendered = []

    def render(msgs):
        rendered.append(len(msgs))
        return " ".join(f"<{m.role}> {m.content}" for m in msgs)

    result = await truncate_messages(convo, words, 4096, render=render)
    start = _brute_force_cut(lengths, 4096)
    assert result.dropped == start and result.tokens <= 4096
    assert result.messages == tuple(convo[start:])
    # the whole conversation once, then a few candidates about the size of what is kept
    assert len(rendered) <= 16, rendered
    assert sum(rendered) <= len(convo) + 12 * (len(convo) - start), (sum(rendered), len(convo) - start)
    assert result.probes == len(rendered)


async def test_truncation_keeps_system_messages_from_the_dropped_part_of_a_long_conversation():
    convo = [Message("system", "rules")] + [Message("user", "w " * 9) for _ in range(5000)]
    convo.insert(2500, Message("system", "more rules"))
    result = await truncate_messages(convo, words, 1000, render=render_words)
    assert [m.content for m in result.messages[:2]] == ["rules", "more rules"]
    assert result.tokens <= 1000 and len(result.messages) == 2 + 1000 // 9 - 1
