"""Lexer for Go's text/template syntax.

The token stream follows Go's own lexer closely (space is a token, ``.A.B`` is two field tokens,
``{{-``/``-}}`` trim the neighbouring text) because the parser's decisions, and so which templates
parse and what error they give, depend on those details. Errors carry the line number so the
message reads like Go's: ``template: :3: unclosed action``.
"""

from __future__ import annotations

import enum

import attrs

__all__ = ["Kind", "Token", "LexError", "lex", "KEYWORDS"]


class Kind(enum.Enum):
    TEXT = "text"
    LEFT = "{{"
    RIGHT = "}}"
    SPACE = "space"
    EOF = "EOF"
    FIELD = "field"
    VARIABLE = "variable"
    IDENT = "identifier"
    KEYWORD = "keyword"
    BOOL = "bool"
    NIL = "nil"
    NUMBER = "number"
    CHAR_CONST = "char constant"
    STRING = "string"
    RAW_STRING = "raw string"
    DOT = "."
    DECLARE = ":="
    ASSIGN = "="
    PIPE = "|"
    LPAREN = "("
    RPAREN = ")"
    CHAR = "char"


KEYWORDS = frozenset(
    {"block", "break", "continue", "define", "else", "end", "if", "range", "template", "with"}
)

_SPACE = " \t\r\n"


@attrs.frozen
class Token:
    kind: Kind
    val: str
    pos: int
    line: int

    def describe(self) -> str:
        """How Go names a token in "unexpected X in Y" messages."""
        if self.kind is Kind.EOF:
            return "EOF"
        if self.kind is Kind.KEYWORD:
            return f"<{self.val}>"
        if self.kind is Kind.SPACE:
            return "space"
        if self.kind is Kind.RIGHT:
            return f'"{self.val}"'
        return _go_quote(self.val)


class LexError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


