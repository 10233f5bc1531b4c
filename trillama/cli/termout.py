"""What ``trillama run`` prints while a model answers: spinner, word wrap, thinking, tool calls, stats.

Kept apart from the REPL so the one-shot ``run PROMPT`` and the interactive session print an answer
the same way ``ollama`` does (cmd/cmd.go's ``displayResponse`` and ``api.Metrics.Summary``, read to
learn the behaviour), and so the pieces can be tested without a terminal.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
from typing import Any, TextIO

from trillama.durations import format_go_duration

__all__ = ["Spinner", "WordWrap", "AnswerPrinter", "summary_lines", "render_tool_calls"]

GREY, BOLD, DEFAULT = "\x1b[38;5;245m", "\x1b[1m", "\x1b[0m"
_FRAMES = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"


class Spinner:
    """A braille spinner on stderr until the first token arrives (the model may still be loading).

    A thread, because the main thread is blocked reading the HTTP stream; it draws only on a
    terminal, and ``stop`` erases it so the answer starts at the left margin.
    """

    def __init__(self, out: TextIO | None = None, interval: float = 0.1) -> None:
        self._out = out or sys.stderr
        self._interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drawn = False
        self._lock = threading.Lock()

    def start(self) -> "Spinner":
        if self._out.isatty():
            self._thread = threading.Thread(target=self._spin, daemon=True)
            self._thread.start()
        return self

    def _spin(self) -> None:
        i = 0
        while not self._stop.wait(self._interval if i else 0):
            with self._lock:
                if self._stop.is_set():
                    return
                self._out.write("\r" + _FRAMES[i % len(_FRAMES)] + " ")
                self._out.flush()
                self._drawn = True
            i += 1

    def stop(self) -> None:
        if self._stop.is_set():
            return
        with self._lock:
            self._stop.set()
            if self._drawn:
                self._out.write("\r\x1b[K")
                self._out.flush()
        if self._thread is not None:
            self._thread.join(timeout=1)


class WordWrap:
    """Streams text to ``out``, breaking lines at word boundaries before the terminal's edge.

    Text is printed as it comes; when a word would cross the margin (width − 5, as ``ollama``),
    the cursor goes back over the word printed so far, erases it and reprints it on a new line.
    A word longer than the line is broken where it is.
    """

    def __init__(self, out: TextIO, width: int | None, enabled: bool = True) -> None:
        self.out = out
        self.width = width or 80
        self.enabled = enabled and self.width >= 10
        self.line = 0
        self.word = ""

    def write(self, text: str) -> None:
        if not self.enabled:
            self.out.write(text)
            self.out.flush()
            return
        limit = self.width - 5
        for ch in text:
            if ch in "\n\r":
                self.out.write(ch)
                self.line, self.word = 0, ""
            elif self.line + 1 > limit:
                if len(self.word) > self.width - 10:  # no room to move it: break the word here
                    self.out.write("\n" + ("" if ch == " " else ch))
                    self.word = "" if ch == " " else ch
                    self.line = len(self.word)
                else:
                    if self.word:
                        self.out.write(f"\x1b[{len(self.word)}D")
                    # a space right at the margin is dropped when it would start the new line
                    tail = "" if ch == " " and not self.word else ch
                    self.out.write("\x1b[K\n" + self.word + tail)
                    self.line = len(self.word) + len(tail)
                    self.word = "" if ch == " " else self.word + ch
            else:
                self.out.write(ch)
                self.line += 1
                self.word = "" if ch in " \t" else self.word + ch
        self.out.flush()


def render_tool_calls(calls: list[dict[str, Any]], plain: bool) -> str:
    """The CLI declares no tools, so every call is one to a function that does not exist."""
    lines = []
    for call in calls:
        fn = call.get("function", {})
        args = json.dumps(fn.get("arguments", {}), separators=(",", ":"))
        lines.append(f"  Model called a non-existent function '{fn.get('name', '')}()' with arguments: {args}")
    text = "\n".join(lines)
    return text if plain else GREY + BOLD + text + DEFAULT


def summary_lines(final: dict[str, Any]) -> list[str]:
    """``ollama --verbose`` statistics: each line only when its value is positive."""
    out: list[str] = []

    def dur(key: str) -> float:
        return (final.get(key) or 0) / 1e9

    if dur("total_duration") > 0:
        out.append(f"total duration:       {format_go_duration(dur('total_duration'))}")
    if dur("load_duration") > 0:
        out.append(f"load duration:        {format_go_duration(dur('load_duration'))}")
    prompt_count, count = final.get("prompt_eval_count") or 0, final.get("eval_count") or 0
    if prompt_count > 0:
        out.append(f"prompt eval count:    {prompt_count} token(s)")
    if dur("prompt_eval_duration") > 0:
        out.append(f"prompt eval duration: {format_go_duration(dur('prompt_eval_duration'))}")
        out.append(f"prompt eval rate:     {prompt_count / dur('prompt_eval_duration'):.2f} tokens/s")
    if count > 0:
        out.append(f"eval count:           {count} token(s)")
    if dur("eval_duration") > 0:
        out.append(f"eval duration:        {format_go_duration(dur('eval_duration'))}")
        out.append(f"eval rate:            {count / dur('eval_duration'):.2f} tokens/s")
    return out


class AnswerPrinter:
    """Prints one streamed answer: thinking (grey, between ``Thinking...`` and ``...done thinking.``)
    unless hidden, then the content word-wrapped, then tool calls; keeps what was said."""

    def __init__(self, out: TextIO | None = None, *, wordwrap: bool = True, hide_thinking: bool = False,
                 plain: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.plain = (not self.out.isatty()) if plain is None else plain
        width = shutil.get_terminal_size((80, 24)).columns if self.out.isatty() else 80
        self.wrap = WordWrap(self.out, width, enabled=wordwrap)
        self.hide_thinking = hide_thinking
        self.content = ""
        self.thinking = ""
        self._thinking_open = False

    def feed(self, content: str, thinking: str = "", tool_calls: list[dict] | None = None) -> None:
        if thinking and not self.hide_thinking:
            if not self._thinking_open:
                self.out.write("Thinking...\n" if self.plain else GREY + BOLD + "Thinking...\n" + DEFAULT + GREY)
                self._thinking_open = True
            self.wrap.write(thinking)
        self.thinking += thinking
        if self._thinking_open and (content or tool_calls):
            if not self.thinking.endswith("\n"):
                self.out.write("\n")
            self.out.write("...done thinking.\n\n" if self.plain
                           else GREY + BOLD + "...done thinking.\n\n" + DEFAULT)
            self._thinking_open = False
            self.wrap = WordWrap(self.out, self.wrap.width, enabled=self.wrap.enabled)
        self.content += content
        if content:
            self.wrap.write(content)
        if tool_calls:
            self.out.write(render_tool_calls(tool_calls, self.plain))
        self.out.flush()
