"""Parse tree for Go text/template, and the parser that builds it.

The node types mirror Go's ``text/template/parse`` package, because Ollama inspects the tree, not
just the output: it finds identifiers (``.Messages``, ``.Tools``) to pick a rendering mode and
capabilities, cuts the tree after ``{{ .Response }}`` for legacy templates, and reads text nodes
around ``.ToolCalls`` and ``.Thinking`` to learn a model's tags. Keeping the same shapes lets
those rules be written as Ollama states them.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Union

import attrs

from trillama.actors.prompt.golex import Kind, LexError, Token, lex

__all__ = [
    "ParseError",
    "TextNode",
    "ActionNode",
    "BranchNode",
    "TemplateNode",
    "BreakNode",
    "ContinueNode",
    "ListNode",
    "PipeNode",
    "CommandNode",
    "FieldNode",
    "VariableNode",
    "ChainNode",
    "IdentifierNode",
    "DotNode",
    "NilNode",
    "BoolNode",
    "NumberNode",
    "StringNode",
    "Node",
    "Arg",
    "parse",
]


class ParseError(Exception):
    """A syntax error, worded as Go words it (``template: :LINE: message``)."""

    def __init__(self, line: int, message: str, name: str = "") -> None:
        super().__init__(f"template: {name}:{line}: {message}")
        self.line = line
        self.message = message


# ---------------------------------------------------------------------------------------------
# Argument nodes (operands inside a pipeline)


@attrs.frozen
class FieldNode:
    idents: tuple[str, ...]
    pos: int = 0

    def __str__(self) -> str:
        return "".join("." + i for i in self.idents)


@attrs.frozen
class VariableNode:
    idents: tuple[str, ...]  # idents[0] is the variable, e.g. "$" or "$x"
    pos: int = 0

    def __str__(self) -> str:
        return ".".join(self.idents)


@attrs.frozen
class ChainNode:
    node: "Arg"
    fields: tuple[str, ...]
    pos: int = 0

    def __str__(self) -> str:
        inner = str(self.node)
        if isinstance(self.node, PipeNode):
            inner = "(" + inner + ")"
        return inner + "".join("." + f for f in self.fields)


@attrs.frozen
class IdentifierNode:
    name: str
    pos: int = 0

    def __str__(self) -> str:
        return self.name


@attrs.frozen
class DotNode:
    pos: int = 0

    def __str__(self) -> str:
        return "."


@attrs.frozen
class NilNode:
    pos: int = 0

    def __str__(self) -> str:
        return "nil"


@attrs.frozen
class BoolNode:
    value: bool
    pos: int = 0

    def __str__(self) -> str:
        return "true" if self.value else "false"


@attrs.frozen
class NumberNode:
    value: int | float
    text: str
    pos: int = 0

    def __str__(self) -> str:
        return self.text


@attrs.frozen
class StringNode:
    value: str
    quoted: str
    pos: int = 0

    def __str__(self) -> str:
        return self.quoted


@attrs.frozen
class CommandNode:
    args: tuple["Arg", ...]
    pos: int = 0

    def __str__(self) -> str:
        parts = []
        for a in self.args:
            if isinstance(a, PipeNode):
                parts.append("(" + str(a) + ")")
            else:
                parts.append(str(a))
        return " ".join(parts)


@attrs.frozen
class PipeNode:
    decl: tuple[str, ...]
    is_assign: bool
    cmds: tuple[CommandNode, ...]
    pos: int = 0
    line: int = 0

    def __str__(self) -> str:
        text = " | ".join(str(c) for c in self.cmds)
        if self.decl:
            op = " = " if self.is_assign else " := "
            text = ", ".join(self.decl) + op + text
        return text


Arg = Union[
    FieldNode, VariableNode, ChainNode, IdentifierNode, DotNode, NilNode, BoolNode, NumberNode,
    StringNode, PipeNode,
]


# ---------------------------------------------------------------------------------------------
# Statement nodes


@attrs.frozen
class TextNode:
    text: str
    pos: int = 0


@attrs.frozen
class ActionNode:
    pipe: PipeNode
    pos: int = 0
    line: int = 0


@attrs.frozen
class ListNode:
    nodes: tuple["Node", ...]
    pos: int = 0


@attrs.frozen
class BranchNode:
    """``if``, ``range`` or ``with`` (``kind``); ``else if`` chains nest in ``else_list``."""

    kind: str
    pipe: PipeNode
    list: ListNode
    else_list: ListNode | None
    pos: int = 0
    line: int = 0


@attrs.frozen
class TemplateNode:
    name: str
    pipe: PipeNode | None
    pos: int = 0
    line: int = 0


@attrs.frozen
class BreakNode:
    pos: int = 0
    line: int = 0


@attrs.frozen
class ContinueNode:
    pos: int = 0
    line: int = 0


Node = Union[TextNode, ActionNode, ListNode, BranchNode, TemplateNode, BreakNode, ContinueNode]


class _End:
    def __str__(self) -> str:
        return "{{end}}"


class _Else:
    def __str__(self) -> str:
        return "{{else}}"


# ---------------------------------------------------------------------------------------------
# String and number literals


_SIMPLE_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", "'": "'", '"': '"',
}


def _unquote(text: str, quote: str) -> str:
    """Go's ``strconv.Unquote`` for "..." and '...' literals."""
    body = text[1:-1]
    out: list[str] = []
    i = 0
    n = len(body)
    while i < n:
        ch = body[i]
        if ch == quote:
            raise ValueError("invalid syntax")
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        if i + 1 >= n:
            raise ValueError("invalid syntax")
        esc = body[i + 1]
        if esc in _SIMPLE_ESCAPES:
            if (esc == "'" and quote == '"') or (esc == '"' and quote == "'"):
                raise ValueError("invalid syntax")
            out.append(_SIMPLE_ESCAPES[esc])
            i += 2
        elif esc in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[esc]
            digits = body[i + 2 : i + 2 + width]
            if len(digits) != width or any(c not in "0123456789abcdefABCDEF" for c in digits):
                raise ValueError("invalid syntax")
            out.append(chr(int(digits, 16)))
            i += 2 + width
        elif esc in "01234567":
            digits = body[i + 1 : i + 4]
            if len(digits) != 3 or any(c not in "01234567" for c in digits):
                raise ValueError("invalid syntax")
            out.append(chr(int(digits, 8)))
            i += 4
        else:
            raise ValueError("invalid syntax")
    return "".join(out)


