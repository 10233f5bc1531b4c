"""Modelfiles: parse the text users write, and print it back the way ``ollama show`` does.

The grammar is Ollama's, down to its corners, because users paste Modelfiles written for Ollama:
instructions are case-insensitive words followed by a space; a value runs to the end of the line
unless it opens a ``"`` or ``\"\"\"`` quote, in which case it runs until the quote closes at a line
end; ``#`` starts a comment line. Errors use Ollama's messages (``(line 3): command must be one
of …``, ``no FROM line``, ``unexpected EOF``), and ``PARAMETER`` values are typed against the shared
option table so a bad value is refused before anything touches the disk.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import attrs

from trillama.logs import get_logger
from trillama.store.errors import InvalidRequest
from trillama.store.options import DEPRECATED_PARAMETERS, parse_parameter

__all__ = ["Command", "Modelfile", "ModelfileError", "parse_modelfile", "quote", "INSTRUCTIONS"]

log = get_logger("trillama.store.modelfile")

INSTRUCTIONS = ("from", "license", "template", "system", "adapter", "draft", "renderer", "parser",
                "parameter", "message", "requires")
MESSAGE_ROLES = ("system", "user", "assistant")

_INVALID_COMMAND = ('command must be one of "from", "license", "template", "system", "adapter", '
                    '"draft", "renderer", "parser", "parameter", "message", or "requires"')
_INVALID_ROLE = 'message role must be one of "system", "user", or "assistant"'
_QUOTED_NAMES = ("license", "template", "system", "adapter", "renderer", "parser", "requires", "draft")
_SEMVER = re.compile(
    r"v(0|[1-9][0-9]*)"
    r"(?:\.(0|[1-9][0-9]*)"
    r"(?:\.(0|[1-9][0-9]*)"
    r"(?:-(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*))*)?"
    r"(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
    r")?)?"
)


class ModelfileError(InvalidRequest):
    """The Modelfile cannot be used; the message is what Ollama would say."""

    @classmethod
    def at(cls, line: int, message: str) -> "ModelfileError":
        return cls(f"(line {line}): {message}" if line > 0 else message)


def quote(value: str) -> str:
    """Ollama's printing rule: quote only values that a bare line could not carry."""
    if "\n" in value or value.startswith(" ") or value.endswith(" "):
        if '"' in value:
            return f'"""{value}"""'
        return f'"{value}"'
    return value


@attrs.frozen
class Command:
    """One instruction. ``name`` is ``model`` for FROM and the parameter name for PARAMETER."""

    name: str
    args: str

    def render(self) -> str:
        if self.name == "model":
            return f"FROM {self.args}"
        if self.name in _QUOTED_NAMES:
            return f"{self.name.upper()} {quote(self.args)}"
        if self.name == "message":
            role, _, content = self.args.partition(": ")
            return f"MESSAGE {role} {quote(content)}"
        return f"PARAMETER {self.name} {quote(self.args)}"


def _is_complete(value: str) -> bool:
    """Could a value end here? Only if any quote it opened has closed."""
    if value.startswith('"""'):
        return len(value) >= 6 and value.endswith('"""')
    if value.startswith('"'):
        return len(value) >= 2 and value.endswith('"')
    return True


def _unquote(value: str) -> str:
    if value.startswith('"""'):
        return value[3:-3]
    if value.startswith('"'):
        return value[1:-1]
    return value


def _keep(ch: str) -> bool:
    return ch.isprintable() or ch in " \t"


@attrs.frozen
class Modelfile:
    commands: tuple[Command, ...]

    def render(self) -> str:
        return "".join(command.render() + "\n" for command in self.commands)

    def __str__(self) -> str:
        return self.render()

    def values(self, name: str) -> list[str]:
        return [c.args for c in self.commands if c.name == name]

    @property
    def from_(self) -> str | None:
        found = self.values("model")
        return found[0] if found else None

    @property
    def parameters(self) -> dict[str, Any]:
        """Typed parameters; repeated ``stop`` lines accumulate, other repeats keep the last."""
        params: dict[str, Any] = {}
        for command in self.commands:
            if command.name in INSTRUCTIONS or command.name == "model":
                continue
            if command.name in DEPRECATED_PARAMETERS:
                continue
            value = parse_parameter(command.name, command.args)
            if isinstance(value, list) and isinstance(params.get(command.name), list):
                params[command.name] = params[command.name] + value
            else:
                params[command.name] = value
        return params

    @property
    def messages(self) -> list[dict[str, str]]:
        out = []
        for args in self.values("message"):
            role, _, content = args.partition(": ")
            out.append({"role": role, "content": content})
        return out

    @property
    def requires(self) -> str:
        """The ``REQUIRES`` version without its ``v``; validated at parse time."""
        found = self.values("requires")
        if not found:
            return ""
        value = found[-1]
        return value[1:] if value.startswith("v") else value

    @classmethod
    def from_commands(cls, commands: Iterable[Command]) -> "Modelfile":
        return cls(tuple(commands))


