"""Executes a parsed Go template against Python data, with Go's semantics.

The rules that decide what a prompt looks like are Go's: ``missingkey=zero`` (a missing map key is
nil, printed ``<no value>``), truth of empty values, variable scoping to the enclosing
``if``/``range``/``with``, ``range`` over maps in key order, lazy ``and``/``or``, and the error texts
(``can't evaluate field X in type Y``). Field access on nil yields nil instead of Go's panic-like
error, which only matters for templates that already fail in Ollama.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trillama.actors.prompt import gofuncs
from trillama.actors.prompt.goparse import (
    ActionNode,
    Arg,
    BoolNode,
    BranchNode,
    BreakNode,
    ChainNode,
    CommandNode,
    ContinueNode,
    DotNode,
    FieldNode,
    IdentifierNode,
    ListNode,
    NilNode,
    Node,
    NumberNode,
    PipeNode,
    StringNode,
    TemplateNode,
    TextNode,
    VariableNode,
)
from trillama.actors.prompt.govalues import SLICES, GoStruct, OrderedMap, sprint_value, truth, type_name

__all__ = ["ExecError", "execute", "MAX_DEPTH", "MAX_STEPS"]

MAX_DEPTH = 100  # nested {{template}} calls
MAX_STEPS = 5_000_000  # nodes walked plus loop iterations: a runaway template stops with an error


class ExecError(Exception):
    """Execution failed; the message reads like Go's ``template: :L:C: executing ...``."""


class _Missing:
    """The 'no final value' marker of a pipeline's first command."""


_MISSING = _Missing()


class _Break(Exception):
    pass


class _Continue(Exception):
    pass


