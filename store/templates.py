"""Chat templates: recognise a GGUF's chat format, and supply a Go template for it.

Ollama stores prompts as Go ``text/template`` layers. A GGUF only carries a Jinja
``tokenizer.chat_template``, so on create we look for the tell-tale control tokens of the common
chat formats in it (``<|im_start|>`` is ChatML, ``<start_of_turn>`` is Gemma, …) and add a template
layer written for that format, plus the stop words that end a turn in it. The templates here are
this project's own, written against the published prompt formats; they use only the plain parts
of Go's template language (``range``, ``if``/``else if``, ``eq``/``ne``, variables).

Checking a user-supplied TEMPLATE (so a broken one is refused at create time with a
``template error:`` rather than failing every later request) and reading the capabilities a
template implies need Go's template parser, which lives above the store; the store declares what
it needs as :class:`TemplateInspector` and is handed one.
"""

from __future__ import annotations

from typing import Protocol

import attrs

__all__ = [
    "ChatFormat",
    "CHAT_FORMATS",
    "DEFAULT_TEMPLATE",
    "NullTemplateInspector",
    "TemplateInspector",
    "detect_chat_format",
]

#: What a model without a template layer is prompted with (Ollama's default).
DEFAULT_TEMPLATE = "{{ .Prompt }}"


@attrs.frozen
class ChatFormat:
    name: str
    template: str
    stop: tuple[str, ...]


_CHATML = """\
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|im_start|>{{ .Role }}
{{ .Content }}<|im_end|>
{{ end }}
{{- end }}<|im_start|>assistant
"""

_GEMMA = """\
{{- $system := .System }}
{{- range .Messages }}
{{- if eq .Role "user" }}<start_of_turn>user
{{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ .Content }}<end_of_turn>
{{ else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}<end_of_turn>
{{ end }}
{{- end }}<start_of_turn>model
"""

_LLAMA3 = """\
{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|start_header_id|>{{ .Role }}<|end_header_id|>

{{ .Content }}<|eot_id|>
{{- end }}
{{- end }}<|start_header_id|>assistant<|end_header_id|>

"""

_COMMAND_R = """\
{{- if .System }}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>{{ .System }}<|END_OF_TURN_TOKEN|>
{{- end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<|START_OF_TURN_TOKEN|><|USER_TOKEN|>{{ .Content }}<|END_OF_TURN_TOKEN|>
{{- else if eq .Role "assistant" }}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>{{ .Content }}<|END_OF_TURN_TOKEN|>
{{- end }}
{{- end }}<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"""

_LLAMA2 = """\
{{- $system := .System }}
{{- range .Messages }}
{{- if eq .Role "user" }}[INST] {{ if $system }}<<SYS>>
{{ $system }}
<</SYS>>

{{ $system = "" }}{{ end }}{{ .Content }} [/INST]
{{- else if eq .Role "assistant" }} {{ .Content }} </s><s>
{{- end }}
{{- end }}"""

_MISTRAL = """\
{{- $system := .System }}
{{- range .Messages }}
{{- if eq .Role "user" }}[INST] {{ if $system }}{{ $system }}

{{ $system = "" }}{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }} {{ .Content }}</s>
{{- end }}
{{- end }}"""

_PHI3 = """\
{{- if .System }}<|system|>
{{ .System }}<|end|>
{{ end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|{{ .Role }}|>
{{ .Content }}<|end|>
{{ end }}
{{- end }}<|assistant|>
"""

_ZEPHYR = """\
{{- if .System }}<|system|>
{{ .System }}</s>
{{ end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|{{ .Role }}|>
{{ .Content }}</s>
{{ end }}
{{- end }}<|assistant|>
"""

_GRANITE = """\
{{- if .System }}<|start_of_role|>system<|end_of_role|>{{ .System }}<|end_of_text|>
{{ end }}
{{- range .Messages }}
{{- if ne .Role "system" }}<|start_of_role|>{{ .Role }}<|end_of_role|>{{ .Content }}<|end_of_text|>
{{ end }}
{{- end }}<|start_of_role|>assistant<|end_of_role|>"""

_ALPACA = """\
{{- if .System }}{{ .System }}

{{ end }}
{{- range .Messages }}
{{- if eq .Role "user" }}### Instruction:
{{ .Content }}

{{ else if eq .Role "assistant" }}### Response:
{{ .Content }}

{{ end }}
{{- end }}### Response:
"""

