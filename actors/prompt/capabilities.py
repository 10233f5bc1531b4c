"""What a model's template tells us: its capabilities, its tool-call tag, its thinking tags.

Ollama derives these from the template rather than from model metadata, so a Modelfile TEMPLATE
that mentions ``.Tools`` is what makes a model accept ``tools``. For Go templates the rules read
the parse tree (Ollama's ``Vars``, ``parseTag`` and ``InferTags``); for GGUF Jinja chat templates
they are plain substring checks, as in Ollama.
"""

from __future__ import annotations

from typing import Any

from trillama.actors.prompt.goparse import (
    ActionNode,
    BranchNode,
    CommandNode,
    FieldNode,
    ListNode,
    PipeNode,
    TemplateNode,
    TextNode,
)
from trillama.actors.prompt.gotemplate import Template, parse_template

__all__ = [
    "template_capabilities",
    "tool_call_tag",
    "thinking_tags",
    "chat_template_capabilities",
    "chat_template_tool_call_tag",
    "chat_template_thinking_tags",
]


def _as_template(template: str | Template) -> Template:
    return template if isinstance(template, Template) else parse_template(template)


# -- thinking tags (Ollama's InferTags) ------------------------------------------------------------


def _children(node: Any) -> list[Any]:
    if isinstance(node, ListNode):
        return list(node.nodes)
    if isinstance(node, BranchNode):
        out: list[Any] = [node.pipe, node.list]
        if node.else_list is not None:
            out.append(node.else_list)
        return out
    if isinstance(node, (ActionNode, TemplateNode)):
        return [node.pipe] if node.pipe is not None else []
    if isinstance(node, PipeNode):
        return list(node.cmds)
    if isinstance(node, CommandNode):
        return list(node.args)
    return []


def _range_uses(branch: BranchNode, field: str) -> bool:
    stack: list[Any] = [branch.pipe]
    while stack:
        node = stack.pop()
        if isinstance(node, FieldNode) and node.idents and node.idents[0] == field:
            return True
        stack.extend(_children(node))
    return False


def thinking_tags(template: str | Template) -> tuple[str, str]:
    """The tags around ``{{ .Thinking }}`` inside ``range .Messages``; ``("", "")`` if none.

    The nearest enclosing list's first and last text nodes are the tags; a later match wins.
    """
    root = _as_template(template).root
    found = ["", ""]
    ancestors: list[Any] = []

    def visit(node: Any) -> None:
        ancestors.append(node)
        if isinstance(node, FieldNode) and node.idents and node.idents[0] == "Thinking":
            rng = next(
                (a for a in reversed(ancestors) if isinstance(a, BranchNode) and a.kind == "range"), None
            )
            if rng is not None and _range_uses(rng, "Messages"):
                lst = next((a for a in reversed(ancestors) if isinstance(a, ListNode)), None)
                if lst is not None and lst.nodes:
                    if isinstance(lst.nodes[0], TextNode):
                        found[0] = lst.nodes[0].text.strip()
                    if isinstance(lst.nodes[-1], TextNode):
                        found[1] = lst.nodes[-1].text.strip()
        for child in _children(node):
            visit(child)
        ancestors.pop()

    visit(root)
    return found[0], found[1]


# -- tool-call tag (Ollama's parseTag) -------------------------------------------------------------


def _mentions_tool_calls(branch: BranchNode) -> bool:
    for cmd in branch.pipe.cmds:
        for arg in cmd.args:
            if isinstance(arg, FieldNode) and "ToolCalls" in arg.idents:
                return True
    return False


def _find_tool_calls_if(nodes: tuple[Any, ...]) -> BranchNode | None:
    for node in nodes:
        if isinstance(node, BranchNode):
            if node.kind == "if" and _mentions_tool_calls(node):
                return node
            for lst in (node.list, node.else_list):
                if lst is not None:
                    hit = _find_tool_calls_if(lst.nodes)
                    if hit is not None:
                        return hit
        elif isinstance(node, ListNode):
            hit = _find_tool_calls_if(node.nodes)
            if hit is not None:
                return hit
    return None


def _first_text(nodes: tuple[Any, ...]) -> TextNode | None:
    """First non-blank text, stopping at the first action or after the first nested block."""
    for node in nodes:
        if isinstance(node, TextNode):
            if node.text.strip():
                return node
        elif isinstance(node, BranchNode):
            for lst in (node.list, node.else_list):
                if lst is not None:
                    hit = _first_text(lst.nodes)
                    if hit is not None:
                        return hit
            return None
        elif isinstance(node, ListNode):
            hit = _first_text(node.nodes)
            if hit is not None:
                return hit
        elif isinstance(node, ActionNode):
            return None
    return None


def tool_call_tag(template: str | Template | None) -> str:
    """The text a model writes before a tool call, e.g. ``<tool_call>``; ``{`` when unknown."""
    if template is None:
        return "{"
    branch = _find_tool_calls_if(_as_template(template).root.nodes)
    if branch is None:
        return "{"
    text = _first_text(branch.list.nodes)
    if text is None:
        return "{"
    tag = text.text.replace("\r\n", "\n").split("{", 1)[0].strip()
    return tag or "{"


# -- capabilities ----------------------------------------------------------------------------------


def template_capabilities(template: str | Template) -> set[str]:
    """``tools`` if ``.Tools`` is referenced, ``insert`` for ``.Suffix``, ``thinking`` per InferTags."""
    t = _as_template(template)
    caps: set[str] = set()
    if t.uses("tools"):
        caps.add("tools")
    if t.uses("suffix"):
        caps.add("insert")
    opening, closing = thinking_tags(t)
    if opening and closing:
        caps.add("thinking")
    return caps


def chat_template_capabilities(chat_template: str) -> set[str]:
    """Ollama's checks on a GGUF ``tokenizer.chat_template``."""
    caps: set[str] = set()
    if not chat_template:
        return caps
    if "tools" in chat_template or "tool_call" in chat_template:
        caps.add("tools")
    if "<think>" in chat_template and "</think>" in chat_template:
        caps.add("thinking")
    elif (
        ("content.split('</think>')" in chat_template or 'content.split("</think>")' in chat_template)
        and "reasoning_content" not in chat_template
        and "<SPECIAL_12>" not in chat_template
    ):
        caps.add("thinking")
    return caps


_JINJA_TOOL_TAGS = ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", "<function_call>")


def chat_template_tool_call_tag(chat_template: str) -> str:
    """A best guess at a Jinja template's tool-call tag (Ollama leaves this to llama-server)."""
    for tag in _JINJA_TOOL_TAGS:
        if tag in chat_template:
            return tag
    return "{"


def chat_template_thinking_tags(chat_template: str) -> tuple[str, str]:
    if "thinking" in chat_template_capabilities(chat_template):
        return "<think>", "</think>"
    return "", ""