class _Exec:
    def __init__(self, source: str, name: str, defines: Mapping[str, ListNode]) -> None:
        self.source = source
        self.name = name
        self.defines = defines
        self.out: list[str] = []
        self.vars: list[list[Any]] = []
        self.steps = 0
        self.depth = 0

    # -- errors -----------------------------------------------------------------------------
    def error(self, node: Any, message: str) -> None:
        pos = getattr(node, "pos", 0) or 0
        before = self.source[:pos]
        line = before.count("\n") + 1
        col = pos - (before.rfind("\n") + 1)
        if isinstance(node, ActionNode):
            context = "{{" + str(node.pipe) + "}}"
        elif isinstance(node, BranchNode):
            context = "{{" + node.kind + " " + str(node.pipe) + "}}"
        elif isinstance(node, TemplateNode):
            context = '{{template "' + node.name + '"}}'
        else:
            context = str(node)
        if len(context) > 20:
            context = context[:20] + "..."
        raise ExecError(
            f'template: {self.name}:{line}:{col}: executing "{self.name}" at <{context}>: {message}'
        )

    def tick(self, node: Any) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            self.error(node, f"template execution exceeded {MAX_STEPS} steps")

    # -- variables --------------------------------------------------------------------------
    def mark(self) -> int:
        return len(self.vars)

    def pop(self, mark: int) -> None:
        del self.vars[mark:]

    def push(self, name: str, value: Any) -> None:
        self.vars.append([name, value])

    def set_var(self, node: Any, name: str, value: Any) -> None:
        for entry in reversed(self.vars):
            if entry[0] == name:
                entry[1] = value
                return
        self.error(node, f"undefined variable: {name}")

    def var_value(self, node: Any, name: str) -> Any:
        for entry in reversed(self.vars):
            if entry[0] == name:
                return entry[1]
        self.error(node, f"undefined variable: {name}")

    # -- statements -------------------------------------------------------------------------
    def walk(self, dot: Any, node: Node) -> None:
        self.tick(node)
        if isinstance(node, TextNode):
            self.out.append(node.text)
        elif isinstance(node, ActionNode):
            value = self.eval_pipeline(dot, node.pipe)
            if not node.pipe.decl:
                self.out.append("<no value>" if value is None else sprint_value(value))
        elif isinstance(node, ListNode):
            for child in node.nodes:
                self.walk(dot, child)
        elif isinstance(node, BranchNode):
            if node.kind == "range":
                self.walk_range(dot, node)
            else:
                self.walk_if_or_with(dot, node)
        elif isinstance(node, TemplateNode):
            self.walk_template(dot, node)
        elif isinstance(node, BreakNode):
            raise _Break()
        elif isinstance(node, ContinueNode):
            raise _Continue()
        else:  # pragma: no cover - the parser produces no other nodes
            self.error(node, f"unknown node: {node!r}")

    def walk_if_or_with(self, dot: Any, node: BranchNode) -> None:
        mark = self.mark()
        try:
            value = self.eval_pipeline(dot, node.pipe)
            if truth(value):
                self.walk(value if node.kind == "with" else dot, node.list)
            elif node.else_list is not None:
                self.walk(dot, node.else_list)
        finally:
            self.pop(mark)

    def walk_range(self, dot: Any, node: BranchNode) -> None:
        mark = self.mark()
        try:
            value = self.eval_pipeline(dot, node.pipe)
            inner = self.mark()
            pipe = node.pipe
            items: list[tuple[Any, Any]]
            if value is None:
                items = []
            elif isinstance(value, SLICES):
                items = list(enumerate(value))
            elif isinstance(value, dict):
                if isinstance(value, OrderedMap):
                    items = list(value.items())
                else:
                    items = sorted(value.items(), key=lambda kv: kv[0])
            elif isinstance(value, int) and not isinstance(value, bool):
                if len(pipe.decl) > 1:
                    self.error(node, f"can't use {value} to iterate over more than one variable")
                items = [(i, i) for i in range(value)]
            else:
                self.error(node, f"range can't iterate over {sprint_value(value)}")
                items = []
            for index, elem in items:
                self.tick(node)
                if pipe.decl:
                    if pipe.is_assign:
                        if len(pipe.decl) > 1:
                            self.set_var(node, pipe.decl[0], index)
                            self.set_var(node, pipe.decl[1], elem)
                        else:
                            self.set_var(node, pipe.decl[0], elem)
                    else:
                        self.vars[inner - 1][1] = elem
                        if len(pipe.decl) > 1:
                            self.vars[inner - 2][1] = index
                try:
                    self.walk(elem, node.list)
                except _Continue:
                    pass
                except _Break:
                    break
                finally:
                    self.pop(inner)
            if not items and node.else_list is not None:
                self.walk(dot, node.else_list)
        finally:
            self.pop(mark)

    def walk_template(self, dot: Any, node: TemplateNode) -> None:
        body = self.defines.get(node.name)
        if body is None:
            self.error(node, f'template "{node.name}" not defined')
        if self.depth >= MAX_DEPTH:
            self.error(node, f"exceeded maximum template depth ({MAX_DEPTH})")
        value = self.eval_pipeline(dot, node.pipe) if node.pipe is not None else None
        saved = self.vars
        self.vars = [["$", value]]
        self.depth += 1
        try:
            self.walk(value, body)
        finally:
            self.depth -= 1
            self.vars = saved

    # -- expressions ------------------------------------------------------------------------
    def eval_pipeline(self, dot: Any, pipe: PipeNode) -> Any:
        value: Any = _MISSING
        for cmd in pipe.cmds:
            value = self.eval_command(dot, cmd, value)
        for name in pipe.decl:
            if pipe.is_assign:
                self.set_var(pipe, name, value)
            else:
                self.push(name, value)
        return value

    def not_a_function(self, args: tuple[Arg, ...], final: Any) -> None:
        if len(args) > 1 or final is not _MISSING:
            self.error(args[0], f"can't give argument to non-function {args[0]}")

    def eval_command(self, dot: Any, cmd: CommandNode, final: Any) -> Any:
        first = cmd.args[0]
        if isinstance(first, FieldNode):
            return self.eval_field_chain(dot, dot, first, first.idents, cmd.args, final)
        if isinstance(first, ChainNode):
            receiver = self.eval_arg(dot, first.node)
            return self.eval_field_chain(dot, receiver, first, first.fields, cmd.args, final)
        if isinstance(first, IdentifierNode):
            return self.eval_function(dot, first, cmd.args, final, cmd)
        if isinstance(first, PipeNode):
            self.not_a_function(cmd.args, final)
            return self.eval_pipeline(dot, first)
        if isinstance(first, VariableNode):
            value = self.var_value(first, first.idents[0])
            if len(first.idents) == 1:
                self.not_a_function(cmd.args, final)
                return value
            return self.eval_field_chain(dot, value, first, first.idents[1:], cmd.args, final)
        self.not_a_function(cmd.args, final)
        if isinstance(first, BoolNode):
            return first.value
        if isinstance(first, DotNode):
            return dot
        if isinstance(first, NilNode):
            self.error(first, "nil is not a command")
        if isinstance(first, (NumberNode, StringNode)):
            return first.value
        self.error(first, f"can't evaluate command {first}")  # pragma: no cover

    def eval_field_chain(
        self, dot: Any, receiver: Any, node: Arg, idents: tuple[str, ...], args: tuple[Arg, ...], final: Any
    ) -> Any:
        for name in idents[:-1]:
            receiver = self.eval_field(dot, name, node, (), _MISSING, receiver)
        return self.eval_field(dot, idents[-1], node, args, final, receiver)

    def eval_field(
        self, dot: Any, name: str, node: Arg, args: tuple[Arg, ...], final: Any, receiver: Any
    ) -> Any:
        if receiver is None:
            return None
        has_args = len(args) > 1 or final is not _MISSING
        if isinstance(receiver, GoStruct):
            method = receiver.type.methods.get(name)
            if method is not None:
                argv = [self.eval_arg(dot, a) for a in args[1:]]
                if final is not _MISSING:
                    argv.append(final)
                try:
                    return method(receiver, *argv)
                except TypeError:
                    self.error(node, f"wrong number of args for {name}")
            found, value = receiver.field(name)
            if found:
                if has_args:
                    self.error(node, f"{name} has arguments but cannot be invoked as function")
                return value
        elif isinstance(receiver, dict):
            if has_args:
                self.error(node, f"{name} is not a method but has arguments")
            return receiver.get(name)
        self.error(node, f"can't evaluate field {name} in type {type_name(receiver)}")

    def eval_function(
        self, dot: Any, node: IdentifierNode, args: tuple[Arg, ...], final: Any, cmd: Any = None
    ) -> Any:
        builtin = gofuncs.BUILTINS.get(node.name)
        if builtin is None:
            self.error(node, f'"{node.name}" is not a defined function')
        rest = args[1:]
        if node.name in ("and", "or"):
            if not rest and final is _MISSING:
                self.error(node, f"wrong number of args for {node.name}: want at least 1 got 0")
            want = node.name == "or"
            value: Any = None
            for a in rest:
                value = self.eval_arg(dot, a)
                if truth(value) == want:
                    return value
            if final is not _MISSING:
                value = final
            return value
        argv = [self.eval_arg(dot, a) for a in rest]
        if final is not _MISSING:
            argv.append(final)
        try:
            return gofuncs.call(builtin, argv)
        except gofuncs.ArityError as exc:
            self.error(cmd or node, str(exc))
        except gofuncs.FuncError as exc:
            self.error(cmd or node, f"error calling {node.name}: {exc}")

    def eval_arg(self, dot: Any, node: Arg) -> Any:
        if isinstance(node, DotNode):
            return dot
        if isinstance(node, NilNode):
            return None
        if isinstance(node, FieldNode):
            return self.eval_field_chain(dot, dot, node, node.idents, (node,), _MISSING)
        if isinstance(node, VariableNode):
            value = self.var_value(node, node.idents[0])
            if len(node.idents) == 1:
                return value
            return self.eval_field_chain(dot, value, node, node.idents[1:], (node,), _MISSING)
        if isinstance(node, PipeNode):
            return self.eval_pipeline(dot, node)
        if isinstance(node, IdentifierNode):
            return self.eval_function(dot, node, (node,), _MISSING)
        if isinstance(node, ChainNode):
            receiver = self.eval_arg(dot, node.node)
            return self.eval_field_chain(dot, receiver, node, node.fields, (node,), _MISSING)
        if isinstance(node, (BoolNode, NumberNode, StringNode)):
            return node.value
        self.error(node, f"can't handle {node} as an argument")  # pragma: no cover


def execute(
    root: ListNode, data: Any, *, source: str, defines: Mapping[str, ListNode], name: str = ""
) -> str:
    """Run ``root`` with ``data`` as dot and ``$``; raises :class:`ExecError`."""
    ex = _Exec(source, name, defines)
    ex.vars = [["$", data]]
    try:
        ex.walk(data, root)
    except RecursionError:
        raise ExecError(f"template: {name}: execution nested too deeply") from None
    return "".join(ex.out)
