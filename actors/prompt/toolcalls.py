"""Finds tool calls in a model's streamed output, the way Ollama does for Go-template models.

The model writes plain text; a tool call starts at the template's tool-call tag (``<tool_call>``,
``[TOOL_CALLS]``, or ``{`` when the template shows no tag). Until the tag appears text flows through,
except a possible partial tag at the end of a piece, which is held back. After the tag the parser
looks for a known tool name and then the first balanced JSON object (string- and escape-aware) that
parses; the arguments come from ``arguments``/``parameters`` (object or JSON-encoded string) when
the object has a ``name``, or from a key equal to the tool name, searched recursively, or else the
object itself. Several calls in a row are all found. With ``{``/``[`` as the tag, output that starts
with other text, or a balanced object that is not a call, is just content.

Differences from Ollama, all in the direction of losing less: text before the tag that arrives in
the same piece as a call is returned, not dropped; ``{"name": "tool"}`` with no arguments is a call
with ``{}``; and at the end of the stream unparsed text after a tag is returned as content when no
call was found (Ollama drops it).

:class:`~trillama.actors.prompt.thinking.ThinkingSplitter` is re-exported here: the API runs output
through the thinking splitter first and the tool parser second.
"""

from __future__ import annotations

import enum
import json
import secrets
import string
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import attrs

from trillama.actors.prompt.messages import ToolCall, ToolCallFunction
from trillama.actors.prompt.thinking import Split, ThinkingSplitter, prompt_opens_thinking
from trillama.logs import get_logger

__all__ = [
    "ToolCallParser",
    "ToolParse",
    "new_call_id",
    "ThinkingSplitter",
    "Split",
    "prompt_opens_thinking",
]

log = get_logger(__name__)

_ID_ALPHABET = string.ascii_lowercase + string.digits


