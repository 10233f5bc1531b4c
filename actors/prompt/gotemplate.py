"""Ollama's template dialect: Go text/template with ``missingkey=zero`` and four extra functions.

This is the public face of the Go-template engine (``golex`` → ``goparse`` → ``goexec``): parse once
(cached by source text), then execute with any number of data values. It also carries the two
tree-level rules Ollama applies to every template:

* a template that mentions neither ``.Messages`` nor ``.Response`` gets ``{{ .Response }}``
  appended, so legacy prompt-only templates still frame an answer;
* for legacy templates the last turn is rendered from a copy of the tree cut after the
  ``{{ .Response }}`` node, so the prompt stops where the model's answer should begin.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

import attrs

from trillama.actors.prompt import goexec, gofuncs
from trillama.actors.prompt.goparse import (
    ActionNode,
    BranchNode,
    CommandNode,
    FieldNode,
    ListNode,
    ParseError,
    PipeNode,
    TemplateNode,
    VariableNode,
    parse,
)

__all__ = ["TemplateError", "Template", "parse_template", "DEFAULT_TEMPLATE"]

DEFAULT_TEMPLATE = "{{ .Prompt }}"

_RESPONSE = ActionNode(PipeNode((), False, (CommandNode((FieldNode(("Response",)),)),)))


class TemplateError(ValueError):
    """A template failed to parse or to execute; ``str()`` is the message Ollama would show."""


def _identifiers(node: Any, out: list[str]) -> None:
    """Ollama's ``Identifiers``: every field and variable name reachable through pipelines."""
    if isinstance(node, ListNode):
        for child in node.nodes:
            _identifiers(child, out)
    elif isinstance(node, TemplateNode):
        if node.pipe is None:
            # Ollama's Vars() refuses a {{template}} call without a pipeline, so Parse fails.
            raise TemplateError("undefined template specified")
        _identifiers(node.pipe, out)
    elif isinstance(node, ActionNode):
        _identifiers(node.pipe, out)
    elif isinstance(node, BranchNode):
        _identifiers(node.pipe, out)
        _identifiers(node.list, out)
        if node.else_list is not None:
            _identifiers(node.else_list, out)
    elif isinstance(node, PipeNode):
        for cmd in node.cmds:
            for arg in cmd.args:
                _identifiers(arg, out)
    elif isinstance(node, (FieldNode, VariableNode)):
        out.extend(node.idents)


class _Cutter:
    """Ollama's ``deleteNode`` pass: keep everything up to and including ``{{ .Response }}``.

    The rule is Ollama's, quirks included: only a field node naming ``Response`` (not ``$.Response``)
    starts the cut, an ``if`` condition is not searched, and the cut runs through nested lists.
    """

    def __init__(self) -> None:
        self.cut = False

    def walk(self, node: Any) -> Any:
        if isinstance(node, FieldNode) and "Response" in node.idents:
            self.cut = True
            return node
        if self.cut:
            return None
        if isinstance(node, ListNode):
            kept = [c for c in (self.walk(child) for child in node.nodes) if c is not None]
            return ListNode(tuple(kept), node.pos)
        if isinstance(node, BranchNode):
            body = self.walk(node.list)
            else_list = node.else_list
            if else_list is not None:
                else_list = self.walk(else_list)  # None once the cut started (Go would panic)
            return attrs.evolve(node, list=body, else_list=else_list)
        if isinstance(node, ActionNode):
            pipe = self.walk(node.pipe)
            if pipe is None:
                return None
            return attrs.evolve(node, pipe=pipe)
        if isinstance(node, PipeNode):
            cmds = []
            for cmd in node.cmds:
                args = [a for a in (self.walk(arg) for arg in cmd.args) if a is not None]
                if not args:
                    return None
                cmds.append(attrs.evolve(cmd, args=tuple(args)))
            if not cmds:
                return None
            return attrs.evolve(node, cmds=tuple(cmds))
        return node


class Template:
    """A parsed template. Immutable once built; share it freely (parse_template caches it)."""

    __slots__ = ("source", "root", "defines", "identifiers", "_cut_root")

    def __init__(self, source: str) -> None:
        try:
            root, defines = parse(source, gofuncs.FUNCTION_NAMES)
        except ParseError as exc:
            raise TemplateError(str(exc)) from None
        names: list[str] = []
        _identifiers(root, names)
        for body in defines.values():
            _identifiers(body, names)
        self.source = source
        identifiers = {n.lower() for n in names}
        if "messages" not in identifiers and "response" not in identifiers:
            root = ListNode(root.nodes + (_RESPONSE,), root.pos)
            identifiers.add("response")
        self.identifiers = frozenset(identifiers)
        self.root: ListNode = root
        self.defines = defines
        self._cut_root: ListNode | None = None

    def uses(self, name: str) -> bool:
        """Whether the template references an identifier (case-insensitive, like Ollama's Vars)."""
        return name.lower() in self.identifiers

    def execute(self, data: Any) -> str:
        return self._run(self.root, data)

    def execute_until_response(self, data: Any) -> str:
        """Execute the copy of the tree cut after ``{{ .Response }}`` (a legacy final turn)."""
        if self._cut_root is None:
            cut = _Cutter().walk(self.root)
            self._cut_root = cut if cut is not None else ListNode(())
        return self._run(self._cut_root, data)

    def _run(self, root: ListNode, data: Any) -> str:
        try:
            return goexec.execute(root, data, source=self.source, defines=self.defines)
        except goexec.ExecError as exc:
            raise TemplateError(str(exc)) from None

    def __repr__(self) -> str:
        return f"Template({self.source[:40]!r})"


@functools.lru_cache(maxsize=256)
def parse_template(source: str) -> Template:
    """Parse (or fetch from the cache) a template; raises :class:`TemplateError`."""
    return Template(source)


def all_nodes(root: ListNode) -> Iterable[Any]:
    """Every statement node, depth first (used by tests and capability checks)."""
    for node in root.nodes:
        yield node
        if isinstance(node, BranchNode):
            yield from all_nodes(node.list)
            if node.else_list is not None:
                yield from all_nodes(node.else_list)