def _go_quote(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _rune(ch: str) -> str:
    """Go's ``%#U``: ``U+003D '='``."""
    return f"U+{ord(ch):04X} '{ch}'"


def _is_alnum(ch: str) -> bool:
    return ch == "_" or ch.isalpha() or ch.isdigit()


class _Lexer:
    def __init__(self, text: str) -> None:
        self.text = text
        self.n = len(text)
        self.pos = 0
        self.line = 1
        self.tokens: list[Token] = []

    # -- helpers ----------------------------------------------------------------------------
    def emit(self, kind: Kind, start: int, end: int | None = None) -> None:
        end = self.pos if end is None else end
        val = self.text[start:end]
        self.tokens.append(Token(kind, val, start, self.line))
        self.line += val.count("\n")

    def error(self, message: str) -> None:
        raise LexError(self.line, message)

    def at_right_delim(self, pos: int) -> tuple[bool, bool]:
        """(at a closing delimiter, with a trim marker)."""
        t = self.text
        if pos + 1 < self.n and t[pos] in _SPACE and t[pos + 1] == "-" and t.startswith("}}", pos + 2):
            return True, True
        if t.startswith("}}", pos):
            return True, False
        return False, False

    def at_terminator(self, pos: int) -> bool:
        if pos >= self.n:
            return True
        ch = self.text[pos]
        if ch in _SPACE or ch in ".,|:)(":
            return True
        return self.text.startswith("}}", pos)

    # -- top level --------------------------------------------------------------------------
    def run(self) -> list[Token]:
        t = self.text
        while True:
            x = t.find("{{", self.pos)
            if x < 0:
                if self.pos < self.n:
                    self.emit(Kind.TEXT, self.pos, self.n)
                self.pos = self.n
                break
            trim_left = t.startswith("-", x + 2) and x + 3 < self.n and t[x + 3] in _SPACE
            end = x
            if trim_left:
                while end > self.pos and t[end - 1] in _SPACE:
                    end -= 1
            if end > self.pos:
                self.emit(Kind.TEXT, self.pos, end)
            # line accounting for the trimmed whitespace
            self.line += t.count("\n", end, x)
            self.pos = x + 2
            if trim_left:
                self.pos += 2
                self.line += t.count("\n", x + 2, self.pos)
            if t.startswith("/*", self.pos):
                self.comment()
                continue
            self.tokens.append(Token(Kind.LEFT, "{{", x, self.line))
            self.inside_action()
        self.tokens.append(Token(Kind.EOF, "", self.n, self.line))
        return self.tokens

    def comment(self) -> None:
        t = self.text
        end = t.find("*/", self.pos + 2)
        if end < 0:
            self.error("unclosed comment")
        self.line += t.count("\n", self.pos, end)
        q = end + 2
        at, trim = self.at_right_delim(q)
        if not at:
            self.error("comment ends before closing delimiter")
        q += 4 if trim else 2
        self.pos = q
        if trim:
            self.skip_leading_space()

    def skip_leading_space(self) -> None:
        start = self.pos
        while self.pos < self.n and self.text[self.pos] in _SPACE:
            self.pos += 1
        self.line += self.text.count("\n", start, self.pos)

    # -- inside an action -------------------------------------------------------------------
    def inside_action(self) -> None:
        t = self.text
        depth = 0
        while True:
            at, trim = self.at_right_delim(self.pos)
            if at:
                if depth:
                    self.error("unclosed left paren")
                start = self.pos + (2 if trim else 0)
                self.pos = start + 2
                self.tokens.append(Token(Kind.RIGHT, "}}", start, self.line))
                if trim:
                    self.skip_leading_space()
                return
            if self.pos >= self.n:
                self.error("unclosed action")
            ch = t[self.pos]
            start = self.pos
            if ch in _SPACE:
                while self.pos < self.n and t[self.pos] in _SPACE:
                    self.pos += 1
                # The last space may belong to a " -}}" trim marker.
                if self.at_right_delim(self.pos - 1) == (True, True):
                    self.pos -= 1
                    if self.pos == start:
                        continue
                self.emit(Kind.SPACE, start)
            elif ch == "=":
                self.pos += 1
                self.emit(Kind.ASSIGN, start)
            elif ch == ":":
                if not t.startswith(":=", self.pos):
                    self.error("expected :=")
                self.pos += 2
                self.emit(Kind.DECLARE, start)
            elif ch == "|":
                self.pos += 1
                self.emit(Kind.PIPE, start)
            elif ch == '"':
                self.quote()
            elif ch == "`":
                end = t.find("`", self.pos + 1)
                if end < 0:
                    self.error("unterminated raw quoted string")
                self.pos = end + 1
                self.emit(Kind.RAW_STRING, start)
            elif ch == "$":
                self.field_or_variable(Kind.VARIABLE)
            elif ch == "'":
                self.char_constant()
            elif ch == ".":
                if self.pos + 1 < self.n and t[self.pos + 1].isdigit():
                    self.number()
                else:
                    self.field_or_variable(Kind.FIELD)
            elif ch in "+-" or ch.isdigit():
                self.number()
            elif _is_alnum(ch):
                while self.pos < self.n and _is_alnum(t[self.pos]):
                    self.pos += 1
                word = t[start : self.pos]
                if not self.at_terminator(self.pos):
                    self.error(f"bad character {_rune(t[self.pos])}")
                if word in KEYWORDS:
                    self.emit(Kind.KEYWORD, start)
                elif word in ("true", "false"):
                    self.emit(Kind.BOOL, start)
                elif word == "nil":
                    self.emit(Kind.NIL, start)
                else:
                    self.emit(Kind.IDENT, start)
            elif ch == "(":
                depth += 1
                self.pos += 1
                self.emit(Kind.LPAREN, start)
            elif ch == ")":
                depth -= 1
                if depth < 0:
                    self.error("unexpected right paren")
                self.pos += 1
                self.emit(Kind.RPAREN, start)
            elif ord(ch) < 0x80 and ch.isprintable():
                self.pos += 1
                self.emit(Kind.CHAR, start)
            else:
                self.error(f"unrecognized character in action: {_rune(ch)}")

    def field_or_variable(self, kind: Kind) -> None:
        start = self.pos
        self.pos += 1  # the '.' or '$'
        if self.at_terminator(self.pos):
            self.emit(Kind.VARIABLE if kind is Kind.VARIABLE else Kind.DOT, start)
            return
        while self.pos < self.n and _is_alnum(self.text[self.pos]):
            self.pos += 1
        if not self.at_terminator(self.pos):
            self.error(f"bad character {_rune(self.text[self.pos])}")
        self.emit(kind, start)

    def quote(self) -> None:
        t = self.text
        start = self.pos
        self.pos += 1
        while True:
            if self.pos >= self.n or t[self.pos] == "\n":
                self.error("unterminated quoted string")
            ch = t[self.pos]
            if ch == "\\":
                self.pos += 2
                continue
            self.pos += 1
            if ch == '"':
                break
        self.emit(Kind.STRING, start)

    def char_constant(self) -> None:
        t = self.text
        start = self.pos
        self.pos += 1
        while True:
            if self.pos >= self.n or t[self.pos] == "\n":
                self.error("unterminated character constant")
            ch = t[self.pos]
            if ch == "\\":
                self.pos += 2
                continue
            self.pos += 1
            if ch == "'":
                break
        self.emit(Kind.CHAR_CONST, start)

    def number(self) -> None:
        t = self.text
        start = self.pos

        def accept(chars: str) -> bool:
            if self.pos < self.n and t[self.pos] in chars:
                self.pos += 1
                return True
            return False

        def accept_run(chars: str) -> None:
            while self.pos < self.n and t[self.pos] in chars:
                self.pos += 1

        accept("+-")
        digits = "0123456789_"
        if accept("0"):
            if accept("xX"):
                digits = "0123456789abcdefABCDEF_"
            elif accept("oO"):
                digits = "01234567_"
            elif accept("bB"):
                digits = "01_"
        accept_run(digits)
        if accept("."):
            accept_run(digits)
        if len(digits) == 11 and accept("eE"):
            accept("+-")
            accept_run("0123456789_")
        if len(digits) == 23 and accept("pP"):
            accept("+-")
            accept_run("0123456789_")
        accept("i")
        if self.pos < self.n and _is_alnum(t[self.pos]):
            self.pos += 1
            self.error(f"bad number syntax: {_go_quote(t[start:self.pos])}")
        self.emit(Kind.NUMBER, start)


def lex(text: str) -> list[Token]:
    """Tokenise a whole template; raises :class:`LexError` on malformed input."""
    return _Lexer(text).run()