def new_call_id() -> str:
    """``call_`` and eight characters of ``[a-z0-9]``, like Ollama's tool-call ids."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(8))


@attrs.frozen
class ToolParse:
    """What one piece of output yielded: text to show now, and whole tool calls."""

    content: str = ""
    calls: tuple[ToolCall, ...] = ()


class _State(enum.Enum):
    LOOKING = "looking-for-tag"
    CALLING = "tool-calling"
    DONE = "done"


def _tool_name(tool: Mapping[str, Any] | str) -> str:
    if isinstance(tool, str):
        return tool
    fn = tool.get("function") or {}
    return str(fn.get("name") or "")


def _as_args(value: Any) -> dict[str, Any] | None:
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            return None
        if isinstance(parsed, dict):
            return parsed
    return None


def _outside_strings(text: str) -> Iterator[tuple[int, str]]:
    """``(index, char)`` for every character of ``text`` outside JSON strings (escape-aware),
    so brace counting is never fooled by a ``}`` inside a string value."""
    in_string = escaped = False
    for i, ch in enumerate(text):
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            in_string = not in_string
        elif not in_string:
            yield i, ch


class ToolCallParser:
    """Feed output pieces to :meth:`feed`; call :meth:`flush` once at the end of the stream."""

    def __init__(
        self,
        tools: Sequence[Mapping[str, Any] | str],
        tag: str = "{",
        *,
        id_factory: Callable[[], str] = new_call_id,
    ) -> None:
        self.names = [n for n in (_tool_name(t) for t in tools) if n]
        self.tag = tag or "{"
        self._id = id_factory
        self._state = _State.LOOKING
        self._buf = ""
        self._count = 0

    @property
    def calls_found(self) -> int:
        return self._count

    @property
    def in_call(self) -> bool:
        """Whether the output so far ends inside a tool call: in its tag, or after the tag before
        a whole call (what a token limit cuts off there is template markup, not an answer)."""
        if not self._buf.strip():
            return False
        if self._state is _State.LOOKING:
            return True  # only a possible start of the tag is ever held back while looking
        return self._state is _State.CALLING and (self._count == 0 or self.tag in self._buf)

    @property
    def holding(self) -> bool:
        """Whether text is being held back (a partial tag or an unfinished call)."""
        return bool(self._buf)

    # -- public -----------------------------------------------------------------------------
    def feed(self, text: str) -> ToolParse:
        if self._state is _State.DONE:
            return ToolParse(text)
        self._buf += text
        content = ""
        if self._state is _State.LOOKING:
            i, found = self._find_tag()
            if i < 0:
                content, self._buf = self._buf, ""
            else:
                content, self._buf = self._buf[:i], self._buf[i:]
            if self.tag in ("{", "[") and content.strip():
                # JSON-ish tags only start a call at the very beginning of the output.
                self._state = _State.DONE
                rest, self._buf = self._buf, ""
                return ToolParse(content + rest)
            if not found:
                return ToolParse(content)
            self._state = _State.CALLING
        calls: list[ToolCall] = []
        while True:
            call = self._parse_one()
            if call is None:
                break
            calls.append(call)
        if self._balanced():
            self._state = _State.DONE
            content += self._buf
            self._buf = ""
        return ToolParse(content, tuple(calls))

    def flush(self) -> ToolParse:
        """End of stream: release held text that turned out not to be a tool call."""
        rest, self._buf = self._buf, ""
        if self._state is _State.DONE or self._count == 0:
            if rest and self._state is _State.CALLING:
                log.debug("tool_call_unparsed", tag=self.tag, chars=len(rest))
            self._state = _State.DONE
            return ToolParse(rest)
        self._state = _State.DONE
        return ToolParse()

    # -- internals --------------------------------------------------------------------------
    def _find_tag(self) -> tuple[int, bool]:
        i = self._buf.find(self.tag)
        if i >= 0:
            return i, True
        for n in range(min(len(self._buf), len(self.tag) - 1), 0, -1):
            if self._buf.endswith(self.tag[:n]):
                return len(self._buf) - n, False
        return -1, False

    def _find_tool(self) -> tuple[str, int] | None:
        buf = self._buf
        if not buf or not self.names:
            return None
        longest = max(len(n) for n in self.names)
        for i in range(1, min(len(buf), longest) + 1):
            tail = buf[-i:]
            for name in self.names:
                if len(tail) < len(name) and name.startswith(tail):
                    return None  # might be the start of a (longer) tool name: wait
        best: tuple[int, str] | None = None
        for name in self.names:
            pos = buf.find(name)
            if pos < 0:
                continue
            if best is None or pos < best[0] or (pos == best[0] and len(name) > len(best[1])):
                best = (pos, name)
        if best is None:
            return None
        return best[1], best[0] + len(best[1])

    def _find_arguments(self, name: str) -> tuple[dict[str, Any], int] | None:
        buf = self._buf
        start = -1
        depth = 0
        for i, ch in _outside_strings(buf):
            if ch == "{":
                if depth == 0:
                    start = i
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0 and start >= 0:
                    try:
                        data = json.loads(buf[start : i + 1])
                    except json.JSONDecodeError:
                        start = -1
                        continue
                    if not isinstance(data, dict):
                        start = -1
                        continue
                    found, args = self._arguments_in(data, name)
                    if found:
                        if args is None:
                            return None
                        return args, i + 1
                    return data, i + 1
                if depth < 0:
                    depth = 0
        return None

    def _arguments_in(self, obj: dict[str, Any], name: str) -> tuple[bool, dict[str, Any] | None]:
        if "name" in obj:
            for key in ("arguments", "parameters"):
                args = _as_args(obj.get(key))
                if args is not None:
                    return True, args
            if obj.get("name") == name and "arguments" not in obj and "parameters" not in obj:
                return True, {}
            return True, None
        args = _as_args(obj.get(name))
        if args is not None:
            return True, args
        for value in obj.values():
            children = [value] if isinstance(value, dict) else value if isinstance(value, list) else []
            for child in children:
                if isinstance(child, dict):
                    found, args = self._arguments_in(child, name)
                    if found:
                        return True, args
        return False, None

    def _parse_one(self) -> ToolCall | None:
        hit = self._find_tool()
        if hit is None:
            return None
        name, end = hit
        found = self._find_arguments(name)
        if found is None:
            return None
        args, args_end = found
        end = max(end, args_end)
        call = ToolCall(ToolCallFunction(name=name, arguments=args, index=self._count), id=self._id())
        self._count += 1
        self._buf = self._buf[end:]
        return call

    def _balanced(self) -> bool:
        """For ``{``/``[`` tags: the buffered value closed, so the rest is ordinary content."""
        if self.tag not in ("{", "[") or not self._buf:
            return False
        opener, closer = self.tag, "}" if self.tag == "{" else "]"
        count = 0
        for _, ch in _outside_strings(self._buf):
            if ch == opener:
                count += 1
            elif ch == closer:
                count -= 1
                if count == 0:
                    return True
        return False
