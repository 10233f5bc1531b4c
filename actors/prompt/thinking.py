"""Splits a model's streamed output into thinking and content at ``<think>``-style tags.

Ollama's generic thinking parser works on the raw text stream: thinking only counts if the output
*starts* (after whitespace) with the opening tag; whitespace right after either tag is dropped; a
partial tag at the end of a piece is held back until the next piece decides it. When the prompt
itself ends with the opening tag (templates that pre-open the thinking block), the splitter starts
already inside the thinking section.
"""

from __future__ import annotations

import enum

import attrs

__all__ = ["ThinkingSplitter", "Split", "prompt_opens_thinking"]


class _State(enum.Enum):
    LOOKING = "looking"  # nothing but whitespace seen yet
    THINKING_START = "thinking-start"  # opening tag seen; eating whitespace
    THINKING = "thinking"
    AFTER_THINKING = "after-thinking"  # closing tag seen; eating whitespace
    CONTENT = "content"


@attrs.frozen
class Split:
    thinking: str = ""
    content: str = ""


def _overlap(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def prompt_opens_thinking(prompt: str, opening: str) -> bool:
    """Whether the rendered prompt already opened the thinking block (so output starts inside it)."""
    return bool(opening) and prompt.strip().endswith(opening)


class ThinkingSplitter:
    """Feed raw pieces with :meth:`feed`; call :meth:`flush` once at end of stream."""

    def __init__(self, opening: str = "<think>", closing: str = "</think>", *, started: bool = False) -> None:
        if not opening or not closing:
            raise ValueError("thinking tags must be non-empty")
        self.opening = opening
        self.closing = closing
        self._buf = ""
        self._state = _State.THINKING_START if started else _State.LOOKING

    @property
    def in_thinking(self) -> bool:
        return self._state in (_State.THINKING_START, _State.THINKING)

    def feed(self, text: str) -> Split:
        self._buf += text
        thinking: list[str] = []
        content: list[str] = []
        while True:
            state = self._state
            buf = self._buf
            if state is _State.LOOKING:
                stripped = buf.lstrip()
                if stripped.startswith(self.opening):
                    self._buf = stripped[len(self.opening) :].lstrip()
                    self._state = _State.THINKING if self._buf else _State.THINKING_START
                    continue
                if not stripped or self.opening.startswith(stripped):
                    break  # only whitespace, or a partial opening tag: wait
                self._state = _State.CONTENT
                continue  # no thinking at all; keep the original whitespace
            if state is _State.THINKING_START:
                stripped = buf.lstrip()
                self._buf = stripped
                if not stripped:
                    break
                self._state = _State.THINKING
                continue
            if state is _State.THINKING:
                i = buf.find(self.closing)
                if i >= 0:
                    thinking.append(buf[:i])
                    rest = buf[i + len(self.closing) :].lstrip()
                    self._buf = rest
                    self._state = _State.CONTENT if rest else _State.AFTER_THINKING
                    continue
                held = _overlap(buf, self.closing)
                thinking.append(buf[: len(buf) - held])
                self._buf = buf[len(buf) - held :]
                break
            if state is _State.AFTER_THINKING:
                stripped = buf.lstrip()
                self._buf = ""
                if stripped:
                    content.append(stripped)
                    self._state = _State.CONTENT
                break
            # CONTENT
            content.append(buf)
            self._buf = ""
            break
        return Split("".join(thinking), "".join(content))

    def flush(self) -> Split:
        """Release whatever was held back waiting for more text."""
        buf, self._buf = self._buf, ""
        if not buf:
            return Split()
        if self._state in (_State.THINKING, _State.THINKING_START):
            return Split(thinking=buf)
        if self._state is _State.LOOKING:
            # A lone partial opening tag (or whitespace) at the very end is plain content.
            return Split(content=buf if buf.strip() else "")
        return Split(content=buf if self._state is _State.CONTENT else buf.lstrip())