CHAT_FORMATS: dict[str, ChatFormat] = {
    f.name: f
    for f in (
        ChatFormat("chatml", _CHATML, ("<|im_start|>", "<|im_end|>")),
        ChatFormat("gemma-instruct", _GEMMA, ("<start_of_turn>", "<end_of_turn>")),
        ChatFormat("gemma3-instruct", _GEMMA, ("<end_of_turn>",)),
        ChatFormat("llama3-instruct", _LLAMA3, ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")),
        ChatFormat("command-r", _COMMAND_R, ("<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>")),
        ChatFormat("llama2-chat", _LLAMA2, ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>")),
        ChatFormat("mistral-instruct", _MISTRAL, ("[INST]", "[/INST]")),
        ChatFormat("phi-3", _PHI3, ("<|end|>", "<|user|>", "<|assistant|>")),
        ChatFormat("zephyr", _ZEPHYR, ("<|system|>", "</s>", "<|user|>", "<|assistant|>")),
        ChatFormat("granite-instruct", _GRANITE, ("<|end_of_text|>", "<|start_of_role|>")),
        ChatFormat("alpaca", _ALPACA, ("### Instruction:", "### Response:")),
    )
}


#: Architectures whose chat format is fixed, for GGUFs that ship without a chat template.
_ARCHITECTURE_FORMATS = {
    "gemma": "gemma-instruct",
    "gemma2": "gemma-instruct",
    "gemma3": "gemma3-instruct",
    "gemma3n": "gemma3-instruct",
}


def detect_chat_format(chat_template: str | None, architecture: str | None = None) -> ChatFormat | None:
    """The known format a Jinja chat template speaks, judged by its control tokens.

    A GGUF without a chat template still gets a format when its architecture only ever comes
    in one (Gemma); otherwise ``None``, and the model keeps Ollama's default template.
    """
    if not chat_template:
        fallback = _ARCHITECTURE_FORMATS.get(architecture or "")
        return CHAT_FORMATS[fallback] if fallback else None
    t = chat_template
    if "<|im_start|>" in t and "<|im_end|>" in t:
        return CHAT_FORMATS["chatml"]
    if "<start_of_turn>" in t:
        # Gemma 3's template folds the system prompt into the first user turn.
        return CHAT_FORMATS["gemma3-instruct" if "first_user_prefix" in t else "gemma-instruct"]
    if "<|start_header_id|>" in t and "<|eot_id|>" in t:
        return CHAT_FORMATS["llama3-instruct"]
    if "<|START_OF_TURN_TOKEN|>" in t:
        return CHAT_FORMATS["command-r"]
    if "[INST]" in t:
        return CHAT_FORMATS["llama2-chat" if "<<SYS>>" in t else "mistral-instruct"]
    if "<|user|>" in t and "<|end|>" in t:
        return CHAT_FORMATS["phi-3"]
    if "<|user|>" in t and "<|assistant|>" in t:
        return CHAT_FORMATS["zephyr"]
    if "<|start_of_role|>" in t:
        return CHAT_FORMATS["granite-instruct"]
    if "### Instruction:" in t:
        return CHAT_FORMATS["alpaca"]
    return None


# --- checking Go templates: injected --------------------------------------------------------


class TemplateInspector(Protocol):
    """What the store needs to know about a Go template, answered by whoever can parse one.

    The store is the lowest layer and must not import the prompt code that implements Go's
    ``text/template`` parser, so the parser is handed in (``ModelStore(root, templates=...)``);
    the server passes ``trillama.actors.prompt.inspector.GoTemplateInspector``.
    """

    def check(self, text: str) -> None:
        """Raise :class:`ValueError`, worded like Go's parser, for a template that does not parse.

        Create turns the message into ``template error: <message>``.
        """

    def capabilities(self, text: str) -> list[str]:
        """What the template enables, in Ollama's order (``tools``, ``insert``, ``thinking``).

        Never raises: a template that does not parse enables nothing.
        """

    def chat_template_capabilities(self, chat_template: str) -> list[str]:
        """What a GGUF ``tokenizer.chat_template`` (Jinja) enables, for models with no TEMPLATE."""


@attrs.frozen
class NullTemplateInspector:
    """Accepts every template and reads no capabilities from any.

    The store alone cannot parse Go templates (the parser lives a layer up), so a store opened
    without an inspector — tools, tests of file handling — takes templates on trust and reports
    only the capabilities that come from the GGUF and the config.
    """

    def check(self, text: str) -> None:
        return None

    def capabilities(self, text: str) -> list[str]:
        return []

    def chat_template_capabilities(self, chat_template: str) -> list[str]:
        return []