def _check_semantics(commands: list[Command]) -> None:
    for command in commands:
        if command.name == "requires":
            candidate = command.args if command.args.startswith("v") else "v" + command.args
            if not _SEMVER.fullmatch(candidate):
                raise ModelfileError("requires must be a valid semver (e.g. 0.14.0)")
        elif command.name in DEPRECATED_PARAMETERS:
            log.warning("modelfile_parameter_deprecated", parameter=command.name,
                        message=f"warning: parameter {command.name} is deprecated")
        elif command.name not in INSTRUCTIONS and command.name not in ("model", "message"):
            try:
                parse_parameter(command.name, command.args)
            except InvalidRequest as exc:
                raise ModelfileError(exc.message) from None


def parse_modelfile(text: str, *, require_from: bool = True) -> Modelfile:
    """Parse Modelfile ``text``; raise :class:`ModelfileError` with Ollama's message."""
    if text.startswith("\ufeff"):
        text = text[1:]
    commands: list[Command] = []
    pos = 0
    line = 1
    end = len(text)

    def at_newline(ch: str) -> bool:
        return ch in "\r\n"

    while pos < end:
        ch = text[pos]
        if ch in " \t":
            pos += 1
            continue
        if at_newline(ch):
            line += ch == "\n" or (ch == "\r" and text[pos + 1:pos + 2] != "\n")
            pos += 1
            continue
        if ch == "#":
            while pos < end and not at_newline(text[pos]):
                pos += 1
            continue

        # The instruction word: letters, then a space or tab.
        start = pos
        while pos < end and text[pos].isascii() and text[pos].isalpha():
            pos += 1
        word = text[start:pos]
        if pos >= end:
            raise ModelfileError("unexpected EOF")
        if text[pos] not in " \t" or word.lower() not in INSTRUCTIONS:
            raise ModelfileError.at(line, _INVALID_COMMAND)
        instruction = word.lower()
        pos += 1

        role = ""
        if instruction == "parameter":
            while pos < end and text[pos] in " \t":
                pos += 1
            start = pos
            while pos < end and (text[pos].isascii() and (text[pos].isalnum() or text[pos] == "_")):
                pos += 1
            name = text[start:pos]
            if pos >= end or text[pos] not in " \t" or not name:
                raise ModelfileError("unexpected EOF" + (f": {name}" if pos < end else ""))
            pos += 1
        elif instruction == "message":
            while pos < end and text[pos] in " \t":
                pos += 1
            start = pos
            while pos < end and text[pos].isascii() and text[pos].isalpha():
                pos += 1
            role = text[start:pos]
            if pos >= end or text[pos] not in " \t":
                raise ModelfileError("unexpected EOF" + (f": {role}" if pos < end else ""))
            if role not in MESSAGE_ROLES:
                raise ModelfileError.at(line, _INVALID_ROLE)
            pos += 1
            name = "message"
        else:
            name = "model" if instruction == "from" else instruction

        # The value: up to a line end at which every quote it opened has closed.
        buffer: list[str] = []
        value: str | None = None
        while pos < end:
            ch = text[pos]
            if at_newline(ch):
                candidate = "".join(buffer).strip()
                if _is_complete(candidate):
                    value = _unquote(candidate)
                    break
                buffer.append(ch)
                if ch == "\n" or text[pos + 1:pos + 2] != "\n":
                    line += 1
            elif _keep(ch):
                buffer.append(ch)
            pos += 1
        if value is None:  # reached the end of the text
            candidate = "".join(buffer).strip()
            if not _is_complete(candidate):
                raise ModelfileError("unexpected EOF")
            value = _unquote(candidate)
        if role:
            value = f"{role}: {value}"
        commands.append(Command(name=name, args=value))

    if require_from and not any(c.name == "model" for c in commands):
        raise ModelfileError("no FROM line")
    _check_semantics(commands)
    return Modelfile(tuple(commands))