def _parse_number(tok: Token) -> NumberNode:
    text = tok.val
    if tok.kind is Kind.CHAR_CONST:
        value = _unquote(text, "'")
        if len(value) != 1:
            raise ValueError(f"malformed character constant: {text}")
        return NumberNode(ord(value), text, tok.pos)
    if text.endswith("i"):
        raise ValueError(f"illegal number syntax: {text!r}")
    clean = text.replace("_", "")
    sign = ""
    if clean[:1] in "+-":
        sign, clean = clean[0], clean[1:]
    lower = clean.lower()
    try:
        if lower.startswith(("0x", "0b", "0o")) and "p" not in lower and "." not in lower:
            return NumberNode(int(sign + clean, 0), text, tok.pos)
        if lower.startswith("0x"):
            return NumberNode(float.fromhex(sign + clean), text, tok.pos)
        if any(c in lower for c in ".e"):
            return NumberNode(float(sign + clean), text, tok.pos)
        if len(clean) > 1 and clean.startswith("0"):
            return NumberNode(int(sign + clean, 8), text, tok.pos)
        return NumberNode(int(sign + clean, 10), text, tok.pos)
    except ValueError:
        raise ValueError(f'illegal number syntax: "{text}"') from None


# ---------------------------------------------------------------------------------------------
# Parser


