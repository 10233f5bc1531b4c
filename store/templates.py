"""Chat templates: recognise a GGUF's chat format, and supply a Go template for it.

Ollama stores prompts as Go ``text/template`` layers. A GGUF only carries a Jinja
``tokenizer.chat_template``, so on create we look for the tell-tale control tokens of the common
chat formats in it (``<|im_start|>`` is ChatML, ``<start_of_turn>`` is Gemma, …) and add a template
layer written for that format, plus the stop words that end a turn in it. The templates here are
this project's own, written against the published prompt formats; they use only the plain parts
of Go's template language (``range``, ``if``/``else if``, ``eq``/``ne``, variables).

This module also does a structural check of user-supplied templates (balanced blocks, closed
actions, known functions) so a broken TEMPLATE is refused at create time with a
``template error:`` rather than failing every later request.
"""

from __future__ import annotations

import re

import attrs

__all__ = [
    "ChatFormat",
    "CHAT_FORMATS",
    "DEFAULT_TEMPLATE",
    "TemplateSyntaxError",
    "detect_chat_format",
    "check_template",
    "template_identifiers",
    "template_capabilities",
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


# --- structural check of Go templates -------------------------------------------------------

class TemplateSyntaxError(ValueError):
    """Worded like Go's parser: ``template: :LINE: message``."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"template: :{line}: {message}")
        self.line = line


_BUILTINS = frozenset({
    "and", "or", "not", "len", "index", "slice", "print", "printf", "println", "eq", "ne", "lt",
    "le", "gt", "ge", "html", "js", "urlquery", "call",
    # Ollama's additions
    "json", "currentDate", "yesterdayDate", "toTypeScriptType",
})
_KEYWORDS = frozenset({"if", "else", "end", "range", "with", "define", "template", "block", "break",
                       "continue", "nil", "true", "false"})
_OPENERS = frozenset({"if", "range", "with", "define", "block"})
_WORD_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_FIELD_RE = re.compile(r"(?<![A-Za-z0-9_)\]])(?:\$[A-Za-z0-9_]*)?\.([A-Za-z_][A-Za-z0-9_]*)")


@attrs.frozen
class _Action:
    body: str
    line: int


def _actions(text: str) -> list[_Action]:
    """Split out the ``{{ … }}`` actions (trim markers and comments removed)."""
    actions: list[_Action] = []
    pos = 0
    while True:
        start = text.find("{{", pos)
        if start < 0:
            return actions
        line = text.count("\n", 0, start) + 1
        i = start + 2
        if text.startswith("- ", i) or text.startswith("-\t", i) or text.startswith("-\n", i):
            i += 1
        quote: str | None = None
        while i < len(text):
            ch = text[i]
            if quote:
                if ch == "\\" and quote == '"':
                    i += 2
                    continue
                if ch == quote:
                    quote = None
                elif ch == "\n" and quote != "`":
                    raise TemplateSyntaxError(line, "unterminated quoted string")
            elif ch in "\"'`":
                quote = ch
            elif text.startswith("}}", i):
                break
            elif text.startswith("/*", i):
                close = text.find("*/", i + 2)
                if close < 0:
                    raise TemplateSyntaxError(line, "unclosed comment")
                i = close + 2
                continue
            i += 1
        else:
            raise TemplateSyntaxError(line, "unclosed action")
        body = text[start + 2:i]
        if body.startswith("-") and body[1:2] in (" ", "\t", "\n", "\r"):
            body = body[1:]
        if body.endswith(" -") or body.endswith("\t-") or body.endswith("\n-"):
            body = body[:-1]
        actions.append(_Action(body.strip(), line))
        pos = i + 2


def check_template(text: str) -> None:
    """Raise :class:`TemplateSyntaxError` for a template Go's parser would refuse.

    Not a full Go parser: it checks what typos break in practice (unclosed actions, unbalanced
    ``if``/``range``/``end``, ``else`` outside a block, unknown functions).
    """
    stack: list[tuple[str, int]] = []
    for action in _actions(text):
        body = action.body
        if not body or body.startswith("/*"):
            if not body:
                raise TemplateSyntaxError(action.line, "missing value for command")
            continue
        word_match = _WORD_RE.match(body)
        word = word_match.group(0) if word_match else ""
        if word in _OPENERS and (len(body) == len(word) or not body[len(word)].isalnum()):
            if word != "define" and len(body.split()) < 2:
                raise TemplateSyntaxError(action.line, f"missing value for {word}")
            stack.append((word, action.line))
        elif word == "else":
            if not stack or stack[-1][0] not in ("if", "range", "with"):
                raise TemplateSyntaxError(action.line, "unexpected {{else}}")
        elif word == "end" and body == "end":
            if not stack:
                raise TemplateSyntaxError(action.line, "unexpected {{end}}")
            stack.pop()
        elif word in ("break", "continue"):
            if not any(kind == "range" for kind, _ in stack):
                raise TemplateSyntaxError(action.line, f"{{{{{word}}}}} outside {{{{range}}}}")
        # Every bare word that starts a command must be a function or keyword.
        for segment in _command_heads(body):
            if segment and segment not in _BUILTINS and segment not in _KEYWORDS:
                raise TemplateSyntaxError(action.line, f'function "{segment}" not defined')
    if stack:
        raise TemplateSyntaxError(text.count("\n") + 1, "unexpected EOF")


_TOKEN_RE = re.compile(r":=|[()|=,]|[^\s()|=,]+")


def _command_heads(body: str) -> list[str]:
    """The bare identifiers in function position: first in a pipeline, after ``|`` and ``(``."""
    cleaned = re.sub(r'"(?:\\.|[^"\\])*"|`[^`]*`|\'(?:\\.|[^\'\\])*\'', '""', body)
    tokens = _TOKEN_RE.findall(cleaned)
    # Skip the control keyword(s) that may open the action.
    while tokens and tokens[0] in ("if", "range", "with", "else", "block", "template", "define"):
        keyword = tokens.pop(0)
        if keyword in ("template", "block", "define") and tokens:
            tokens.pop(0)  # the template's name
    heads: list[str] = []
    expect_head = True
    for token in tokens:
        if token in ("(", "|", ":=", "=", ","):
            expect_head = True
            continue
        if token == ")":
            expect_head = False
            continue
        if expect_head and _WORD_RE.fullmatch(token):
            heads.append(token)
        expect_head = False
    return heads


def template_identifiers(text: str) -> set[str]:
    """Lower-cased field names a template reads (``.Tools`` → ``tools``), like Ollama's Vars()."""
    names: set[str] = set()
    try:
        actions = _actions(text)
    except TemplateSyntaxError:
        return names
    for action in actions:
        cleaned = re.sub(r'"(?:\\.|[^"\\])*"|`[^`]*`', '""', action.body)
        names.update(m.group(1).lower() for m in _FIELD_RE.finditer(cleaned))
    return names


def template_capabilities(text: str) -> list[str]:
    """What a Go template enables beyond plain completion: tools, insert (suffix), thinking."""
    names = template_identifiers(text)
    capabilities = []
    if "tools" in names:
        capabilities.append("tools")
    if "suffix" in names:
        capabilities.append("insert")
    if "thinking" in names and "messages" in names:
        capabilities.append("thinking")
    return capabilities
