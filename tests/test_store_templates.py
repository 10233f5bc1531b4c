"""Chat-format detection from GGUF chat templates, and the template inspectors the store is given."""

from __future__ import annotations

import pytest

from trillama.actors.prompt.inspector import GoTemplateInspector
from trillama.store.templates import CHAT_FORMATS, NullTemplateInspector, detect_chat_format

INSPECTOR = GoTemplateInspector()


@pytest.mark.parametrize(
    ("jinja", "name"),
    [
        ("{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>'}}", "chatml"),
        ("{{ '<start_of_turn>' + role + '\\n' + content + '<end_of_turn>' }}", "gemma-instruct"),
        ("{%- set first_user_prefix = '' -%}<start_of_turn>user", "gemma3-instruct"),
        ("<|start_header_id|>{{ role }}<|end_header_id|>\\n\\n{{ content }}<|eot_id|>", "llama3-instruct"),
        ("[INST] <<SYS>>\\n{{ system }}\\n<</SYS>>\\n\\n{{ user }} [/INST]", "llama2-chat"),
        ("{{ '[INST] ' + content + '[/INST]' }}", "mistral-instruct"),
        ("<|user|>\\n{{ content }}<|end|>\\n<|assistant|>", "phi-3"),
        ("<|user|>\\n{{ content }}</s>\\n<|assistant|>", "zephyr"),
        ("<|START_OF_TURN_TOKEN|><|USER_TOKEN|>", "command-r"),
    ],
)
def test_detect(jinja: str, name: str) -> None:
    detected = detect_chat_format(jinja)
    assert detected is not None and detected.name == name


def test_unknown_or_missing_template() -> None:
    assert detect_chat_format(None) is None
    assert detect_chat_format("{{ messages | join }}") is None
    assert detect_chat_format(None, "llama") is None


def test_gemma_architecture_without_chat_template() -> None:
    assert detect_chat_format(None, "gemma3").name == "gemma3-instruct"
    assert detect_chat_format("", "gemma2").name == "gemma-instruct"


def test_bundled_formats_are_well_formed_and_have_stops() -> None:
    for fmt in CHAT_FORMATS.values():
        INSPECTOR.check(fmt.template)
        assert fmt.stop, fmt.name
        assert ".Messages" in fmt.template


def test_chatml_stop_words() -> None:
    assert CHAT_FORMATS["chatml"].stop == ("<|im_start|>", "<|im_end|>")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ if .System }}x", "template: :1: unexpected EOF"),
        ("{{ end }}", "template: :1: unexpected {{end}}"),
        ("line\n{{ .Prompt", "template: :2: unclosed action"),
        ("{{ nosuchfunc .Prompt }}", 'template: :1: function "nosuchfunc" not defined'),
        ("{{ else }}", "template: :1: unexpected {{else}}"),
        ("{{ }}", "template: :1: missing value for command"),
        ("{{ range }}", "template: :1: missing value for range"),
        ("{{ break }}", "template: :1: {{break}} outside {{range}}"),
        ("{{/* never closed", "template: :1: unclosed comment"),
    ],
)
def test_check_refuses_with_go_message(template: str, message: str) -> None:
    with pytest.raises(ValueError) as err:
        INSPECTOR.check(template)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "template",
    [
        "{{ .Prompt }}",
        "{{- range $i, $m := .Messages }}{{ if eq $m.Role \"user\" }}{{ $m.Content }}{{ end }}{{ end }}",
        "{{ if and .System (ne .Prompt \"\") }}{{ .System }}{{ else if .Prompt }}p{{ else }}q{{ end }}",
        "{{/* a comment */}}{{ json .Tools }}{{ .Prompt | printf \"%s\" }}",
        "{{ \"}}\" }}",
    ],
)
def test_check_accepts(template: str) -> None:
    INSPECTOR.check(template)


def test_capabilities_from_template() -> None:
    assert INSPECTOR.capabilities("{{ .Prompt }}") == []
    assert INSPECTOR.capabilities("{{ if .Tools }}{{ json .Tools }}{{ end }}{{ .Prompt }}") == ["tools"]
    assert INSPECTOR.capabilities("<PRE>{{ .Prompt }}<SUF>{{ .Suffix }}<MID>") == ["insert"]
    thinking = "{{ range .Messages }}{{ if .Thinking }}<think>{{ .Thinking }}</think>{{ end }}{{ end }}"
    assert INSPECTOR.capabilities(thinking) == ["thinking"]


def test_capabilities_in_ollama_order() -> None:
    template = ("{{ range .Messages }}<think>{{ .Thinking }}</think>{{ end }}"
                "{{ .Suffix }}{{ if .Tools }}{{ json .Tools }}{{ end }}")
    assert INSPECTOR.capabilities(template) == ["tools", "insert", "thinking"]


def test_broken_template_has_no_capabilities() -> None:
    assert INSPECTOR.capabilities("{{ if .Tools }}") == []


def test_null_inspector_accepts_everything_and_reads_nothing() -> None:
    null = NullTemplateInspector()
    null.check("{{ if .System }}")
    assert null.capabilities("{{ if .Tools }}{{ json .Tools }}{{ end }}{{ .Suffix }}") == []


def test_chat_template_capabilities_through_the_inspector() -> None:
    from trillama.actors.prompt.inspector import GoTemplateInspector
    from trillama.store.templates import NullTemplateInspector

    jinja = "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}<tool_call>{% endif %}<think></think>"
    assert GoTemplateInspector().chat_template_capabilities(jinja) == ["tools", "thinking"]
    assert GoTemplateInspector().chat_template_capabilities("{{ messages }}") == []
    assert NullTemplateInspector().chat_template_capabilities(jinja) == []