class _Parser:
    def __init__(self, tokens: list[Token], funcs: Collection[str], name: str) -> None:
        self.toks = tokens
        self.i = 0
        self.funcs = funcs
        self.name = name
        self.vars: list[str] = ["$"]
        self.range_depth = 0
        self.defines: dict[str, ListNode] = {}

    # -- token access -----------------------------------------------------------------------
    def error(self, message: str, tok: Token | None = None) -> None:
        if tok is None:
            tok = self.toks[min(self.i, len(self.toks) - 1)]
        raise ParseError(tok.line, message, self.name)

    def peek(self) -> Token:
        return self.toks[self.i]

    def next(self) -> Token:
        tok = self.toks[self.i]
        if tok.kind is not Kind.EOF:
            self.i += 1
        return tok

    def backup(self) -> None:
        self.i -= 1

    def skip_space(self) -> None:
        while self.toks[self.i].kind is Kind.SPACE:
            self.i += 1

    def peek_non_space(self) -> Token:
        self.skip_space()
        return self.toks[self.i]

    def next_non_space(self) -> Token:
        self.skip_space()
        return self.next()

    def expect(self, kind: Kind, context: str) -> Token:
        tok = self.next_non_space()
        if tok.kind is not kind:
            self.unexpected(tok, context)
        return tok

    def unexpected(self, tok: Token, context: str) -> None:
        if tok.kind is Kind.EOF:
            self.error(f"unexpected EOF in {context}", tok)
        self.error(f"unexpected {tok.describe()} in {context}", tok)

    # -- top level --------------------------------------------------------------------------
    def parse(self) -> ListNode:
        nodes: list[Node] = []
        while self.peek().kind is not Kind.EOF:
            if self.peek().kind is Kind.LEFT:
                save = self.i
                self.next()
                tok = self.next_non_space()
                if tok.kind is Kind.KEYWORD and tok.val == "define":
                    self.parse_definition()
                    continue
                self.i = save
            node = self.text_or_action()
            if isinstance(node, (_End, _Else)):
                self.error(f"unexpected {node}")
            nodes.append(node)
        return ListNode(tuple(nodes), 0)

    def template_name(self, context: str) -> str:
        tok = self.next_non_space()
        if tok.kind is Kind.STRING:
            try:
                return _unquote(tok.val, '"')
            except ValueError:
                self.error("unquote: invalid syntax", tok)
        if tok.kind is Kind.RAW_STRING:
            return tok.val[1:-1].replace("\r", "")
        self.unexpected(tok, context)
        raise AssertionError  # unreachable

    def parse_definition(self) -> None:
        context = "define clause"
        name = self.template_name(context)
        self.expect(Kind.RIGHT, context)
        saved_vars, saved_depth = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        body, end = self.item_list()
        self.vars, self.range_depth = saved_vars, saved_depth
        if not isinstance(end, _End):
            self.error(f"unexpected {end} in {context}")
        self.defines[name] = body

    def item_list(self) -> tuple[ListNode, object]:
        nodes: list[Node] = []
        start = self.peek().pos
        while self.peek_non_space().kind is not Kind.EOF:
            node = self.text_or_action()
            if isinstance(node, (_End, _Else)):
                return ListNode(tuple(nodes), start), node
            nodes.append(node)
        self.error("unexpected EOF")
        raise AssertionError  # unreachable

    def text_or_action(self) -> object:
        tok = self.next_non_space()
        if tok.kind is Kind.TEXT:
            return TextNode(tok.val, tok.pos)
        if tok.kind is Kind.LEFT:
            return self.action()
        self.unexpected(tok, "input")
        raise AssertionError  # unreachable

    def action(self) -> object:
        tok = self.next_non_space()
        if tok.kind is Kind.KEYWORD:
            handler = {
                "block": self.block_control,
                "break": self.break_control,
                "continue": self.continue_control,
                "else": self.else_control,
                "end": self.end_control,
                "if": lambda t: self.branch_control("if", t),
                "range": lambda t: self.branch_control("range", t),
                "with": lambda t: self.branch_control("with", t),
                "template": self.template_control,
            }.get(tok.val)
            if handler is not None:
                return handler(tok)
        self.backup()
        pipe = self.pipeline("command", Kind.RIGHT)
        return ActionNode(pipe, tok.pos, tok.line)

    # -- control structures -----------------------------------------------------------------
    def break_control(self, tok: Token) -> BreakNode:
        self.expect(Kind.RIGHT, "{{break}}")
        if self.range_depth == 0:
            self.error("{{break}} outside {{range}}", tok)
        return BreakNode(tok.pos, tok.line)

    def continue_control(self, tok: Token) -> ContinueNode:
        self.expect(Kind.RIGHT, "{{continue}}")
        if self.range_depth == 0:
            self.error("{{continue}} outside {{range}}", tok)
        return ContinueNode(tok.pos, tok.line)

    def else_control(self, tok: Token) -> _Else:
        peek = self.peek_non_space()
        if peek.kind is Kind.KEYWORD and peek.val in ("if", "with"):
            return _Else()
        self.expect(Kind.RIGHT, "else")
        return _Else()

    def end_control(self, tok: Token) -> _End:
        self.expect(Kind.RIGHT, "end")
        return _End()

    def branch_control(self, kind: str, tok: Token) -> BranchNode:
        mark = len(self.vars)
        pipe = self.pipeline(kind, Kind.RIGHT)
        if kind == "range":
            self.range_depth += 1
        body, nxt = self.item_list()
        if kind == "range":
            self.range_depth -= 1
        else_list: ListNode | None = None
        if isinstance(nxt, _Else):
            peek = self.peek()
            if kind in ("if", "with") and peek.kind is Kind.KEYWORD and peek.val == kind:
                inner_tok = self.next()
                inner = self.branch_control(kind, inner_tok)
                else_list = ListNode((inner,), inner_tok.pos)
            else:
                else_list, nxt = self.item_list()
                if not isinstance(nxt, _End):
                    self.error(f"expected end; found {nxt}")
        del self.vars[mark:]
        return BranchNode(kind, pipe, body, else_list, tok.pos, tok.line)

    def template_control(self, tok: Token) -> TemplateNode:
        context = "template clause"
        name = self.template_name(context)
        pipe: PipeNode | None = None
        if self.next_non_space().kind is not Kind.RIGHT:
            self.backup()
            pipe = self.pipeline(context, Kind.RIGHT)
        return TemplateNode(name, pipe, tok.pos, tok.line)

    def block_control(self, tok: Token) -> TemplateNode:
        context = "block clause"
        name = self.template_name(context)
        pipe = self.pipeline(context, Kind.RIGHT)
        saved_vars, saved_depth = self.vars, self.range_depth
        self.vars, self.range_depth = ["$"], 0
        body, end = self.item_list()
        self.vars, self.range_depth = saved_vars, saved_depth
        if not isinstance(end, _End):
            self.error(f"unexpected {end} in {context}")
        self.defines[name] = body
        return TemplateNode(name, pipe, tok.pos, tok.line)

    # -- pipelines --------------------------------------------------------------------------
    def pipeline(self, context: str, end: Kind) -> PipeNode:
        start_tok = self.peek_non_space()
        decl: list[str] = []
        is_assign = False
        while True:
            v = self.peek_non_space()
            if v.kind is not Kind.VARIABLE:
                break
            save = self.i
            self.next()
            nxt = self.peek_non_space()
            if nxt.kind in (Kind.ASSIGN, Kind.DECLARE):
                is_assign = nxt.kind is Kind.ASSIGN
                self.next()
                decl.append(v.val)
                self.vars.append(v.val)
                break
            if nxt.kind is Kind.CHAR and nxt.val == ",":
                self.next()
                decl.append(v.val)
                self.vars.append(v.val)
                if context == "range" and len(decl) < 2:
                    if self.peek_non_space().kind in (Kind.VARIABLE, Kind.RIGHT, Kind.RPAREN):
                        continue
                    self.error("range can only initialize variables")
                self.error(f"too many declarations in {context}")
            # Not a declaration: "$x" is the start of a command.
            self.i = save
            break
        cmds: list[CommandNode] = []
        while True:
            tok = self.next_non_space()
            if tok.kind is end:
                pipe = PipeNode(tuple(decl), is_assign, tuple(cmds), start_tok.pos, start_tok.line)
                self.check_pipeline(pipe, context, tok)
                return pipe
            if tok.kind in (
                Kind.BOOL, Kind.CHAR_CONST, Kind.DOT, Kind.FIELD, Kind.IDENT, Kind.NUMBER,
                Kind.NIL, Kind.RAW_STRING, Kind.STRING, Kind.VARIABLE, Kind.LPAREN,
            ):
                self.backup()
                cmds.append(self.command())
            else:
                self.unexpected(tok, context)

    def check_pipeline(self, pipe: PipeNode, context: str, tok: Token) -> None:
        if not pipe.cmds:
            self.error(f"missing value for {context}", tok)
        for i, cmd in enumerate(pipe.cmds[1:]):
            if isinstance(cmd.args[0], (BoolNode, DotNode, NilNode, NumberNode, StringNode)):
                self.error(f"non executable command in pipeline stage {i + 2}", tok)

    def command(self) -> CommandNode:
        start = self.peek_non_space().pos
        args: list[Arg] = []
        while True:
            self.skip_space()
            operand = self.operand()
            if operand is not None:
                args.append(operand)
            tok = self.next()
            if tok.kind is Kind.SPACE:
                continue
            if tok.kind in (Kind.RIGHT, Kind.RPAREN):
                self.backup()
            elif tok.kind is Kind.PIPE:
                pass
            else:
                self.unexpected(tok, "operand")
            break
        if not args:
            self.error("empty command")
        return CommandNode(tuple(args), start)

    def operand(self) -> Arg | None:
        node = self.term()
        if node is None:
            return None
        if self.peek().kind is Kind.FIELD:
            pos = self.peek().pos
            fields: list[str] = []
            while self.peek().kind is Kind.FIELD:
                fields.append(self.next().val[1:])
            if isinstance(node, FieldNode):
                return FieldNode(node.idents + tuple(fields), node.pos)
            if isinstance(node, VariableNode):
                return VariableNode(node.idents + tuple(fields), node.pos)
            if isinstance(node, (BoolNode, StringNode, NumberNode, NilNode, DotNode)):
                self.error(f'unexpected . after term "{node}"')
            return ChainNode(node, tuple(fields), pos)
        return node

    def term(self) -> Arg | None:
        tok = self.next_non_space()
        kind = tok.kind
        if kind is Kind.IDENT:
            if tok.val not in self.funcs:
                self.error(f'function "{tok.val}" not defined', tok)
            return IdentifierNode(tok.val, tok.pos)
        if kind is Kind.DOT:
            return DotNode(tok.pos)
        if kind is Kind.NIL:
            return NilNode(tok.pos)
        if kind is Kind.VARIABLE:
            if tok.val not in self.vars:
                self.error(f'undefined variable "{tok.val}"', tok)
            return VariableNode((tok.val,), tok.pos)
        if kind is Kind.FIELD:
            return FieldNode((tok.val[1:],), tok.pos)
        if kind is Kind.BOOL:
            return BoolNode(tok.val == "true", tok.pos)
        if kind in (Kind.NUMBER, Kind.CHAR_CONST):
            try:
                return _parse_number(tok)
            except ValueError as exc:
                self.error(str(exc), tok)
        if kind is Kind.LPAREN:
            return self.pipeline("parenthesized pipeline", Kind.RPAREN)
        if kind is Kind.STRING:
            try:
                return StringNode(_unquote(tok.val, '"'), tok.val, tok.pos)
            except ValueError:
                self.error("unquote: invalid syntax", tok)
        if kind is Kind.RAW_STRING:
            return StringNode(tok.val[1:-1].replace("\r", ""), tok.val, tok.pos)
        self.backup()
        return None


def parse(text: str, funcs: Collection[str], name: str = "") -> tuple[ListNode, dict[str, ListNode]]:
    """Parse ``text``; returns the root list and the ``define``/``block`` bodies by name."""
    try:
        tokens = lex(text)
    except LexError as exc:
        raise ParseError(exc.line, exc.message, name) from None
    parser = _Parser(tokens, funcs, name)
    root = parser.parse()
    return root, parser.defines
